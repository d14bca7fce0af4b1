"""IOC fixtures (placeholder until written)."""

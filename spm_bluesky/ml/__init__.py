"""Machine learning: the tip-quality assessor (:mod:`.assessor`) and the conditioning agent
(:mod:`.agent`). torch and gymnasium are imported only below this package."""

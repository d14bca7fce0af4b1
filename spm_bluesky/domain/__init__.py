"""The microscope's domain, as pure numpy: the conditioning action set, the instrument limits,
the approach-area mask and the image preprocessing that every layer above shares."""

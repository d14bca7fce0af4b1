"""The autonomous session's logic around the plans: the rules and the tip-belief filter, the
state rebuilt for resume, the fault guards and suspenders, the tally and progress line, and
the session's Tiled writer."""

"""Distillation and pseudo-labels: teacher files and their checks, the packed soft targets and
their loss, ``mask-train``'s options for them."""

"""memexp: an experiment runner for optimizer research.

Kept import-light on purpose: `memexp --help` must not pay for torch.
"""

__version__ = "0.1.0"

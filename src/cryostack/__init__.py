"""cryostack: an open platform for cryo-EM single-particle analysis."""

__version__ = "0.1.0"

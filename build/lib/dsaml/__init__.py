"""dsaml: personalized dynamic music emotion recognition (DSAML, AAAI 2025)."""

__version__ = "0.1.0"

"""rare: reasoning-intensive training data from plain documents, the RARE way."""

__version__ = "0.1.0"

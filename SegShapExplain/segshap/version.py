"""The engine's version (one place: the package, explanation.json and the packaging read it)."""

__version__ = "0.1.0"

"""eatlib: adversarially robust deep metric learning under clustering-based inference."""

__version__ = "0.1.0"

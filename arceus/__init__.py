"""Arceus: one PyTorch model split by layers over several machines, trained over Redis streams."""

__version__ = "0.1.0"

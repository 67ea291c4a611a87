"""Arceus: one PyTorch model split by layers over several machines, trained over Redis streams.

``arceus.build_model(model_config, sample_shape)`` builds the unsplit model, and
``arceus.load_model(path)`` an exported one (both imported on first use: importing ``arceus``
itself imports no torch, so the API stays light).
"""

__version__ = "0.1.0"

__all__ = ["build_model", "load_model"]


def __getattr__(name: str):
    if name == "build_model":
        from .engine.model import build_model  # noqa: PLC0415

        return build_model
    if name == "load_model":
        from .engine.state import load_model  # noqa: PLC0415

        return load_model
    raise AttributeError(f"module 'arceus' has no attribute {name!r}")

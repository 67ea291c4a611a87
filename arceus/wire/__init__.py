"""The wire: codecs for activations and gradients and the payload that carries them."""

from .codecs import CODECS, Codec, get_codec
from .payload import decode, encode, encode_parts, raw_nbytes

__all__ = ["CODECS", "Codec", "decode", "encode", "encode_parts", "get_codec", "raw_nbytes"]

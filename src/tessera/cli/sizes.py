"""Byte sizes on the command line: the parser lives in tessera.units (local/ uses it too)."""

from tessera.units import parse_bytes

__all__ = ["parse_bytes"]

"""Tessera: one LLM served over a pool of different GPUs."""

__version__ = "0.1.0"

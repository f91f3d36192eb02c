"""anna-embed: one instruction-following, few-shot text embedder from a decoder-only LLM."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Embedder", "__version__"]


def __getattr__(name: str):  # lazy: importing the package must not import torch
    if name == "Embedder":
        from anna_embed.model.embedder import Embedder

        return Embedder
    raise AttributeError(name)

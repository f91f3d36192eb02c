"""``anna-embed serve``: an OpenAI-compatible embedding server over one model.

Modules: ``config`` (:class:`ServeConfig`), ``api`` (the HTTP edge: schema, errors, keys, body limit),
``batcher`` (the model worker: bounded queue, token-budget batches, prefix KV caches), ``metrics``
(Prometheus text), ``app`` (:func:`create_app`, the app factory), ``cli`` (command line and lifecycle).
"""

from __future__ import annotations

from typing import Any

from anna_embed.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]


def __getattr__(name: str) -> Any:  # lazy: the app needs FastAPI (extra ``serve``), the config does not
    if name == "create_app":
        from anna_embed.serve.app import create_app

        return create_app
    raise AttributeError(name)

"""Settings of ``anna-embed serve``: one frozen dataclass, loaded like every stage's config
(``--config serve.toml``, ``--set key=value``, see :mod:`anna_embed.config`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from anna_embed.config import ConfigError


@dataclass(frozen=True)
class ServeConfig:
    """Settings of ``anna-embed serve`` (``--config serve.toml``, ``--set key=value``; flags win).

    Attributes:
        model: Short name, local folder or hub id (``--model``).
        served_name: The model id clients send and ``/v1/models`` lists (default: ``model``).
        host: Interface to bind; loopback unless told otherwise.
        port: TCP port (0: any free port, logged at startup).
        api_key_file: File of API keys, one per line (``--api-key-file``); keys in ``$ANNA_EMBED_API_KEYS``
            are added. No key anywhere: no authentication.
        dtype: Weights' dtype, as ``anna-embed encode --dtype`` (float32 matches ``encode``'s default).
        device: ``cpu``, ``cuda``...; default: CUDA when available.
        max_length: Tokens per input (prompt and specials included, a few-shot block on top); default: the
            model's own.
        truncate: Default of the request field ``truncate``: cut longer inputs (as ``encode`` does) or
            answer 400.
        max_inputs: Inputs per request.
        max_examples: Few-shot examples per request (the model keeps those that fit its token budget).
        max_body_bytes: Request body size; larger bodies get 413.
        max_queue: Requests that may wait for the model; one more gets 503 with ``Retry-After``.
        max_batch_tokens: Token budget of one forward pass (rows x padded length, prefix included).
        max_wait_ms: How long the worker gathers requests into a batch after the first one arrives.
        prefix_cache: Keep the KV cache of prompt prefixes (instruction + examples) across requests.
        prefix_cache_size: Prefix KV caches kept (least recently used dropped first).
        retry_after_s: ``Retry-After`` of 503 answers.
        shutdown_timeout_s: How long a shutdown waits for in-flight requests.
    """

    model: str = ""
    served_name: str = ""
    host: str = "127.0.0.1"
    port: int = 8080
    api_key_file: str | None = None
    dtype: Literal["float32", "bfloat16", "auto"] = "float32"
    device: str | None = None
    max_length: int | None = None
    truncate: bool = True
    max_inputs: int = 2048
    max_examples: int = 32
    max_body_bytes: int = 8 * 1024 * 1024
    max_queue: int = 256
    max_batch_tokens: int = 8192
    max_wait_ms: float = 2.0
    prefix_cache: bool = True
    prefix_cache_size: int = 32
    retry_after_s: int = 1
    shutdown_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        for name in (
            "max_inputs",
            "max_examples",
            "max_body_bytes",
            "max_queue",
            "max_batch_tokens",
            "prefix_cache_size",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or not 0 <= self.port <= 65535:
            raise ConfigError("max_wait_ms must be >= 0 and port within 0..65535")

    @property
    def name(self) -> str:
        return self.served_name or self.model

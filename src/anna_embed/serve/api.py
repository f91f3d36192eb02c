"""The HTTP edge of ``anna-embed serve``: the request schema, OpenAI-shaped errors, API keys, and the
outermost ASGI layer (body-size limit, per-status request metrics). Pydantic lives here only."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from anna_embed.serve.metrics import ServeMetrics

#: Environment variable holding API keys (comma-separated), in addition to ``--api-key-file``.
API_KEYS_ENV = "ANNA_EMBED_API_KEYS"
EMBEDDINGS_PATH = "/v1/embeddings"


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings``: OpenAI's fields, then the recipe's optional extensions."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None
    task: str | None = None
    instruction: str | None = None
    role: Literal["query", "document"] = "query"
    examples: list[tuple[str, str]] = Field(default_factory=list)
    truncate: bool | None = None


class APIError(Exception):
    """An answer in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def validation_error(err: ValidationError) -> APIError:
    """The first problem of a request body as a 400."""
    first = err.errors(include_url=False)[0]
    kind, loc = first["type"], [str(p) for p in first["loc"]]
    if kind == "json_invalid":
        return APIError(400, f"The body is not valid JSON: {first['msg']}", code="invalid_json")
    if not loc:
        return APIError(400, "The body must be a JSON object.", code="invalid_type")
    name = loc[0]
    if kind == "extra_forbidden":
        return APIError(400, f"Unknown parameter {name!r}.", param=name, code="unknown_parameter")
    if kind == "missing" and len(loc) == 1:
        return APIError(
            400, f"Missing required parameter {name!r}.", param=name, code="missing_required_parameter"
        )
    if name == "input":
        message = "'input' must be a string or a list of strings (token ids are not accepted)."
        return APIError(400, message, param="input", code="invalid_type")
    if name == "examples":
        param = f"examples[{loc[1]}]" if len(loc) > 1 else "examples"
        message = "'examples' must be a list of [query, document] string pairs."
        return APIError(400, message, param=param, code="invalid_type")
    return APIError(400, f"Invalid value for {name!r}: {first['msg']}.", param=name, code="invalid_value")


def overloaded(message: str, retry_after_s: int, code: str = "overloaded") -> APIError:
    """A 503 that tells the client when to retry."""
    return APIError(503, message, type="server_error", code=code, headers={"Retry-After": str(retry_after_s)})


def read_api_keys(path: str | os.PathLike[str] | None, *, env: str = API_KEYS_ENV) -> list[str]:
    """API keys from ``path`` (one per line; blank lines and ``#`` comments skipped) and the environment
    variable ``env`` (comma-separated).

    Raises:
        ValueError: ``path`` is given but holds no key.
    """
    keys = [k.strip() for k in os.environ.get(env, "").split(",") if k.strip()]
    if path is not None:
        lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
        from_file = [line for line in lines if line and not line.startswith("#")]
        if not from_file:
            raise ValueError(f"{path}: no API key in the file")
        keys += from_file
    return list(dict.fromkeys(keys))


def key_digest(key: str) -> bytes:
    """SHA-256 of a key: keys are held and compared only as equal-length digests."""
    return hashlib.sha256(key.encode("utf-8")).digest()


def bearer_ok(authorization: str, digests: Sequence[bytes]) -> bool:
    """Whether an ``Authorization`` header carries one of the keys (constant-time comparisons, all keys
    checked whichever matches)."""
    scheme, _, token = authorization.partition(" ")
    given = key_digest(token.strip())
    matched = False
    for digest in digests:
        matched |= hmac.compare_digest(given, digest)
    return scheme.lower() == "bearer" and matched


class Edge:
    """Outermost ASGI layer: refuses bodies over ``max_bytes`` (413) and counts embedding requests by
    status and latency."""

    def __init__(self, app: Any, *, max_bytes: int, metrics: ServeMetrics) -> None:
        self.app, self.max_bytes, self.metrics = app, max_bytes, metrics

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500
        too_large = APIError(413, f"The body exceeds {self.max_bytes} bytes.", code="request_too_large")

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        received = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise too_large
            return message

        try:
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.max_bytes:
                await too_large.response()(scope, receive, send_status)
            else:
                await self.app(scope, limited_receive, send_status)
        finally:
            if scope["path"] == EMBEDDINGS_PATH:
                self.metrics.request(status, time.perf_counter() - start)


def encode_vector(vec: np.ndarray, encoding_format: str) -> list[float] | str:
    """One vector as OpenAI sends it: a list of floats, or base64 of its little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(vec.astype("<f4").tobytes()).decode("ascii")
    return vec.tolist()

"""The app of ``anna-embed serve``: an OpenAI-compatible embedding server (FastAPI) over one model.

Endpoints: ``POST /v1/embeddings`` (OpenAI's request and answer, plus the recipe's optional ``task``,
``instruction``, ``role``, ``examples`` and ``truncate``), ``GET /v1/models``, ``GET /health`` (200 once the
model is loaded) and ``GET /metrics`` (Prometheus text). Prompts are built exactly as ``anna-embed encode``
builds them, so served vectors equal encoded ones. Requests go through the batcher of
:mod:`anna_embed.serve.batcher`; errors use OpenAI's shape ``{"error": {"message", "type", "param",
"code"}}``. The command line and lifecycle are :mod:`anna_embed.serve.cli`; see ``docs/SERVING.md``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from anna_embed.model.embedder import truncate_dims
from anna_embed.serve.api import (
    EMBEDDINGS_PATH,
    APIError,
    Edge,
    EmbeddingRequest,
    bearer_ok,
    encode_vector,
    key_digest,
    overloaded,
    validation_error,
)
from anna_embed.serve.batcher import Batcher, EmbedResult, Job, OverloadedError, PromptSpec, RequestError
from anna_embed.serve.config import ServeConfig
from anna_embed.serve.metrics import ServeMetrics
from anna_embed.tasks import UnknownTaskError, get_task

if TYPE_CHECKING:
    from anna_embed.model.embedder import Embedder

logger = logging.getLogger(__name__)


class _State:
    """The loaded model and its worker, filled in by a background thread while the server already answers."""

    def __init__(
        self, cfg: ServeConfig, load: Callable[[], Embedder], on_fatal: Callable[[BaseException], None]
    ):
        self.cfg, self._load, self._on_fatal = cfg, load, on_fatal
        self.embedder: Embedder | None = None
        self.batcher: Batcher | None = None
        self.error: str | None = None
        self.created = int(time.time())
        self.metrics = ServeMetrics(
            queue_depth=lambda: self.batcher.depth() if self.batcher else 0,
            prefix_cache_size=lambda: len(self.batcher.prefixes) if self.batcher else 0,
        )

    def load(self, keys: int) -> None:
        cfg = self.cfg
        try:
            emb = self._load()
            batcher = Batcher(
                emb,
                max_queue=cfg.max_queue,
                max_batch_tokens=cfg.max_batch_tokens,
                max_wait_s=cfg.max_wait_ms / 1000,
                prefix_cache=cfg.prefix_cache,
                prefix_cache_size=cfg.prefix_cache_size,
                metrics=self.metrics,
            )
            batcher.start()
        except Exception as err:
            self.error = f"{type(err).__name__}: {err}"
            logger.error("anna-embed serve: could not load %s: %s", cfg.model, self.error)
            self._on_fatal(err)
            return
        self.embedder, self.batcher = emb, batcher
        host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        logger.info(
            "anna-embed serve: ready at http://%s:%d, model %r (%s, %d-d, max_length %d, %s); auth %s; "
            "queue %d, batch %d tokens, wait %g ms, prefix cache %s",
            host,
            cfg.port,
            cfg.name,
            emb.config.kind,
            emb.dimension,
            emb.config.max_length,
            emb.model.dtype,
            f"on ({keys} key{'s' * (keys != 1)})" if keys else "OFF",
            cfg.max_queue,
            cfg.max_batch_tokens,
            cfg.max_wait_ms,
            f"{cfg.prefix_cache_size} entries" if batcher.use_prefix_cache else "off",
        )

    def ready(self) -> tuple[Embedder, Batcher]:
        if self.embedder is None or self.batcher is None:
            if self.error:
                raise APIError(
                    503, f"The model failed to load: {self.error}", type="server_error", code="model_error"
                )
            raise overloaded("The model is still loading.", self.cfg.retry_after_s, code="model_loading")
        return self.embedder, self.batcher


def create_app(
    cfg: ServeConfig,
    *,
    load: Callable[[], Embedder],
    api_keys: Sequence[str] = (),
    on_fatal: Callable[[BaseException], None] = lambda err: None,
) -> Any:
    """The ASGI app: FastAPI routes behind the body-size and metrics layer.

    Args:
        cfg: Server settings (``cfg.name`` is the model id clients must send).
        load: Builds the embedder; runs in a background thread at startup (``/health`` answers 503 until
            it returns).
        api_keys: Accepted bearer tokens; empty: no authentication.
        on_fatal: Called if ``load`` fails (the CLI stops the server).
    """
    state = _State(cfg, load, on_fatal)
    digests = [key_digest(k) for k in api_keys]

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=state.load, args=(len(digests),), name="anna-embed-load", daemon=True).start()
        yield
        if state.batcher is not None:
            await asyncio.to_thread(state.batcher.stop, cfg.shutdown_timeout_s)
        served = state.metrics.requests
        logger.info(
            "anna-embed serve: stopped after %.0f s: %d requests (%s), %d texts, %d prompt tokens",
            time.time() - state.created,
            sum(served.values()),
            ", ".join(f"{k}: {v}" for k, v in sorted(served.items())) or "none",
            state.metrics.texts,
            state.metrics.prompt_tokens,
        )

    app = FastAPI(title="anna-embed", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> JSONResponse:
        return err.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return APIError(
            err.status_code, str(err.detail), code="not_found" if err.status_code == 404 else None
        ).response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, err: Exception) -> JSONResponse:
        logger.error("unexpected error on %s: %s: %s", request.url.path, type(err).__name__, err)
        return APIError(500, "Internal server error.", type="server_error", code="internal_error").response()

    def authorize(request: Request) -> None:
        if digests and not bearer_ok(request.headers.get("authorization", ""), digests):
            raise APIError(
                401,
                "Missing or invalid API key; send 'Authorization: Bearer <key>'.",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.get("/health")
    async def health() -> dict[str, str]:
        state.ready()
        return {"status": "ok", "model": cfg.name}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authorize(request)
        entry = {"id": cfg.name, "object": "model", "created": state.created, "owned_by": "anna-embed"}
        return {"object": "list", "data": [entry]}

    @app.get("/metrics")
    async def metrics(request: Request) -> PlainTextResponse:
        authorize(request)
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post(EMBEDDINGS_PATH)
    async def embeddings(request: Request) -> Response:
        authorize(request)
        emb, batcher = state.ready()
        try:
            req = EmbeddingRequest.model_validate_json(await request.body(), strict=True)
        except ValidationError as err:
            raise validation_error(err) from None
        texts = [req.input] if isinstance(req.input, str) else req.input
        _check(req, texts, cfg, emb)
        job = Job(
            texts,
            PromptSpec(
                role=req.role, task=req.task, instruction=req.instruction, examples=tuple(req.examples)
            ),
            truncate=cfg.truncate if req.truncate is None else req.truncate,
        )
        try:
            batcher.submit(job)
        except OverloadedError as err:
            raise overloaded(f"Overloaded: {err}; retry later.", cfg.retry_after_s) from None
        result = await _outcome(job, request)
        if result is None:  # the client left; nobody reads this
            return Response(status_code=499)
        vectors = truncate_dims(result.vectors, req.dimensions)
        state.metrics.served(len(texts), result.prompt_tokens)
        data = [
            {"object": "embedding", "index": i, "embedding": encode_vector(v, req.encoding_format)}
            for i, v in enumerate(vectors)
        ]
        usage = {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}
        body = {"object": "list", "data": data, "model": cfg.name, "usage": usage}
        return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")

    return Edge(app, max_bytes=cfg.max_body_bytes, metrics=state.metrics)


def _check(req: EmbeddingRequest, texts: list[str], cfg: ServeConfig, emb: Embedder) -> None:
    """Request checks that need no tokenizer (the worker checks lengths)."""
    if req.model != cfg.name:
        raise APIError(
            404,
            f"The model {req.model!r} does not exist; this server serves {cfg.name!r}.",
            param="model",
            code="model_not_found",
        )
    if not texts:
        raise APIError(400, "'input' must not be empty.", param="input", code="empty_input")
    empty = next((i for i, t in enumerate(texts) if not t), None)
    if empty is not None:
        raise APIError(
            400, f"input[{empty}] is an empty string.", param=f"input[{empty}]", code="empty_input"
        )
    if len(texts) > cfg.max_inputs:
        raise APIError(
            400,
            f"{len(texts)} inputs in one request; at most {cfg.max_inputs}.",
            param="input",
            code="too_many_inputs",
        )
    if len(req.examples) > cfg.max_examples:
        raise APIError(
            400,
            f"{len(req.examples)} examples in one request; at most {cfg.max_examples}.",
            param="examples",
            code="too_many_examples",
        )
    if req.dimensions is not None and req.dimensions > emb.dimension:
        raise APIError(
            400,
            f"dimensions={req.dimensions} exceeds the model's {emb.dimension}.",
            param="dimensions",
            code="invalid_value",
        )
    if req.task is not None and req.instruction is None:
        try:
            get_task(req.task)
        except UnknownTaskError as err:
            raise APIError(400, str(err), param="task", code="unknown_task") from None


async def _outcome(job: Job, request: Request) -> EmbedResult | None:
    """The job's result, or ``None`` when the client disconnects first (the job is then skipped)."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    result = asyncio.wrap_future(job.future)
    watch = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({result, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if not result.done():
        job.abandon()
        return None
    try:
        return result.result()
    except RequestError as err:
        raise APIError(400, str(err), param=err.param, code=err.code) from None
    except Exception as err:
        raise APIError(
            500, "The model failed on this request.", type="server_error", code="internal_error"
        ) from err

"""The model worker of ``anna-embed serve``: a bounded queue, token-budget batches, a shared prefix cache.

One thread owns the model (and the tokenizer). Requests wait in a bounded queue; the worker takes them,
tokenizes each one (prompt built by :meth:`~anna_embed.model.embedder.Embedder.query_prefix` /
:meth:`~anna_embed.model.embedder.Embedder.document_prefix`, ids by
:meth:`~anna_embed.model.embedder.Embedder.prompt_ids`: the exact strings and ids ``anna-embed encode`` runs),
keeps taking requests for up to ``max_wait_s`` or until ``max_batch_tokens`` tokens are waiting, then runs
them in forward passes grouped by prompt prefix, sorted by length and cut to the token budget
(:func:`plan_batches`). A decoder prefix (instruction + few-shot block) runs once and its KV cache is kept
in a bounded LRU (:class:`PrefixCache`) keyed by the prefix's token ids, so requests that share a prompt
share its cost. Each request gets its vectors as soon as its last text is done; a request whose client left
is skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from anna_embed.model.embedder import PrefixState, continues_prefix
from anna_embed.prompts import Example, Role

if TYPE_CHECKING:
    from anna_embed.model.embedder import Embedder
    from anna_embed.serve.metrics import ServeMetrics

logger = logging.getLogger(__name__)

PrefixKey = tuple[int, ...]


class OverloadedError(RuntimeError):
    """The queue is full (or the worker is shutting down): answer 503 and let the client retry."""


class RequestError(ValueError):
    """A request that cannot be embedded as sent (answered 400).

    Attributes:
        param: The request field at fault (``input[3]``), if one.
        code: A short machine-readable code.
    """

    def __init__(self, message: str, *, param: str | None = None, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass(frozen=True)
class PromptSpec:
    """How a request's texts are prompted (the same arguments as ``anna-embed encode``)."""

    role: Role = "query"
    task: str | None = None
    instruction: str | None = None
    examples: tuple[Example, ...] = ()


@dataclass(frozen=True)
class EmbedResult:
    """A request's vectors ``[N, D]`` (L2-normalised, full width) and its prompt tokens."""

    vectors: np.ndarray
    prompt_tokens: int


@dataclass(eq=False)
class Job:
    """One request on its way through the worker."""

    texts: list[str]
    prompt: PromptSpec = field(default_factory=PromptSpec)
    truncate: bool = True
    future: Future[EmbedResult] = field(default_factory=Future)
    abandoned: bool = False
    # set by the worker
    ids: list[list[int]] = field(default_factory=list)
    keys: list[PrefixKey | None] = field(default_factory=list)
    out: np.ndarray | None = None
    remaining: int = 0
    failed: bool = False

    def abandon(self) -> None:
        """The client left: skip whatever of this request has not run yet."""
        self.abandoned = True
        self.future.cancel()


class PrefixCache:
    """A bounded LRU of prefix KV caches keyed by the prefix's token ids.

    Args:
        capacity: Most prefixes held; the least recently used one is dropped first.
        run: Computes a missing prefix (:meth:`~anna_embed.model.embedder.Embedder.run_prefix`).
        on_lookup: Called with ``True`` on a hit, ``False`` on a miss.
    """

    def __init__(
        self,
        capacity: int,
        run: Callable[[PrefixKey], PrefixState],
        on_lookup: Callable[[bool], None] = lambda hit: None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        self._run = run
        self._on_lookup = on_lookup
        self._entries: OrderedDict[PrefixKey, PrefixState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: PrefixKey) -> PrefixState:
        """The cached state of ``key``, computing (and possibly evicting) on a miss."""
        state = self._entries.get(key)
        self._on_lookup(state is not None)
        if state is None:
            state = self._run(key)
            self._entries[key] = state
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        return state


def plan_batches(lengths: Sequence[int], max_batch_tokens: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into forward passes: longest first, each pass padded to its longest
    row and holding at most ``max_batch_tokens`` tokens (rows x longest); a row longer than the budget
    runs alone.

    Example:
        >>> plan_batches([3, 10, 4, 9], 20)
        [[1, 3], [2, 0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, start = [], 0
    while start < len(order):
        rows = max(1, max_batch_tokens // max(1, lengths[order[start]]))
        batches.append(order[start : start + rows])
        start += rows
    return batches


class Batcher:
    """The queue and the one model worker.

    Args:
        embedder: The model; only the worker thread touches it after :meth:`start`.
        max_queue: Requests that may wait; one more is refused (:class:`OverloadedError`).
        max_batch_tokens: Token budget of one forward pass (rows x padded length, prefix included).
        max_wait_s: How long the worker keeps gathering requests after the first one arrives.
        prefix_cache: Reuse decoder prefix KV caches (off: every text runs its whole prompt).
        prefix_cache_size: Prefix KV caches kept (LRU).
        metrics: Where batch sizes, computed tokens and prefix-cache lookups are counted.
    """

    def __init__(
        self,
        embedder: Embedder,
        *,
        max_queue: int = 256,
        max_batch_tokens: int = 8192,
        max_wait_s: float = 0.005,
        prefix_cache: bool = True,
        prefix_cache_size: int = 32,
        metrics: ServeMetrics | None = None,
    ) -> None:
        self.embedder = embedder
        self.max_queue = max_queue
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.use_prefix_cache = prefix_cache and embedder.config.kind == "decoder"
        self.metrics = metrics
        self.prefixes = PrefixCache(
            prefix_cache_size,
            lambda key: embedder.run_prefix(list(key)),
            metrics.prefix_lookup if metrics is not None else (lambda hit: None),
        )
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="anna-embed-worker", daemon=True)

    # ------------------------------------------------------------------ public
    def start(self) -> None:
        self._thread.start()

    def depth(self) -> int:
        """Requests waiting (not yet taken by the worker)."""
        return len(self._queue)

    def submit(self, job: Job) -> Future[EmbedResult]:
        """Queue a request; its future resolves to an :class:`EmbedResult` or raises :class:`RequestError`.

        Raises:
            OverloadedError: ``max_queue`` requests are already waiting, or the worker is stopping.
        """
        with self._cond:
            if self._stopping:
                raise OverloadedError("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise OverloadedError(f"the request queue is full ({self.max_queue} waiting)")
            self._queue.append(job)
            self._cond.notify()
        return job.future

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new requests, finish the queued ones, then end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ------------------------------------------------------------------ worker
    def _loop(self) -> None:
        while True:
            jobs = self._gather()
            if not jobs:
                return
            try:
                self._process(jobs)
            except Exception as err:  # never let one request end the worker
                logger.exception("embedding failed")
                for job in jobs:
                    self._fail(job, err)

    def _gather(self) -> list[Job]:
        """Prepared jobs for the next round; ``[]`` only when stopping with an empty queue.

        Takes every waiting job until ``max_batch_tokens`` tokens are gathered; with the queue empty it
        waits for more until ``max_wait_s`` after the first job was ready.
        """
        jobs: list[Job] = []
        tokens, deadline = 0, None
        while True:
            with self._cond:
                while not self._queue:
                    now = time.monotonic()
                    if self._stopping or (deadline is not None and now >= deadline):
                        return jobs
                    self._cond.wait(None if deadline is None else deadline - now)
                job = self._queue.popleft()
            if self._prepare(job):
                jobs.append(job)
                tokens += sum(len(ids) for ids in job.ids)
            if not jobs:
                continue
            if deadline is None:
                deadline = time.monotonic() + self.max_wait_s
            if tokens >= self.max_batch_tokens:
                return jobs

    def _prefix(self, prompt: PromptSpec) -> str:
        emb = self.embedder
        if prompt.role == "query":
            return emb.query_prefix(prompt.task, instruction=prompt.instruction, examples=prompt.examples)
        return emb.document_prefix(prompt.task, instruction=prompt.instruction, examples=prompt.examples)

    def _prepare(self, job: Job) -> bool:
        """Tokenize a job (stage 1); a bad request is answered here and never reaches the model."""
        if job.abandoned:
            return False
        try:
            prefix = self._prefix(job.prompt)
            ids, pre, truncated = self.embedder.prompt_ids(job.texts, prefix=prefix)
            if truncated and not job.truncate:
                raise self._too_long(job.texts, prefix)
        except RequestError as err:
            self._fail(job, err)
            return False
        except (ValueError, KeyError) as err:  # prompt building: e.g. examples on an asymmetric document
            self._fail(job, RequestError(str(err)))
            return False
        except Exception as err:
            logger.exception("tokenization failed")
            self._fail(job, err)
            return False
        job.ids = ids
        cached = self.use_prefix_cache and bool(pre)
        key = tuple(pre) if cached else None
        job.keys = [key if cached and continues_prefix(x, pre) else None for x in ids]
        job.out = np.empty((len(ids), self.embedder.dimension), dtype=np.float32)
        job.remaining = len(ids)
        return True

    def _too_long(self, texts: Sequence[str], prefix: str) -> RequestError:
        first = next(i for i, t in enumerate(texts) if self.embedder.prompt_ids([t], prefix=prefix)[2])
        limit = self.embedder.config.max_length
        return RequestError(
            f"input[{first}] is longer than max_length={limit} tokens (prompt and specials included, a "
            "few-shot block not counted); shorten it or send truncate: true to cut it",
            param=f"input[{first}]",
            code="input_too_long",
        )

    def _process(self, jobs: list[Job]) -> None:
        """Forward passes (stage 2) grouped by prefix, then hand each job its vectors (stage 3)."""
        groups: dict[PrefixKey | None, list[tuple[Job, int]]] = {}
        for job in jobs:
            for i, key in enumerate(job.keys):
                groups.setdefault(key, []).append((job, i))
        for key, items in groups.items():
            try:
                self._run_group(key, items)
            except Exception as err:
                logger.exception("forward pass failed")
                for job in {id(j): j for j, _ in items}.values():
                    self._fail(job, err)

    def _run_group(self, key: PrefixKey | None, items: list[tuple[Job, int]]) -> None:
        live = [(j, i) for j, i in items if not (j.abandoned or j.failed)]
        if not live:
            return
        state = self.prefixes.get(key) if key is not None else None
        n_pre = len(key) if key is not None else 0
        for batch in plan_batches([len(j.ids[i]) for j, i in live], self.max_batch_tokens):
            rows = [live[b] for b in batch if not (live[b][0].abandoned or live[b][0].failed)]
            if not rows:
                continue
            if state is not None:
                vecs = self.embedder.embed_after_prefix([j.ids[i][n_pre:] for j, i in rows], state)
            else:
                vecs = self.embedder.embed_ids([j.ids[i] for j, i in rows])
            if self.metrics is not None:
                self.metrics.batch(len(rows), sum(len(j.ids[i]) - n_pre for j, i in rows))
            for (job, i), vec in zip(rows, vecs, strict=True):
                assert job.out is not None
                job.out[i] = vec
                job.remaining -= 1
                if job.remaining == 0:
                    _settle(job.future, EmbedResult(job.out, sum(len(x) for x in job.ids)))

    def _fail(self, job: Job, err: BaseException) -> None:
        job.failed = True
        _settle(job.future, error=err)


def _settle(
    future: Future[EmbedResult], result: EmbedResult | None = None, error: BaseException | None = None
) -> None:
    """Resolve a future unless its client already gave up on it."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]
    except InvalidStateError:  # cancelled: the client left
        pass

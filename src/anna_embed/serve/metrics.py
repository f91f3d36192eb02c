"""The server's Prometheus metrics, rendered in the text exposition format (no client library needed).

Counters, gauges and histograms are updated from two threads (the HTTP event loop and the model worker),
so every update takes one lock. Names follow Prometheus conventions: ``_total`` for counters,
``_seconds`` for durations.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

#: Request latency buckets (seconds): 1 ms to 30 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Texts per forward pass.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass
class _Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        for i, upper in enumerate(self.buckets):
            if value <= upper:
                self.counts[i] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{_num(b)}"}} {c}' for b, c in zip(self.buckets, self.counts, strict=True)]
        return [
            *out,
            f'{name}_bucket{{le="+Inf"}} {self.n}',
            f"{name}_sum {_num(self.total)}",
            f"{name}_count {self.n}",
        ]


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class ServeMetrics:
    """Everything ``GET /metrics`` reports.

    Args:
        queue_depth: Reads the number of requests waiting for the model worker.
        prefix_cache_size: Reads the number of prefix KV caches held.
    """

    def __init__(
        self,
        *,
        queue_depth: Callable[[], int] = lambda: 0,
        prefix_cache_size: Callable[[], int] = lambda: 0,
    ) -> None:
        self._lock = threading.Lock()
        self.queue_depth = queue_depth
        self.prefix_cache_size = prefix_cache_size
        self.requests: dict[str, int] = {}
        self.latency = _Histogram(LATENCY_BUCKETS)
        self.batch_size = _Histogram(BATCH_BUCKETS)
        self.texts = 0
        self.prompt_tokens = 0
        self.forward_tokens = 0
        self.prefix_hits = 0
        self.prefix_misses = 0

    def request(self, status: int, seconds: float) -> None:
        """One ``/v1/embeddings`` request finished with ``status`` after ``seconds``."""
        with self._lock:
            key = str(status)
            self.requests[key] = self.requests.get(key, 0) + 1
            self.latency.observe(seconds)

    def batch(self, texts: int, forward_tokens: int) -> None:
        """One forward pass over ``texts`` texts that computed ``forward_tokens`` positions (padding and a
        cached prefix excluded)."""
        with self._lock:
            self.batch_size.observe(texts)
            self.forward_tokens += forward_tokens

    def served(self, texts: int, prompt_tokens: int) -> None:
        """A request's vectors were delivered: ``texts`` texts of ``prompt_tokens`` prompt tokens in all."""
        with self._lock:
            self.texts += texts
            self.prompt_tokens += prompt_tokens

    def prefix_lookup(self, hit: bool) -> None:
        with self._lock:
            if hit:
                self.prefix_hits += 1
            else:
                self.prefix_misses += 1

    def render(self) -> str:
        """The Prometheus text exposition of every metric."""
        with self._lock:
            lines: list[str] = []
            _family(lines, "anna_embed_requests_total", "counter", "Embedding requests by HTTP status.")
            lines += [
                f'anna_embed_requests_total{{status="{s}"}} {n}' for s, n in sorted(self.requests.items())
            ]
            _family(lines, "anna_embed_request_seconds", "histogram", "Embedding request latency.")
            lines += self.latency.lines("anna_embed_request_seconds")
            _family(lines, "anna_embed_batch_size", "histogram", "Texts per forward pass.")
            lines += self.batch_size.lines("anna_embed_batch_size")
            simple: Sequence[tuple[str, str, str, float]] = (
                ("anna_embed_texts_total", "counter", "Texts embedded and delivered.", self.texts),
                (
                    "anna_embed_prompt_tokens_total",
                    "counter",
                    "Prompt tokens of delivered texts.",
                    self.prompt_tokens,
                ),
                (
                    "anna_embed_forward_tokens_total",
                    "counter",
                    "Token positions computed (cached prefixes and padding excluded).",
                    self.forward_tokens,
                ),
                (
                    "anna_embed_queue_depth",
                    "gauge",
                    "Requests waiting for the model worker.",
                    self.queue_depth(),
                ),
                ("anna_embed_prefix_cache_hits_total", "counter", "Prefix KV cache hits.", self.prefix_hits),
                (
                    "anna_embed_prefix_cache_misses_total",
                    "counter",
                    "Prefix KV cache misses.",
                    self.prefix_misses,
                ),
                (
                    "anna_embed_prefix_cache_entries",
                    "gauge",
                    "Prefix KV caches held.",
                    self.prefix_cache_size(),
                ),
            )
            for name, kind, help_text, value in simple:
                _family(lines, name, kind, help_text)
                lines.append(f"{name} {_num(value)}")
        return "\n".join(lines) + "\n"


def _family(lines: list[str], name: str, kind: str, help_text: str) -> None:
    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]

"""``anna-embed serve``: served vectors equal ``anna-embed encode``, the OpenAI client works against it,
every malformed request gets an OpenAI-shaped error, and the batcher, prefix cache, queue bound, auth and
SIGTERM behave as documented. Servers run on random loopback ports; models are tiny and random."""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from anna_embed.cli import COMMANDS, main  # noqa: E402
from anna_embed.config import ConfigError  # noqa: E402
from anna_embed.model.config import EmbedderConfig  # noqa: E402
from anna_embed.model.embedder import Embedder  # noqa: E402
from anna_embed.serve.api import API_KEYS_ENV, read_api_keys  # noqa: E402
from anna_embed.serve.app import create_app  # noqa: E402
from anna_embed.serve.batcher import Batcher, Job, PrefixCache, PromptSpec, plan_batches  # noqa: E402
from anna_embed.serve.cli import add_cli, bind, load_config  # noqa: E402
from anna_embed.serve.config import ServeConfig  # noqa: E402
from anna_embed.serve.metrics import ServeMetrics  # noqa: E402
from anna_embed.shots import sample_examples  # noqa: E402

TEXTS = [
    "A man is playing a guitar on the stage.",
    "Cats",
    "The stock market fell sharply today after the report, and analysts were surprised by the drop.",
    "Someone plays an instrument for the crowd.",
    "birds sing in the morning",
]
POOL = [
    ("Who wrote Hamlet?", "Shakespeare did."),
    ("The capital of France?", "Paris is the capital of France."),
    ("Do cats and dogs make good pets?", "Cats and dogs are common pets."),
    ("Did the stock market fall?", "The stock market fell sharply today."),
]
LONG = " ".join(["the stock market fell sharply today after the report"] * 20)
NAME = "tiny"


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ---------------------------------------------------------------------- models and servers
@pytest.fixture(scope="module")
def decoder_folder(tmp_path_factory) -> Path:
    """A tiny random llama with a short budget (64 tokens) and room for three clipped examples."""
    from conftest import build_backbone, build_tokenizer

    tok = build_tokenizer()
    cfg = EmbedderConfig(
        kind="decoder", max_length=64, shot_max_tokens=16, examples_max_length=128, base_model="tiny-llama"
    )
    emb = Embedder(build_backbone("llama", len(tok)), tok, cfg, name="tiny-llama")
    return emb.save(tmp_path_factory.mktemp("decoder") / "model")


@pytest.fixture(scope="module")
def minilm_folder(tmp_path_factory) -> Path:
    """A tiny random BERT laid out as all-MiniLM-L6-v2 (Transformer -> mean Pooling -> Normalize)."""
    from conftest import build_bert_folder

    return build_bert_folder(tmp_path_factory.mktemp("minilm"), TEXTS, max_seq_length=64)


@contextmanager
def running(app, *, wait_ready: bool = True) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a random loopback port in a thread; yields the base URL."""
    import uvicorn

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 60
    while not (server.started and (not wait_ready or get(url + "/health")[0] == 200)):
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(30)


def make_app(folder: Path, *, keys: tuple[str, ...] = (), wrap: Callable | None = None, **cfg):
    """The app over ``folder`` loaded as ``anna-embed encode`` loads it; ``wrap`` may patch the embedder."""

    def load() -> Embedder:
        emb = Embedder.from_pretrained(folder, device="cpu")
        return wrap(emb) if wrap else emb

    return create_app(ServeConfig(model=str(folder), served_name=NAME, **cfg), load=load, api_keys=keys)


def request(method: str, url: str, body: bytes | None = None, headers: dict | None = None):
    """``(status, headers (case-insensitive), JSON or text)``; error statuses are returned, not raised."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status, head, raw = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        status, head, raw = err.code, err.headers, err.read()
    try:
        return status, head, json.loads(raw)
    except ValueError:
        return status, head, raw.decode()


def get(url: str, headers: dict | None = None):
    return request("GET", url, headers=headers)


def post(url: str, payload, headers: dict | None = None):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return request(
        "POST", url + "/v1/embeddings", body, {"Content-Type": "application/json", **(headers or {})}
    )


def client(url: str, key: str = "unused"):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


def encode_cli(folder: Path, tmp_path: Path, texts: list[str], *args: str) -> np.ndarray:
    src, out = tmp_path / "in.txt", tmp_path / "out.npy"
    src.write_text("".join(t + "\n" for t in texts))
    assert main(["encode", "--model", str(folder), "--input", str(src), "--output", str(out), *args]) == 0
    return np.load(out)


def vectors(response) -> np.ndarray:
    """The response's vectors in input order (the client decodes base64 only when it chose it itself)."""
    rows = [d.embedding for d in sorted(response.data, key=lambda d: d.index)]
    rows = [np.frombuffer(base64.b64decode(r), dtype="<f4") if isinstance(r, str) else r for r in rows]
    return np.array(rows, dtype=np.float32)


@pytest.fixture(scope="module")
def decoder_url(decoder_folder) -> Iterator[str]:
    with running(make_app(decoder_folder, max_body_bytes=20_000, max_inputs=8, truncate=True)) as url:
        yield url


# ---------------------------------------------------------------------- server == encode
def test_decoder_with_examples_equals_encode_cli(decoder_folder, decoder_url, tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"query": q, "response": r}) + "\n" for q, r in POOL))
    drawn = sample_examples(POOL, 3, task="SciFact")  # what `encode --shots 3` draws from the pool
    expect_q = encode_cli(
        decoder_folder, tmp_path, TEXTS, "--task", "SciFact", "--shots", "3", "--examples", str(pool)
    )
    expect_d = encode_cli(decoder_folder, tmp_path, TEXTS, "--task", "SciFact", "--role", "document")
    api = client(decoder_url)
    extra = {"task": "SciFact", "role": "query", "examples": [list(e) for e in drawn]}
    for fmt in ("float", "base64"):
        got = api.embeddings.create(model=NAME, input=TEXTS, encoding_format=fmt, extra_body=extra)
        assert _cos(vectors(got), expect_q).min() >= 0.9999
    got_d = api.embeddings.create(model=NAME, input=TEXTS, extra_body={"task": "SciFact", "role": "document"})
    assert _cos(vectors(got_d), expect_d).min() >= 0.9999
    # usage counts the prompt tokens the model saw: the few-shot prefix + text + EOS, per input
    emb = Embedder.from_pretrained(decoder_folder, device="cpu")
    ids, _, _ = emb.prompt_ids(TEXTS, prefix=emb.query_prefix("SciFact", examples=drawn))
    assert got.usage.prompt_tokens == got.usage.total_tokens == sum(map(len, ids))
    one = api.embeddings.create(model=NAME, input=TEXTS[0], encoding_format="float")  # a bare string
    assert len(one.data) == 1 and len(one.data[0].embedding) == emb.dimension


def test_minilm_style_encoder_equals_encode_cli(minilm_folder, tmp_path):
    expect = encode_cli(minilm_folder, tmp_path, TEXTS)
    expect_8 = encode_cli(minilm_folder, tmp_path, TEXTS, "--dimensions", "8")
    with running(make_app(minilm_folder)) as url:
        api = client(url)
        got = api.embeddings.create(model=NAME, input=TEXTS, extra_body={"task": "STSBenchmark"})
        assert _cos(vectors(got), expect).min() >= 0.9999
        got_8 = api.embeddings.create(model=NAME, input=TEXTS, dimensions=8, encoding_format="float")
    v8 = vectors(got_8)
    assert v8.shape == (len(TEXTS), 8) and np.allclose(np.linalg.norm(v8, axis=1), 1, atol=1e-5)
    assert _cos(v8, expect_8).min() >= 0.9999


def test_base64_is_little_endian_float32(decoder_url):
    status, _, body = post(decoder_url, {"model": NAME, "input": ["Cats"], "encoding_format": "base64"})
    _, _, plain = post(decoder_url, {"model": NAME, "input": ["Cats"]})
    assert status == 200
    decoded = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, plain["data"][0]["embedding"], atol=1e-6)


# ---------------------------------------------------------------------- batcher and prefix cache
def _prompts() -> list[PromptSpec]:
    return [
        PromptSpec("query", "SciFact", examples=tuple(POOL[:2])),
        PromptSpec("query", "SciFact", examples=tuple(POOL[:2])),
        PromptSpec("query", "STSBenchmark"),
        PromptSpec("document", "SciFact"),
        PromptSpec("query", None, instruction="Find related sentences.", examples=tuple(POOL[2:])),
        PromptSpec("document", "STSBenchmark", examples=tuple(POOL[:1])),
    ]


def _library(emb: Embedder, prompt: PromptSpec, texts: list[str]) -> np.ndarray:
    kw = {"task": prompt.task, "instruction": prompt.instruction, "examples": prompt.examples}
    encode = emb.encode_queries if prompt.role == "query" else emb.encode_documents
    return encode(texts, **kw)


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_one_batched_round_equals_one_by_one_library_calls(decoder_folder, prefix_cache):
    emb = Embedder.from_pretrained(decoder_folder, device="cpu")
    metrics = ServeMetrics()
    batcher = Batcher(emb, max_batch_tokens=100_000, prefix_cache=prefix_cache, metrics=metrics)
    jobs = [Job(TEXTS[i:] + TEXTS[:i], p) for i, p in enumerate(_prompts())]
    futures = [batcher.submit(j) for j in jobs]  # all queued before the worker starts: one round
    batcher.start()
    results = [f.result(timeout=60) for f in futures]
    for job, res in zip(jobs, results, strict=True):
        assert _cos(res.vectors, _library(emb, job.prompt, job.texts)).min() >= 0.9999
    groups = 5 if prefix_cache else 1  # four distinct prefixes plus raw documents, vs one plain group
    assert metrics.batch_size.n == groups  # each group fit the budget: one forward pass per group
    total = sum(res.prompt_tokens for res in results)
    assert (metrics.forward_tokens < total) if prefix_cache else (metrics.forward_tokens == total)
    # the two identical SciFact prompts shared one prefix run; a later request reuses it
    assert (metrics.prefix_misses, metrics.prefix_hits) == ((4, 0) if prefix_cache else (0, 0))
    later = batcher.submit(Job(["Cats"], _prompts()[0])).result(timeout=60)
    batcher.stop(10)
    assert (metrics.prefix_misses, metrics.prefix_hits) == ((4, 1) if prefix_cache else (0, 0))
    assert len(batcher.prefixes) == (4 if prefix_cache else 0)
    assert (
        _cos(later.vectors, results[0].vectors[TEXTS.index("Cats") : TEXTS.index("Cats") + 1]).min() > 0.9999
    )


def test_token_budget_splits_batches_longest_first(decoder_folder):
    emb = Embedder.from_pretrained(decoder_folder, device="cpu")
    metrics = ServeMetrics()
    batcher = Batcher(emb, max_batch_tokens=40, metrics=metrics)
    job = Job(TEXTS)
    batcher.submit(job)
    batcher.start()
    res = job.future.result(timeout=60)
    batcher.stop(10)
    assert metrics.batch_size.n > 1
    assert _cos(res.vectors, emb.encode(TEXTS)).min() >= 0.9999


def test_plan_batches_sorts_by_length_and_respects_the_budget():
    lengths = [3, 10, 4, 9, 50, 1]
    batches = plan_batches(lengths, 20)
    assert batches == [[4], [1, 3], [2, 0, 5]]  # 50 runs alone; 2 x 10 = 20; 3 x 4 = 12
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths))) and [lengths[i] for i in flat] == sorted(lengths)[::-1]
    assert all(len(b) * lengths[b[0]] <= 20 for b in batches if len(b) > 1)


def test_prefix_cache_is_a_bounded_lru():
    runs, lookups = [], []
    cache = PrefixCache(2, lambda key: runs.append(key) or key, lookups.append)
    for key in [(1,), (2,), (1,), (3,), (2,)]:
        assert cache.get(key) == key
    assert runs == [(1,), (2,), (3,), (2,)]  # (2,) was least recently used when (3,) came in
    assert lookups == [False, False, True, False, False]
    assert len(cache) == 2 and (1,) not in cache and (3,) in cache


# ---------------------------------------------------------------------- errors and limits
MALFORMED = [
    (b"{not json", 400, "invalid_json", None),
    (b"", 400, "invalid_json", None),
    (b"[1, 2]", 400, "invalid_type", None),
    ({"input": "x"}, 400, "missing_required_parameter", "model"),
    ({"model": NAME, "input": 5}, 400, "invalid_type", "input"),
    ({"model": NAME, "input": [1, 2, 3]}, 400, "invalid_type", "input"),
    ({"model": NAME, "input": ["ok", None]}, 400, "invalid_type", "input"),
    ({"model": NAME, "input": ""}, 400, "empty_input", "input[0]"),
    ({"model": NAME, "input": []}, 400, "empty_input", "input"),
    ({"model": NAME, "input": ["a", ""]}, 400, "empty_input", "input[1]"),
    ({"model": NAME, "input": ["a"] * 9}, 400, "too_many_inputs", "input"),
    ({"model": "gpt-4", "input": "x"}, 404, "model_not_found", "model"),
    ({"model": NAME, "input": "x", "task": "SciFac"}, 400, "unknown_task", "task"),
    ({"model": NAME, "input": "x", "encoding_format": "hex"}, 400, "invalid_value", "encoding_format"),
    ({"model": NAME, "input": "x", "dimensions": 0}, 400, "invalid_value", "dimensions"),
    ({"model": NAME, "input": "x", "dimensions": 33}, 400, "invalid_value", "dimensions"),
    ({"model": NAME, "input": "x", "dimensions": "8"}, 400, "invalid_value", "dimensions"),
    ({"model": NAME, "input": "x", "role": "passage"}, 400, "invalid_value", "role"),
    ({"model": NAME, "input": "x", "examples": [["only one"]]}, 400, "invalid_type", "examples[0]"),
    ({"model": NAME, "input": "x", "instructions": "typo"}, 400, "unknown_parameter", "instructions"),
    (
        {"model": NAME, "input": "x", "task": "SciFact", "examples": [["q", "d"]] * 33},
        400,
        "too_many_examples",
        "examples",
    ),
    (
        {"model": NAME, "input": "x", "task": "SciFact", "role": "document", "examples": [["q", "d"]]},
        400,
        "invalid_value",
        None,
    ),
    ({"model": NAME, "input": ["ok", LONG], "truncate": False}, 400, "input_too_long", "input[1]"),
    (b"x" * 20_001, 413, "request_too_large", None),
]


@pytest.mark.parametrize(("payload", "status", "code", "param"), MALFORMED)
def test_malformed_requests_get_openai_shaped_errors(decoder_url, payload, status, code, param):
    got, _, body = post(decoder_url, payload)
    assert got == status
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code and body["error"]["param"] == param and body["error"]["message"]
    if code == "unknown_task":
        assert "SciFact" in body["error"]["message"]  # names the close match
    assert post(decoder_url, {"model": NAME, "input": "still alive"})[0] == 200  # the worker survived


def test_long_inputs_are_cut_by_default_and_chunked_bodies_are_limited(decoder_url, decoder_folder):
    status, _, body = post(decoder_url, {"model": NAME, "input": [LONG]})
    assert status == 200 and body["usage"]["prompt_tokens"] == 64  # cut to max_length, as encode does
    conn = http.client.HTTPConnection(*decoder_url.removeprefix("http://").split(":"), timeout=30)
    chunks = (b"x" * 5000 for _ in range(5))  # no Content-Length: the limit counts streamed bytes
    conn.request("POST", "/v1/embeddings", body=chunks, encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["error"]["code"] == "request_too_large"
    status, _, body = get(decoder_url + "/nowhere")
    assert status == 404 and body["error"]["code"] == "not_found"


def _gated(gate: threading.Event, entered: threading.Event, rows: list[int]) -> Callable:
    """Patch an embedder so every forward pass records its rows and waits for ``gate``."""

    def wrap(emb: Embedder) -> Embedder:
        forward = emb.embed_ids

        def embed_ids(ids):
            rows.append(len(ids))
            entered.set()
            assert gate.wait(30)
            return forward(ids)

        emb.embed_ids = embed_ids
        return emb

    return wrap


def _metric(url: str, name: str) -> float:
    text = get(url + "/metrics")[2]
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def _in_thread(fn: Callable, *args) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    thread.start()
    return thread, out


def test_full_queue_answers_503_with_retry_after(minilm_folder):
    gate, entered, rows = threading.Event(), threading.Event(), []
    app = make_app(
        minilm_folder, max_queue=1, max_wait_ms=0, retry_after_s=2, wrap=_gated(gate, entered, rows)
    )
    with running(app) as url:
        first, first_out = _in_thread(post, url, {"model": NAME, "input": ["cats"]})
        assert entered.wait(30)  # the worker is busy with the first request
        second, second_out = _in_thread(post, url, {"model": NAME, "input": ["birds sing"]})
        _wait_for(lambda: _metric(url, "anna_embed_queue_depth") == 1)
        status, headers, body = post(url, {"model": NAME, "input": ["the crowd"]})
        assert status == 503 and headers["Retry-After"] == "2"
        assert body["error"]["type"] == "server_error" and body["error"]["code"] == "overloaded"
        gate.set()
        first.join(30), second.join(30)
        assert first_out[0][0] == 200 and second_out[0][0] == 200
        assert 'anna_embed_requests_total{status="503"} 1' in get(url + "/metrics")[2]


def test_a_request_whose_client_left_is_skipped(minilm_folder):
    gate, entered, rows = threading.Event(), threading.Event(), []
    with running(make_app(minilm_folder, max_wait_ms=0, wrap=_gated(gate, entered, rows))) as url:
        first, first_out = _in_thread(post, url, {"model": NAME, "input": ["cats"]})
        assert entered.wait(30)
        body = json.dumps({"model": NAME, "input": ["a", "b", "c"]}).encode()
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall(
                b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            _wait_for(lambda: _metric(url, "anna_embed_queue_depth") == 1)
        _wait_for(lambda: 'status="499"} 1' in get(url + "/metrics")[2])
        gate.set()
        first.join(30)
        assert first_out[0][0] == 200
        assert post(url, {"model": NAME, "input": ["x", "y"]})[0] == 200
        assert rows == [1, 2]  # the three texts of the departed client never reached the model


# ---------------------------------------------------------------------- health, metrics, auth
def test_health_is_503_until_the_model_is_loaded(minilm_folder):
    loaded = threading.Event()

    def slow(emb: Embedder) -> Embedder:
        assert loaded.wait(30)
        return emb

    with running(make_app(minilm_folder, wrap=slow), wait_ready=False) as url:
        status, headers, body = get(url + "/health")
        assert status == 503 and body["error"]["code"] == "model_loading" and "Retry-After" in headers
        assert post(url, {"model": NAME, "input": "x"})[0] == 503
        loaded.set()
        _wait_for(lambda: get(url + "/health")[0] == 200)
        assert get(url + "/health")[2] == {"status": "ok", "model": NAME}


def test_a_model_that_fails_to_load_is_reported_and_stops_the_server():
    fatal: list[BaseException] = []

    def load() -> Embedder:
        raise FileNotFoundError("no such model folder")

    app = create_app(ServeConfig(model="missing"), load=load, on_fatal=fatal.append)
    with running(app, wait_ready=False) as url:
        _wait_for(lambda: bool(fatal))
        status, _, body = get(url + "/health")
    assert status == 503 and body["error"]["code"] == "model_error"
    assert "no such model folder" in body["error"]["message"] and isinstance(fatal[0], FileNotFoundError)


def test_metrics_are_prometheus_text(decoder_folder):
    with running(make_app(decoder_folder)) as url:
        extra = {"task": "SciFact", "examples": [list(POOL[0])]}
        client(url).embeddings.create(model=NAME, input=TEXTS[:2], extra_body=extra)
        client(url).embeddings.create(model=NAME, input=TEXTS[2:], extra_body=extra)
        post(url, {"model": "nope", "input": "x"})
        status, headers, text = get(url + "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    for line in [
        'anna_embed_requests_total{status="200"} 2',
        'anna_embed_requests_total{status="404"} 1',
        'anna_embed_request_seconds_bucket{le="+Inf"} 3',
        "anna_embed_request_seconds_count 3",
        "anna_embed_texts_total 5",
        "anna_embed_batch_size_sum 5",
        "anna_embed_queue_depth 0",
        "anna_embed_prefix_cache_misses_total 1",
        "anna_embed_prefix_cache_hits_total 1",
        "anna_embed_prefix_cache_entries 1",
        "# TYPE anna_embed_request_seconds histogram",
    ]:
        assert line in text.splitlines(), line


def test_api_keys_from_file_and_env_with_the_openai_client(minilm_folder, tmp_path, monkeypatch, caplog):
    key_file = tmp_path / "keys.txt"
    key_file.write_text("# serving keys\nsk-file-123\n\n")
    monkeypatch.setenv(API_KEYS_ENV, "sk-env-456, ")
    keys = read_api_keys(key_file)
    assert keys == ["sk-env-456", "sk-file-123"]
    caplog.set_level("INFO")
    with running(make_app(minilm_folder, keys=tuple(keys))) as url:
        for key in keys:
            assert len(client(url, key).embeddings.create(model=NAME, input=["cats"]).data) == 1
        assert [m.id for m in client(url, keys[0]).models.list().data] == [NAME]
        with pytest.raises(openai.AuthenticationError):
            client(url, "sk-wrong").embeddings.create(model=NAME, input=["cats"])
        status, headers, body = post(url, {"model": NAME, "input": "cats"})  # no Authorization header
        assert status == 401 and body["error"]["code"] == "invalid_api_key" and headers["WWW-Authenticate"]
        assert post(url, {"model": NAME, "input": "cats"}, {"Authorization": f"Basic {keys[0]}"})[0] == 401
        assert get(url + "/metrics")[0] == 401 and get(url + "/v1/models")[0] == 401
        assert get(url + "/health")[0] == 200  # health stays open for load balancers
    assert "auth on (2 keys)" in caplog.text
    assert not any(k in caplog.text for k in keys)  # keys are never logged
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(ValueError, match="no API key"):
        read_api_keys(empty)


def test_without_keys_any_client_is_served(decoder_url):
    assert client(decoder_url, "anything").embeddings.create(model=NAME, input="x").usage.prompt_tokens > 0


# ---------------------------------------------------------------------- CLI and lifecycle
def test_bound_socket_says_tcp_so_answers_are_not_delayed():
    # asyncio disables Nagle's algorithm only on sockets whose protocol is TCP; a socket made without it
    # (socket.create_server) made every answer wait ~40 ms for the client's delayed ACK.
    with bind("127.0.0.1", 0) as sock:
        assert sock.proto == socket.IPPROTO_TCP and sock.getsockname()[1] > 0


def test_cli_verb_and_config_precedence(tmp_path):
    assert COMMANDS["serve"][0] == "anna_embed.serve.cli"
    toml = tmp_path / "serve.toml"
    toml.write_text('model = "from-file"\nport = 9000\nmax_queue = 7\nprefix_cache = false\n')
    parser = argparse.ArgumentParser()
    add_cli("serve", parser)
    args = parser.parse_args(["--config", str(toml), "--set", "max_queue=9", "--port", "0"])
    cfg = load_config(args)
    assert (cfg.model, cfg.port, cfg.max_queue, cfg.prefix_cache, cfg.host) == (
        "from-file",
        0,
        9,
        False,
        "127.0.0.1",
    )
    with pytest.raises(ValueError, match="--model is required"):
        load_config(parser.parse_args([]))
    with pytest.raises(ConfigError, match="max_queue"):
        load_config(parser.parse_args(["--model", "m", "--set", "max_queue=0"]))


def test_sigterm_finishes_in_flight_requests_and_exits_0(decoder_folder, tmp_path):
    key_file = tmp_path / "keys.txt"
    key_file.write_text("sk-secret-789\n")
    cmd = [sys.executable, "-m", "anna_embed.cli", "serve", "--model", str(decoder_folder), "--port", "0"]
    cmd += ["--api-key-file", str(key_file), "--set", "max_wait_ms=3000", "--set", f"served_name={NAME}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        while not lines or "ready at" not in lines[-1]:
            line = proc.stderr.readline()
            assert line, f"server exited early: {''.join(lines)}"
            lines.append(line)
        url = re.search(r"ready at (http://\S+?),", lines[-1]).group(1)
        auth = {"Authorization": "Bearer sk-secret-789"}
        inflight, out = _in_thread(post, url, {"model": NAME, "input": TEXTS}, auth)
        time.sleep(0.5)  # the request now waits in the worker's 3 s gathering window
        proc.send_signal(signal.SIGTERM)

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=1).close()
            except OSError:
                return True
            return False

        _wait_for(refused, timeout=10)  # no new connections ...
        assert inflight.is_alive()  # ... while the in-flight request is still being served
        inflight.join(60)
        assert out[0][0] == 200 and len(out[0][2]["data"]) == len(TEXTS)
        assert proc.wait(60) == 0
        lines += proc.stderr.readlines()
    finally:
        if proc.poll() is None:
            proc.kill()
    log = "".join(lines)
    assert (
        sum("ready at" in line for line in lines) == 1 and sum("stopped after" in line for line in lines) == 1
    )
    assert "sk-secret-789" not in log

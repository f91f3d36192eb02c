"""Load test of ``anna-embed serve`` against a baseline server on the same model, loopback only.

Baseline: a minimal FastAPI app that calls ``SentenceTransformer.encode`` once per request (a plain ``def``
endpoint, so FastAPI runs requests in its thread pool). infinity-emb would be the natural peer, but its
``pip install`` here would downgrade numpy, click and huggingface_hub in the shared virtualenv, so it is
not used.

Runs, in one process, every server as a subprocess on 127.0.0.1 (one at a time under load):

1. ``minilm``: all-MiniLM-L6-v2, anna-embed vs the baseline, interleaved, at concurrency 1, 8 and 32;
2. ``queue``: anna-embed with a small queue (``--queue-bound``), at a concurrency below and above it;
3. ``icl``: SmolLM2 queries with 3-shot prompts, anna-embed with the prefix cache on vs off;
4. ``--soak``: anna-embed on MiniLM at steady load for ``--soak-seconds`` (default 300): RSS growth, errors.

Every run is bounded by ``--requests`` and ``--duration`` (whichever comes first). Reported: texts/s,
tokens/s (the input texts' tokens by the model's tokenizer, prompts excluded, the same count for every
server), p50/p95/p99 latency, and errors by HTTP status. The goals of issue 12 are printed at the end.

    python benchmarks/serve_load.py                      # the full comparison (minutes)
    python benchmarks/serve_load.py --quick              # a smoke run (seconds of load per run)
    python benchmarks/serve_load.py --soak               # adds the 5-minute soak
    python benchmarks/serve_load.py --only icl --smol outputs/demo/train/model
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydantic import BaseModel

DEMO = Path(__file__).resolve().parents[1] / "src" / "anna_embed" / "demo_data" / "train" / "qnli.jsonl"
HOST = "127.0.0.1"


# ---------------------------------------------------------------------- data
def load_pairs(path: Path) -> list[tuple[str, str]]:
    pairs = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            if isinstance(rec.get("query"), str) and isinstance(rec.get("positive"), str):
                pairs.append((rec["query"], rec["positive"]))
    if len(pairs) < 8:
        raise SystemExit(f"{path}: need at least 8 query/positive pairs")
    return pairs


def token_counts(model: str, texts: list[str]) -> list[int]:
    from transformers import AutoTokenizer

    from anna_embed.model.weights import resolve

    tok = AutoTokenizer.from_pretrained(resolve(model))
    return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]


# ---------------------------------------------------------------------- servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class Server:
    label: str
    url: str
    proc: subprocess.Popen

    def rss_mib(self) -> float:
        """Resident memory of the server process (Linux ``/proc``)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start(label: str, cmd: list[str], port: int, threads: int, timeout: float = 600) -> Server:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{label}: server exited with {proc.returncode}: {' '.join(cmd)}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return Server(label, url, proc)
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"{label}: not ready after {timeout:.0f} s")


def ours(model: str, threads: int, *settings: str) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "anna_embed.cli", "serve", "--model", model, "--port", str(port)]
    cmd += ["--set", "served_name=bench"]
    for item in settings:
        cmd += ["--set", item]
    label = "anna-embed" + (f" ({', '.join(settings)})" if settings else "")
    return start(label, cmd, port, threads)


def baseline(model: str, threads: int) -> Server:
    port = free_port()
    cmd = [sys.executable, __file__, "baseline", "--model", model, "--port", str(port)]
    return start("baseline (FastAPI + SentenceTransformer.encode)", cmd, port, threads)


class BaselineBody(BaseModel):
    """The baseline's request (module level: FastAPI resolves the endpoint's annotations here)."""

    model: str
    input: str | list[str]


def run_baseline(model: str, port: int) -> None:
    """The baseline server: one ``SentenceTransformer.encode`` call per request."""
    import uvicorn
    from fastapi import FastAPI
    from sentence_transformers import SentenceTransformer

    from anna_embed.model.weights import resolve

    st = SentenceTransformer(str(resolve(model)), device="cpu")
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/embeddings")
    def embeddings(body: BaselineBody) -> dict:
        texts = [body.input] if isinstance(body.input, str) else body.input
        vecs = st.encode(texts, normalize_embeddings=True)
        data = [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vecs)]
        return {"object": "list", "data": data, "model": body.model, "usage": {"prompt_tokens": 0}}

    uvicorn.run(app, host=HOST, port=port, log_level="warning")


# ---------------------------------------------------------------------- load
@dataclass
class Result:
    server: str
    scenario: str
    concurrency: int
    requests: int = 0
    texts: int = 0
    tokens: int = 0
    seconds: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if s != "200")

    def pct(self, q: float) -> float:
        lat = sorted(self.latencies_ms)
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")

    def texts_per_s(self) -> float:
        return self.texts / self.seconds if self.seconds else 0.0

    def row(self) -> str:
        errs = ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items()) if s != "200") or "0"
        return (
            f"  {self.server[:46]:<46} c={self.concurrency:<3} {self.requests:>6} req "
            f"{self.texts_per_s():8.1f} texts/s {self.tokens / max(self.seconds, 1e-9):9.0f} tok/s  "
            f"p50 {self.pct(0.50):7.1f}  p95 {self.pct(0.95):7.1f}  p99 {self.pct(0.99):7.1f} ms  "
            f"errors {errs}"
        )


def load(
    server: Server,
    scenario: str,
    payloads: list[tuple[dict, int, int]],
    *,
    concurrency: int,
    max_requests: int,
    duration: float,
) -> Result:
    """``concurrency`` threads with keep-alive connections send ``payloads`` round-robin until
    ``max_requests`` requests were sent or ``duration`` seconds passed. A payload is ``(body, texts,
    tokens)``."""
    res = Result(server.label, scenario, concurrency)
    lock, counter = threading.Lock(), iter(range(max_requests))
    port = int(server.url.rsplit(":", 1)[1])
    stop_at = time.monotonic() + duration

    def worker() -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=120)
        while time.monotonic() < stop_at:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            body, n_texts, n_tokens = payloads[i % len(payloads)]
            start = time.perf_counter()
            try:
                conn.request("POST", "/v1/embeddings", json.dumps(body), {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                status = str(resp.status)
            except (OSError, http.client.HTTPException) as err:
                status = f"conn:{type(err).__name__}"
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=120)
            ms = (time.perf_counter() - start) * 1000
            with lock:
                res.requests += 1
                res.statuses[status] = res.statuses.get(status, 0) + 1
                if status == "200":
                    res.texts += n_texts
                    res.tokens += n_tokens
                    res.latencies_ms.append(ms)
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    res.seconds = time.perf_counter() - t0
    return res


def warm(server: Server, payloads: list[tuple[dict, int, int]]) -> None:
    load(server, "warm-up", payloads, concurrency=2, max_requests=8, duration=30)


# ---------------------------------------------------------------------- scenarios
def payloads_for(texts: list[str], tokens: list[int], per_request: int, extra: dict | None = None):
    out = []
    for start in range(0, len(texts) - per_request + 1, per_request):
        chunk = texts[start : start + per_request]
        body = {"model": "bench", "input": chunk, "encoding_format": "float", **(extra or {})}
        out.append((body, len(chunk), sum(tokens[start : start + per_request])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s / 60 requests per run")
    parser.add_argument("--only", default="minilm,queue,icl", help="comma-separated scenarios")
    parser.add_argument("--requests", type=int, default=3000, help="most requests per run")
    parser.add_argument("--duration", type=float, default=30.0, help="most seconds per run")
    parser.add_argument("--per-request", type=int, default=1, help="texts per request")
    parser.add_argument("--minilm", default="all-minilm-l6-v2")
    parser.add_argument("--smol", default="smollm2-135m-instruct", help="decoder for the 3-shot runs")
    parser.add_argument("--queue-bound", type=int, default=8, help="max_queue of the 'queue' scenario")
    parser.add_argument("--threads", type=int, default=2, help="OMP threads of each server")
    parser.add_argument("--soak", action="store_true", help="also run the soak")
    parser.add_argument("--soak-seconds", type=float, default=300.0)
    parser.add_argument("--json", type=Path, help="write every result here")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.duration = min(args.requests, 60), min(args.duration, 2.0)
        args.soak_seconds = min(args.soak_seconds, 10.0)
    scenarios = set(args.only.split(","))
    pairs = load_pairs(DEMO)
    queries = [q for q, _ in pairs]
    bound = {"max_requests": args.requests, "duration": args.duration}
    results: list[Result] = []
    goals: list[tuple[str, str]] = []

    def report(res: Result) -> Result:
        print(res.row(), flush=True)
        results.append(res)
        return res

    if scenarios & {"minilm", "queue"} or args.soak:
        tok = token_counts(args.minilm, queries)
        mini = payloads_for(queries, tok, args.per_request)
    if "minilm" in scenarios:
        print(
            f"\n== {args.minilm}: anna-embed vs baseline, {args.per_request} text(s) per request", flush=True
        )
        a, b = ours(args.minilm, args.threads), baseline(args.minilm, args.threads)
        try:
            warm(a, mini)
            warm(b, mini)
            by_c: dict[int, tuple[Result, Result]] = {}
            for c in (1, 8, 32):
                ra = report(load(a, "minilm", mini, concurrency=c, **bound))
                rb = report(load(b, "minilm", mini, concurrency=c, **bound))
                by_c[c] = (ra, rb)
        finally:
            a.stop()
            b.stop()
        ra, rb = by_c[32]
        if rb.texts and not rb.errors:
            ratio = ra.texts_per_s() / rb.texts_per_s()
            goals.append(
                (f"MiniLM throughput at c=32 >= 1.0x baseline: x{ratio:.2f}", _verdict(ratio >= 1.0))
            )
        else:
            goals.append((f"MiniLM throughput vs baseline: the baseline failed ({rb.statuses})", "FAIL"))
        ours_clean = all(ra.errors == 0 for ra, _ in by_c.values())
        goals.append(("0 errors below the queue bound (max_queue 256, c <= 32)", _verdict(ours_clean)))

    if "queue" in scenarios:
        q = args.queue_bound
        print(f"\n== {args.minilm}: anna-embed with max_queue={q}, below and above the bound", flush=True)
        s = ours(args.minilm, args.threads, f"max_queue={q}")
        try:
            warm(s, mini)
            below = report(load(s, f"queue<={q}", mini, concurrency=q, **bound))
            above = report(load(s, f"queue>{q}", mini, concurrency=4 * q, **bound))
        finally:
            s.stop()
        goals.append((f"0 errors at c={q} (= the bound)", _verdict(below.errors == 0)))
        only_503 = all(st in ("200", "503") for st in above.statuses)
        n503 = above.statuses.get("503", 0)
        goals.append((f"only 503s at c={4 * q} (> the bound): {n503} x 503", _verdict(only_503)))

    if "icl" in scenarios:
        shots = [list(p) for p in pairs[:3]]
        icl_queries = queries[3:]
        tok = token_counts(args.smol, icl_queries)
        icl = payloads_for(icl_queries, tok, args.per_request, {"task": "QNLI", "examples": shots})
        print(f"\n== {args.smol}: 3-shot QNLI queries, prefix cache on vs off", flush=True)
        rates = {}
        for setting in ("prefix_cache=true", "prefix_cache=false"):
            s = ours(args.smol, args.threads, setting)
            try:
                warm(s, icl)
                runs = [report(load(s, f"icl {setting}", icl, concurrency=c, **bound)) for c in (8, 32)]
            finally:
                s.stop()
            rates[setting] = runs[-1].texts_per_s()
        ratio = rates["prefix_cache=true"] / max(rates["prefix_cache=false"], 1e-9)
        goals.append(
            (f"SmolLM2 3-shot, c=32: prefix cache on >= 3x off: x{ratio:.2f}", _verdict(ratio >= 3.0))
        )

    if args.soak:
        print(f"\n== soak: {args.minilm}, c=8, {args.soak_seconds:.0f} s", flush=True)
        s = ours(args.minilm, args.threads)
        try:
            warm(s, mini)
            load(
                s,
                "soak warm-up",
                mini,
                concurrency=8,
                max_requests=10**9,
                duration=min(30.0, args.soak_seconds / 10),
            )
            rss0 = s.rss_mib()
            soak = report(
                load(s, "soak", mini, concurrency=8, max_requests=10**9, duration=args.soak_seconds)
            )
            rss1 = s.rss_mib()
        finally:
            s.stop()
        growth = (rss1 - rss0) / rss0 * 100
        print(f"  RSS {rss0:.0f} MiB -> {rss1:.0f} MiB ({growth:+.1f}%), errors {soak.errors}")
        goals.append(
            (f"soak RSS growth < 10%: {growth:+.1f}% ({rss0:.0f} -> {rss1:.0f} MiB)", _verdict(growth < 10))
        )
        goals.append((f"soak errors: {soak.errors}", _verdict(soak.errors == 0)))

    print("\ngoals (issue 12):" + (" [--quick: too short to be conclusive]" if args.quick else ""))
    for text, verdict in goals:
        print(f"  {verdict:<4} {text}")
    if args.json:
        args.json.write_text(json.dumps([{**asdict(r), "latencies_ms": None} for r in results], indent=2))


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "baseline":
        sub = argparse.ArgumentParser()
        sub.add_argument("baseline")
        sub.add_argument("--model", required=True)
        sub.add_argument("--port", type=int, required=True)
        ns = sub.parse_args()
        run_baseline(ns.model, ns.port)
    else:
        main()

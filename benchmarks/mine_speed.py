"""Mining speed: candidate search vs corpus size (exact and approximate faiss indexes) and teacher cost.

Part 1 builds each index over N synthetic unit vectors (clustered Gaussians, dim 384 like MiniLM) and
times the build and a top-k search for 1,000 queries; recall@k of the approximate indexes is measured
against the exact one. Part 2 times the teachers on real SciFact text: the retriever per 1,000 queries
and per 1,000 documents, each reranker per 1,000 (query, document) pairs, extrapolated from a sample of
SciFact claims with their relevant abstract and 7 BM25 candidates, on which each reranker's MRR of the
relevant abstract is reported too.

Usage:
    OMP_NUM_THREADS=2 nice -n 10 .venv/bin/python benchmarks/mine_speed.py \
        --sizes 10000 100000 1000000 --out docs/mining/mine_speed.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np

from anna_embed.mine.config import MineConfig
from anna_embed.mine.search import build_index

logger = logging.getLogger("mine_speed")
SCIFACT = Path("/work/shared/data/mteb/SciFact")
#: Index variants timed at each size (MineConfig fields).
VARIANTS: list[tuple[str, dict[str, int]]] = [
    ("flat", {}),
    ("ivf", {"ivf_nprobe": 16}),
    ("ivf", {"ivf_nprobe": 64}),
    ("hnsw", {"ef_search": 128}),
]


def synthetic(n: int, dim: int, seed: int) -> np.ndarray:
    """``[n, dim]`` unit vectors around 1,000 random centres (streamed in chunks to bound memory)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        x = centres[rng.integers(1000, size=m)] + 0.7 * rng.normal(size=(m, dim)).astype(np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def _bench_variants(d_emb: np.ndarray, q_emb: np.ndarray, *, k: int, hnsw_max: int, data: str) -> list[dict]:
    """Build every index variant over ``d_emb``, search ``q_emb``; recall@k against the flat index."""
    n, rows, exact = len(d_emb), [], None
    for kind, options in VARIANTS:
        if kind == "hnsw" and n > hnsw_max:
            logger.info("skip hnsw at %d (> --hnsw-max %d)", n, hnsw_max)
            continue
        t = time.perf_counter()
        index = build_index(d_emb, MineConfig(index=kind, **options))
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        _, ids = index.search(q_emb, k)
        search_s = time.perf_counter() - t
        if kind == "flat":
            exact = ids
        recall = float(np.mean([len(set(a) & set(e)) / k for a, e in zip(ids, exact, strict=True)]))
        row = {
            "data": data,
            "n": n,
            "index": kind + "".join(f" {key}={value}" for key, value in options.items()),
            "build_s": round(build_s, 3),
            "search_s_per_1k_queries": round(search_s * 1000 / len(q_emb), 3),
            "recall_at_k_vs_exact": round(recall, 4),
        }
        logger.info("%s", row)
        rows.append(row)
        del index
    return rows


def bench_search(sizes: list[int], *, dim: int, k: int, n_queries: int, hnsw_max: int) -> list[dict]:
    """Synthetic corpora of each size; queries are noisy copies of random documents."""
    rows = []
    for n in sizes:
        d_emb = synthetic(n, dim, seed=n)
        rng = np.random.default_rng(1)
        q_emb = d_emb[rng.choice(n, n_queries, replace=False)] + 0.3 * rng.normal(size=(n_queries, dim))
        q_emb = (q_emb / np.linalg.norm(q_emb, axis=1, keepdims=True)).astype(np.float32)
        rows += _bench_variants(d_emb, q_emb, k=k, hnsw_max=hnsw_max, data="synthetic")
    return rows


def bench_real(shards: list[Path], *, k: int, n_queries: int) -> list[dict]:
    """Real embeddings (e.g. a mining run's cached corpus shards); queries: a seeded sample of them."""
    d_emb = np.concatenate([np.load(p) for p in sorted(shards)]).astype(np.float32)
    rng = np.random.default_rng(1)
    q_emb = d_emb[rng.choice(len(d_emb), min(n_queries, len(d_emb)), replace=False)]
    return _bench_variants(d_emb, q_emb, k=k, hnsw_max=len(d_emb), data=f"real: {shards[0].parent}")


def _judged_pairs(n_queries: int, n_candidates: int) -> tuple[list[str], list[str], int]:
    """SciFact train claims, each with its first relevant abstract then its top BM25 non-relevant ones.

    Returns flat ``(queries, documents, group)``: every ``group`` consecutive pairs share a query and the
    first of them is the relevant one. BM25 picks the candidates, so no teacher chose its own test.
    """
    from anna_embed.beir import document_text
    from anna_embed.convert import beir_records
    from anna_embed.io import read_jsonl
    from anna_embed.mine.search import bm25_candidates

    records = list(
        beir_records(
            SCIFACT / "corpus.jsonl",
            SCIFACT / "queries_train.jsonl",
            SCIFACT / "qrels" / "train.tsv",
            task="SciFact",
        )
    )[:n_queries]
    docs = [document_text(r) for r in read_jsonl(SCIFACT / "corpus.jsonl")]
    ranked = bm25_candidates([r["query"] for r in records], docs, n_candidates + 8)
    queries, documents = [], []
    for rec, row in zip(records, ranked, strict=True):
        negatives = [docs[i] for i in row if i >= 0 and docs[i] not in rec["positive"]][:n_candidates]
        if len(negatives) < n_candidates:
            continue  # too few lexical matches for a full group
        queries += [rec["query"]] * (1 + n_candidates)
        documents += [rec["positive"][0], *negatives]
    return queries, documents, 1 + n_candidates


def _mrr(scores: np.ndarray, group: int) -> float:
    """Mean reciprocal rank of the first pair of each group (the relevant one)."""
    s = scores.reshape(-1, group)
    ranks = 1 + (s[:, 1:] > s[:, :1]).sum(axis=1)
    return float(np.mean(1.0 / ranks))


def _tiny_minilm_cross_encoder(folder: Path) -> str:
    """A MiniLM-L6-sized cross-encoder (the ms-marco-MiniLM-L-6-v2 architecture) with a random head.

    Only its speed means anything: no cross-encoder weights are available offline.
    """
    from sentence_transformers import CrossEncoder

    from anna_embed.model.weights import resolve

    model = CrossEncoder(str(resolve("all-minilm-l6-v2")), num_labels=1, device="cpu")
    model.save(str(folder))
    return str(folder)


#: Rerankers timed by default: label -> spec (``cross:RANDOM`` is replaced by a random-head MiniLM).
RERANKERS = {
    "bi:all-minilm-l6-v2": "bi:all-minilm-l6-v2",
    "bi:all-mpnet-base-v2": "bi:all-mpnet-base-v2",
    "bi:embeddinggemma-300m": "bi:embeddinggemma-300m",
    "cross: MiniLM-L6 shape, random head (speed only)": "cross:RANDOM",
    "judge:smollm2-135m-instruct": "judge:smollm2-135m-instruct",
}


def bench_teachers(
    n_queries: int, max_length: int, scratch: Path, only: list[str] | None = None
) -> list[dict]:
    """Seconds per 1,000 texts (retriever) or pairs (rerankers), and each reranker's MRR on the pairs."""
    from anna_embed.mine import teachers

    pair_q, pair_d, group = _judged_pairs(n_queries, n_candidates=7)
    queries, docs = pair_q[::group], list(dict.fromkeys(pair_d))
    rows = []

    def timed(label: str, unit: str, fn, n: int) -> np.ndarray:
        t = time.perf_counter()
        out = fn()
        secs = time.perf_counter() - t
        rows.append({"teacher": label, "unit": unit, "sample": n, "s_per_1k": round(secs * 1000 / n, 1)})
        logger.info("%s", rows[-1])
        return out

    retriever = teachers.load_retriever("all-minilm-l6-v2", max_length=max_length)
    retriever.encode_queries(queries[:2], task="SciFact")  # warm-up
    timed("retriever bi:all-minilm-l6-v2", "queries", lambda: retriever.encode_queries(queries), len(queries))
    timed("retriever bi:all-minilm-l6-v2", "documents", lambda: retriever.encode_documents(docs), len(docs))
    specs = {k: v for k, v in RERANKERS.items() if only is None or v in only or k in only}
    for label, spec in specs.items():
        if spec == "cross:RANDOM":
            spec = f"cross:{_tiny_minilm_cross_encoder(scratch)}"
        reranker = teachers.load_reranker(spec, max_length=max_length)
        reranker.score(pair_q[:2], pair_d[:2], task="SciFact")  # warm-up
        if isinstance(reranker, teachers.BiEncoder):
            reranker._cache.clear()  # time the encoding, not the cache
        scores = timed(
            f"reranker {label}",
            "pairs",
            lambda r=reranker: r.score(pair_q, pair_d, task="SciFact"),
            len(pair_q),
        )
        rows[-1]["mrr_relevant_among_8"] = round(_mrr(np.asarray(scores), group), 3)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--hnsw-max", type=int, default=1_000_000, help="skip HNSW above this size")
    parser.add_argument(
        "--teacher-queries", type=int, default=16, help="SciFact claims (x 8 pairs) per teacher"
    )
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument(
        "--rerankers", nargs="+", help=f"reranker specs to time (default: {', '.join(RERANKERS.values())})"
    )
    parser.add_argument("--skip-teachers", action="store_true")
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument(
        "--real", type=Path, nargs="*", default=[], help=".npy embedding shards to search too"
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/mine_speed.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    import faiss

    result = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "faiss_threads": faiss.omp_get_max_threads(),
            "python": platform.python_version(),
            "faiss": faiss.__version__,
        },
    }
    if not args.skip_search:
        result["search"] = bench_search(
            args.sizes, dim=args.dim, k=args.k, n_queries=args.queries, hnsw_max=args.hnsw_max
        )
    if args.real:
        result["search_real"] = bench_real(args.real, k=args.k, n_queries=args.queries)
    if not args.skip_teachers:
        scratch = args.out.parent / "mine_speed_scratch"
        result["teachers"] = bench_teachers(args.teacher_queries, args.max_length, scratch, args.rerankers)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()

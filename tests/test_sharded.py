"""Encoding spread over processes (``anna_embed.distributed``): the pure sharding rules, then ``encode``,
mining's corpus and ``eval`` under ``torchrun`` with 2 CPU processes (gloo) against the same script in
one plain process: same outputs in the same order, and each rank encoded only its share."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from anna_embed import distributed
from anna_embed.distributed import SINGLE, Ranks, assemble, shard_bounds
from conftest import CORPUS, build_backbone, build_bert_folder, build_tokenizer, free_port

ROOT = Path(__file__).resolve().parents[1]
MINE = ROOT / "tests" / "fixtures" / "mine"
EVAL = ROOT / "tests" / "fixtures" / "eval"
SHARD_SIZE = 3  # mining: 20 corpus documents -> 7 cache shards, the last one shorter

# ----------------------------------------------------------------------------- pure rules


@pytest.mark.parametrize(("n", "world"), [(0, 1), (0, 3), (1, 1), (2, 4), (5, 3), (7, 2), (12, 4), (13, 5)])
def test_shard_bounds_are_contiguous_balanced_and_cover_everything(n, world):
    blocks = [shard_bounds(n, r, world) for r in range(world)]
    assert blocks[0][0] == 0 and blocks[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(blocks))  # contiguous, in rank order
    sizes = [stop - start for start, stop in blocks]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_shard_bounds_by_hand_and_errors():
    assert [shard_bounds(5, r, 3) for r in range(3)] == [(0, 2), (2, 4), (4, 5)]
    assert [shard_bounds(2, r, 4) for r in range(4)] == [(0, 1), (1, 2), (2, 2), (2, 2)]  # n < world
    for bad in [(-1, 0, 1), (3, 1, 1), (3, -1, 2), (3, 0, 0)]:
        with pytest.raises(ValueError, match="shard_bounds"):
            shard_bounds(*bad)


def test_assemble_trims_padding_and_keeps_rank_order():
    rows = np.arange(12, dtype=np.float32).reshape(6, 2)
    counts = [3, 0, 2, 1]  # uneven, one rank empty
    bounds = np.cumsum([0, *counts])
    blocks = []
    for r, c in enumerate(counts):  # padded to the longest block with junk, as the all-gather sends them
        block = np.full((3, 2), -99.0, np.float32)
        block[:c] = rows[bounds[r] : bounds[r + 1]]
        blocks.append(block)
    np.testing.assert_array_equal(assemble(blocks, counts), rows)
    assert assemble([np.zeros((0, 4))] * 2, [0, 0]).shape == (0, 4)


def test_one_process_is_single_and_every_method_a_no_op(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    assert distributed.launch() == SINGLE
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.launch() == SINGLE
    x = np.ones((3, 2), np.float32)
    assert SINGLE.bounds(3) == (0, 3) and SINGLE.is_main and not SINGLE.active
    assert SINGLE.gather_rows(x) is not None and SINGLE.all_gather_rows(x).shape == (3, 2)
    assert SINGLE.broadcast({"a": 1}) == {"a": 1}
    assert Ranks(rank=1, world=3).bounds(7) == (3, 5)


# ----------------------------------------------------------------------------- 2 processes vs 1

#: Run under torchrun (2 ranks) and as a plain process: the collectives, then ``anna-embed encode`` (CLI),
#: ``anna-embed mine`` (CLI) and ``run_eval``. It counts the texts each rank encodes and writes them, with
#: what the collectives returned and the eval result this rank got, to OUT/rank-R.json.
SCRIPT = r"""
import json, os, sys
from pathlib import Path

import numpy as np

from anna_embed import distributed
from anna_embed.cli import main
from anna_embed.mine.teachers import BiEncoder
from anna_embed.model.embedder import Embedder

out, decoder, bert, mine_dir, eval_dir, shard_size = sys.argv[1:7]
out = Path(out)
ranks = distributed.launch()
report = {"rank": ranks.rank, "world": ranks.world}

# collectives: uneven and empty blocks, rank order
local = np.full((2 - ranks.rank, 3), ranks.rank, np.float32)  # rank 0: 2 rows, rank 1: 1 row
report["all_gather"] = ranks.all_gather_rows(local).tolist()
gathered = ranks.gather_rows(np.zeros((0, 0)) if ranks.rank else np.ones((1, 3)))
report["gather"] = None if gathered is None else gathered.tolist()
report["broadcast"] = ranks.broadcast({"from": ranks.rank})

counts = {"encode": 0, "mine": 0, "eval": 0, "corpus": 0}
stage = ["encode"]
encode, encode_documents = Embedder.encode, BiEncoder.encode_documents

def counting_encode(self, inputs, **kw):
    texts = list(inputs)
    counts[stage[0]] += len(texts)
    return encode(self, texts, **kw)

def counting_documents(self, texts, **kw):
    counts["corpus"] += len(texts)
    return encode_documents(self, texts, **kw)

Embedder.encode, BiEncoder.encode_documents = counting_encode, counting_documents

code = main(["encode", "--model", decoder, "--input", str(out.parent / "texts.jsonl"),
             "--output", str(out / "vectors.npy"), "--task", "STSBenchmark", "--batch-size", "2"])
assert code == 0, code

stage[0] = "mine"
code = main(["mine", "--train", mine_dir + "/train.jsonl", "--corpus", mine_dir + "/corpus.jsonl",
             "--out", str(out / "mined.jsonl"), "--retriever", "bi:" + bert, "--reranker", "bi:" + bert,
             "--task", "MSMARCO", "--top-k", "5", "--num-negatives", "2", "--batch-size", "2",
             "--shard-size", shard_size, "--cache-dir", str(out / "mine-cache")])
assert code == 0, code

stage[0] = "eval"
from anna_embed.evaluate import EvalConfig, run_eval
run = run_eval(EvalConfig(model=decoder, output=str(out / "eval"), tasks=("STSBenchmark", "MyRetrieval"),
                          data_dir=str(eval_dir), batch_size=2), show_progress=False)
report["eval_scores"] = run["scores"]
report["counts"] = counts
(out / f"rank-{ranks.rank}.json").write_text(json.dumps(report))
distributed.finish(0)  # as the anna-embed command ends: no gloo teardown abort after the work is done
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The script's output folders: ``single`` (one plain process) and ``spread`` (torchrun, 2 ranks)."""
    from anna_embed.model.config import EmbedderConfig
    from anna_embed.model.embedder import Embedder

    root = tmp_path_factory.mktemp("sharded")
    tok = build_tokenizer()
    cfg = EmbedderConfig(kind="decoder", pooling="last", max_length=64, base_model="tiny-llama")
    decoder = Embedder(build_backbone("llama", len(tok)), tok, cfg, name="tiny-llama").save(root / "decoder")
    words = [
        line for p in [*MINE.glob("*.jsonl"), *EVAL.rglob("*.jsonl")] for line in p.read_text().splitlines()
    ]
    bert = build_bert_folder(root / "bert", words)
    texts = [*CORPUS, *(f"sentence number {i} about cats and guitars" for i in range(6))]  # 13 texts
    (root / "texts.jsonl").write_text(
        "".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(texts))
    )
    script = root / "script.py"
    script.write_text(SCRIPT)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT / "src"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    args = [str(decoder), str(bert), str(MINE), str(EVAL), str(SHARD_SIZE)]
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
    ]
    for name, cmd in [("single", [sys.executable]), ("spread", launch)]:
        (root / name).mkdir()
        proc = subprocess.run(
            [*cmd, str(script), str(root / name), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=root,
        )
        assert proc.returncode == 0, f"{name}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return root, len(texts)


def _reports(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("rank-*.json"))]


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def test_collectives_gather_uneven_blocks_in_rank_order(runs):
    root, _ = runs
    r0, r1 = _reports(root / "spread")
    assert (r0["world"], r1["world"]) == (2, 2)
    assert r0["all_gather"] == r1["all_gather"] == [[0.0] * 3, [0.0] * 3, [1.0] * 3]
    assert r0["gather"] == [[1.0] * 3] and r1["gather"] is None  # rank 1 sent no rows
    assert r0["broadcast"] == r1["broadcast"] == {"from": 0}


def test_encode_is_split_over_ranks_and_written_once_in_order(runs):
    root, n = runs
    single, spread = np.load(root / "single" / "vectors.npy"), np.load(root / "spread" / "vectors.npy")
    assert single.shape == spread.shape == (n, 32)
    assert _row_cosines(single, spread).min() >= 0.9999
    ids = (root / "single" / "vectors.ids.txt").read_text()
    assert (root / "spread" / "vectors.ids.txt").read_text() == ids == "".join(f"t{i}\n" for i in range(n))
    counts = [r["counts"]["encode"] for r in _reports(root / "spread")]
    assert counts == [stop - start for start, stop in (shard_bounds(n, r, 2) for r in range(2))]  # 7, 6
    assert _reports(root / "single")[0]["counts"]["encode"] == n
    assert not list((root / "spread").glob(".*partial"))  # rank 1 wrote nothing, rank 0 nothing half


def test_mining_corpus_is_split_by_cache_shard_and_the_output_is_the_same(runs):
    root, _ = runs
    n_corpus = len((MINE / "corpus.jsonl").read_text().splitlines())
    single = [json.loads(x) for x in (root / "single" / "mined.jsonl").read_text().splitlines()]
    spread = [json.loads(x) for x in (root / "spread" / "mined.jsonl").read_text().splitlines()]
    assert [(r["query"], r["pos"], r["neg"]) for r in spread] == [
        (r["query"], r["pos"], r["neg"]) for r in single
    ]
    for a, b in zip(single, spread, strict=True):
        assert np.allclose(a["pos_scores"] + a["neg_scores"], b["pos_scores"] + b["neg_scores"], atol=1e-5)
    (folder_1,) = (root / "single" / "mine-cache").glob("corpus-*")
    (folder_2,) = (root / "spread" / "mine-cache").glob("corpus-*")
    assert folder_1.name == folder_2.name  # same cache key: one cache serves either way of running
    shards = sorted(p.name for p in folder_1.glob("shard_*.npy"))
    assert shards == sorted(p.name for p in folder_2.glob("shard_*.npy")) and len(shards) == 7
    a = np.concatenate([np.load(folder_1 / s) for s in shards])
    b = np.concatenate([np.load(folder_2 / s) for s in shards])
    assert a.shape[0] == n_corpus and _row_cosines(a, b).min() >= 0.9999
    # each rank encoded whole cache shards, dealt in rounds: rank 0 shards 0, 2, 4, 6; rank 1 shards 1, 3, 5
    sizes = [min(SHARD_SIZE, n_corpus - i * SHARD_SIZE) for i in range(len(shards))]
    # (rank 0 then goes on alone: a given negative outside the corpus is encoded for rescoring)
    counts = [r["counts"]["corpus"] for r in _reports(root / "spread")]
    assert counts[1] == sum(sizes[1::2]) == 9
    assert sum(counts) == _reports(root / "single")[0]["counts"]["corpus"] >= n_corpus
    assert (root / "spread" / "mined.manifest.json").is_file()


def test_eval_scores_are_the_same_and_each_rank_encoded_part(runs):
    root, _ = runs
    (single,), spread = _reports(root / "single"), _reports(root / "spread")
    scores = single["eval_scores"]
    assert set(scores) == {"STSBenchmark", "MyRetrieval"} and None not in scores.values()
    for r in spread:  # every rank returns rank 0's run.json
        assert r["eval_scores"] == spread[0]["eval_scores"]
        assert r["eval_scores"] == pytest.approx(scores, abs=1e-6)
    run = json.loads((root / "spread" / "eval" / "run.json").read_text())
    assert run["scores"] == spread[0]["eval_scores"]
    counts = [r["counts"]["eval"] for r in spread]
    assert sum(counts) == single["counts"]["eval"] and min(counts) > 0

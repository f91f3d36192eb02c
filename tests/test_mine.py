"""Mining: the margin filter's exact semantics, selection, fusion, the pipeline, resume after a kill."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from anna_embed import mine
from anna_embed.io import InputError
from anna_embed.mine import cli as mine_cli
from anna_embed.mine import driver, search
from anna_embed.mine.config import MineConfig
from anna_embed.mine.filter import margin_filter, normalise_scores, select_negatives
from anna_embed.mine.inputs import load_corpus, load_training
from anna_embed.mine.search import build_index, reciprocal_rank_fusion

FIX = Path(__file__).parent / "fixtures" / "mine"
_spec = importlib.util.spec_from_file_location("fake_teachers", FIX / "fake_teachers.py")
fake = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake)
NAN = math.nan


# ----------------------------------------------------------------------------- margin filter


def test_relative_margin_uses_lowest_positive_and_strict_exceed():
    # ref = min(0.8, 0.6) = 0.6 -> threshold 0.6 * 0.95 = 0.57; 0.57 itself does not exceed it.
    r = margin_filter(np.array([[0.8, 0.6]]), np.array([[0.9, 0.58, 0.57, 0.5]]), relative_margin=0.05)
    assert r.threshold[0] == pytest.approx(0.57)
    assert r.keep.tolist() == [[False, False, True, True]]
    assert r.dropped_margin.tolist() == [[True, True, False, False]]
    assert not r.dropped_positive.any()


def test_unequal_positives_each_row_uses_its_own_lowest_positive():
    pos = np.array([[0.9, 0.5], [0.8, NAN]])  # row 0 has two positives, row 1 one (NaN-padded)
    cand = np.array([[0.7, 0.45, 0.3], [0.7, 0.45, 0.3]])
    r = margin_filter(pos, cand, relative_margin=0.05)
    assert r.threshold.tolist() == pytest.approx([0.475, 0.76])
    assert r.keep.tolist() == [[False, True, True], [True, True, True]]


def test_absolute_margin_and_both_margins_take_the_stricter_threshold():
    pos = np.array([[0.8], [0.4]])
    cand = np.array([[0.75, 0.69, 0.6], [0.35, 0.29, 0.1]])
    r = margin_filter(pos, cand, relative_margin=None, absolute_margin=0.1)
    assert r.threshold.tolist() == pytest.approx([0.7, 0.3])
    assert r.keep.tolist() == [[False, True, True], [False, True, True]]
    # relative 0.05 -> 0.76 / 0.38; absolute 0.1 -> 0.7 / 0.3: the lower one wins per row.
    both = margin_filter(pos, cand, relative_margin=0.05, absolute_margin=0.1)
    assert both.threshold.tolist() == pytest.approx([0.7, 0.3])
    rel = margin_filter(pos, cand, relative_margin=0.05)
    assert rel.keep.tolist() == [[True, True, True], [True, True, True]]


def test_known_positives_are_dropped_even_when_low_and_padding_is_never_kept():
    cand = np.array([[0.1, 0.2, NAN]])
    r = margin_filter(
        np.array([[0.9]]), cand, cand_is_positive=np.array([[True, False, True]]), relative_margin=None
    )
    assert np.isinf(r.threshold[0])
    assert r.dropped_positive.tolist() == [[True, False, False]]  # the NaN slot is not a candidate
    assert r.keep.tolist() == [[False, True, False]]


def test_negative_logits_keep_meaning_closer_to_the_positive():
    raw_pos, raw_cand = np.array([[-1.0]]), np.array([[-1.02, -3.0, 0.5, -1.0]])
    # Sigmoid first (the default for logits): -1.02 is within 5% of the positive, -3 is not.
    r = margin_filter(normalise_scores(raw_pos, "logit"), normalise_scores(raw_cand, "logit"))
    assert r.threshold[0] == pytest.approx(0.95 / (1 + math.exp(1.0)))
    assert r.keep.tolist() == [[False, True, False, False]]
    # On raw signed scores the threshold is ref - m|ref| = -1.05, still below the positive; the naive
    # ref * (1 - m) = -0.95 would sit above it and keep -1.02 and -1.0.
    raw = margin_filter(raw_pos, raw_cand)
    assert raw.threshold[0] == pytest.approx(-1.05)
    assert raw.keep.tolist() == [[False, True, False, False]]


def test_filter_matches_a_loop_oracle_on_random_matrices():
    rng = np.random.default_rng(0)
    pos = rng.normal(size=(40, 3))
    pos[rng.random((40, 3)) < 0.4] = NAN
    pos[:, 0] = rng.normal(size=40)  # every row keeps at least one positive
    cand = rng.normal(size=(40, 12))
    cand[rng.random((40, 12)) < 0.2] = NAN
    is_pos = rng.random((40, 12)) < 0.1
    r = margin_filter(pos, cand, cand_is_positive=is_pos, relative_margin=0.1, absolute_margin=0.3)
    for q in range(40):
        ref = min(p for p in pos[q] if not math.isnan(p))
        thr = min(ref - 0.1 * abs(ref), ref - 0.3)
        for c in range(12):
            s = cand[q, c]
            expect = not math.isnan(s) and not is_pos[q, c] and not s > thr
            assert r.keep[q, c] == expect


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"relative_margin": 1.0}, "relative_margin"), ({"absolute_margin": -0.1}, "absolute_margin")],
)
def test_filter_rejects_bad_margins(kwargs, message):
    with pytest.raises(ValueError, match=message):
        margin_filter(np.array([[0.5]]), np.array([[0.1]]), **kwargs)


def test_filter_rejects_a_query_without_positive_scores():
    with pytest.raises(ValueError, match=r"\[1\]"):
        margin_filter(np.array([[0.5], [NAN]]), np.array([[0.1], [0.2]]))


def test_normalise_scores():
    assert normalise_scores(np.array([0.0]), "logit").tolist() == [0.5]
    assert normalise_scores(np.array([-1.0, 0.0, 1.0]), "cosine").tolist() == [-1.0, 0.0, 1.0]
    assert normalise_scores(np.array([-1.0, 0.0, 1.0]), "cosine", "affine").tolist() == [0.0, 0.5, 1.0]
    assert normalise_scores(np.array([0.3]), "probability").tolist() == [0.3]
    assert normalise_scores(np.array([-2.0]), "logit", "identity").tolist() == [-2.0]
    assert math.isnan(normalise_scores(np.array([NAN]), "logit")[0])


def test_cosine_margin_is_applied_in_the_teachers_own_scale():
    # Issue 10, defect 5: a positive at cos 0.6 and a 5% margin keep candidates at 0.55 and 0.53
    # (threshold 0.95 * 0.6 = 0.57, as sentence-transformers and NV-Retriever's TopK-PercPos); mapping
    # to (1 + cos) / 2 first would put the threshold at cos 0.52 and drop both.
    pos, cand = np.array([[0.6]]), np.array([[0.58, 0.55, 0.53, 0.4]])
    r = margin_filter(normalise_scores(pos, "cosine"), normalise_scores(cand, "cosine"), relative_margin=0.05)
    assert r.threshold[0] == pytest.approx(0.57)
    assert r.keep.tolist() == [[False, True, True, True]]


# ----------------------------------------------------------------------------- selection and fusion


def test_select_top_within_the_window_in_rank_order():
    keep = np.array([[True, False, True, True, True, True]])
    scores = np.array([[0.9, 0.95, 0.2, 0.8, 0.5, 0.7]])  # kept order by score: cols 0, 3, 5, 4, 2
    assert select_negatives(keep, scores, num_negatives=2)[0].tolist() == [0, 3]
    assert select_negatives(keep, scores, num_negatives=2, window=(1, None))[0].tolist() == [3, 5]
    assert select_negatives(keep, scores, num_negatives=9, window=(2, 4))[0].tolist() == [5, 4]


def test_select_random_is_seeded_per_query_and_stays_in_the_window():
    rng = np.random.default_rng(1)
    keep = rng.random((30, 40)) < 0.8
    scores = rng.random((30, 40))
    a = select_negatives(keep, scores, num_negatives=4, window=(2, 20), sampling="random", seed=7)
    b = select_negatives(keep, scores, num_negatives=4, window=(2, 20), sampling="random", seed=7)
    c = select_negatives(keep, scores, num_negatives=4, window=(2, 20), sampling="random", seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    for row, picked in enumerate(a):
        cols = np.flatnonzero(keep[row])
        window = cols[np.argsort(-scores[row, cols], kind="stable")][2:20]
        assert len(picked) == 4 and set(picked) <= set(window)
        ranks = [list(window).index(p) for p in picked]
        assert ranks == sorted(ranks)
    # A query's draw depends on its id, not on its row: the same row under another id differs somewhere.
    shifted = select_negatives(
        keep, scores, num_negatives=4, window=(2, 20), sampling="random", seed=7, query_ids=range(100, 130)
    )
    assert any(not np.array_equal(x, y) for x, y in zip(a, shifted, strict=True))


def test_reciprocal_rank_fusion_hand_computed():
    dense = np.array([[5, 2, 7]])
    lexical = np.array([[2, 9, -1]])
    # 2: 1/62 + 1/61, 5: 1/61, 9: 1/62, 7: 1/63
    assert reciprocal_rank_fusion([dense, lexical], k=60, top=4).tolist() == [[2, 5, 9, 7]]
    assert reciprocal_rank_fusion([dense, lexical], k=60, top=6).tolist() == [[2, 5, 9, 7, -1, -1]]


@pytest.mark.parametrize("index", ["hnsw", "ivf"])
def test_approximate_index_recall_against_exact(index):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 32))
    d_emb = (centres[rng.integers(40, size=3000)] + 0.5 * rng.normal(size=(3000, 32))).astype(np.float32)
    d_emb /= np.linalg.norm(d_emb, axis=1, keepdims=True)
    q_emb = d_emb[:50] + 0.3 * rng.normal(size=(50, 32)).astype(np.float32)
    _, exact = build_index(d_emb, MineConfig(index="flat")).search(q_emb, 10)
    _, approx = build_index(d_emb, MineConfig(index=index, ivf_nprobe=8)).search(q_emb, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall > 0.8


def test_bm25_candidates_rank_the_lexical_match_first():
    docs = ["the cat sat", "glacier caves form in ice", "dogs bark loudly"]
    ids = search.bm25_candidates(["how do glacier caves form", "zzz qqq"], docs, k=2)
    assert ids[0, 0] == 1
    assert (ids[1] == -1).all()  # no shared word: no lexical candidate


# ----------------------------------------------------------------------------- inputs


def test_load_training_merges_positives_of_the_same_query():
    queries = load_training(FIX / "train.jsonl")
    by_text = {q.text: q for q in queries}
    assert len(queries) == 9  # 10 records, two of them share a query
    assert len(by_text["how do vaccines train the immune system"].positives) == 2
    assert by_text["how do vaccines train the immune system"].lines == [4, 5]
    assert by_text["why does bread dough rise"].instruction == "Find baking facts."


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ('{"query": "q", "positive": 3}', "positive"),
        ('{"query": "", "positive": "p"}', "query"),
        ('{"query": "q", "positive": "p", "negative": [1]}', "negative"),
        ('{"query": "q", "positive": "p", "task": 5}', "task"),
        ('{"positive": "p"}', "query"),
    ],
)
def test_load_training_errors_name_file_line_and_field(tmp_path, line, field):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"query": "ok", "positive": "fine"}\n' + line + "\n")
    with pytest.raises(InputError) as err:
        load_training(path)
    assert (err.value.path, err.value.line, err.value.field) == (str(path), 2, field)


# ----------------------------------------------------------------------------- the pipeline

CFG = MineConfig(task="MSMARCO", top_k=8, num_negatives=3, shard_size=4, query_shard_size=3, seed=3)


def _run(tmp_path: Path, name: str, cfg: MineConfig = CFG, **kw):
    retriever, reranker = kw.pop("retriever", fake.FakeRetriever()), kw.pop("reranker", fake.FakeReranker())
    out = tmp_path / name / "mined.jsonl"
    manifest = mine.run(
        cfg,
        FIX / "train.jsonl",
        out,
        corpus=FIX / "corpus.jsonl",
        retriever=retriever,
        reranker=reranker,
        **kw,
    )
    return out, manifest, retriever, reranker


def test_a_users_own_task_keeps_its_type_so_training_can_read_the_records(tmp_path):
    """Records of a task the registry lacks carry ``type`` and ``instruction`` (as ``convert`` writes them);
    mining keeps both, so :func:`anna_embed.data.load_records` accepts the output."""
    from anna_embed.train.config import DataSource
    from anna_embed.train.data import load_records

    rows = [json.loads(x) for x in (FIX / "train.jsonl").read_text().splitlines()]
    own = [
        {
            "query": r["query"],
            "positive": r["positive"],
            "task": "MyDocs",
            "type": "Retrieval",
            "instruction": "Find my documents.",
        }
        for r in rows
    ]
    train = tmp_path / "own.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in own))
    out = tmp_path / "mined.jsonl"
    cfg = MineConfig(top_k=5, num_negatives=2)
    mine.run(
        cfg,
        train,
        out,
        corpus=FIX / "corpus.jsonl",
        retriever=fake.FakeRetriever(),
        reranker=fake.FakeReranker(),
    )
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert records and all((r["task"], r["type"]) == ("MyDocs", "Retrieval") for r in records)
    parsed = load_records(DataSource(str(out)))
    assert {(r.task.name, r.task.type, r.task.instruction) for r in parsed} == {
        ("MyDocs", "Retrieval", "Find my documents.")
    }


def test_run_writes_flagembedding_records_that_respect_the_filter(tmp_path):
    out, manifest, _, _ = _run(tmp_path, "a")
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert records and manifest["counts"]["records_written"] == len(records)
    for rec in records:
        assert set(rec) == {"query", "pos", "neg", "pos_scores", "neg_scores", "task", "type", "instruction"}
        assert rec["type"] == "Retrieval" and rec["task"] == "MSMARCO"
        assert not set(rec["neg"]) & set(rec["pos"])
        assert 1 <= len(rec["neg"]) <= 3 and len(rec["neg_scores"]) == len(rec["neg"])
        # Raw scores are the teacher's; the kept negatives lie under the margin of the lowest positive.
        teacher = fake.FakeReranker()
        assert rec["pos_scores"] == pytest.approx(
            teacher.score([rec["query"]] * len(rec["pos"]), rec["pos"]), abs=1e-5
        )
        assert rec["neg_scores"] == pytest.approx(
            teacher.score([rec["query"]] * len(rec["neg"]), rec["neg"]), abs=1e-5
        )
        ref = normalise_scores(np.array(rec["pos_scores"]), "logit").min()
        assert (normalise_scores(np.array(rec["neg_scores"]), "logit") <= ref * 0.95 + 1e-9).all()
        assert rec["neg_scores"] == sorted(rec["neg_scores"], reverse=True)  # top of the teacher ranking
    baking = next(r for r in records if r["query"] == "why does bread dough rise")
    assert baking["instruction"] == "Find baking facts."  # a user's own instruction travels
    # a registry task's instruction is not frozen into the record (issue 10, defect 7)
    assert all(r["instruction"] is None for r in records if r is not baking)
    assert (out.parent / "mined.manifest.json").is_file() and (out.parent / "mined.scores.png").is_file()
    summary = (out.parent / "mined.summary.txt").read_text().splitlines()
    assert len(summary) == 4 and summary[3].startswith("negatives that are another record's positive:")
    other = manifest["counts"]["negatives_other_positive"]
    all_pos = {p for r in records for p in r["pos"]}
    assert other == sum(n in all_pos for r in records for n in r["neg"])
    assert manifest["teachers"] == {
        "retriever": "fake-bow",
        "reranker": "fake-logit",
        "reranker_score_kind": "logit",
    }


def test_run_passes_task_and_instruction_to_the_retriever(tmp_path):
    _, _, retriever, _ = _run(tmp_path, "a")
    assert set(retriever.query_calls) == {("MSMARCO", None), ("MSMARCO", "Find baking facts.")}


def test_given_negatives_join_the_candidates(tmp_path):
    cfg = MineConfig(task="MSMARCO", top_k=1, num_negatives=5, relative_margin=None, min_negatives=0)
    out, _, _, _ = _run(tmp_path, "a", cfg)
    glacier = next(json.loads(x) for x in out.read_text().splitlines() if "glacier" in x.split('"pos"')[0])
    assert any(n.startswith("Polar bears") for n in glacier["neg"])


def test_default_corpus_is_the_positives(tmp_path):
    out = tmp_path / "mined.jsonl"
    mine.run(CFG, FIX / "train.jsonl", out, retriever=fake.FakeRetriever(), reranker=fake.FakeReranker())
    docs = {p for q in load_training(FIX / "train.jsonl") for p in q.positives + q.negatives}
    for rec in map(json.loads, out.read_text().splitlines()):
        assert set(rec["neg"]) <= docs


class _Killed(Exception):
    pass


def _kill_at(stage: str, shard: int):
    def hook(s: str, i: int) -> None:
        if (s, i) == (stage, shard):
            raise _Killed

    return hook


@pytest.mark.parametrize(("stage", "shard"), [("corpus", 2), ("rerank", 1)])
def test_resume_after_interruption_is_byte_identical(tmp_path, stage, shard):
    reference, _, _, _ = _run(tmp_path, "reference")
    cache = tmp_path / "cache"
    with pytest.raises(_Killed):
        _run(tmp_path, "resumed", cache_dir=cache, on_progress=_kill_at(stage, shard))
    out = tmp_path / "resumed" / "mined.jsonl"
    assert not out.exists()  # nothing half-written
    done = sorted(p.name for p in cache.glob(f"{'corpus' if stage == 'corpus' else 'rerank'}-*/shard_*"))
    assert len(done) == shard + 1
    retriever, reranker = fake.FakeRetriever(), fake.FakeReranker()
    _run(tmp_path, "resumed", cache_dir=cache, retriever=retriever, reranker=reranker)
    assert out.read_bytes() == reference.read_bytes()
    n_docs = len(load_corpus(FIX / "corpus.jsonl"))
    if stage == "corpus":
        assert retriever.documents_encoded == n_docs - (shard + 1) * CFG.shard_size
    else:
        assert retriever.documents_encoded == 0
        first = fake.FakeReranker()
        _run(tmp_path, "fresh", reranker=first)
        assert 0 < reranker.pairs_scored < first.pairs_scored


def test_resume_after_sigkill_is_byte_identical(tmp_path):
    """A real kill (SIGKILL, no clean-up) in a subprocess after two corpus shards, then a rerun."""
    reference, _, _, _ = _run(tmp_path, "reference")
    out, cache = tmp_path / "killed" / "mined.jsonl", tmp_path / "cache"
    script = f"""
import importlib.util, os, signal
from pathlib import Path
from anna_embed import mine
spec = importlib.util.spec_from_file_location("fake_teachers", {str(FIX / "fake_teachers.py")!r})
fake = importlib.util.module_from_spec(spec); spec.loader.exec_module(fake)
def hook(stage, i):
    if (stage, i) == ("corpus", 1):
        os.kill(os.getpid(), signal.SIGKILL)
mine.run(mine.{CFG!r}, {str(FIX / "train.jsonl")!r}, {str(out)!r},
         corpus={str(FIX / "corpus.jsonl")!r}, retriever=fake.FakeRetriever(),
         reranker=fake.FakeReranker(), cache_dir={str(cache)!r}, on_progress=hook)
"""
    env = dict(os.environ, PYTHONPATH=str(Path(mine.__file__).parents[2]))
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -9, proc.stderr
    assert not out.exists() and len(list(cache.glob("corpus-*/shard_*.npy"))) == 2
    retriever = fake.FakeRetriever()
    _run(tmp_path, "killed", cache_dir=cache, retriever=retriever)
    assert out.read_bytes() == reference.read_bytes()
    assert retriever.documents_encoded == 20 - 2 * CFG.shard_size


def test_random_sampling_output_is_reproducible(tmp_path):
    cfg = MineConfig(
        task="MSMARCO", top_k=12, num_negatives=2, sampling="random", relative_margin=None, seed=5
    )
    a, _, _, _ = _run(tmp_path, "a", cfg)
    b, _, _, _ = _run(tmp_path, "b", cfg)
    assert a.read_bytes() == b.read_bytes()


def test_cli_flags_become_config_overrides(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cfg, train, out, **kw):
        seen.update(cfg=cfg, train=train, out=out, **kw)
        return {"summary": ["ok"]}

    monkeypatch.setattr(driver, "run", fake_run)
    parser = argparse.ArgumentParser()
    main = mine_cli.add_cli("mine", parser)
    args = parser.parse_args(
        [
            "--train",
            "t.jsonl",
            "--out",
            "o.jsonl",
            "--reranker",
            "cross:/m",
            "--bm25",
            "--relative-margin",
            "none",
            "--absolute-margin",
            "0.2",
            "--set",
            "top_k=9",
        ]
    )
    assert main(args) == 0
    cfg = seen["cfg"]
    assert (cfg.reranker, cfg.bm25, cfg.relative_margin, cfg.absolute_margin, cfg.top_k) == (
        "cross:/m",
        True,
        None,
        0.2,
        9,
    )


# ----------------------------------------------------------------------------- teacher embeddings (issue 11)


class _BowEncoder:
    """The fake bag-of-words vectors behind a real :class:`BiEncoder` (the ``bi:`` reranker path)."""

    def encode_queries(self, texts, *, task=None, instruction=None, batch_size=32):
        return fake.embed(texts)

    def encode_documents(self, texts, *, task=None, batch_size=32):
        return fake.embed(texts)


def test_teacher_embeddings_beside_the_output_reproduce_its_soft_labels(tmp_path):
    from anna_embed.mine.teachers import BiEncoder
    from anna_embed.records import TeacherEmbeddings

    cfg = replace(CFG, teacher_embeddings=True)
    out, manifest, _, _ = _run(tmp_path, "te", cfg, reranker=BiEncoder(_BowEncoder(), name="bi:bow"))
    path = out.with_name("mined.teacher.npz")
    assert manifest["teacher_embeddings"]["path"] == str(path)
    te = TeacherEmbeddings.load(path)
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert te.query_texts == tuple(r["query"] for r in records) and te.teacher == "bi:bow"
    docs = {text: row for row, text in enumerate(te.document_texts)}
    assert set(docs) == {t for r in records for t in r["pos"] + r["neg"]}
    for i, rec in enumerate(records):  # every written score is the dot product of the saved vectors
        for texts, scores in ((rec["pos"], rec["pos_scores"]), (rec["neg"], rec["neg_scores"])):
            got = [float(te.query_emb[i] @ te.document_emb[docs[t]]) for t in texts]
            assert got == pytest.approx(scores, abs=1e-5)


class _CountingBow(_BowEncoder):
    def __init__(self):
        self.documents: list[str] = []

    def encode_documents(self, texts, *, task=None, batch_size=32):
        self.documents += list(texts)
        return super().encode_documents(texts, task=task, batch_size=batch_size)


def test_one_bi_encoder_as_retriever_and_reranker_encodes_the_corpus_once(tmp_path, monkeypatch):
    """Same ``bi:NAME`` in both roles: one model, its corpus vectors reused; same bytes as two models."""
    from anna_embed.mine import teachers
    from anna_embed.mine.teachers import BiEncoder

    cfg = replace(CFG, retriever="bi:bow", reranker="bi:bow", teacher_embeddings=True)
    shared = _CountingBow()
    loaded: list[str] = []

    def load(spec, **kw):
        loaded.append(spec)
        return BiEncoder(shared, name="bi:bow")

    monkeypatch.setattr(teachers, "load_retriever", load)
    monkeypatch.setattr(teachers, "load_reranker", load)
    out = tmp_path / "shared" / "mined.jsonl"
    mine.run(cfg, FIX / "train.jsonl", out, corpus=FIX / "corpus.jsonl")
    assert loaded == ["bi:bow"]  # the reranker was not loaded a second time
    assert len(shared.documents) == len(set(shared.documents))  # no document encoded twice

    # two separate instances of the same model (what happened before) write the same records and vectors
    two = tmp_path / "two" / "mined.jsonl"
    mine.run(
        cfg,
        FIX / "train.jsonl",
        two,
        corpus=FIX / "corpus.jsonl",
        retriever=BiEncoder(_BowEncoder(), name="bi:bow"),
        reranker=BiEncoder(_BowEncoder(), name="bi:bow"),
    )
    assert out.read_bytes() == two.read_bytes()
    a, b = np.load(out.with_name("mined.teacher.npz")), np.load(two.with_name("mined.teacher.npz"))
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize(
    ("retriever", "reranker", "lengths", "same"),
    [
        ("all-minilm-l6-v2", "bi:all-minilm-l6-v2", (256, None), True),
        ("bi:x", "x", (128, 128), True),
        ("bi:x", "bi:x", (256, 128), False),  # another truncation is another teacher
        ("bi:x", "bi:y", (256, None), False),
        ("bi:x", "cross:x", (256, None), False),
    ],
)
def test_same_bi_encoder(retriever, reranker, lengths, same):
    cfg = replace(CFG, retriever=retriever, reranker=reranker, max_length=lengths[0])
    assert driver._same_bi_encoder(replace(cfg, reranker_max_length=lengths[1])) is same


def test_teacher_embeddings_need_a_bi_encoder_reranker(tmp_path):
    with pytest.raises(ValueError, match=r"bi-encoder reranker \(bi:NAME\), not 'fake-logit'"):
        _run(tmp_path, "logit", replace(CFG, teacher_embeddings=True))
    assert not (tmp_path / "logit").exists() or not list((tmp_path / "logit").iterdir())


def test_cli_teacher_embeddings_flag(monkeypatch):
    seen = {}
    monkeypatch.setattr(driver, "run", lambda cfg, train, out, **kw: seen.update(cfg=cfg) or {"summary": []})
    parser = argparse.ArgumentParser()
    main = mine_cli.add_cli("mine", parser)
    assert main(parser.parse_args(["--train", "t.jsonl", "--out", "o.jsonl", "--teacher-embeddings"])) == 0
    assert seen["cfg"].teacher_embeddings is True

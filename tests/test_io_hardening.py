"""Hardening of encode and mine (issue 15): options validated before any model loads, no poisoned cache,
no input overwritten, byte-identical mining resume, clean SIGTERM and fixed temporary names."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from anna_embed import mine
from anna_embed.cli import main
from anna_embed.config import load
from anna_embed.encode import encode_rows, ids_path
from anna_embed.io import atomic_write
from anna_embed.mine import teachers
from anna_embed.mine.config import MineConfig
from anna_embed.mine.inputs import load_corpus
from anna_embed.mine.teachers import BiEncoder
from anna_embed.model.embedder import Embedder

FIX = Path(__file__).parent / "fixtures" / "mine"
_spec = importlib.util.spec_from_file_location("fake_teachers", FIX / "fake_teachers.py")
fake = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake)
SRC = str(Path(mine.__file__).parents[2])


@pytest.fixture
def saved_model(make_embedder, tmp_path):
    emb = make_embedder("llama")
    return emb, emb.save(tmp_path / "tiny")


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if anything tries to load a model (validation must come first)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were validated")

    monkeypatch.setattr(Embedder, "from_pretrained", refuse)
    monkeypatch.setattr(teachers, "load_retriever", refuse)
    monkeypatch.setattr(teachers, "load_reranker", refuse)


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ----------------------------------------------------------------------------- 1. encode's numbers


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--batch-size", "-1"),
        ("--batch-size", "0"),
        ("--dimensions", "0"),
        ("--dimensions", "-8"),
        ("--max-length", "0"),
        ("--shots", "-1"),
    ],
)
def test_encode_rejects_bad_numbers_before_loading_the_model(tmp_path, capsys, no_model_loading, flag, value):
    src = tmp_path / "in.txt"
    src.write_text("one\ntwo\n")
    out = tmp_path / "out.npy"
    argv = ["encode", "--model", "whatever", "--input", str(src), "--output", str(out), flag, value]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: must be" in err and value in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_encode_rows_and_embedder_reject_batch_size_below_one(saved_model, tmp_path):
    emb, _ = saved_model
    out = tmp_path / "out.npy"
    for bad in (0, -1):
        with pytest.raises(ValueError, match=rf"batch_size must be >= 1, got {bad}"):
            encode_rows(emb, [("1", "Cats"), ("2", "birds sing")], out, batch_size=bad)
        with pytest.raises(ValueError, match=rf"batch_size must be >= 1, got {bad}"):
            emb.encode(["Cats"], batch_size=bad)
    with pytest.raises(ValueError, match="dimensions must be >= 1, got 0"):
        encode_rows(emb, [("1", "Cats")], out, dimensions=0)
    with pytest.raises(ValueError, match="chunk_size must be >= 1, got 0"):
        encode_rows(emb, [("1", "Cats")], out, chunk_size=0)
    assert not out.exists() and _hidden(tmp_path) == []


# ----------------------------------------------------------------------------- 3. encode's output


@pytest.mark.parametrize("case", ["same", "same-spelled-otherwise", "ids-sidecar"])
def test_encode_refuses_to_overwrite_its_input(saved_model, tmp_path, capsys, case):
    _, path = saved_model
    (tmp_path / "sub").mkdir()
    if case == "ids-sidecar":
        src, out = tmp_path / "vecs.ids.txt", str(tmp_path / "vecs.npy")
    else:
        src = tmp_path / "in.txt"
        out = str(src) if case == "same" else str(tmp_path / "sub" / ".." / "in.txt")
    src.write_text("one\ntwo\n")
    before = src.read_bytes()
    code = main(["encode", "--model", str(path), "--input", str(src), "--output", out])
    assert code == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert src.read_bytes() == before
    assert not (tmp_path / "vecs.npy").exists() and _hidden(tmp_path) == []


# ---------------------------------------------------------------------- 5. SIGTERM, kill -9, temp names


def test_atomic_write_uses_a_fixed_temp_name_and_cleans_a_killed_runs_leftovers(tmp_path):
    target = tmp_path / "out.txt"
    script = (
        "import os\nfrom anna_embed.io import atomic_write\n"
        f"with atomic_write({str(target)!r}) as fh:\n"
        "    fh.write('half'); fh.flush(); os._exit(9)\n"
    )
    env = dict(os.environ, PYTHONPATH=SRC)
    for _ in range(2):  # two killed runs leave one leftover, not two
        proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=60)
        assert proc.returncode == 9, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.txt.partial"]
    legacy = tmp_path / ".out.txt.k2j4_x9a.tmp"  # what the random-name writer used to leave
    legacy.write_text("old leftover")
    (tmp_path / ".other.txt.partial").write_text("another target's leftover")
    with atomic_write(target) as fh:
        assert (tmp_path / ".out.txt.partial").is_file()  # the fixed name, reused
        fh.write("new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.txt.partial", "out.txt"]
    assert (target.stat().st_mode & 0o777) == 0o666 & ~_umask()


def test_atomic_writes_of_different_targets_in_one_folder_do_not_collide(tmp_path):
    """Ranks of a distributed run write different targets side by side."""
    with atomic_write(tmp_path / "rng-0.txt") as a, atomic_write(tmp_path / "rng-1.txt") as b:
        a.write("zero")
        b.write("one")
    assert (tmp_path / "rng-0.txt").read_text() == "zero" and (tmp_path / "rng-1.txt").read_text() == "one"
    assert _hidden(tmp_path) == []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _Escaped(Exception):
    """Raised by the test's own SIGTERM handler: the signal reached past ``encode`` (the process would
    have died there, leaving its temporary files)."""


def test_sigterm_during_encode_exits_143_keeping_the_old_output_and_no_temp_files(
    saved_model, tmp_path, monkeypatch
):
    _, path = saved_model
    work = tmp_path / "work"
    work.mkdir()
    src, out = work / "in.txt", work / "out.npy"
    argv = ["encode", "--model", str(path), "--input", str(src), "--output", str(out)]
    src.write_text("Cats\nbirds sing\n")
    assert main(argv) == 0
    before = out.read_bytes(), ids_path(out).read_bytes()
    src.write_text("A man is playing.\nThe stock market fell.\nSomeone plays.\n")
    real = Embedder.encode

    def encode_then_sigterm(self, *args, **kwargs):
        vecs = real(self, *args, **kwargs)
        assert _hidden(work) == [".out.ids.txt.partial", ".out.npy.partial"]  # mid-write
        os.kill(os.getpid(), signal.SIGTERM)
        return vecs

    def escaped(signum, frame):
        raise _Escaped

    monkeypatch.setattr(Embedder, "encode", encode_then_sigterm)
    previous = signal.signal(signal.SIGTERM, escaped)
    try:
        code = main(argv)
    finally:
        assert signal.signal(signal.SIGTERM, previous) is escaped  # encode put the handler back
    assert code == 143
    assert (out.read_bytes(), ids_path(out).read_bytes()) == before
    assert sorted(p.name for p in work.iterdir()) == ["in.txt", "out.ids.txt", "out.npy"]


_DIE_MIDWAY = """
import os, signal, sys
from anna_embed.encode import encode_rows

class Dying:
    dimension, truncated_count = 4, 0

    def encode(self, texts, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

encode_rows(Dying(), [("1", "Cats"), ("2", "birds sing")], sys.argv[1])
"""


def test_a_kill_9_leaves_fixed_names_that_the_next_run_replaces(saved_model, tmp_path):
    _, path = saved_model
    work = tmp_path / "work"
    work.mkdir()
    src, out = work / "in.txt", work / "out.npy"
    src.write_text("Cats\nbirds sing\n")
    env = dict(os.environ, PYTHONPATH=SRC)
    proc = subprocess.run(
        [sys.executable, "-c", _DIE_MIDWAY, str(out)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert _hidden(work) == [".out.ids.txt.partial", ".out.npy.partial"]  # fixed names, no random part
    assert main(["encode", "--model", str(path), "--input", str(src), "--output", str(out)]) == 0
    assert sorted(p.name for p in work.iterdir()) == ["in.txt", "out.ids.txt", "out.npy"]
    assert np.load(out).shape == (2, 32)


# ----------------------------------------------------------------------------- 2. mine's numbers and cache


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("batch_size=-1", "batch_size"),
        ("batch_size=0", "batch_size"),
        ("top_k=0", "top_k"),
        ("num_negatives=0", "num_negatives"),
        ("shard_size=0", "shard_size"),
        ("query_shard_size=-3", "query_shard_size"),
        ("max_length=0", "max_length"),
        ("reranker_max_length=0", "reranker_max_length"),
        ("min_negatives=-1", "min_negatives"),
        ("min_negatives=8", "min_negatives"),  # more than num_negatives = 7: no record could be written
        ("window_start=-1", "window_start"),
        ("window_end=0", "window_end"),
        ("hnsw_m=0", "hnsw_m"),
        ("ef_search=0", "ef_search"),
        ("ivf_nlist=0", "ivf_nlist"),
        ("ivf_nprobe=0", "ivf_nprobe"),
        ("rrf_k=-1", "rrf_k"),
        ("seed=-1", "seed"),
        ("relative_margin=1.0", "relative_margin"),
        ("relative_margin=-0.1", "relative_margin"),
        ("absolute_margin=-0.2", "absolute_margin"),
    ],
)
def test_mine_config_rejects_bad_numbers(override, field):
    with pytest.raises(ValueError, match=rf"MineConfig\.{field}: must be"):
        load(MineConfig, None, [override])


def test_mine_config_accepts_its_defaults_and_disabled_margins():
    cfg = load(MineConfig, None, ["relative_margin=none", "absolute_margin=none", "min_negatives=0"])
    assert cfg.relative_margin is None and cfg.absolute_margin is None
    assert replace(cfg, max_length=None, window_end=None, ivf_nlist=None).max_length is None


def test_mine_cli_rejects_a_negative_batch_size_before_loading_teachers(tmp_path, capsys, no_model_loading):
    out = tmp_path / "mined.jsonl"
    argv = ["mine", "--train", str(FIX / "train.jsonl"), "--out", str(out), "--batch-size", "-1"]
    assert main(argv) == 2
    assert "MineConfig.batch_size: must be >= 1, got -1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


CFG = MineConfig(task="MSMARCO", top_k=8, num_negatives=3, shard_size=4, query_shard_size=3, seed=3)


def _mine(out: Path, cfg: MineConfig = CFG, *, train: Path = FIX / "train.jsonl", **kw) -> Path:
    kw.setdefault("retriever", fake.FakeRetriever())
    kw.setdefault("reranker", fake.FakeReranker())
    mine.run(cfg, train, out, corpus=FIX / "corpus.jsonl", **kw)
    return out


class _BrokenRetriever(fake.FakeRetriever):
    """What a teacher run with ``batch_size=-1`` returned: a matrix that was never filled (NaN here)."""

    def encode_documents(self, texts, *, task=None):
        return np.full((len(texts), fake.DIM), np.nan, np.float32)


def test_a_broken_teacher_is_not_cached_and_a_corrected_rerun_is_clean(tmp_path):
    reference = _mine(tmp_path / "reference" / "mined.jsonl")
    out, cache = tmp_path / "run" / "mined.jsonl", tmp_path / "cache"
    with pytest.raises(ValueError, match=r"corpus shard 0: .*non-finite"):
        _mine(out, cache_dir=cache, retriever=_BrokenRetriever())
    assert not out.exists() and not list(cache.glob("corpus-*/shard_*"))
    _mine(out, cache_dir=cache)
    assert out.read_bytes() == reference.read_bytes()


def test_a_cached_shard_that_is_not_valid_is_recomputed(tmp_path):
    reference = _mine(tmp_path / "reference" / "mined.jsonl")
    out, cache = tmp_path / "run" / "mined.jsonl", tmp_path / "cache"
    _mine(out, cache_dir=cache)
    for shard in [*cache.glob("corpus-*/shard_00001.npy"), *cache.glob("rerank-*/shard_00001.npz")]:
        if shard.suffix == ".npy":
            np.save(shard, np.full((CFG.shard_size, fake.DIM), np.nan, np.float32))
        else:
            with np.load(shard) as saved:
                np.savez(shard, pos=saved["pos"] * np.nan, cand=saved["cand"])
    out.unlink()
    _mine(out, cache_dir=cache)
    assert out.read_bytes() == reference.read_bytes()


def test_the_rescoring_cache_key_covers_the_positives(tmp_path):
    """Same queries and corpus, one positive changed: the cached soft labels must not be reused."""
    rows = [json.loads(x) for x in (FIX / "train.jsonl").read_text().splitlines()]
    positives = {
        p for r in rows for p in ([r["positive"]] if isinstance(r["positive"], str) else r["positive"])
    }
    other = next(t for t in load_corpus(FIX / "corpus.jsonl") if t not in positives)
    changed = tmp_path / "changed.jsonl"
    changed.write_text("".join(json.dumps(r) + "\n" for r in [{**rows[0], "positive": other}, *rows[1:]]))
    cache = tmp_path / "cache"
    _mine(tmp_path / "first" / "mined.jsonl", cache_dir=cache)
    cached = _mine(tmp_path / "second" / "mined.jsonl", train=changed, cache_dir=cache)
    fresh = _mine(tmp_path / "fresh" / "mined.jsonl", train=changed)
    assert cached.read_bytes() == fresh.read_bytes()


def test_batch_size_is_part_of_the_cache_keys(tmp_path):
    """A batch's composition changes a real model's floats, so another batch size is another cache."""
    cache = tmp_path / "cache"
    _mine(tmp_path / "a" / "mined.jsonl", cache_dir=cache)
    _mine(tmp_path / "b" / "mined.jsonl", replace(CFG, batch_size=8), cache_dir=cache)
    assert len(list(cache.glob("corpus-*"))) == 2 and len(list(cache.glob("rerank-*"))) == 2


# ----------------------------------------------------------------------------- 4. byte-identical resume


class _BatchSensitiveBow:
    """Bag-of-words vectors nudged by the size of the call that encoded them, as a real model's floats
    move with the batch they were padded in; records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    def _encode(self, role: str, texts) -> np.ndarray:
        self.calls.append((role, tuple(texts)))
        vecs = fake.embed(texts)
        vecs[:, 0] += 1e-3 * len(texts)
        return vecs

    def encode_queries(self, texts, *, task=None, instruction=None, batch_size=32):
        return self._encode("query", texts)

    def encode_documents(self, texts, *, task=None, batch_size=32):
        return self._encode("document", texts)


class _Killed(Exception):
    pass


def _kill_after_rerank_shard(shard: int):
    def hook(stage: str, i: int) -> None:
        if (stage, i) == ("rerank", shard):
            raise _Killed

    return hook


def test_resume_with_a_bi_encoder_reranker_is_byte_identical(tmp_path):
    cfg = replace(CFG, query_shard_size=2, teacher_embeddings=True)
    whole = _BatchSensitiveBow()
    reference = _mine(
        tmp_path / "reference" / "mined.jsonl", cfg, reranker=BiEncoder(whole, name="bi:x", batch_size=3)
    )
    out, cache = tmp_path / "resumed" / "mined.jsonl", tmp_path / "cache"
    with pytest.raises(_Killed):
        _mine(
            out,
            cfg,
            cache_dir=cache,
            reranker=BiEncoder(_BatchSensitiveBow(), name="bi:x", batch_size=3),
            on_progress=_kill_after_rerank_shard(1),
        )
    assert len(list(cache.glob("rerank-*/shard_*"))) == 2
    resumed = _BatchSensitiveBow()
    _mine(out, cfg, cache_dir=cache, reranker=BiEncoder(resumed, name="bi:x", batch_size=3))
    assert out.read_bytes() == reference.read_bytes()
    a, b = np.load(out.with_name("mined.teacher.npz")), np.load(reference.with_name("mined.teacher.npz"))
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key])
    # the invariant behind it: every batch the resumed run encoded is one the uninterrupted run encoded
    assert resumed.calls and set(resumed.calls) <= set(whole.calls)
    assert all(len(texts) <= 3 for _, texts in whole.calls)


# ---------------------------------------------------------------------- unknown --task, every model kind


@pytest.mark.parametrize("kind", ["decoder", "encoder"])
def test_encode_refuses_an_unknown_task_for_every_model(
    make_embedder, tmp_path, capsys, kind, no_model_loading
):
    # an encoder without instructions used to ignore the name; now every model gets the same error
    overrides = {} if kind == "decoder" else {"use_instructions": False}
    path = make_embedder("llama", **overrides).save(tmp_path / "tiny")
    src = tmp_path / "in.txt"
    src.write_text("one\n")
    out = str(tmp_path / "v.npy")
    code = main(["encode", "--model", str(path), "--input", str(src), "--output", out, "--task", "SciFactt"])
    assert code == 2
    err = capsys.readouterr().err
    assert "SciFactt" in err and "Did you mean: SciFact" in err
    assert not (tmp_path / "v.npy").exists()

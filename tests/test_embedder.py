"""Embedder invariants on tiny random llama / mistral / qwen2 / gemma3 backbones."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from anna_embed.model.embedder import Embedder, truncate_dims
from anna_embed.model.tokenization import encode_ids, special_ids

ARCHS = ["llama", "mistral", "qwen2", "gemma3"]
TEXTS = [
    "A man is playing a guitar on the stage.",
    "Cats",
    "The stock market fell sharply today after the report, and analysts were surprised by the drop.",
    "Someone plays an instrument.",
    "birds sing",
]
EXAMPLES = [("Who wrote Hamlet?", "Shakespeare did."), ("The capital of France?", "Paris.")]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("arch", ARCHS)
def test_left_and_right_padding_give_identical_vectors(make_embedder, arch):
    right = make_embedder(arch, padding_side="right")
    left = Embedder(right.model, right.tokenizer, dataclasses.replace(right.config, padding_side="left"))
    a = right.encode(TEXTS, batch_size=5)
    b = left.encode(TEXTS, batch_size=5)
    assert np.allclose(a, b, atol=1e-5)
    # and the batch really was padded on the chosen side
    batch = left.tokenize(["a", "a much longer text here"])
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_prefix_cache_matches_full_recomputation(make_embedder, arch, pooling):
    emb = make_embedder(arch, pooling=pooling)
    prefix = emb.query_prefix("SciFact", examples=EXAMPLES)
    cached = emb.encode(TEXTS, prefix=prefix, batch_size=2, prefix_cache=True)
    full = emb.encode(TEXTS, prefix=prefix, batch_size=2, prefix_cache=False)
    assert _cos(cached, full).min() >= 0.9999


def test_prefix_cache_is_used_for_newline_terminated_prefixes(make_embedder, monkeypatch):
    emb = make_embedder("llama")
    seen = []
    original = emb._run_sorted
    monkeypatch.setattr(emb, "_run_sorted", lambda ids, *a: seen.append(len(ids)) or original(ids, *a))
    emb.encode(TEXTS, prefix=emb.query_prefix("SciFact", examples=EXAMPLES), prefix_cache=True)
    assert seen == []  # no text fell back to full recomputation


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_equals_one_by_one(make_embedder, arch):
    emb = make_embedder(arch)
    batched = emb.encode_queries(TEXTS, task="STSBenchmark", batch_size=3)
    single = np.concatenate([emb.encode_queries([t], task="STSBenchmark") for t in TEXTS])
    assert np.allclose(batched, single, atol=1e-5)


def test_outputs_are_unit_norm_and_matryoshka_renormalises(make_embedder):
    emb = make_embedder("llama")
    full = emb.encode(TEXTS)
    assert full.shape == (len(TEXTS), 32)
    assert np.allclose(np.linalg.norm(full, axis=1), 1, atol=1e-5)
    cut = emb.encode(TEXTS, dimensions=8)
    assert cut.shape == (len(TEXTS), 8)
    expected = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    assert np.allclose(cut, expected, atol=1e-5)
    with pytest.raises(ValueError):
        truncate_dims(full, 0)


def test_truncation_keeps_prefix_and_ends_with_eos(tiny_tokenizer):
    sp = special_ids(tiny_tokenizer)
    prefix = "Instruct: Find sentences with the same meaning.\nQuery:\n"
    long_text = "A man is playing a guitar on the stage. " * 20
    (ids,), truncated = encode_ids(tiny_tokenizer, [prefix + long_text], max_length=24, append_eos=True)
    assert truncated == 1
    assert len(ids) == 24
    assert ids[-1] == sp.eos
    prefix_ids = tiny_tokenizer(prefix)["input_ids"]
    assert ids[: len(prefix_ids)] == prefix_ids  # the text lost tokens, not the instruction
    (short,), n = encode_ids(tiny_tokenizer, ["Cats"], max_length=24, append_eos=True)
    assert n == 0 and short[-1] == sp.eos and short.count(sp.eos) == 1


def test_truncated_texts_pool_the_eos_token(make_embedder):
    emb = make_embedder("llama", max_length=12)
    batch = emb.tokenize([TEXTS[2], TEXTS[1]])
    last = batch["attention_mask"].sum(1) - 1
    assert (batch["input_ids"][torch.arange(2), last] == emb.specials.eos).all()
    assert emb.truncated_count == 1


def test_pad_token_fallback_uses_eos():
    from conftest import build_tokenizer

    tok = build_tokenizer(with_pad=False)
    assert tok.pad_token_id is None
    sp = special_ids(tok)
    assert sp.pad == tok.eos_token_id


def test_prefix_too_long_is_a_clear_error(make_embedder):
    emb = make_embedder("llama")
    own = emb.check_prefix(emb.query_prefix("SciFact"))
    emb.config = dataclasses.replace(emb.config, max_length=own + 1)
    for cache in (True, False):
        with pytest.raises(ValueError, match="no room for text"):
            emb.encode(["hello"], prefix=emb.query_prefix("SciFact", examples=EXAMPLES), prefix_cache=cache)
    emb.config = dataclasses.replace(emb.config, max_length=own + 2)  # examples have their own budget
    assert emb.encode(["hello"], prefix=emb.query_prefix("SciFact", examples=EXAMPLES)).shape == (1, 32)


def test_examples_never_cut_the_query_and_are_fitted_by_tokens(make_embedder, monkeypatch):
    from anna_embed import prompts as P
    from anna_embed.model.tokenization import CLIP_MARK, added_tokens, clip_tokens

    emb = make_embedder("llama", max_length=32, shot_max_tokens=6)
    tok, task = emb.tokenizer, "STSBenchmark"
    long = "The stock market fell sharply today after the report. " * 5
    examples = [
        ("Who wrote Hamlet?", long),
        ("Cats and dogs are common pets", "birds sing"),
        ("A man", "Cats"),
    ]
    # clipping by tokens: 6 tokens of the text, then the mark
    clipped = [(clip_tokens(tok, q, 6), clip_tokens(tok, r, 6)) for q, r in examples]
    assert clipped[0][1].endswith(CLIP_MARK) and long.startswith(clipped[0][1][: -len(CLIP_MARK)])
    assert len(tok(clipped[0][1][: -len(CLIP_MARK)], add_special_tokens=False)["input_ids"]) == 6
    assert clipped[1][0].endswith(CLIP_MARK) and clipped[2] == examples[2]
    base = emb.query_prefix(task)
    need = [added_tokens(tok, P.query_prefix(task, examples=clipped[:k]), base) for k in (1, 2, 3)]
    assert need[0] < need[1] < need[2]
    # whole examples are dropped, the last first, until the block fits its budget
    for budget, kept in ((need[2], 3), (need[2] - 1, 2), (need[1] - 1, 1), (need[0] - 1, 0)):
        emb.config = dataclasses.replace(emb.config, examples_max_length=budget)
        fitted = emb.fit_examples(task, examples=examples)
        assert fitted.examples == tuple(clipped[:kept]) and fitted.dropped == 3 - kept
        assert emb.query_prefix(task, examples=examples) == P.query_prefix(task, examples=clipped[:kept])
        assert emb.document_prefix(task, examples=examples) == fitted.prefix  # symmetric: same examples
    # the query's own ids are identical with and without the example block, truncation included
    emb.config = dataclasses.replace(emb.config, examples_max_length=need[1])
    prefix = emb.query_prefix(task, examples=examples)
    n = emb.example_tokens(prefix)
    assert n == need[1] and prefix != base
    seen: list[list[int]] = []
    monkeypatch.setattr(emb, "_run_sorted", lambda ids, *a: seen.extend(ids) or np.zeros((len(ids), 32)))
    for text, cut in ((TEXTS[2] * 2, True), (TEXTS[1], False)):  # truncated by max_length alone / short
        seen.clear()
        emb.encode([text], prefix=base, prefix_cache=False)
        emb.encode([text], prefix=prefix, prefix_cache=False)
        alone, with_examples = seen
        assert (len(alone) == 32) == cut
        assert len(with_examples) == len(alone) + n and with_examples[n:] == alone
        trained = emb.tokenize([prefix + text], extra=[n])["input_ids"][0].tolist()
        assert trained == with_examples  # training tokenizes the same ids


def test_query_and_document_prompts(make_embedder):
    emb = make_embedder("llama")
    q = emb.query_prefix("SciFact", examples=EXAMPLES)
    # examples first, then the instruction and the query slot
    assert q.index("Who wrote Hamlet?") < q.rindex("Instruct:")
    assert q.endswith("Query:\n")
    assert emb.document_prefix("SciFact") == ""  # asymmetric: raw documents
    assert emb.document_prefix("STSBenchmark") == emb.query_prefix("STSBenchmark")  # symmetric
    # what encode_queries embeds is exactly prefix + text
    direct = emb.encode([q + TEXTS[0]], prefix_cache=False)
    via = emb.encode_queries([TEXTS[0]], task="SciFact", examples=EXAMPLES)
    assert np.allclose(direct, via, atol=1e-5)


def test_unknown_task_needs_an_explicit_instruction(make_embedder):
    from anna_embed.tasks import UnknownTaskError

    emb = make_embedder("llama")
    with pytest.raises(UnknownTaskError):
        emb.query_prefix("MyOwnTask")
    assert emb.query_prefix("MyOwnTask", instruction="Find X.") == "Instruct: Find X.\nQuery:\n"
    assert emb.document_prefix("MyOwnTask", instruction="Find X.") == ""


def test_mteb_protocol_call_applies_instruction_and_role(make_embedder):
    import mteb
    from mteb.models import EncoderProtocol
    from mteb.types import PromptType

    emb = make_embedder("llama")
    assert isinstance(emb, EncoderProtocol)
    assert emb.mteb_model_meta.embed_dim == 32
    meta = mteb.get_task("SciFact").metadata
    loader = [{"text": TEXTS[:3]}, {"text": TEXTS[3:]}]
    q = emb.encode(
        loader, task_metadata=meta, hf_split="test", hf_subset="default", prompt_type=PromptType.query
    )
    d = emb.encode(
        loader, task_metadata=meta, hf_split="test", hf_subset="default", prompt_type=PromptType.document
    )
    assert np.allclose(q, emb.encode_queries(TEXTS, task="SciFact"), atol=1e-5)
    assert np.allclose(d, emb.encode_documents(TEXTS, task="SciFact"), atol=1e-5)
    assert not np.allclose(q, d, atol=1e-3)
    emb.task_examples["SciFact"] = EXAMPLES
    q_shots = emb.encode(
        loader, task_metadata=meta, hf_split="test", hf_subset="default", prompt_type=PromptType.query
    )
    assert np.allclose(q_shots, emb.encode_queries(TEXTS, task="SciFact", examples=EXAMPLES), atol=1e-5)


def test_save_loads_in_sentence_transformers_and_back(make_embedder, tmp_path):
    from sentence_transformers import SentenceTransformer

    emb = make_embedder("qwen2")
    path = emb.save(tmp_path / "model", training_datasets=["scifact_train"])
    st = SentenceTransformer(str(path), device="cpu")
    for task in ("STSBenchmark", "SciFact"):
        ours = emb.encode_documents(TEXTS, task=task)
        theirs = st.encode(TEXTS, prompt_name=f"{task}-document", normalize_embeddings=True)
        assert _cos(ours, theirs).min() >= 0.9999
    ours_q = emb.encode_queries(TEXTS, task="SciFact")
    theirs_q = st.encode(TEXTS, prompt_name="SciFact-query", normalize_embeddings=True)
    assert _cos(ours_q, theirs_q).min() >= 0.9999

    again = Embedder.from_pretrained(path)
    assert again.config.training_datasets == ("scifact_train",)
    assert again.config.templates == emb.config.templates
    assert np.allclose(again.encode_queries(TEXTS, task="SciFact"), ours_q, atol=1e-5)
    # the live tokenizer was not changed by the export
    assert emb.tokenizer("x")["input_ids"][-1] != emb.specials.eos


def test_prefix_memory_is_bounded_and_keeps_the_newest(make_embedder, monkeypatch):
    from anna_embed.model import prompting as E

    monkeypatch.setattr(E, "PREFIX_MEMORY", 2)
    emb = make_embedder("llama", max_length=32, shot_max_tokens=6)
    prefixes = [emb.query_prefix("STSBenchmark", examples=[(f"x{i}", "answer")]) for i in range(3)]
    assert emb.example_tokens(prefixes[0]) == 0  # forgotten: counts as all instruction
    assert emb.example_tokens(prefixes[1]) > 0 and emb.example_tokens(prefixes[2]) > 0
    assert len(emb._example_tokens) == 2

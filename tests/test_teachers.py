"""Teachers: spec parsing, the bi-encoder's cache, a real CrossEncoder and a causal-LM judge (tiny models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anna_embed.mine import teachers
from anna_embed.mine.rerankers import CrossEncoderReranker, LLMJudgeReranker
from anna_embed.mine.teachers import BiEncoder, parse_spec
from anna_embed.records import TeacherEmbeddings, teacher_embeddings_path

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "mat",
    "glacier",
    "ice",
    "cave",
    "dog",
    "caves",
    "form",
    "in",
    "how",
    "do",
    "yes",
    "no",
    "document",
    "query",
    "relevant",
]


def test_parse_spec():
    assert parse_spec("cross:/models/x") == ("cross", "/models/x")
    assert parse_spec("judge:smollm2-135m-instruct") == ("judge", "smollm2-135m-instruct")
    assert parse_spec("all-mpnet-base-v2") == ("bi", "all-mpnet-base-v2")
    assert parse_spec("C:/weird/path") == ("bi", "C:/weird/path")  # not a teacher kind: part of the name
    with pytest.raises(ValueError, match="names no model"):
        parse_spec("cross:")
    with pytest.raises(ValueError, match="only bi-encoders"):
        teachers.load_retriever("judge:x")


class _CountingEncoder:
    def __init__(self):
        self.seen: list[tuple[str, str, object, object]] = []
        rng = np.random.default_rng(0)
        self.table: dict[str, np.ndarray] = {}
        self.rng = rng

    def _vec(self, text):
        if text not in self.table:
            self.table[text] = self.rng.normal(size=8)
        return self.table[text]

    def encode_queries(self, texts, *, task=None, instruction=None, batch_size=32):
        self.seen += [("query", t, task, instruction) for t in texts]
        return np.stack([self._vec("q:" + t) for t in texts])

    def encode_documents(self, texts, *, task=None, batch_size=32):
        self.seen += [("document", t, task, None) for t in texts]
        return np.stack([self._vec("d:" + t) for t in texts])


def test_bi_encoder_scores_cosines_and_encodes_each_text_once():
    enc = _CountingEncoder()
    bi = BiEncoder(enc, name="bi:test")
    scores = bi.score(["a", "a", "b"], ["x", "y", "x"], task="SciFact")
    q, d = enc.table["q:a"], enc.table["d:y"]
    assert scores[1] == pytest.approx(q @ d / np.linalg.norm(q) / np.linalg.norm(d), rel=1e-5)
    assert bi.score_kind == "cosine"
    again = bi.score(["b", "a"], ["y", "x"], task="SciFact")
    assert again[1] == pytest.approx(scores[0])
    assert sorted(t for _, t, _, _ in enc.seen) == ["a", "b", "x", "y"]  # four distinct texts, once each


def test_bi_encoder_passes_known_tasks_and_drops_unknown_ones():
    enc = _CountingEncoder()
    bi = BiEncoder(enc, name="bi:test")
    bi.encode_queries(["q"], task="SciFact", instruction=None)
    bi.encode_queries(["q"], task="MyPrivateTask", instruction="Find it.")
    bi.encode_documents(["d"], task="MyPrivateTask")
    assert [(r, task, instr) for r, _, task, instr in enc.seen] == [
        ("query", "SciFact", None),
        ("query", None, "Find it."),
        ("document", None, None),
    ]


# ----------------------------------------------------------------------------- CrossEncoder (real path)


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory):
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    folder = tmp_path_factory.mktemp("cross")
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    tokenizer = BertTokenizer(vocab=vocab)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=1,
        max_position_embeddings=64,
    )
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model, tokenizer


def test_cross_encoder_returns_raw_logits(tiny_cross_encoder):
    folder, model, tokenizer = tiny_cross_encoder
    reranker = teachers.load_reranker(f"cross:{folder}", batch_size=2)
    assert isinstance(reranker, CrossEncoderReranker) and reranker.score_kind == "logit"
    queries, docs = ["the cat", "how do caves form", "dog"], ["sat on mat", "glacier ice cave", "cat"]
    scores = reranker.score(queries, docs)
    with torch.no_grad():
        expect = [
            model(**tokenizer([q], [d], return_tensors="pt")).logits.item()
            for q, d in zip(queries, docs, strict=True)
        ]
    assert scores == pytest.approx(expect, abs=1e-5)  # no sigmoid applied
    assert len(set(np.round(scores, 6))) == 3


# ----------------------------------------------------------------------------- causal-LM judge


@pytest.fixture(scope="module")
def tiny_judge():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[EOS]", *WORDS, ":", "?", "."])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=2,
    )
    return LlamaForCausalLM(config).eval(), tokenizer


def test_judge_scores_yes_minus_no_and_batching_does_not_change_them(tiny_judge):
    model, tokenizer = tiny_judge
    judge = LLMJudgeReranker(model, tokenizer, name="judge:tiny", batch_size=3)
    assert judge.score_kind == "logit" and not judge.use_chat
    queries = ["how do caves form", "the cat", "dog", "how do caves form"]
    docs = ["glacier ice cave caves form in the ice of the glacier", "cat", "the dog sat on the mat", "dog"]
    batched = judge.score(queries, docs, task="SciFact")
    one_by_one = np.concatenate(
        [judge.score([q], [d], task="SciFact") for q, d in zip(queries, docs, strict=True)]
    )
    assert batched == pytest.approx(one_by_one, abs=1e-4)
    text = judge.build_inputs(queries[0], docs[0], "Find it.")
    assert text.endswith("\nAnswer:") and "Find it." in text
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        last = model(input_ids=ids).logits[0, -1]
    yes, no = tokenizer.convert_tokens_to_ids(["yes", "no"])
    assert judge.score([queries[0]], [docs[0]], instruction="Find it.")[0] == pytest.approx(
        (last[yes] - last[no]).item(), abs=1e-5
    )


def test_judge_truncates_documents_and_uses_the_chat_template(tiny_judge):
    model, tokenizer = tiny_judge
    judge = LLMJudgeReranker(model, tokenizer, name="judge:tiny", max_document_tokens=3)
    text = judge.build_inputs("q", "the cat sat on the mat", None)
    assert "Document: the cat sat\n" in text and "mat" not in text
    chat = tokenizer.__class__(
        tokenizer_object=tokenizer.backend_tokenizer, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
    )
    chat.chat_template = "{% for m in messages %}<{{ m.role }}> {{ m.content }} {% endfor %}<assistant>"
    chatty = LLMJudgeReranker(model, chat, name="judge:tiny-chat")
    assert chatty.use_chat
    text = chatty.build_inputs("q", "cat", None)
    assert text.startswith("<user> Judge whether") and text.endswith("<assistant>")


# ----------------------------------------------------------------------------- real offline models


@pytest.mark.integration
def test_offline_minilm_retriever_ranks_the_relevant_document_first():
    retriever = teachers.load_retriever("all-minilm-l6-v2")
    q = retriever.encode_queries(["how are glacier caves formed"], task="MSMARCO")
    d = retriever.encode_documents(
        [
            "A glacier cave is a cave formed within the ice of a glacier.",
            "The stock market fell sharply on Monday.",
        ],
        task="MSMARCO",
    )
    assert q.shape == (1, 384) and np.allclose(np.linalg.norm(d, axis=1), 1, atol=1e-5)
    scores = (q @ d.T)[0]
    assert scores[0] > scores[1] + 0.3


# ----------------------------------------------------------------------------- sentence-transformers-only


def _modules(folder, types: list[str], pooling: dict | None = None):
    import json

    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {"idx": i, "name": str(i), "path": "" if i == 0 else f"{i}_{t.rsplit('.', 1)[-1]}", "type": t}
        for i, t in enumerate(types)
    ]
    (folder / "modules.json").write_text(json.dumps(rows))
    if pooling is not None:
        (folder / "1_Pooling").mkdir(exist_ok=True)
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return folder


def test_sentence_transformers_only_names_what_the_embedder_would_drop(tmp_path):
    from anna_embed.model.folder import sentence_transformers_only

    legacy = ["sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling"]
    mean = {"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False, "include_prompt": True}
    minilm = _modules(tmp_path / "minilm", [*legacy, "sentence_transformers.models.Normalize"], mean)
    assert sentence_transformers_only(minilm) == []  # MiniLM / mpnet keep the Embedder path
    gemma = [*legacy, "sentence_transformers.models.Dense", "sentence_transformers.models.Dense"]
    assert sentence_transformers_only(_modules(tmp_path / "gemma", gemma, mean)) == ["Dense", "Dense"]
    new_names = ["sentence_transformers.base.modules.transformer.Transformer", "x.pooling.Pooling"]
    maxpool = {"pooling_mode_max_tokens": True}
    assert sentence_transformers_only(_modules(tmp_path / "max", new_names, maxpool)) == [
        "Pooling(pooling_mode_max_tokens)"
    ]
    # sentence-transformers 6 writes one "pooling_mode" string (and may leave the prompt out of the mean)
    v6 = _modules(tmp_path / "v6", new_names, {"pooling_mode": "cls", "include_prompt": True})
    assert sentence_transformers_only(v6) == []
    v6_max = _modules(tmp_path / "v6max", new_names, {"pooling_mode": "max"})
    assert sentence_transformers_only(v6_max) == ["Pooling(pooling_mode=max)"]
    v6_prompt = _modules(tmp_path / "v6p", new_names, {"pooling_mode": "mean", "include_prompt": False})
    assert sentence_transformers_only(v6_prompt) == ["Pooling(include_prompt=false)"]
    both = {"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True}  # concatenated: twice the width
    assert sentence_transformers_only(_modules(tmp_path / "both", new_names, both)) == [
        "Pooling(pooling_mode_mean_tokens + pooling_mode_cls_token)"
    ]
    assert sentence_transformers_only(tmp_path) == []  # no modules.json: a plain HF folder


@pytest.fixture(scope="module")
def tiny_st_folder(tmp_path_factory):
    """A random bidirectional Gemma 3 + mean Pooling + Dense + Normalize with query/document prompts, laid
    out as EmbeddingGemma is (``model_type: gemma3_text``, which the Embedder takes for a decoder)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as st_modules

    from conftest import build_backbone, build_tokenizer

    root = tmp_path_factory.mktemp("st")
    tokenizer = build_tokenizer()
    backbone = build_backbone("gemma3", len(tokenizer))
    backbone.config.use_bidirectional_attention = True
    backbone.save_pretrained(root / "backbone")
    tokenizer.save_pretrained(root / "backbone")
    torch.manual_seed(0)
    model = SentenceTransformer(
        modules=[
            st_modules.Transformer(str(root / "backbone")),
            st_modules.Pooling(32, "mean"),
            st_modules.Dense(32, 12, activation_function=torch.nn.Identity()),
            st_modules.Normalize(),
        ],
        prompts={"query": "task: search result | query: ", "document": "title: none | text: "},
        device="cpu",
    )
    model.save(str(root / "model"))
    return root / "model"


def test_st_only_folder_is_a_teacher_with_its_own_prompts(tiny_st_folder):
    from sentence_transformers import SentenceTransformer

    from anna_embed.mine.teachers import SentenceTransformerEncoder

    queries = ["how do caves form", "the cat"]
    docs = ["A glacier cave is formed in the ice.", "The cat sat on the mat.", "Stock prices fell."]
    retriever = teachers.load_retriever(f"bi:{tiny_st_folder}", batch_size=2)
    assert isinstance(retriever, BiEncoder) and isinstance(retriever.encoder, SentenceTransformerEncoder)
    reference = SentenceTransformer(str(tiny_st_folder), device="cpu")
    expect_q = reference.encode(queries, prompt_name="query")
    expect_d = reference.encode(docs, prompt_name="document")
    q = retriever.encode_queries(queries, task="SciFact", instruction="ignored")
    d = retriever.encode_documents(docs, task="SciFact")
    assert q.shape == (2, 12) and d.shape == (3, 12)  # the Dense layer's width, not the backbone's 32
    np.testing.assert_allclose(q, expect_q, atol=1e-5)
    np.testing.assert_allclose(d, expect_d, atol=1e-5)
    # the prompts matter: the same text is a different vector as a query and as a document
    assert not np.allclose(
        retriever.encode_queries(docs[:1]), retriever.encode_documents(docs[:1]), atol=1e-3
    )
    reranker = teachers.load_reranker(f"bi:{tiny_st_folder}")
    assert reranker.score_kind == "cosine"
    scores = reranker.score([queries[0]] * 3, docs)
    np.testing.assert_allclose(scores, expect_d @ expect_q[0], atol=1e-5)


def test_bf16_teacher_is_named_apart_and_close_to_float32(tiny_st_folder):
    import torch

    docs = ["A glacier cave is formed in the ice.", "The cat sat on the mat.", "Stock prices fell."]
    full = teachers.load_retriever(f"bi:{tiny_st_folder}", max_length=64)
    half = teachers.load_reranker(f"bi:{tiny_st_folder}", max_length=64, dtype="bfloat16")
    assert full.name == f"bi:{tiny_st_folder}@64" and half.name == f"bi:{tiny_st_folder}@64#bfloat16"
    assert {p.dtype for p in half.encoder.model.parameters()} == {torch.bfloat16}
    a, b = full.encode_documents(docs), half.encode_documents(docs)
    assert b.dtype == np.float32
    cos = (a * b).sum(1)  # both L2-normalised
    assert cos.min() > 0.99 and not np.array_equal(a, b)


def test_embedder_refuses_an_st_only_folder_with_a_pointer_to_teachers(tiny_st_folder):
    from anna_embed.model.embedder import Embedder
    from anna_embed.model.folder import SentenceTransformersOnlyError

    with pytest.raises(SentenceTransformersOnlyError, match=r"Dense.*bi:NAME"):
        Embedder.from_pretrained(tiny_st_folder)


# ----------------------------------------------------------------------------- teacher embeddings file


def test_teacher_embeddings_round_trip_and_come_from_the_teachers_cache(tmp_path):
    enc = _CountingEncoder()
    bi = BiEncoder(enc, name="bi:test")
    records = [
        {"query": "q1", "pos": ["a"], "neg": ["b", "c"], "task": "SciFact", "instruction": None},
        {"query": "q2", "pos": ["b"], "neg": ["a"], "task": "SciFact", "instruction": "Find it."},
        {"query": "q1", "pos": ["d"], "neg": ["é ü"], "task": "MyTask", "instruction": "Other."},
    ]
    scores = bi.score(["q2", "q2"], ["b", "a"], task="SciFact", instruction="Find it.")
    seen = len(enc.seen)
    te = teachers.embed_mined_records(bi, records)
    assert te.query_texts == ("q1", "q2", "q1") and te.teacher == "bi:test" and te.score_kind == "cosine"
    assert set(zip(te.document_tasks, te.document_texts, strict=True)) == {
        ("SciFact", "a"),
        ("SciFact", "b"),
        ("SciFact", "c"),
        ("MyTask", "d"),
        ("MyTask", "é ü"),
    }
    assert len(enc.seen) - seen == 2 + 3  # new: q1 twice (two prompts); c, d, "é ü" (q2, a, b cached)
    docs = {(t, x): v for t, x, v in zip(te.document_tasks, te.document_texts, te.document_emb, strict=True)}
    assert te.query_emb[1] @ docs[("SciFact", "b")] == pytest.approx(scores[0], abs=1e-6)
    path = teacher_embeddings_path(tmp_path / "mined.jsonl")
    assert path.name == "mined.teacher.npz"
    back = TeacherEmbeddings.load(te.save(path))
    assert back.query_texts == te.query_texts and back.document_texts == te.document_texts
    assert back.document_tasks == te.document_tasks and back.teacher == te.teacher
    np.testing.assert_array_equal(back.query_emb, te.query_emb)
    np.testing.assert_array_equal(back.document_emb, te.document_emb)


@pytest.mark.integration
def test_offline_embeddinggemma_teacher_ranks_the_relevant_document_first():
    from anna_embed.model.weights import is_provisioned

    if not is_provisioned("embeddinggemma-300m"):
        pytest.skip("anna-embed models pull embeddinggemma-300m first")
    retriever = teachers.load_retriever("bi:embeddinggemma-300m", max_length=64)
    q = retriever.encode_queries(["how are glacier caves formed", "what did the stock market do"])
    d = retriever.encode_documents(
        [
            "A glacier cave is a cave formed within the ice of a glacier.",
            "The stock market fell sharply on Monday.",
        ]
    )
    assert q.shape == (2, 768)
    scores = q @ d.T
    assert scores[0, 0] > scores[0, 1] + 0.2 and scores[1, 1] > scores[1, 0] + 0.2

"""Teachers: spec parsing, the bi-encoder's cache, a real CrossEncoder and a causal-LM judge (tiny models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anna_embed import teachers
from anna_embed.teachers import BiEncoder, CrossEncoderReranker, LLMJudgeReranker, parse_spec

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

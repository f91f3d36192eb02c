"""Shared fixtures: a tiny byte-level BPE tokenizer, tiny random decoder backbones and a tiny random BERT
sentence-transformers folder (no downloads)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
import torch

CORPUS = [
    "A man is playing a guitar on the stage.",
    "Someone plays an instrument for the crowd.",
    "The stock market fell sharply today after the report.",
    "Instruct: Find sentences with the same meaning.\nQuery:\n",
    "Given a scientific claim, find paper abstracts that confirm or contradict it.",
    "Response:\nThe capital of France is Paris. Who wrote Hamlet? Shakespeare did.",
    "Cats and dogs are common pets; birds sing in the morning.",
]
BOS, EOS = "<|im_start|>", "<|im_end|>"


def build_tokenizer(*, with_pad: bool = True):
    """A small byte-level BPE tokenizer (GPT-2 style pre-tokenization), trained here on CORPUS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 3, trainer=trainer)
    kwargs = {"pad_token": EOS} if with_pad else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, **kwargs)


def build_backbone(arch: str, vocab_size: int, *, seed: int = 0) -> torch.nn.Module:
    """A 2-layer random backbone (hidden 32) of the given architecture, in eval mode."""
    from transformers import AutoModel, Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    if arch == "gemma3":  # a sliding window shorter than the few-shot prefixes, to exercise the hybrid cache
        common |= {"head_dim": 8, "sliding_window": 16}
    classes = {
        "llama": LlamaConfig,
        "mistral": MistralConfig,
        "qwen2": Qwen2Config,
        "gemma3": Gemma3TextConfig,
    }
    config = classes[arch](**common)
    torch.manual_seed(seed)
    return AutoModel.from_config(config).eval()


def build_bert_folder(
    root: Path,
    texts: Iterable[str],
    *,
    seed: int = 0,
    max_seq_length: int = 64,
    pooling: str = "mean",
    dropout: float = 0.1,
) -> Path:
    """A random 2-layer BERT (hidden 32) saved as a sentence-transformers folder (Transformer -> Pooling ->
    Normalize), as all-MiniLM-L6-v2 is laid out; its WordPiece vocabulary is every lowercased word and
    punctuation mark of ``texts``; ``dropout`` is BERT's (0.1) unless given. Returns the folder.

    The word embeddings are scaled up tenfold: at BERT's initial scale the position and token-type
    embeddings, the same for every text, dominate, every pair of texts has a cosine near 0.97, and mining's
    margin filter (candidates under 95% of the positive's score) would drop every candidate. Scaled, texts
    that share words stay close and others do not (cosines ~0.8 and ~0.45)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as st_modules
    from transformers import BertConfig, BertModel, BertTokenizer

    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    torch.manual_seed(seed)
    backbone = root / "backbone"
    bert = BertModel(config)
    with torch.no_grad():
        bert.embeddings.word_embeddings.weight.mul_(10.0)
    bert.save_pretrained(backbone)
    BertTokenizer(vocab=vocab).save_pretrained(backbone)
    model = SentenceTransformer(
        modules=[
            st_modules.Transformer(str(backbone), max_seq_length=max_seq_length),
            st_modules.Pooling(32, pooling),
            st_modules.Normalize(),
        ],
        device="cpu",
    )
    model.save(str(root / "model"))
    return root / "model"


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tokenizer()


@pytest.fixture
def make_embedder(tiny_tokenizer) -> Callable[..., object]:
    """Factory: ``make_embedder(arch="llama", **config_overrides)`` -> a tiny random Embedder."""
    from anna_embed.model.config import EmbedderConfig
    from anna_embed.model.embedder import Embedder

    def make(arch: str = "llama", tokenizer=None, **overrides):
        tok = tokenizer or tiny_tokenizer
        model = build_backbone(arch, len(tok))
        cfg = EmbedderConfig(kind="decoder", pooling="last", max_length=512, base_model=f"tiny-{arch}")
        cfg = EmbedderConfig(**{**cfg.__dict__, **overrides})
        return Embedder(model, tok, cfg, name=f"tiny-{arch}")

    return make


def free_port() -> int:
    """A TCP port no process listens on right now (torchrun's rendezvous in the 2-process tests): a port
    derived from the pid can collide with another job's launcher on a shared machine."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

"""Shared fixtures: a tiny byte-level BPE tokenizer and tiny random decoder backbones (no downloads)."""

from __future__ import annotations

from collections.abc import Callable

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


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tokenizer()


@pytest.fixture
def make_embedder(tiny_tokenizer) -> Callable[..., object]:
    """Factory: ``make_embedder(arch="llama", **config_overrides)`` -> a tiny random Embedder."""
    from anna_embed.embedder import Embedder, EmbedderConfig

    def make(arch: str = "llama", tokenizer=None, **overrides):
        tok = tokenizer or tiny_tokenizer
        model = build_backbone(arch, len(tok))
        cfg = EmbedderConfig(kind="decoder", pooling="last", max_length=512, base_model=f"tiny-{arch}")
        cfg = EmbedderConfig(**{**cfg.__dict__, **overrides})
        return Embedder(model, tok, cfg, name=f"tiny-{arch}")

    return make

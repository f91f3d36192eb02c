"""Decoder-only tokenization invariants, in one place.

``encode_ids`` is the single function that turns prompt strings into token ids for every path (plain
encoding, prefix-cached encoding, training, the sentence-transformers export):

1. tokenize ``prefix + text`` (with the tokenizer's BOS, if it adds one);
2. truncate from the end, so the text loses tokens first and the prefix is kept;
3. append EOS, so the pooled last token is always EOS, whatever the length.

Encoder models (BERT-style) keep their own specials ([CLS] ... [SEP]) and the tokenizer's truncation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class SpecialIds:
    """Special-token facts read once from a tokenizer (never from string literals)."""

    eos: int | None
    pad: int
    adds_bos: bool
    adds_eos: bool


def special_ids(tokenizer: PreTrainedTokenizerBase) -> SpecialIds:
    """Read EOS/pad ids and whether the tokenizer adds BOS/EOS itself.

    Pad falls back to EOS, then UNK, then 0 when the tokenizer has none (padding never reaches the pooled
    position, so its value only has to be a valid id).
    """
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = eos if eos is not None else (tokenizer.unk_token_id or 0)
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    return SpecialIds(
        eos=eos,
        pad=pad,
        adds_bos=bos is not None and len(probe) > 0 and probe[0] == bos,
        adds_eos=eos is not None and len(probe) > 0 and probe[-1] == eos,
    )


def encode_ids(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    max_length: int,
    append_eos: bool,
    specials: SpecialIds | None = None,
) -> tuple[list[list[int]], int]:
    """Token ids for full prompt strings, following the module's invariants.

    Args:
        tokenizer: A Hugging Face tokenizer.
        texts: Full strings (prompt prefix already prepended by :mod:`anna_embed.prompts`).
        max_length: Maximum number of tokens including specials.
        append_eos: Decoder mode (truncate, then EOS last). False: the tokenizer's own specials/truncation.
        specials: Cached :func:`special_ids` of the tokenizer.

    Returns:
        The id lists (unpadded) and how many texts were truncated.
    """
    if not append_eos:
        full = tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]
        truncated = sum(len(ids) > max_length for ids in full)
        if truncated == 0:
            return [list(ids) for ids in full], 0
        cut = tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=max_length)
        return [list(ids) for ids in cut["input_ids"]], truncated
    sp = specials or special_ids(tokenizer)
    if sp.eos is None:
        raise ValueError("Last-token pooling needs a tokenizer with an EOS token")
    out: list[list[int]] = []
    truncated = 0
    budget = max_length - 1  # room for EOS
    for ids in tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]:
        ids = list(ids)
        if sp.adds_eos and ids and ids[-1] == sp.eos:
            ids.pop()
        if len(ids) > budget:
            ids = ids[:budget]
            truncated += 1
        ids.append(sp.eos)
        out.append(ids)
    return out, truncated


def prefix_ids(
    tokenizer: PreTrainedTokenizerBase, prefix: str, *, specials: SpecialIds | None = None
) -> list[int]:
    """Ids of a prompt prefix on its own (BOS if the tokenizer adds one, never EOS)."""
    sp = specials or special_ids(tokenizer)
    ids = list(tokenizer(prefix, add_special_tokens=True, truncation=False)["input_ids"])
    if sp.adds_eos and ids and ids[-1] == sp.eos:
        ids.pop()
    return ids


def append_eos_post_processor(tokenizer: PreTrainedTokenizerBase) -> None:
    """Make a fast tokenizer append EOS itself (for the sentence-transformers export).

    sentence-transformers tokenizes ``prompt + text`` with the saved tokenizer; with this post-processor
    its ids equal :func:`encode_ids`'s (EOS kept after truncation).
    """
    from tokenizers import processors

    sp = special_ids(tokenizer)
    if sp.adds_eos:
        return
    backend = getattr(tokenizer, "_tokenizer", None) or getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError("Only fast tokenizers can be exported with an EOS post-processor")
    eos, bos = tokenizer.eos_token, tokenizer.bos_token
    single = f"{bos} $A {eos}" if sp.adds_bos else f"$A {eos}"
    pair = f"{bos} $A {eos} $B:1 {eos}:1" if sp.adds_bos else f"$A {eos} $B:1 {eos}:1"
    special = [(eos, sp.eos)]
    if sp.adds_bos:
        special.append((bos, tokenizer.bos_token_id))
    template = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)
    current = backend.post_processor
    if current is None or isinstance(current, processors.TemplateProcessing):
        backend.post_processor = template
    else:  # keep e.g. a ByteLevel offset fixer, then add the specials
        backend.post_processor = processors.Sequence([current, template])


def pad_batch(
    ids: Sequence[Sequence[int]], *, pad_id: int, side: str = "right"
) -> tuple[list[list[int]], list[list[int]]]:
    """Pad id lists to the longest one; returns ``(input_ids, attention_mask)`` as nested lists."""
    width = max(len(x) for x in ids)
    input_ids, mask = [], []
    for x in ids:
        n = width - len(x)
        if side == "left":
            input_ids.append([pad_id] * n + list(x))
            mask.append([0] * n + [1] * len(x))
        else:
            input_ids.append(list(x) + [pad_id] * n)
            mask.append([1] * len(x) + [0] * n)
    return input_ids, mask

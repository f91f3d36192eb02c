"""Decoder-only tokenization invariants, in one place.

``encode_ids`` is the single function that turns prompt strings into token ids for every path (plain
encoding, prefix-cached encoding, training, the sentence-transformers export):

1. tokenize ``prefix + text`` (with the tokenizer's BOS, if it adds one);
2. truncate from the end, so the text loses tokens first and the prefix is kept;
3. append EOS, so the pooled last token is always EOS, whatever the length.

Few-shot examples never take the text's room: :func:`fit_examples` clips each example to
``shot_max_tokens`` tokens, drops whole examples (last first) until the example block fits
``examples_max_length``, and reports how many tokens the block adds in context; ``encode_ids`` then allows
that many tokens on top of ``max_length`` for that text (``extra``), so truncation only ever cuts the text
exactly as if it had been encoded without examples.

Encoder models (BERT-style) keep their own specials ([CLS] ... [SEP]) and the tokenizer's truncation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

#: Marks an example side clipped by :func:`clip_tokens` (one policy for training, encode and eval).
CLIP_MARK = " ..."


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
    extra: Sequence[int] | None = None,
) -> tuple[list[list[int]], int]:
    """Token ids for full prompt strings, following the module's invariants.

    Args:
        tokenizer: A Hugging Face tokenizer.
        texts: Full strings (prompt prefix already prepended by :mod:`anna_embed.prompts`).
        max_length: Maximum number of tokens including specials, few-shot examples excluded.
        append_eos: Decoder mode (truncate, then EOS last). False: the tokenizer's own specials/truncation.
        specials: Cached :func:`special_ids` of the tokenizer.
        extra: Per text, the tokens its few-shot block adds (:attr:`FittedExamples.example_tokens`): text
            ``i`` is cut at ``max_length + extra[i]``, so examples never cost the text a token.

    Returns:
        The id lists (unpadded) and how many texts were truncated.
    """
    texts = list(texts)
    extra = [0] * len(texts) if extra is None else list(extra)
    if len(extra) != len(texts):
        raise ValueError(f"extra has {len(extra)} entries for {len(texts)} texts")
    full = tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
    if not append_eos:
        out = [list(ids) for ids in full]
        truncated = sum(len(ids) > max_length + n for ids, n in zip(out, extra, strict=True))
        if truncated == 0:
            return out, 0
        for i, (text, n) in enumerate(zip(texts, extra, strict=True)):
            if len(out[i]) > max_length + n:  # the tokenizer's own truncation keeps its closing specials
                cut = tokenizer(text, add_special_tokens=True, truncation=True, max_length=max_length + n)
                out[i] = list(cut["input_ids"])
        return out, truncated
    sp = specials or special_ids(tokenizer)
    if sp.eos is None:
        raise ValueError("Last-token pooling needs a tokenizer with an EOS token")
    out = []
    truncated = 0
    for ids, n in zip(full, extra, strict=True):
        ids = list(ids)
        budget = max_length + n - 1  # room for EOS
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


def clip_tokens(tokenizer: PreTrainedTokenizerBase, text: str, max_tokens: int) -> str:
    """``text`` cut to its first ``max_tokens`` tokens and marked with :data:`CLIP_MARK` (unchanged if short).

    The cut is made in the original string (at the end offset of the last kept token) when the tokenizer
    reports offsets, so no decoding artefacts appear; slow tokenizers fall back to decoding.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=tokenizer.is_fast)
    ids = enc["input_ids"]
    if len(ids) <= max_tokens:
        return text
    if tokenizer.is_fast:
        head = text[: enc["offset_mapping"][max_tokens - 1][1]]
    else:
        head = tokenizer.decode(ids[:max_tokens], skip_special_tokens=True)
    return head.rstrip() + CLIP_MARK


def added_tokens(tokenizer: PreTrainedTokenizerBase, prefix: str, base: str) -> int:
    """Tokens ``prefix`` adds over ``base`` (its ending), measured in context.

    ``len(tokenize(prefix)) - len(tokenize(base))``, not ``len(tokenize(block))``: the block's trailing
    separator may tokenize differently at the end of a string than before the instruction.
    """
    count = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
    return count - len(tokenizer(base, add_special_tokens=False)["input_ids"]) if base else count


@dataclass(frozen=True)
class FittedExamples:
    """What :func:`fit_examples` kept.

    Attributes:
        examples: The clipped examples that fit, in their original order.
        prefix: The prompt prefix built with them.
        example_tokens: Tokens the example block adds to the prefix in context (``extra`` of
            :func:`encode_ids`).
        dropped: Whole examples dropped because the block exceeded its budget.
    """

    examples: tuple[tuple[str, str], ...]
    prefix: str
    example_tokens: int
    dropped: int


def fit_examples(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[tuple[str, str]],
    build_prefix: Callable[[Sequence[tuple[str, str]]], str],
    *,
    shot_max_tokens: int,
    examples_max_length: int,
) -> FittedExamples:
    """Clip few-shot examples by tokens, then keep whole ones (dropping the last first) within the budget.

    The one rule for training, ``encode`` and ``eval``: each example's query and response are clipped to
    ``shot_max_tokens`` tokens (:func:`clip_tokens`); the block may add at most ``examples_max_length``
    tokens to the prefix. The query's own budget (``max_length``) is untouched: callers pass
    ``example_tokens`` to :func:`encode_ids` as the text's ``extra``.

    Args:
        tokenizer: The model's tokenizer.
        examples: ``(query, response)`` pairs.
        build_prefix: Examples -> prompt prefix (a :mod:`anna_embed.prompts` function); ``build_prefix(())``
            is the instruction-only prefix.
        shot_max_tokens: Tokens kept of each example's query and of its response.
        examples_max_length: Tokens the example block may add.

    Example:
        With a budget of 50 tokens and clipped examples adding 30, 30 and 10 tokens, the first is kept
        (30), the first two need 60 > 50, so the last two are dropped one at a time: the first is kept
        and ``dropped == 2``.
    """
    base = build_prefix(())
    if not examples:
        return FittedExamples((), base, 0, 0)
    clipped = tuple(
        (clip_tokens(tokenizer, q, shot_max_tokens), clip_tokens(tokenizer, r, shot_max_tokens))
        for q, r in examples
    )
    for keep in range(len(clipped), 0, -1):
        prefix = build_prefix(clipped[:keep])
        n = added_tokens(tokenizer, prefix, base)
        if n <= examples_max_length:
            return FittedExamples(clipped[:keep], prefix, n, len(clipped) - keep)
    return FittedExamples((), base, 0, len(clipped))


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

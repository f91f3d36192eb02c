"""The embedder: any Hugging Face causal LM (or encoder) as an instruction-following text embedder.

Decoders are pooled at the last token, which :mod:`anna_embed.model.tokenization` guarantees is EOS;
encoders (sentence-transformers folders such as all-MiniLM-L6-v2) keep their own pooling. Queries carry the
task instruction and optional few-shot examples (built only by :mod:`anna_embed.prompts`, fitted to the
token budgets by :mod:`anna_embed.model.prompting`); when many queries share one prefix, the prefix runs
once and its KV cache is reused for the whole batch. What a model folder holds and how it is written is
:mod:`anna_embed.model.folder`.
"""

from __future__ import annotations

import copy
import logging
import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from anna_embed import prompts as P
from anna_embed.model.config import EmbedderConfig, Pooling
from anna_embed.model.folder import folder_config, save_model
from anna_embed.model.mteb import MtebMixin
from anna_embed.model.prompting import PromptMixin
from anna_embed.model.tokenization import SpecialIds, encode_ids, pad_batch, special_ids
from anna_embed.model.weights import resolve, resolve_dtype
from anna_embed.tasks import TaskSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrefixState:
    """A prompt prefix run once (:meth:`Embedder.run_prefix`), reusable for every text that follows it.

    Attributes:
        ids: The prefix's token ids.
        cache: Its KV cache (never mutated: :meth:`Embedder.embed_after_prefix` works on a copy).
        hidden: Its last hidden states ``[1, P, D]`` (for mean and cls pooling).
    """

    ids: tuple[int, ...]
    cache: Any
    hidden: torch.Tensor


class Embedder(PromptMixin, MtebMixin):
    """Text embedder over a Hugging Face backbone.

    Use :meth:`from_pretrained`; see ``docs/DESIGN.md`` for the contract other stages rely on. Its prompt
    prefixes come from :class:`~anna_embed.model.prompting.PromptMixin`, its mteb protocol from
    :class:`~anna_embed.model.mteb.MtebMixin`.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, config: EmbedderConfig, *, name: str = ""):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.name = name or config.base_model
        self.specials: SpecialIds = special_ids(tokenizer)
        #: Few-shot examples per task name, used when mteb calls :meth:`encode` (set by the evaluator).
        self.task_examples: dict[str, list[P.Example]] = {}
        self.truncated_count = 0
        #: Tokens of the few-shot block of the prefixes this embedder built most recently (see
        #: :meth:`example_tokens`); bounded, since training builds a new symmetric prefix per query.
        self._example_tokens: OrderedDict[str, int] = OrderedDict()

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        pooling: Pooling | None = None,
        max_length: int | None = None,
        dtype: str = "float32",
        device: str | None = None,
        padding_side: Literal["left", "right"] | None = None,
    ) -> Embedder:
        """Load a short name (``smollm2-135m-instruct``), a local folder or a hub id.

        Args:
            name_or_path: See :func:`anna_embed.model.weights.resolve`.
            pooling: Override the saved/detected pooling.
            max_length: Override the token budget.
            dtype: ``float32``, ``bfloat16`` or ``auto`` (bf16 where the CPU/GPU supports it).
            device: ``cpu``, ``cuda``...; default: CUDA when available.
            padding_side: Override the padding side.
        """
        from transformers import AutoModel, AutoTokenizer

        folder = resolve(name_or_path)
        cfg = folder_config(folder)
        overrides = {
            k: v
            for k, v in (("pooling", pooling), ("max_length", max_length), ("padding_side", padding_side))
            if v is not None
        }
        cfg = replace(cfg, base_model=cfg.base_model or str(name_or_path), **overrides)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModel.from_pretrained(folder, dtype=resolve_dtype(dtype))
        model.eval()
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device)
        return cls(model, tokenizer, cfg, name=str(name_or_path))

    def save(self, path: str | os.PathLike[str], *, training_datasets: Sequence[str] | None = None) -> Path:
        """Write a folder that :meth:`from_pretrained` and ``SentenceTransformer(path)`` both load.

        The folder holds the backbone, the tokenizer (exporting EOS appending for decoders), the
        sentence-transformers module files with one saved prompt per task and role, and ``anna_embed.json``.
        """
        if training_datasets is not None:
            self.config = replace(self.config, training_datasets=tuple(training_datasets))
        return save_model(self, Path(path))

    @property
    def _cache_kw(self) -> str:
        """Name of the forward's KV-cache argument (``cache`` in recent transformers)."""
        import inspect

        params = inspect.signature(self.model.forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dimension(self) -> int:
        return int(self.model.config.hidden_size)

    # ------------------------------------------------------------------ tensors (training uses these)
    def tokenize(
        self, texts: Sequence[str], *, extra: Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        """Full prompt strings -> padded ``input_ids``/``attention_mask`` (and ``position_ids``) tensors.

        ``extra[i]``: tokens of text ``i``'s few-shot block, allowed on top of ``max_length``.
        """
        ids, truncated = encode_ids(
            self.tokenizer,
            texts,
            max_length=self.config.max_length,
            append_eos=self.config.kind == "decoder",
            specials=self.specials,
            extra=extra,
        )
        self.truncated_count += truncated
        return self._collate(ids)

    def _collate(self, ids: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        side = self.config.padding_side if self.config.kind == "decoder" else "right"
        input_ids, mask = pad_batch(ids, pad_id=self.specials.pad, side=side)
        batch = {"input_ids": torch.tensor(input_ids), "attention_mask": torch.tensor(mask)}
        if self.config.kind == "decoder":  # positions count real tokens only, so left padding is harmless
            batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        return batch

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled, L2-normalised embeddings ``[B, D]`` (float32); keeps the autograd graph."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        hidden = self.model(**batch).last_hidden_state  # [B, L, D]
        return torch.nn.functional.normalize(self._pool(hidden, batch["attention_mask"]).float(), dim=-1)

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.config.pooling == "mean":
            m = mask.unsqueeze(-1).to(hidden.dtype)  # [B, L, 1]
            return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        if self.config.pooling == "cls":
            return hidden[:, 0]
        # last real token, whatever the padding side: L - 1 - (index of the first 1 in the reversed mask)
        last = mask.shape[1] - 1 - mask.flip(-1).argmax(-1)  # [B]
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    # ------------------------------------------------------------------ encoding
    def encode(
        self,
        inputs: Sequence[str] | Iterable[Any],
        *,
        prefix: str = "",
        batch_size: int = 16,
        dimensions: int | None = None,
        show_progress: bool | None = None,
        prefix_cache: bool = True,
        task_metadata: Any = None,
        prompt_type: Any = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Embed texts (``prefix + text`` each) into an ``[N, D]`` float32 array, L2-normalised.

        Also serves as mteb's ``EncoderProtocol.encode``: given a DataLoader and ``task_metadata``, it
        picks the task's instruction, the role from ``prompt_type`` and any examples in
        :attr:`task_examples`.

        Args:
            inputs: Strings, or mteb's DataLoader of ``{"text": [...]}`` batches.
            prefix: Prompt prefix shared by all texts (from :meth:`query_prefix`/:meth:`document_prefix`;
                its few-shot block, :meth:`example_tokens`, is allowed on top of ``max_length``).
            batch_size: Texts per forward pass (batches are sorted by length).
            dimensions: Matryoshka truncation: keep the first ``dimensions`` values and re-normalise.
            show_progress: Progress bar; default: on for more than 1,000 texts.
            prefix_cache: Run a non-empty prefix once and reuse its KV cache (decoders only).
            task_metadata: mteb's task metadata (an mteb call: the prefix comes from the task).
            prompt_type: mteb's role of the texts (``PromptType.query`` / ``document``; None: symmetric).
            **kwargs: What else mteb passes (``hf_split``, ``hf_subset``), unused.

        Raises:
            ValueError: ``batch_size`` below 1.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if task_metadata is not None:
            vectors = self._encode_mteb(inputs, task_metadata, prompt_type, batch_size=batch_size, **kwargs)
            return truncate_dims(vectors, dimensions)
        texts = list(inputs)
        if not texts:
            return np.zeros((0, dimensions or self.dimension), dtype=np.float32)
        if show_progress is None:
            show_progress = len(texts) > 1000
        ids, pre, truncated = self.prompt_ids(texts, prefix=prefix)
        self._note_truncation(truncated)
        if prefix_cache and pre and self.config.kind == "decoder":
            vectors = self._encode_prefix_cached(ids, pre, batch_size, show_progress)
        else:
            vectors = self._run_sorted(ids, batch_size, show_progress)
        return truncate_dims(vectors, dimensions)

    def prompt_ids(self, texts: Sequence[str], *, prefix: str = "") -> tuple[list[list[int]], list[int], int]:
        """The token ids :meth:`encode` runs for ``prefix + text``, the prefix's own ids, and how many texts
        were truncated (the prefix's few-shot block, :meth:`example_tokens`, is on top of ``max_length``).

        Raises:
            ValueError: The prefix leaves no room for text (see :meth:`check_prefix`).
        """
        pre = self._checked_prefix_ids(prefix) if prefix else []
        ids, truncated = encode_ids(
            self.tokenizer,
            [prefix + t for t in texts],
            max_length=self.config.max_length,
            append_eos=self.config.kind == "decoder",
            specials=self.specials,
            extra=[self.example_tokens(prefix)] * len(texts),
        )
        return ids, pre, truncated

    def encode_queries(
        self,
        texts: Sequence[str],
        *,
        task: str | TaskSpec | None = None,
        instruction: str | None = None,
        examples: Sequence[P.Example] = (),
        **kwargs: Any,
    ) -> np.ndarray:
        """Embed queries with the task instruction and few-shot ``examples`` (see :meth:`encode`)."""
        return self.encode(
            texts, prefix=self.query_prefix(task, instruction=instruction, examples=examples), **kwargs
        )

    def encode_documents(
        self,
        texts: Sequence[str],
        *,
        task: str | TaskSpec | None = None,
        instruction: str | None = None,
        examples: Sequence[P.Example] = (),
        **kwargs: Any,
    ) -> np.ndarray:
        """Embed documents: raw for asymmetric tasks, as queries (same ``examples``) for symmetric ones."""
        prefix = self.document_prefix(task, instruction=instruction, examples=examples)
        return self.encode(texts, prefix=prefix, **kwargs)

    # ------------------------------------------------------------------ internals
    def _note_truncation(self, truncated: int) -> None:
        if truncated:
            self.truncated_count += truncated
            logger.warning(
                "%d text(s) exceeded max_length=%d tokens and were truncated",
                truncated,
                self.config.max_length,
            )

    def _progress(self, total: int, enabled: bool):
        from tqdm.auto import tqdm

        return tqdm(total=total, disable=not enabled, desc="encode", unit="text")

    @torch.inference_mode()
    def _run_sorted(self, ids: list[list[int]], batch_size: int, show_progress: bool) -> np.ndarray:
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # longest first: OOM shows up early
        out = np.empty((len(ids), self.dimension), dtype=np.float32)
        with self._progress(len(ids), show_progress) as bar:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                out[idx] = self.embed_ids([ids[i] for i in idx])
                bar.update(len(idx))
        return out

    @torch.inference_mode()
    def embed_ids(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """One forward pass over id lists (from :meth:`prompt_ids`): ``[B, D]`` float32, L2-normalised."""
        return self.embed(self._collate(ids)).cpu().numpy()

    @torch.inference_mode()
    def run_prefix(self, pre: Sequence[int]) -> PrefixState:
        """Run a prompt prefix's ids once; :meth:`embed_after_prefix` then reuses its KV cache (decoders)."""
        out = self.model(input_ids=torch.tensor([list(pre)], device=self.device), use_cache=True)
        cache = out.cache if self._cache_kw == "cache" else out.past_key_values
        return PrefixState(ids=tuple(pre), cache=cache, hidden=out.last_hidden_state)

    @torch.inference_mode()
    def embed_after_prefix(self, suffixes: Sequence[Sequence[int]], state: PrefixState) -> np.ndarray:
        """Embed texts whose ids are ``state.ids + suffix``, running only the suffixes against a copy of the
        prefix's KV cache: ``[B, D]`` float32, L2-normalised, equal to :meth:`embed_ids` on the full ids.

        ``state`` is left unchanged, so it can be reused for any number of batches.
        """
        dev, n_pre, n = self.device, len(state.ids), len(suffixes)
        ids, mask = pad_batch(suffixes, pad_id=self.specials.pad, side="right")
        ids_t, mask_t = torch.tensor(ids, device=dev), torch.tensor(mask, device=dev)
        cache = copy.deepcopy(state.cache)
        cache.batch_repeat_interleave(n)
        full_mask = torch.cat([torch.ones(n, n_pre, dtype=mask_t.dtype, device=dev), mask_t], 1)
        pos = n_pre + torch.arange(ids_t.shape[1], device=dev).expand(n, -1)
        hidden = self.model(
            input_ids=ids_t,
            attention_mask=full_mask,
            position_ids=pos,
            use_cache=True,
            **{self._cache_kw: cache},
        ).last_hidden_state  # [B, S, D]
        if self.config.pooling == "mean":
            m = mask_t.unsqueeze(-1).to(hidden.dtype)  # [B, S, 1]
            pooled = (state.hidden.sum(1) + (hidden * m).sum(1)) / (n_pre + m.sum(1))
        elif self.config.pooling == "cls":
            pooled = state.hidden[:, 0].expand(n, -1)
        else:
            pooled = self._pool(hidden, mask_t)
        return torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy()

    @torch.inference_mode()
    def _encode_prefix_cached(
        self, full: list[list[int]], pre: list[int], batch_size: int, show_progress: bool
    ) -> np.ndarray:
        """Run the prefix ids ``pre`` once, then each text's remaining ids against a copy of its KV cache.

        ``full`` are the ids of the uncached path (``encode_ids`` on ``prefix + text``), so the result
        matches it: the prefix ids must be a leading slice of each text's ids, which the
        newline-terminated templates guarantee; texts where it does not hold (an exotic tokenizer) fall
        back to full recomputation.
        """
        n_pre = len(pre)
        cached = [i for i, ids in enumerate(full) if continues_prefix(ids, pre)]
        cached_set = set(cached)
        rest = [i for i in range(len(full)) if i not in cached_set]
        out = np.empty((len(full), self.dimension), dtype=np.float32)
        if rest:
            logger.debug("%d text(s) do not share the prefix tokens; encoding them in full", len(rest))
            out[rest] = self._run_sorted([full[i] for i in rest], batch_size, False)
        if not cached:
            return out
        state = self.run_prefix(pre)
        order = sorted(cached, key=lambda i: -len(full[i]))
        with self._progress(len(cached), show_progress) as bar:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                out[idx] = self.embed_after_prefix([full[i][n_pre:] for i in idx], state)
                bar.update(len(idx))
        return out


def continues_prefix(ids: Sequence[int], pre: Sequence[int]) -> bool:
    """Whether a text's ids start with the prefix ids ``pre`` and go on after them (so the prefix's KV
    cache can stand in for its first ``len(pre)`` tokens)."""
    return len(ids) > len(pre) and list(ids[: len(pre)]) == list(pre)


def truncate_dims(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """Matryoshka truncation: keep the leading ``dimensions`` values and re-normalise."""
    if dimensions is None or dimensions >= vectors.shape[1]:
        return vectors
    if dimensions < 1:
        raise ValueError(f"dimensions must be positive, got {dimensions}")
    cut = vectors[:, :dimensions]
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    return (cut / np.maximum(norms, 1e-12)).astype(np.float32)

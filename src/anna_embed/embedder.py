"""The embedder: any Hugging Face causal LM (or encoder) as an instruction-following text embedder.

Decoders are pooled at the last token, which :mod:`anna_embed.tokenization` guarantees is EOS; encoders
(sentence-transformers folders such as all-MiniLM-L6-v2) keep their own pooling. Queries carry the task
instruction and optional few-shot examples (built only by :mod:`anna_embed.prompts`); when many queries
share one prefix, the prefix runs once and its KV cache is reused for the whole batch.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from anna_embed import prompts as P
from anna_embed.tasks import TaskSpec, UnknownTaskError, get_task, task_or_custom
from anna_embed.tokenization import (
    FittedExamples,
    SpecialIds,
    added_tokens,
    encode_ids,
    fit_examples,
    pad_batch,
    prefix_ids,
    special_ids,
)

logger = logging.getLogger(__name__)

#: How many built prompt prefixes :meth:`Embedder.example_tokens` remembers (a prefix is used right after
#: it is built; training builds one per symmetric query, so an unbounded memory would grow with the run).
PREFIX_MEMORY = 4096

Pooling = Literal["last", "mean", "cls"]
CONFIG_FILE = "anna_embed.json"
DECODER_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text", "phi3", "olmo2"}
)


@dataclass(frozen=True)
class EmbedderConfig:
    """How a model turns text into vectors; saved with every model folder as ``anna_embed.json``.

    Attributes:
        kind: ``decoder`` (EOS appended, instructions on) or ``encoder`` (own specials, no instructions).
        pooling: ``last`` (EOS token), ``mean`` over tokens, or ``cls``.
        max_length: Token budget of BOS + instruction prompt + text + EOS; texts are truncated to fit.
            A few-shot block is on top of it (its own budget below), so examples never cut a text.
        padding_side: Where batches are padded (results are identical either way).
        use_instructions: Whether task instructions and examples are applied.
        shot_max_tokens: Each few-shot example's query and response are clipped to this many tokens
            (marked `` ...``); 64 keeps a typical sentence or short passage whole.
        examples_max_length: Tokens the few-shot block may add on top of ``max_length``; whole examples
            are dropped, last first, until it fits (256: about three clipped examples with their template).
        templates: The prompt templates (see :class:`anna_embed.prompts.PromptTemplates`).
        training_datasets: Names of the data the model was trained on (to flag evaluation overlap).
        base_model: Where the weights came from.
    """

    kind: Literal["decoder", "encoder"] = "decoder"
    pooling: Pooling = "last"
    max_length: int = 512
    padding_side: Literal["left", "right"] = "right"
    use_instructions: bool = True
    shot_max_tokens: int = 64
    examples_max_length: int = 256
    templates: P.PromptTemplates = field(default_factory=P.PromptTemplates)
    training_datasets: tuple[str, ...] = ()
    base_model: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["templates"] = self.templates.to_dict()
        d["training_datasets"] = list(self.training_datasets)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EmbedderConfig:
        d = dict(d)
        d["templates"] = P.PromptTemplates.from_dict(d.get("templates") or {})
        d["training_datasets"] = tuple(d.get("training_datasets") or ())
        return cls(**d)


def resolve_dtype(dtype: str) -> torch.dtype:
    """``float32``, ``bfloat16`` or ``auto`` (bf16 on GPUs that support it and CPUs with AVX512/AMX)."""
    if dtype == "float32":
        return torch.float32
    if dtype == "bfloat16":
        return torch.bfloat16
    if dtype == "auto":
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        cpu = getattr(torch.backends, "cpu", None)
        isa = cpu.get_cpu_capability() if cpu is not None else ""
        return torch.bfloat16 if "AVX512" in isa.upper() or "AMX" in isa.upper() else torch.float32
    raise ValueError(f"dtype must be float32, bfloat16 or auto, got {dtype!r}")


#: sentence-transformers modules :class:`Embedder` reproduces (backbone, mean/cls/last pooling, L2 norm).
ST_REPRODUCED_MODULES = frozenset({"Transformer", "Pooling", "Normalize"})
#: sentence-transformers pooling modes (their version-6 names) the Embedder reproduces, and its name for each.
_ST_POOLING_MODES: dict[str, Pooling] = {"mean": "mean", "cls": "cls", "lasttoken": "last"}
#: Older sentence-transformers folders switch modes on with one boolean key each.
_ST_POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_lasttoken": "lasttoken",
}


def _st_pooling(config: dict[str, Any]) -> tuple[Pooling | None, list[str]]:
    """A sentence-transformers Pooling config, either format: ``(our pooling, what we cannot reproduce)``.

    Version 6 writes ``{"pooling_mode": "mean", "include_prompt": true}``, older versions one boolean per mode
    (``pooling_mode_mean_tokens: true``). Several modes at once (a concatenation), a mode other than mean /
    cls / last token, or ``include_prompt = false`` (prompt tokens left out of the mean) are not reproduced.
    """
    mode = config.get("pooling_mode")
    if mode is not None:
        modes = [mode] if isinstance(mode, str) else [str(m) for m in mode]
        labels = [f"pooling_mode={m}" for m in modes]
    else:
        labels = [k for k, on in config.items() if k.startswith("pooling_mode_") and on]
        modes = [_ST_POOLING_KEYS.get(k, k) for k in labels]
    unsupported = [
        f"Pooling({label})" for m, label in zip(modes, labels, strict=True) if m not in _ST_POOLING_MODES
    ]
    if len(modes) > 1 and not unsupported:
        unsupported.append(f"Pooling({' + '.join(labels)})")
    if config.get("include_prompt") is False:
        unsupported.append("Pooling(include_prompt=false)")
    return (_ST_POOLING_MODES[modes[0]] if len(modes) == 1 and not unsupported else None), unsupported


def _st_pooling_config(folder: Path) -> dict[str, Any] | None:
    """The config of a sentence-transformers folder's Pooling module (None: no modules.json or no Pooling)."""
    modules = folder / "modules.json"
    for module in json.loads(modules.read_text()) if modules.is_file() else []:
        path = folder / module.get("path", "") / "config.json"
        if str(module.get("type", "")).rsplit(".", 1)[-1] == "Pooling" and path.is_file():
            return json.loads(path.read_text())
    return None


class SentenceTransformersOnlyError(ValueError):
    """A sentence-transformers folder whose modules :class:`Embedder` cannot reproduce (e.g. ``Dense``)."""


def sentence_transformers_only(folder: Path) -> list[str]:
    """What of a sentence-transformers folder :class:`Embedder` would silently drop; ``[]`` when nothing.

    A folder counts when its ``modules.json`` lists a module other than Transformer / Pooling / Normalize
    (EmbeddingGemma's two ``Dense`` projections) or its pooling uses a mode other than mean / cls / last.
    Such a folder is run by sentence-transformers itself (:class:`anna_embed.teachers.
    SentenceTransformerEncoder`, what ``bi:NAME`` teachers load), never rebuilt as a plain backbone.
    """
    modules = folder / "modules.json"
    if not modules.is_file():
        return []
    extra = []
    for module in json.loads(modules.read_text()):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind not in ST_REPRODUCED_MODULES:
            extra.append(kind)
    return extra + _st_pooling(_st_pooling_config(folder) or {})[1]


def _detect_config(folder: Path) -> EmbedderConfig:
    """Config of a folder without ``anna_embed.json``: a sentence-transformers folder or a plain HF one.

    Raises:
        SentenceTransformersOnlyError: The folder's modules go beyond what :class:`Embedder` reproduces
            (see :func:`sentence_transformers_only`); loading it as a bare backbone would give wrong vectors.
    """
    unsupported = sentence_transformers_only(folder)
    if unsupported:
        raise SentenceTransformersOnlyError(
            f"{folder} is a sentence-transformers model with modules the Embedder cannot reproduce "
            f"({', '.join(unsupported)}), so it cannot be loaded as an Embedder (to train, encode or "
            "evaluate). Use it as a teacher, spec 'bi:NAME' (mining; anna_embed.teachers.load_retriever / "
            "load_reranker): teachers run such folders through sentence-transformers with their own "
            "query/document prompts."
        )
    modules = folder / "modules.json"
    hf_config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    is_decoder = hf_config.get("model_type") in DECODER_TYPES or any(
        a.endswith("ForCausalLM") for a in hf_config.get("architectures") or []
    )
    if modules.is_file() and not is_decoder:
        pooling = _st_pooling(_st_pooling_config(folder) or {})[0] or "mean"
        return EmbedderConfig(
            kind="encoder", pooling=pooling, max_length=_st_max_length(folder), use_instructions=False
        )
    if is_decoder:
        return EmbedderConfig(kind="decoder", pooling="last")
    return EmbedderConfig(kind="encoder", pooling="mean", use_instructions=False)


def _st_max_length(folder: Path, default: int = 512) -> int:
    """A sentence-transformers folder's ``max_seq_length``, where sentence-transformers reads it: the
    ``sentence_bert_config.json`` of older folders, else the tokenizer's ``model_max_length`` (what version 6
    saves); ``default`` when neither holds a real bound."""
    sources = (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length"))
    for name, key in sources:
        path = folder / name
        value = json.loads(path.read_text()).get(key) if path.is_file() else None
        if isinstance(value, int) and 0 < value < 1_000_000:  # transformers writes ~1e30 for "no limit"
            return value
    return default


def folder_config(folder: Path) -> EmbedderConfig:
    """How a model folder embeds, without loading its weights: its saved ``anna_embed.json``, else what its
    layout says (a sentence-transformers folder keeps its pooling and ``max_seq_length``; decoders pool the
    EOS token). The trainer reads it before loading (LoRA or full fine-tuning depends on the kind).

    Raises:
        SentenceTransformersOnlyError: See :func:`sentence_transformers_only`.
    """
    cfg_file = folder / CONFIG_FILE
    if cfg_file.is_file():
        return EmbedderConfig.from_dict(json.loads(cfg_file.read_text()))
    return _detect_config(folder)


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


class Embedder:
    """Text embedder over a Hugging Face backbone.

    Use :meth:`from_pretrained`; see ``docs/DESIGN.md`` for the contract other stages rely on.
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
            name_or_path: See :func:`anna_embed.models.resolve`.
            pooling: Override the saved/detected pooling.
            max_length: Override the token budget.
            dtype: ``float32``, ``bfloat16`` or ``auto`` (bf16 where the CPU/GPU supports it).
            device: ``cpu``, ``cuda``...; default: CUDA when available.
            padding_side: Override the padding side.
        """
        from transformers import AutoModel, AutoTokenizer

        from anna_embed.models import resolve

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
        from anna_embed.export import save_model

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

    # ------------------------------------------------------------------ prompts
    def _task(self, task: str | TaskSpec | None, instruction: str | None) -> TaskSpec | None:
        """The registry entry; an unknown name is fine when an explicit instruction is given.

        With an unknown task the instruction goes on queries and documents are embedded raw (the
        task's symmetry is unknown).
        """
        if task is None or isinstance(task, TaskSpec):
            return task
        try:
            return get_task(task)
        except UnknownTaskError:
            if instruction is None:
                raise
            return None

    def fit_examples(
        self,
        task: str | TaskSpec | None = None,
        *,
        instruction: str | None = None,
        examples: Sequence[P.Example] = (),
    ) -> FittedExamples:
        """Few-shot ``examples`` clipped and dropped to the config's budgets, with the query prefix they
        make (:func:`anna_embed.tokenization.fit_examples`; training, ``encode`` and ``eval`` all use it)."""
        spec, cfg = self._task(task, instruction), self.config

        def build(ex: Sequence[P.Example]) -> str:
            return P.query_prefix(spec, instruction=instruction, examples=ex, templates=cfg.templates)

        return fit_examples(
            self.tokenizer,
            examples,
            build,
            shot_max_tokens=cfg.shot_max_tokens,
            examples_max_length=cfg.examples_max_length,
        )

    def query_prefix(
        self,
        task: str | TaskSpec | None = None,
        *,
        instruction: str | None = None,
        examples: Sequence[P.Example] = (),
    ) -> str:
        """The prefix :meth:`encode_queries` puts before each query (empty for non-instructed models).

        ``examples`` go through :meth:`fit_examples` (clipped by tokens, whole ones dropped to fit); the
        embedder remembers how many tokens the kept block adds, so :meth:`encode` given this prefix keeps
        the full ``max_length`` for the text (see :meth:`example_tokens`).
        """
        if not self.config.use_instructions:
            return ""
        fitted = self.fit_examples(task, instruction=instruction, examples=examples)
        self._remember(fitted.prefix, fitted.example_tokens)
        return fitted.prefix

    def document_prefix(
        self,
        task: str | TaskSpec | None = None,
        *,
        instruction: str | None = None,
        examples: Sequence[P.Example] = (),
    ) -> str:
        """The prefix :meth:`encode_documents` puts before each document.

        On a symmetric task a document is another query: it takes the examples its query keeps (fitted
        against the query prefix, so both sides carry the same block); asymmetric tasks take none.
        """
        if not self.config.use_instructions:
            return ""
        spec = self._task(task, instruction)
        kept = self.fit_examples(spec, instruction=instruction, examples=examples).examples
        t = self.config.templates
        prefix = P.document_prefix(spec, instruction=instruction, examples=kept, templates=t)
        if kept:
            base = P.document_prefix(spec, instruction=instruction, templates=t)
            self._remember(prefix, added_tokens(self.tokenizer, prefix, base))
        return prefix

    def _remember(self, prefix: str, example_tokens: int) -> None:
        """Record a built prefix's example tokens, keeping the newest :data:`PREFIX_MEMORY` prefixes."""
        self._example_tokens[prefix] = example_tokens
        self._example_tokens.move_to_end(prefix)
        while len(self._example_tokens) > PREFIX_MEMORY:
            self._example_tokens.popitem(last=False)

    def example_tokens(self, prefix: str) -> int:
        """Tokens of ``prefix``'s few-shot block: known for every prefix this embedder built, else 0.

        :meth:`encode` allows that many tokens on top of ``max_length``. A prefix with examples built
        elsewhere (not by :meth:`query_prefix`/:meth:`document_prefix`) counts as all instruction.
        """
        return self._example_tokens.get(prefix, 0)

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
        """
        if task_metadata is not None:
            return self._encode_mteb(
                inputs, task_metadata, prompt_type, batch_size=batch_size, dimensions=dimensions
            )
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
        return _truncate_dims(vectors, dimensions)

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

    @property
    def mteb_model_meta(self) -> Any:
        """mteb's ``ModelMeta`` for this model (name, embedding size, instruction use, training data)."""
        from mteb.models import ModelMeta
        from mteb.models.model_meta import ScoringFunction

        name = self.name if "/" in self.name else f"local/{self.name}"
        return ModelMeta.create_empty(
            overwrites={
                "name": name,
                "revision": "local",
                "embed_dim": self.dimension,
                "max_tokens": self.config.max_length,
                "similarity_fn_name": ScoringFunction.COSINE,
                "use_instructions": self.config.use_instructions,
                "training_datasets": set(self.config.training_datasets) or None,
            }
        )

    def similarity(self, a: Any, b: Any) -> torch.Tensor:
        """Cosine similarity matrix (mteb protocol)."""
        return _unit(a) @ _unit(b).T

    def similarity_pairwise(self, a: Any, b: Any) -> torch.Tensor:
        """Cosine similarity of aligned rows (mteb protocol)."""
        return (_unit(a) * _unit(b)).sum(-1)

    # ------------------------------------------------------------------ internals
    def _note_truncation(self, truncated: int) -> None:
        if truncated:
            self.truncated_count += truncated
            logger.warning(
                "%d text(s) exceeded max_length=%d tokens and were truncated",
                truncated,
                self.config.max_length,
            )

    def check_prefix(self, prefix: str) -> int:
        """Tokens ``prefix`` takes; a ``ValueError`` when it leaves no room for text within ``max_length``."""
        return len(self._checked_prefix_ids(prefix))

    def _checked_prefix_ids(self, prefix: str) -> list[int]:
        """Token ids of ``prefix``; an error when its instruction part (few-shot block excluded, that has
        its own budget) leaves no room for text within ``max_length``."""
        pre = prefix_ids(self.tokenizer, prefix, specials=self.specials)
        own = len(pre) - self.example_tokens(prefix)
        if own >= self.config.max_length - 1:
            raise ValueError(
                f"The prompt prefix takes {own} tokens (few-shot examples excluded), leaving no room for "
                f"text within max_length={self.config.max_length}; use a shorter instruction or a larger "
                "max_length."
            )
        return pre

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

    def _encode_mteb(
        self,
        inputs: Iterable[Any],
        task_metadata: Any,
        prompt_type: Any,
        *,
        batch_size: int,
        dimensions: int | None,
    ) -> np.ndarray:
        texts: list[str] = []
        for batch in inputs:
            texts.extend(batch["text"])
        # a user's own (unregistered) task: its description serves as the instruction
        spec = task_or_custom(
            task_metadata.name, task_metadata.type, getattr(task_metadata, "description", None)
        )
        examples = self.task_examples.get(spec.name, ())
        if P.role_of(prompt_type) == "query":
            prefix = self.query_prefix(spec, examples=examples)
        else:  # a symmetric task's document carries its query's examples
            prefix = self.document_prefix(spec, examples=examples if spec.symmetric else ())
        return self.encode(
            texts,
            prefix=prefix,
            batch_size=batch_size,
            dimensions=dimensions,
            show_progress=len(texts) > 1000,
        )


def continues_prefix(ids: Sequence[int], pre: Sequence[int]) -> bool:
    """Whether a text's ids start with the prefix ids ``pre`` and go on after them (so the prefix's KV
    cache can stand in for its first ``len(pre)`` tokens)."""
    return len(ids) > len(pre) and list(ids[: len(pre)]) == list(pre)


def _unit(x: Any) -> torch.Tensor:
    """Rows of an array or tensor as L2-normalised float32 tensor rows."""
    return torch.nn.functional.normalize(torch.as_tensor(np.asarray(x), dtype=torch.float32), dim=-1)


def _truncate_dims(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """Matryoshka truncation: keep the leading ``dimensions`` values and re-normalise."""
    if dimensions is None or dimensions >= vectors.shape[1]:
        return vectors
    if dimensions < 1:
        raise ValueError(f"dimensions must be positive, got {dimensions}")
    cut = vectors[:, :dimensions]
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    return (cut / np.maximum(norms, 1e-12)).astype(np.float32)

"""A model folder: how it embeds, read without loading its weights, and how one is written.

Reading (:func:`folder_config`): a folder we saved carries ``anna_embed.json``; any other folder is
described by its layout. A sentence-transformers folder keeps its pooling and ``max_seq_length``, unless
its modules go beyond what the Embedder reproduces (:func:`sentence_transformers_only`: e.g. the two
``Dense`` layers of EmbeddingGemma), which are run by sentence-transformers itself, as a teacher. A plain
Hugging Face decoder pools its EOS token.

Writing (:func:`save_model`), a folder sentence-transformers loads too:

* the backbone (``config.json`` + safetensors) and the tokenizer; for decoders the tokenizer's
  post-processor appends EOS, so sentence-transformers' tokenization equals ours;
* sentence-transformers module files (Transformer -> Pooling -> Normalize) and, in
  ``config_sentence_transformers.json``, one prompt per task and role, named ``"{task}-query"`` and
  ``"{task}-document"`` (plus ``"{task}"``, the query prompt, which is what mteb looks up first);
* ``anna_embed.json``: the :class:`~anna_embed.model.config.EmbedderConfig` (pooling, prompt templates,
  training datasets);
* ``README.md``: the model card (:mod:`anna_embed.model.card`), rewritten by the training export once
  ``training.json`` is there, and by ``pipeline`` / ``adapt`` with the run's scores.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Protocol

from anna_embed.io import atomic_dir
from anna_embed.model.card import write_card
from anna_embed.model.config import CONFIG_FILE, DECODER_TYPES, EmbedderConfig, Pooling
from anna_embed.tasks import TASKS

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
    Such a folder is run by sentence-transformers itself (:class:`anna_embed.mine.teachers.
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
            "evaluate). Use it as a teacher, spec 'bi:NAME' (mining; "
            "anna_embed.mine.teachers.load_retriever / load_reranker): teachers run such folders through "
            "sentence-transformers with their own query/document prompts."
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


# ----------------------------------------------------------------------------- writing

_ST_POOLING = {"last": "lasttoken", "mean": "mean", "cls": "cls"}


class SavableModel(Protocol):
    """What :func:`save_model` needs of a model (:class:`~anna_embed.model.embedder.Embedder` is one)."""

    model: Any
    tokenizer: Any
    config: EmbedderConfig

    @property
    def dimension(self) -> int: ...

    def query_prefix(self, task: str) -> str: ...

    def document_prefix(self, task: str) -> str: ...


def saved_prompts(embedder: SavableModel) -> dict[str, str]:
    """The prompts written for sentence-transformers, one per registered task and role."""
    out: dict[str, str] = {}
    for name in TASKS:
        q = embedder.query_prefix(name)
        out[name] = q
        out[f"{name}-query"] = q
        out[f"{name}-document"] = embedder.document_prefix(name)
    return out


def save_model(embedder: SavableModel, path: Path) -> Path:
    """Write the folder atomically (built beside ``path``, then renamed into place)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    from anna_embed.model.tokenization import append_eos_post_processor

    with atomic_dir(path) as tmp:
        model = embedder.model
        if hasattr(model, "merge_and_unload"):  # a peft-wrapped backbone: save plain merged weights
            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(tmp)
        tokenizer = copy.deepcopy(embedder.tokenizer)  # exporting must not change the live tokenizer
        tokenizer.model_max_length = embedder.config.max_length
        if embedder.config.kind == "decoder":
            append_eos_post_processor(tokenizer)
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
        # An embedding folder has no chat: sentence-transformers would wrap texts in the chat template.
        tokenizer.chat_template = None
        tokenizer.save_pretrained(tmp)

        transformer = Transformer(str(tmp), max_seq_length=embedder.config.max_length)
        pooling = Pooling(embedder.dimension, pooling_mode=_ST_POOLING[embedder.config.pooling])
        st = SentenceTransformer(
            modules=[transformer, pooling, Normalize()],
            device="cpu",
            prompts=saved_prompts(embedder),
            similarity_fn_name="cosine",
        )
        st.save(str(tmp))
        (tmp / CONFIG_FILE).write_text(json.dumps(embedder.config.to_dict(), indent=2) + "\n")
        write_card(tmp, folder_name=path.name)  # ours in place of sentence-transformers' generic README
    return path

"""Saving an :class:`~anna_embed.embedder.Embedder` as a folder that sentence-transformers loads too.

The folder holds:

* the backbone (``config.json`` + safetensors) and the tokenizer; for decoders the tokenizer's
  post-processor appends EOS, so sentence-transformers' tokenization equals ours;
* sentence-transformers module files (Transformer -> Pooling -> Normalize) and, in
  ``config_sentence_transformers.json``, one prompt per task and role, named ``"{task}-query"`` and
  ``"{task}-document"`` (plus ``"{task}"``, the query prompt, which is what mteb looks up first);
* ``anna_embed.json``: the :class:`~anna_embed.embedder.EmbedderConfig` (pooling, prompt templates,
  training datasets).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING

from anna_embed.io import atomic_dir
from anna_embed.tasks import TASKS

if TYPE_CHECKING:
    from anna_embed.embedder import Embedder

_ST_POOLING = {"last": "lasttoken", "mean": "mean", "cls": "cls"}


def saved_prompts(embedder: Embedder) -> dict[str, str]:
    """The prompts written for sentence-transformers, one per registered task and role."""
    out: dict[str, str] = {}
    for name in TASKS:
        q = embedder.query_prefix(name)
        out[name] = q
        out[f"{name}-query"] = q
        out[f"{name}-document"] = embedder.document_prefix(name)
    return out


def save_model(embedder: Embedder, path: Path) -> Path:
    """Write the folder atomically (built beside ``path``, then renamed into place)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    from anna_embed.embedder import CONFIG_FILE
    from anna_embed.tokenization import append_eos_post_processor

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
    return path

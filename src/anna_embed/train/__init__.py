"""Training: LoRA (or full) contrastive + soft-label fine-tuning of the embedder.

``train(cfg)`` (:func:`anna_embed.train.loop.train`) runs it; :class:`~anna_embed.train.config.TrainConfig`
holds the settings. Modules: ``config``, ``data`` (records and their seeded draws), ``batches`` (the batch
plan and collation into prompts), ``losses`` (pure maths on score matrices), ``gradcache`` (GradCache and
the all-gather with gradients), ``lora`` (the student and its wrapping), ``schedule``, ``checkpoint``,
``report``, ``quick_eval``, ``loop`` (the loop), ``cli``. Importing the package loads neither torch nor
transformers (``train`` is imported when first used).
"""

from __future__ import annotations

from typing import Any

__all__ = ["train"]


def __getattr__(name: str) -> Any:  # lazy: the config must stay importable without torch
    if name == "train":
        from anna_embed.train.loop import train

        return train
    raise AttributeError(name)

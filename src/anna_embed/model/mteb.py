"""mteb's encoder protocol: the :class:`MtebMixin` that makes the Embedder an mteb ``EncoderProtocol``,
and :func:`mteb_prefix`, the one rule for the prompt prefix of an mteb ``encode`` call (the Embedder and
the evaluation adapter, :class:`anna_embed.evaluate.adapter.EvalEncoder`, both follow it).

mteb calls ``encode(DataLoader, task_metadata=, hf_split=, hf_subset=, prompt_type=)``: the task's
instruction comes from the registry (a user's own task: its description), the role from ``prompt_type``
(:func:`anna_embed.prompts.role_of`; mteb gives a symmetric task's texts no role: they take the query-side
prompt), and the few-shot examples from what the caller set per task.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from anna_embed import prompts as P
from anna_embed.model.config import EmbedderConfig
from anna_embed.tasks import TaskSpec, task_or_custom


class MtebPrompter(Protocol):
    """What :func:`mteb_prefix` needs of a model: its query and document prefixes for a task."""

    def query_prefix(self, task: TaskSpec, *, examples: Sequence[P.Example] = ()) -> str: ...

    def document_prefix(self, task: TaskSpec, *, examples: Sequence[P.Example] = ()) -> str: ...


def mteb_prefix(model: MtebPrompter, spec: TaskSpec, examples: Sequence[P.Example], prompt_type: Any) -> str:
    """The prompt prefix of an mteb ``encode`` call for ``spec`` in the role ``prompt_type`` names.

    A query takes the task's few-shot ``examples``; a document takes them only on a symmetric task (it is
    another query there), none on an asymmetric one.
    """
    if P.role_of(prompt_type) == "query":
        return model.query_prefix(spec, examples=examples)
    return model.document_prefix(spec, examples=examples if spec.symmetric else ())


def mteb_texts(inputs: Iterable[Any]) -> list[str]:
    """The texts of mteb's DataLoader, whose batches are ``{"text": [...]}``."""
    return [text for batch in inputs for text in batch["text"]]


class MtebMixin:
    """mteb's ``EncoderProtocol`` for the :class:`~anna_embed.model.embedder.Embedder`: its ``encode``
    hands mteb's calls to :meth:`_encode_mteb`, which builds the prefix (:func:`mteb_prefix`) with the
    Embedder's ``query_prefix`` / ``document_prefix`` and encodes with its ``encode``."""

    name: str
    config: EmbedderConfig
    dimension: int
    #: Few-shot examples per task name, used when mteb calls ``encode`` (set by the caller).
    task_examples: dict[str, list[P.Example]]

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

    def _encode_mteb(
        self,
        inputs: Iterable[Any],
        task_metadata: Any,
        prompt_type: Any,
        *,
        batch_size: int,
        dimensions: int | None,
    ) -> np.ndarray:
        texts = mteb_texts(inputs)
        # a user's own (unregistered) task: its description serves as the instruction
        spec = task_or_custom(
            task_metadata.name, task_metadata.type, getattr(task_metadata, "description", None)
        )
        prefix = mteb_prefix(self, spec, self.task_examples.get(spec.name, ()), prompt_type)  # type: ignore[arg-type]
        return self.encode(  # type: ignore[attr-defined]
            texts,
            prefix=prefix,
            batch_size=batch_size,
            dimensions=dimensions,
            show_progress=len(texts) > 1000,
        )


def _unit(x: Any) -> torch.Tensor:
    """Rows of an array or tensor as L2-normalised float32 tensor rows."""
    return torch.nn.functional.normalize(torch.as_tensor(np.asarray(x), dtype=torch.float32), dim=-1)

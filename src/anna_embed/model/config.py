"""How a model embeds: the :class:`EmbedderConfig` saved in every model folder as ``anna_embed.json``.

Plain data (importing it loads neither torch nor transformers): :mod:`anna_embed.model.folder` reads it
from a folder, or derives it from the folder's layout, before any weights load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from anna_embed import prompts as P

Pooling = Literal["last", "mean", "cls"]
#: The file of a model folder that holds its :class:`EmbedderConfig`.
CONFIG_FILE = "anna_embed.json"
#: ``config.model_type`` values of causal LMs, pooled at their last (EOS) token.
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
        """Plain dict for JSON (what ``anna_embed.json`` holds)."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["templates"] = self.templates.to_dict()
        d["training_datasets"] = list(self.training_datasets)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EmbedderConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["templates"] = P.PromptTemplates.from_dict(d.get("templates") or {})
        d["training_datasets"] = tuple(d.get("training_datasets") or ())
        return cls(**d)

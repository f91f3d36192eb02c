"""Prompt prefixes with few-shot examples fitted to a model's token budgets (the :class:`PromptMixin` of the
:class:`~anna_embed.model.embedder.Embedder`).

The strings come from :mod:`anna_embed.prompts`; the examples are clipped and dropped by
:func:`anna_embed.model.tokenization.fit_examples` to the model's ``shot_max_tokens`` and
``examples_max_length``. Training, ``encode``, ``eval`` and ``serve`` all build their prompts here, and
the tokens each built prefix's example block adds are remembered, so encoding given that prefix keeps the
full ``max_length`` for the text (:meth:`PromptMixin.example_tokens`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from anna_embed import prompts as P
from anna_embed.model.config import EmbedderConfig
from anna_embed.model.tokenization import FittedExamples, SpecialIds, added_tokens, fit_examples, prefix_ids
from anna_embed.tasks import TaskSpec, find_task, get_task

#: How many built prompt prefixes :meth:`Embedder.example_tokens` remembers (a prefix is used right after
#: it is built; training builds one per symmetric query, so an unbounded memory would grow with the run).
PREFIX_MEMORY = 4096


class PromptMixin:
    """Prompt building for a model with a ``tokenizer`` and an :class:`EmbedderConfig` (``config``)."""

    tokenizer: Any
    config: EmbedderConfig
    specials: SpecialIds
    #: Tokens of the few-shot block of the prefixes built most recently (see :meth:`example_tokens`);
    #: bounded, since training builds a new symmetric prefix per query.
    _example_tokens: OrderedDict[str, int]

    def _task(self, task: str | TaskSpec | None, instruction: str | None) -> TaskSpec | None:
        """The registry entry; an unknown name is fine when an explicit instruction is given.

        With an unknown task the instruction goes on queries and documents are embedded raw (the
        task's symmetry is unknown).
        """
        if task is None or isinstance(task, TaskSpec):
            return task
        return get_task(task) if instruction is None else find_task(task)

    def fit_examples(
        self,
        task: str | TaskSpec | None = None,
        *,
        instruction: str | None = None,
        examples: Sequence[P.Example] = (),
    ) -> FittedExamples:
        """Few-shot ``examples`` clipped and dropped to the config's budgets, with the query prefix they
        make (:func:`anna_embed.model.tokenization.fit_examples`; training, ``encode`` and ``eval`` all
        use it)."""
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

"""Rerankers that are not bi-encoders: a cross-encoder and a causal LM asked a yes/no question.

Both give one raw logit per (query, document) pair (``score_kind = "logit"``); the margin filter maps it
through a sigmoid (:func:`anna_embed.mine.filter.normalise_scores`). They are loaded by
:func:`anna_embed.mine.teachers.load_reranker` from ``cross:NAME`` and ``judge:NAME`` specs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anna_embed import prompts as P
from anna_embed.mine.config import ScoreKind, check_pairs


class CrossEncoderReranker:
    """A sentence-transformers ``CrossEncoder`` (path or hub id) giving one raw logit per pair.

    The logit is read without the model's activation (``activation_fn=Identity``): the mining stage
    normalises scores itself (sigmoid for ``"logit"``), and the raw logit is the soft label.
    """

    score_kind: ScoreKind = "logit"

    def __init__(self, model: Any, *, name: str, batch_size: int = 32):
        num_labels = getattr(getattr(model, "model", None), "config", None)
        num_labels = getattr(num_labels, "num_labels", 1)
        if num_labels != 1:
            raise ValueError(f"{name}: a reranker cross-encoder needs one output label, not {num_labels}")
        self.model = model
        self.name = name
        self.batch_size = batch_size

    @classmethod
    def load(cls, name: str, *, batch_size: int = 32, max_length: int | None = None) -> CrossEncoderReranker:
        """Load a CrossEncoder from a local folder (or a hub id when the hub is reachable)."""
        from sentence_transformers import CrossEncoder

        from anna_embed.model.weights import resolve

        source = name if Path(name).expanduser().is_dir() else str(resolve(name))
        model = CrossEncoder(source, device="cpu", max_length=max_length)
        suffix = "" if max_length is None else f"@{max_length}"
        return cls(model, name=f"cross:{name}{suffix}", batch_size=batch_size)

    def score(
        self,
        queries: Sequence[str],
        documents: Sequence[str],
        *,
        task: str | None = None,
        instruction: str | None = None,
    ) -> np.ndarray:
        """Raw relevance logits; ``task``/``instruction`` are ignored (cross-encoders take no prompt)."""
        import torch

        check_pairs(queries, documents)
        if not queries:
            return np.zeros(0, np.float32)
        pairs = list(zip(queries, documents, strict=True))
        out = self.model.predict(
            pairs,
            batch_size=self.batch_size,
            activation_fn=torch.nn.Identity(),
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        return np.asarray(out, dtype=np.float32).reshape(len(pairs))


class LLMJudgeReranker:
    """A causal LM used as a pointwise yes/no relevance judge: score = ``logit(yes) - logit(no)``.

    The prompt is :func:`anna_embed.prompts.judge_prompt`, wrapped in the tokenizer's chat template
    (assistant turn opened) when it has one, otherwise followed by ``"\\nAnswer:"``. Documents are
    truncated to ``max_document_tokens`` before the prompt is built, so the question always survives.
    Batches are left-padded with explicit position ids, so a pair's score does not depend on its batch.

    Args:
        model: A ``transformers`` causal LM.
        tokenizer: Its tokenizer.
        name: Stable identifier.
        batch_size: Pairs per forward pass.
        max_document_tokens: Document truncation length, in tokens.
    """

    score_kind: ScoreKind = "logit"

    def __init__(
        self, model: Any, tokenizer: Any, *, name: str, batch_size: int = 8, max_document_tokens: int = 256
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = batch_size
        self.max_document_tokens = max_document_tokens
        self.use_chat = bool(getattr(tokenizer, "chat_template", None))
        lead = "" if self.use_chat else " "
        self.yes_id = self._first_token(lead + "yes")
        self.no_id = self._first_token(lead + "no")
        if self.yes_id == self.no_id:
            raise ValueError(f"{name}: 'yes' and 'no' start with the same token")

    def _first_token(self, word: str) -> int:
        ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"{self.name}: the tokenizer maps {word!r} to no token")
        return int(ids[0])

    @classmethod
    def load(
        cls, name: str, *, batch_size: int = 8, max_length: int | None = None, dtype: str = "float32"
    ) -> LLMJudgeReranker:
        """Load an offline short name (e.g. ``smollm2-135m-instruct``), a folder or a hub id."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from anna_embed.model.weights import resolve

        folder = resolve(name)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
        suffix = "" if max_length is None else f"@{max_length}"
        return cls(
            model,
            tokenizer,
            name=f"judge:{name}{suffix}",
            batch_size=batch_size,
            max_document_tokens=max_length or 256,
        )

    def build_inputs(self, query: str, document: str, instruction: str | None) -> str:
        """The exact string fed to the model for one pair."""
        ids = self.tokenizer(document, add_special_tokens=False)["input_ids"]
        if len(ids) > self.max_document_tokens:
            document = self.tokenizer.decode(ids[: self.max_document_tokens])
        question = P.judge_prompt(query, document, instruction=instruction)
        if self.use_chat:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
            )
        return question + P.JUDGE_PLAIN_SUFFIX

    def score(
        self,
        queries: Sequence[str],
        documents: Sequence[str],
        *,
        task: str | None = None,
        instruction: str | None = None,
    ) -> np.ndarray:
        """``logit(yes) - logit(no)`` at the last prompt position, per pair."""
        import torch

        from anna_embed.model.tokenization import pad_batch

        check_pairs(queries, documents)
        if instruction is None and task is not None:
            from anna_embed.tasks import get_task

            instruction = get_task(task).instruction
        texts = [self.build_inputs(q, d, instruction) for q, d in zip(queries, documents, strict=True)]
        tok = self.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        out = np.zeros(len(texts), np.float32)
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            seqs = [tok(t, add_special_tokens=False)["input_ids"] for t in batch]
            padded, attention = pad_batch(seqs, pad_id=pad_id, side="left")
            ids = torch.tensor(padded, dtype=torch.long)  # [B, L], left-padded
            mask = torch.tensor(attention, dtype=torch.long)  # [B, L]
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # [B, L]
            with torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
            last = logits[:, -1, :].float()  # [B, V]
            out[start : start + len(seqs)] = (last[:, self.yes_id] - last[:, self.no_id]).numpy()
        return out

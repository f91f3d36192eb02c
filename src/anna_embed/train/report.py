"""What a training run records besides its weights: data manifest, token and prompt counts, the metrics log
(``metrics.jsonl``, TensorBoard) and its plot (used by :mod:`anna_embed.train.loop`)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anna_embed.io import atomic_write, file_sha256, write_json
from anna_embed.model.tokenization import encode_ids
from anna_embed.train.batches import TrainBatch
from anna_embed.train.config import DataSource
from anna_embed.train.data import TrainingSet

if TYPE_CHECKING:
    from anna_embed.model.embedder import Embedder

logger = logging.getLogger(__name__)


def data_manifest(sources: Sequence[DataSource], ts: TrainingSet) -> dict[str, Any]:
    """What the run trained on: files (with hashes), record counts per task."""
    counts: dict[str, int] = {}
    for rec in ts.records:
        counts[rec.task.name] = counts.get(rec.task.name, 0) + 1
    files = [
        {
            "path": os.path.abspath(s.path),
            "task": s.task,
            "max_records": s.max_records,
            "sha256": file_sha256(s.path),
        }
        for s in sources
    ]
    return {"files": files, "records_per_task": counts, "records": len(ts)}


def training_dataset_names(sources: Sequence[DataSource], ts: TrainingSet) -> list[str]:
    """Task names and file stems trained on, for the model metadata (evaluation flags overlap)."""
    return sorted({r.task.name for r in ts.records} | {Path(s.path).stem for s in sources})


def batch_tokens(emb: Embedder, batch: TrainBatch) -> int:
    """Non-pad tokens one process encodes for ``batch``: its queries (few-shot block included) and documents.

    Counted from :meth:`Embedder.tokenize`'s ``attention_mask``, the ids the training step feeds the model
    (padding and GradCache chunking do not change it); the training loop and ``optim.max_tokens``'s
    planning pass both count with this function.
    """
    truncated = emb.truncated_count  # counting is not encoding: leave the embedder's statistics alone
    q = emb.tokenize(batch.queries, extra=batch.query_extra or None)["attention_mask"].sum()
    d = emb.tokenize(batch.documents, extra=batch.document_extra or None)["attention_mask"].sum()
    emb.truncated_count = truncated
    return int(q) + int(d)


def prompt_counts(emb: Embedder, batch: Any) -> dict[str, int]:
    """How a batch's few-shot examples fared against the token budgets.

    ``queries_cut_by_examples`` counts queries whose own tokens (instruction + text) differ from those of
    the same query encoded without examples: 0 by construction (examples sit on top of ``max_length``).
    ``queries_truncated_alone`` counts queries whose instruction + text alone exceed ``max_length`` (the
    ordinary truncation every text is subject to). ``examples_dropped`` counts whole examples dropped to
    fit ``examples_max_length``.
    """
    kw = {
        "max_length": emb.config.max_length,
        "append_eos": emb.config.kind == "decoder",
        "specials": emb.specials,
    }
    alone = batch.zero_shot_queries or batch.queries
    extra = batch.query_extra or [0] * len(batch.queries)
    with_ex, _ = encode_ids(emb.tokenizer, batch.queries, extra=extra, **kw)
    own, truncated = encode_ids(emb.tokenizer, alone, **kw)
    skip = 1 if emb.specials.adds_bos else 0  # BOS precedes the example block
    cut = sum(
        len(w) != len(a) + n or w[len(w) - len(a) + skip :] != a[skip:]
        for w, a, n in zip(with_ex, own, extra, strict=True)
    )
    return {
        "queries": len(batch.queries),
        "queries_with_examples": sum(n > 0 for n in extra),
        "queries_cut_by_examples": cut,
        "queries_truncated_alone": truncated,
        "examples_dropped": batch.examples_dropped,
    }


def plot_metrics(metrics: Path, png: Path) -> None:
    """Loss (total, contrastive, KL) and quick-eval curves from ``metrics.jsonl`` into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train_rows = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_spearman" in r]
    fig, axes = plt.subplots(1, 2 if evals else 1, figsize=(10 if evals else 6, 4), squeeze=False)
    ax = axes[0][0]
    for task in sorted({r.get("task", "") for r in train_rows}):  # tasks differ in scale: one line each
        mine = [r for r in train_rows if r.get("task", "") == task]
        line = ax.plot(
            [r["step"] for r in mine], [r["loss"] for r in mine], marker="o", ms=3, label=f"{task} loss"
        )[0]
        if any(r["kl"] > 0 for r in mine):
            ax.plot(
                [r["step"] for r in mine],
                [r["kl"] for r in mine],
                ls="--",
                marker="x",
                ms=3,
                color=line.get_color(),
                label=f"{task} KL part",
            )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.set_title("training loss")
    if evals:
        ax2 = axes[0][1]
        ax2.plot([r["step"] for r in evals], [r["eval_spearman"] for r in evals], marker="o")
        ax2.set_xlabel("step")
        ax2.set_ylabel("Spearman")
        ax2.set_title(f"quick eval: {evals[-1]['eval_task']}")
    fig.tight_layout()
    with atomic_write(png, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)


def tensorboard_writer(run_dir: Path) -> Any:
    """A TensorBoard ``SummaryWriter`` into ``run_dir/tensorboard`` (None without tensorboard)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def plot_run(run_dir: Path) -> None:
    """``loss.png`` from the run's ``metrics.jsonl``; a failure is logged, never raised (it must not kill a
    run)."""
    try:
        plot_metrics(run_dir / "metrics.jsonl", run_dir / "loss.png")
    except Exception as err:  # plotting must never kill a run
        logger.warning("could not plot metrics: %s", err)


def log_row(run_dir: Path, row: dict[str, Any], writer: Any) -> None:
    """Append a metrics row to ``metrics.jsonl`` (and its float values to TensorBoard, if ``writer``)."""
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
    if writer is not None:
        for k, v in row.items():
            if isinstance(v, float) and k != "step":
                writer.add_scalar(f"train/{k}", v, row["step"])


def write_prompt_stats(
    acc: Any, run_dir: Path, stats: dict[str, int], *, from_step: int, to_step: int
) -> None:
    """``prompt_stats.json`` in the run folder: the counts of every process (:func:`prompt_counts`, summed
    over processes; every process must call it) between two steps."""
    import torch

    keys = sorted(stats)
    if keys:
        t = torch.tensor([stats[k] for k in keys], dtype=torch.long, device=acc.device)
        stats = dict(zip(keys, acc.reduce(t, reduction="sum").tolist(), strict=True))
    if acc.is_main_process:
        stats = {**stats, "from_step": from_step, "to_step": to_step}
        write_json(run_dir / "prompt_stats.json", stats)
        if stats.get("queries_cut_by_examples"):
            logger.error("%d training queries lost tokens to examples", stats["queries_cut_by_examples"])
        logger.info("prompt stats: %s", stats)

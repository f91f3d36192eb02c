"""The training loop: LoRA (or full) contrastive + soft-label fine-tuning of a decoder or encoder embedder.

``anna-embed train --config configs/train/demo.toml [--set optim.lr=5e-5 ...] [--resume]`` runs on one CPU;
the same command under ``accelerate launch`` or ``torchrun`` runs data-parallel on several GPUs or
nodes (in-batch negatives are gathered across processes, see :func:`anna_embed.losses.gather_with_grad`).

One step: the data module turns batch ``(epoch, i)`` (task-homogeneous, a pure function of the seed) into
prompt strings; the embedder tokenizes and embeds queries and documents; :func:`anna_embed.losses.
embedding_loss` scores them. Checkpoints (trainable weights, optimizer, scheduler, RNG, position, resolved
config, data manifest) are written atomically every ``run.save_every`` steps; ``--resume`` continues from
the newest one to the same final weights as an uninterrupted run. A non-finite loss stops the run before
the update, keeping the last good checkpoint.

The student is a decoder LLM (LoRA, EOS pooling, instructions and few-shot examples) or an encoder (a
sentence-transformers folder such as all-MiniLM-L6-v2, or a BERT-like hub model): the same data, losses,
checkpoints and export, with the encoder's own pooling, no instructions unless ``model.instructions`` turns
them on, and every weight trained unless ``lora.enabled`` (see :class:`anna_embed.train_config.ModelSection`).

Two settings stay functions of the step, so resume stays exact: ``data.hard_negatives_after`` (a
curriculum: in-batch negatives only, no KL, for the first N steps) and ``optim.max_tokens`` (equal compute:
``total_steps`` is fixed up front by tokenizing the batch plan, see :meth:`Trainer._plan_steps`).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from anna_embed import config as C
from anna_embed.data import TrainBatch, TrainingSet, plan_batches
from anna_embed.io import atomic_write, write_json
from anna_embed.train_config import LoraSection, TrainConfig
from anna_embed.train_report import (
    batch_tokens,
    data_manifest,
    plot_metrics,
    prompt_counts,
    quick_sts_eval,
    tensorboard_writer,
    training_dataset_names,
)

if TYPE_CHECKING:
    import torch

    from anna_embed.embedder import Embedder

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step-"
#: Steps whose token counts one reduction across processes sums (``optim.max_tokens``'s planning pass).
_COUNT_BLOCK = 256

#: The curriculum's phases (``data.hard_negatives_after``).
Phase = Literal["in_batch_only", "full"]


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


@dataclass(frozen=True)
class StepInfo:
    """Passed to callbacks after every optimiser step."""

    step: int
    loss: float
    checkpoint: Path | None


# ----------------------------------------------------------------------------- schedule / checkpoints


def lr_factor(step: int, *, warmup: int, total: int, kind: str) -> float:
    """Multiplier of the peak learning rate at 0-based ``step``: linear warm-up, then ``kind`` decay."""
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant" or total <= warmup:
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(0.0, 1.0 - progress)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint folder (partial ones never carry the final name)."""
    folder = run_dir / "checkpoints"
    found = sorted(folder.glob(f"{CHECKPOINT_PREFIX}*")) if folder.is_dir() else []
    return found[-1] if found else None


# ----------------------------------------------------------------------------- the trainer


class Trainer:
    """Holds the run's state; :meth:`fit` runs it. Built by :func:`train`."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = False):
        import torch
        from accelerate import Accelerator

        self.cfg = cfg
        self.run_dir = Path(cfg.run.output_dir)
        # cpu=True without CUDA: accelerate then sets up gloo under torchrun (2 CPU processes in the tests)
        self.acc = Accelerator(mixed_precision=cfg.optim.mixed_precision, cpu=not torch.cuda.is_available())
        ds = self.acc.state.deepspeed_plugin
        if ds is not None:  # no DataLoader is prepared, so DeepSpeed cannot infer the batch size itself
            ds.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.optim.batch_size
            ds.deepspeed_config["train_batch_size"] = cfg.optim.batch_size * self.acc.num_processes
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        torch.manual_seed(cfg.run.seed)
        if not cfg.data.sources:
            raise ValueError("data.sources is empty: give at least one training file")
        self.data = TrainingSet.from_sources(cfg.data.sources)
        self.global_batch = cfg.optim.batch_size * self.world
        self.steps_per_epoch = len(self._batches(0))
        if self.steps_per_epoch == 0:
            raise ValueError(f"no task has {self.global_batch} records: lower optim.batch_size")
        if cfg.data.hard_negatives_after < 0:
            raise ValueError(f"data.hard_negatives_after must be >= 0, got {cfg.data.hard_negatives_after}")
        self.emb, self.peft_model = self._build_model()
        # with optim.max_tokens: the cumulative tokens of every planned step (tokenizing only, no forward)
        self.total_steps, self.planned_tokens = self._plan_steps()
        params = [p for p in self.emb.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(
                s, warmup=cfg.optim.warmup_steps, total=self.total_steps, kind=cfg.optim.scheduler
            ),
        )
        # the scheduler stays unprepared: accelerate would step it once per process
        self.module, self.optimizer = self.acc.prepare(_embed_module_class()(self.emb), self.optimizer)
        self.step = 0
        self.tokens = 0  # non-pad tokens encoded so far, all processes (see batch_tokens)
        self.seconds_before = 0.0  # training wall time of earlier sessions (a resumed run)
        self._fit_started: float | None = None
        self.last_checkpoint: Path | None = None
        self.prompt_stats: dict[str, int] = {}  # since this (re)start, see prompt_counts
        if resume:
            self._resume()
        self._start_step = self.step
        self.manifest = data_manifest(cfg.data.sources, self.data)

    # -- setup
    def _batches(self, epoch: int) -> list[list[int]]:
        """The epoch's batch plan (computed once per epoch; a pure function of seed and epoch)."""
        cached = getattr(self, "_plan", None)
        if cached is None or cached[0] != epoch:
            names = [r.task.name for r in self.data.records]
            plan = plan_batches(names, batch_size=self.global_batch, seed=self.cfg.run.seed, epoch=epoch)
            self._plan = cached = (epoch, plan)
        return cached[1]

    def _phase(self, step: int) -> Phase:
        """The curriculum's phase of 0-based ``step``: ``in_batch_only`` before ``data.hard_negatives_after``
        (as the ablation's ``inbatch_only`` variant trains), ``full`` from then on."""
        return "in_batch_only" if step < self.cfg.data.hard_negatives_after else "full"

    def _kl_weight(self) -> float:
        """``loss.kl_weight`` at the current step: 0 in the curriculum's ``in_batch_only`` phase."""
        return 0.0 if self._phase(self.step) == "in_batch_only" else self.cfg.loss.kl_weight

    def _group_size(self, indices: Sequence[int], *, step: int | None = None) -> int:
        """``G`` of a batch at ``step`` (default: the current one).

        Batches that use in-batch negatives take 1 in the ``in_batch_only`` phase, else
        ``data.in_batch_group_size`` (when set); group-only batches (classification, clustering) always take
        ``data.group_size``, their label negatives.
        """
        from anna_embed.data import uses_in_batch

        d = self.cfg.data
        if not uses_in_batch(self.data.records[indices[0]].task, d.in_batch):
            return d.group_size
        if self._phase(self.step if step is None else step) == "in_batch_only":
            return 1
        return d.in_batch_group_size if d.in_batch_group_size is not None else d.group_size

    def _collate_step(self, step: int) -> TrainBatch:
        """This process's share of batch ``step`` as prompt strings (a pure function of seed and step)."""
        cfg = self.cfg
        epoch, i = divmod(step, self.steps_per_epoch)
        bs = cfg.optim.batch_size
        local = self._batches(epoch)[i][self.rank * bs : (self.rank + 1) * bs]
        return self.data.collate(
            local,
            seed=cfg.run.seed,
            epoch=epoch,
            group_size=self._group_size(local, step=step),
            max_shots=cfg.data.max_shots,
            prompter=self.emb,
            in_batch=cfg.data.in_batch,
            instructions=self.emb.config.use_instructions,
        )

    def _sum_over_processes(self, values: list[int]) -> list[int]:
        """Element-wise sum of ``values`` over all processes (every process must call it)."""
        if self.world == 1:
            return values
        import torch

        t = torch.tensor(values, dtype=torch.long, device=self.acc.device)
        return self.acc.reduce(t, reduction="sum").tolist()

    def _plan_steps(self) -> tuple[int, list[int]]:
        """``total_steps``, and with ``optim.max_tokens`` the cumulative tokens after each step up to it.

        The step limit is ``optim.max_steps`` (else ``optim.epochs`` passes over the data). With
        ``max_tokens`` the run ends at the first step whose cumulative count (:func:`batch_tokens` of every
        process's share) reaches it: every planned batch is collated and tokenized as the step will do it,
        without a forward, so the count is exact and the same on every restart.
        """
        o = self.cfg.optim
        limit = o.max_steps or o.epochs * self.steps_per_epoch
        if o.max_tokens is None:
            return limit, []
        if o.max_tokens <= 0:
            raise ValueError(f"optim.max_tokens must be positive, got {o.max_tokens}")
        t0, total, cumulative = time.perf_counter(), 0, []
        for start in range(0, limit, _COUNT_BLOCK):  # one reduction per block of steps
            steps = range(start, min(limit, start + _COUNT_BLOCK))
            for n in self._sum_over_processes([batch_tokens(self.emb, self._collate_step(s)) for s in steps]):
                total += n
                cumulative.append(total)
                if total >= o.max_tokens:
                    logger.info(
                        "optim.max_tokens=%d: %d steps (%d tokens; counted in %.1f s)",
                        o.max_tokens,
                        len(cumulative),
                        total,
                        time.perf_counter() - t0,
                    )
                    return len(cumulative), cumulative
        cap = f"optim.max_steps={o.max_steps}" if o.max_steps else f"the data ({o.epochs} epoch(s))"
        logger.warning(
            "optim.max_tokens=%d not reached: %s ends after %d steps and %d tokens (raise optim.epochs)",
            o.max_tokens,
            cap,
            limit,
            total,
        )
        return limit, cumulative

    def _train_seconds(self) -> float:
        """Wall seconds spent in :meth:`fit` so far, earlier sessions of a resumed run included."""
        started = self._fit_started
        return self.seconds_before + (time.perf_counter() - started if started is not None else 0.0)

    def _build_model(self) -> tuple[Embedder, Any]:
        """Load the backbone, resolve the config's "the model's own" values (None) and wrap it for training.

        ``self.cfg`` becomes the resolved config (what checkpoints and the model folder save): pooling,
        ``max_length`` and instructions as the model has them, LoRA on or off by the model's kind, the
        LoRA targets of its architecture, and float32 weights for full fine-tuning under ``dtype = auto``.
        """
        from anna_embed.embedder import Embedder, folder_config
        from anna_embed.models import resolve

        m, d = self.cfg.model, self.cfg.data
        lora = resolve_lora(self.cfg.lora, kind=folder_config(resolve(m.name)).kind, model_type=None)
        dtype = "float32" if m.dtype == "auto" and not lora.enabled else m.dtype
        emb = Embedder.from_pretrained(
            m.name, pooling=m.pooling, max_length=m.max_length, dtype=dtype, device=str(self.acc.device)
        )
        # the few-shot budgets travel with the saved model, so eval applies them too
        emb.config = replace(
            emb.config,
            shot_max_tokens=d.shot_max_tokens,
            examples_max_length=d.examples_max_length,
            use_instructions=emb.config.use_instructions if m.instructions is None else m.instructions,
        )
        lora = resolve_lora(lora, kind=emb.config.kind, model_type=emb.model.config.model_type)
        c = emb.config
        model = replace(
            m, pooling=c.pooling, max_length=c.max_length, instructions=c.use_instructions, dtype=dtype
        )
        self.cfg = replace(self.cfg, model=model, lora=lora)
        logger.info(
            "%s (%s): %s pooling, max_length %d, instructions %s, %s",
            m.name,
            c.kind,
            c.pooling,
            c.max_length,
            "on" if c.use_instructions else "off",
            f"LoRA r={lora.r}" if lora.enabled else f"full fine-tuning ({dtype})",
        )
        return prepare_for_training(emb, lora, gradient_checkpointing=m.gradient_checkpointing)

    # -- one step
    def _loss(
        self,
        q_emb: torch.Tensor,
        d_emb: torch.Tensor,
        batch: Any,
        teacher: Any,
        mask: Any,
        teacher_batch: torch.Tensor | None = None,
    ) -> Any:
        from anna_embed.losses import embedding_loss, gather_with_grad

        lc, b = self.cfg.loss, len(batch.queries)
        docs, offset = (gather_with_grad(d_emb), self.rank * b) if batch.in_batch else (d_emb, 0)
        return embedding_loss(
            q_emb,
            docs,
            group_size=batch.group_size,
            in_batch=batch.in_batch,
            own_positive=self._own_positive(batch, offset),
            student_temperature=lc.student_temperature,
            teacher_scores=teacher,
            teacher_mask=mask,
            teacher_temperature=lc.teacher_temperature,
            kl_weight=self._kl_weight(),
            query_offset=offset,
            teacher_batch_scores=teacher_batch,
        )

    def _own_positive(self, batch: Any, offset: int) -> torch.Tensor:
        """``[B, N]`` mask of candidates that are copies of the query's own positives (see the loss)."""
        import torch

        from anna_embed.data import own_positive_mask

        texts = batch.doc_texts
        if batch.in_batch and self.world > 1:  # the gathered documents: every process's, in rank order
            from accelerate.utils import gather_object

            texts = gather_object(list(batch.doc_texts))
        rows = own_positive_mask(batch.positives, texts, group_size=batch.group_size, query_offset=offset)
        return torch.tensor(rows, dtype=torch.bool, device=self.acc.device)  # [B, N]

    def _train_step(self, batch: Any) -> Any:
        import torch

        from anna_embed.losses import LossOutput, grad_cache_backward

        g = batch.group_size
        rows = [t if t is not None else [0.0] * g for t in batch.teacher_scores]
        teacher = torch.tensor(rows, dtype=torch.float32, device=self.acc.device)  # [B, G]
        mask = torch.tensor([t is not None for t in batch.teacher_scores], device=self.acc.device)  # [B]
        teacher_batch = None  # [B, M * G]: loss.distill_scope = "batch" on a batch with in-batch negatives
        if self.cfg.loss.distill_scope == "batch" and batch.in_batch:
            if self.data.teacher is None:
                raise ValueError(
                    'loss.distill_scope = "batch" needs teacher vectors: mine with --teacher-embeddings '
                    "(a bi:NAME reranker) and set teacher_embeddings on the data source"
                )
            have = batch.teacher_q_emb is not None  # else this batch keeps the group KL
            if self.world > 1:  # every process takes the same branch (the gather below is collective)
                flag = torch.tensor([float(have)], device=self.acc.device)
                have = bool(self.acc.reduce(flag, reduction="sum").item() == self.world)
            if have:
                dev = self.acc.device
                t_q = torch.as_tensor(batch.teacher_q_emb, dtype=torch.float32, device=dev)  # [B, Dt]
                t_d = torch.as_tensor(batch.teacher_d_emb, dtype=torch.float32, device=dev)  # [B * G, Dt]
                t_d = self.acc.gather(t_d)  # [M * G, Dt], rank order like the student's (plain, no grad)
                teacher_batch = t_q @ t_d.T  # [B, M * G]
        chunk = self.cfg.loss.grad_cache_chunk
        if chunk > 0:

            def encode(part: list[tuple[str, int]]) -> torch.Tensor:  # (prompt, few-shot tokens) pairs
                return self.module(**self.emb.tokenize([t for t, _ in part], extra=[n for _, n in part]))

            def split(xs: list[str], extra: list[int]) -> list[list[tuple[str, int]]]:
                pairs = list(zip(xs, extra or [0] * len(xs), strict=True))
                return [pairs[i : i + chunk] for i in range(0, len(pairs), chunk)]

            return grad_cache_backward(
                encode,
                split(batch.queries, batch.query_extra),
                split(batch.documents, batch.document_extra),
                lambda q, d: self._loss(q, d, batch, teacher, mask, teacher_batch),
                no_sync=lambda: self.acc.no_sync(self.module),
                backward=self.acc.backward,
            )
        # queries and documents in separate forwards, so short queries are not padded to document length
        q_emb = self.module(**self.emb.tokenize(batch.queries, extra=batch.query_extra or None))  # [B, D]
        d_emb = self.module(**self.emb.tokenize(batch.documents, extra=batch.document_extra or None))
        out: LossOutput = self._loss(q_emb, d_emb, batch, teacher, mask, teacher_batch)
        if torch.isfinite(out.loss):
            self.acc.backward(out.loss)
        return out

    # -- the loop
    def fit(self, callbacks: Sequence[Callable[[StepInfo], None]] = ()) -> Path:
        """Train to ``total_steps``; returns the final model folder (written by the main process)."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        if self.acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            C.save(cfg, self.run_dir / "config.json")
            write_json(self.run_dir / "data_manifest.json", self.manifest)
            if self.step == 0:  # a fresh start: rows of an earlier run that left no checkpoint are stale
                (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        self.module.train()
        writer = tensorboard_writer(self.run_dir) if self.acc.is_main_process else None
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not self.acc.is_main_process,
            desc="train",
            unit="step",
        )
        t_last, ex_last = time.perf_counter(), 0
        self._fit_started = t_last
        while self.step < self.total_steps:
            epoch, i = divmod(self.step, self.steps_per_epoch)
            phase = self._phase(self.step)
            batch = self._collate_step(self.step)
            self._count_prompts(batch)
            step_tokens = self._sum_over_processes([batch_tokens(self.emb, batch)])[0]
            out = self._train_step(batch)
            loss = self.acc.reduce(out.loss.detach().reshape(1), reduction="mean").item()
            if not math.isfinite(loss):
                self.optimizer.zero_grad(set_to_none=True)
                where = self.last_checkpoint or "none written yet"
                raise TrainingDivergedError(
                    f"loss became {loss} at step {self.step + 1} (epoch {epoch}, batch {i}, task "
                    f"{batch.task}); no update was applied. Last good checkpoint: {where}. "
                    "Lower optim.lr, raise loss.student_temperature or check the data, then --resume."
                )
            if cfg.optim.grad_clip > 0:
                self.acc.clip_grad_norm_(self.module.parameters(), cfg.optim.grad_clip)
            lr = self.scheduler.get_last_lr()[0]  # the rate this update uses
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self.tokens += step_tokens
            if self.planned_tokens and self.tokens != self.planned_tokens[self.step - 1]:
                logger.warning(
                    "step %d encoded %d tokens in all, the plan counted %d: batches are not reproducible",
                    self.step,
                    self.tokens,
                    self.planned_tokens[self.step - 1],
                )
            ex_last += self.global_batch
            if self.acc.is_main_process and (self.step % cfg.run.log_every == 0 or self.step == 1):
                now = time.perf_counter()
                row = {
                    "step": self.step,
                    "epoch": epoch,
                    "loss": loss,
                    "contrastive": out.contrastive.item(),
                    "kl": out.kl.item(),
                    "lr": lr,
                    "examples_per_s": ex_last / max(now - t_last, 1e-9),
                    "task": batch.task,
                    "tokens": self.tokens,
                    "phase": phase,
                }
                t_last, ex_last = now, 0
                self._log(row, writer)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", ex_s=f"{row['examples_per_s']:.2f}")
            if cfg.run.eval_every and self.step % cfg.run.eval_every == 0:
                self._quick_eval(writer)
            ckpt = None
            if cfg.run.save_every and self.step % cfg.run.save_every == 0 and self.step < self.total_steps:
                ckpt = self.save_checkpoint()
            bar.update(1)
            for cb in callbacks:
                cb(StepInfo(self.step, loss, ckpt))
        bar.close()
        self.save_checkpoint()
        if cfg.run.eval_every and self.step % cfg.run.eval_every:
            self._quick_eval(writer)
        if writer is not None:
            writer.close()
        self._write_prompt_stats()
        return self.save_model()

    # -- prompt accounting
    def _count_prompts(self, batch: Any) -> None:
        """Add one batch to the run's prompt counts (see :func:`prompt_counts`)."""
        counts = prompt_counts(self.emb, batch)
        self.prompt_stats = {k: self.prompt_stats.get(k, 0) + v for k, v in counts.items()}

    def _write_prompt_stats(self) -> None:
        """``prompt_stats.json`` in the run folder: the counts of every process since this (re)start."""
        import torch

        stats = self.prompt_stats
        keys = sorted(stats)
        if keys:
            t = torch.tensor([stats[k] for k in keys], dtype=torch.long, device=self.acc.device)
            stats = dict(zip(keys, self.acc.reduce(t, reduction="sum").tolist(), strict=True))
        if self.acc.is_main_process:
            stats = {**stats, "from_step": self._start_step, "to_step": self.step}
            write_json(self.run_dir / "prompt_stats.json", stats)
            if stats.get("queries_cut_by_examples"):
                logger.error("%d training queries lost tokens to examples", stats["queries_cut_by_examples"])
            logger.info("prompt stats: %s", stats)

    # -- reporting
    def _log(self, row: dict[str, Any], writer: Any) -> None:
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if writer is not None:
            for k, v in row.items():
                if isinstance(v, float) and k != "step":
                    writer.add_scalar(f"train/{k}", v, row["step"])

    def _quick_eval(self, writer: Any) -> None:
        if not self.acc.is_main_process or not self.cfg.run.eval_file:
            return
        score = quick_sts_eval(
            self.emb,
            self.cfg.run.eval_file,
            task=self.cfg.run.eval_task,
            max_pairs=self.cfg.run.eval_max_pairs,
        )
        self.module.train()
        row = {
            "step": self.step,
            "tokens": self.tokens,
            "eval_task": self.cfg.run.eval_task,
            "eval_spearman": score,
        }
        logger.info("step %d: quick eval %s Spearman %.4f", self.step, self.cfg.run.eval_task, score)
        self._log(row, writer)

    # -- checkpoints
    def _trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.emb.model.named_parameters() if p.requires_grad}

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step-NNNNNNN`` atomically (built under a temporary name, then renamed)."""
        import numpy as np
        import torch

        final = self.run_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{self.step:07d}"
        tmp = final.with_name(f".tmp-{final.name}")
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.acc.wait_for_everyone()
        rng = {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
        torch.save(rng, tmp / f"rng-{self.rank}.pt")  # per process: dropout streams differ
        if self.acc.is_main_process:
            torch.save(self._trainable_state(), tmp / "trainable.pt")
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
            epoch, i = divmod(self.step, self.steps_per_epoch)
            write_json(
                tmp / "state.json",
                {
                    "step": self.step,
                    "epoch": epoch,
                    "batch_in_epoch": i,
                    "total_steps": self.total_steps,
                    "world_size": self.world,
                    "tokens": self.tokens,
                    "train_seconds": self._train_seconds(),
                },
            )
            C.save(self.cfg, tmp / "config.json")
            write_json(tmp / "data_manifest.json", self.manifest)
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            self._prune()
            self._plot()
        self.acc.wait_for_everyone()
        self.last_checkpoint = final
        return final

    def _prune(self) -> None:
        found = sorted((self.run_dir / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*"))
        for old in found[: max(0, len(found) - max(1, self.cfg.run.keep_checkpoints))]:
            shutil.rmtree(old, ignore_errors=True)

    def _resume(self) -> None:
        import numpy as np
        import torch

        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            logger.warning("--resume: no checkpoint under %s; starting from scratch", self.run_dir)
            return
        state = json.loads((ckpt / "state.json").read_text())
        if state["world_size"] != self.world:
            raise ValueError(
                f"{ckpt}: saved with {state['world_size']} processes, resuming with {self.world}"
            )
        weights = torch.load(ckpt / "trainable.pt", map_location="cpu")
        params = dict(self.emb.model.named_parameters())
        missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
        if missing:
            raise ValueError(f"{ckpt}: checkpoint lacks trainable parameters {missing[:3]}...")
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value)
        self.optimizer.load_state_dict(
            torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=False)
        )
        self.scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=False))
        rng = torch.load(ckpt / f"rng-{self.rank}.pt", weights_only=False)
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.step, self.tokens = state["step"], state.get("tokens", 0)
        self.seconds_before = state.get("train_seconds", 0.0)
        self.last_checkpoint = ckpt
        metrics = self.run_dir / "metrics.jsonl"
        if self.acc.is_main_process and metrics.is_file():  # drop rows logged after the checkpoint
            rows = [r for r in metrics.read_text().splitlines() if r and json.loads(r)["step"] <= self.step]
            with atomic_write(metrics) as fh:
                fh.write("".join(r + "\n" for r in rows))
        logger.info("resumed from %s (step %d of %d)", ckpt, self.step, self.total_steps)

    def _plot(self) -> None:
        try:
            plot_metrics(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png")
        except Exception as err:  # plotting must never kill a run
            logger.warning("could not plot metrics: %s", err)

    # -- output
    def save_model(self) -> Path:
        """Merge the adapter and save the embedder folder (plus ``adapter/`` and ``training.json``)."""
        out = self.run_dir / "model"
        if not self.acc.is_main_process:
            self.acc.wait_for_everyone()
            return out
        if self.peft_model is not None:
            self.peft_model.save_pretrained(self.run_dir / "adapter")
            self.peft_model.merge_and_unload()  # in place: self.emb.model now holds merged weights
        names = training_dataset_names(self.cfg.data.sources, self.data)
        self.emb.save(out, training_datasets=names)
        write_json(
            out / "training.json",
            {
                "config": C.to_dict(self.cfg),
                "data_manifest": self.manifest,
                "training_datasets": names,
                "steps": self.step,
                "tokens": self.tokens,
                "train_seconds": round(self._train_seconds(), 1),
            },
        )
        self._plot()
        self.acc.wait_for_everyone()
        logger.info("model written to %s", out)
        return out


@functools.cache
def _embed_module_class() -> type:
    import torch

    class EmbedModule(torch.nn.Module):
        """The backbone as a Module whose forward returns pooled embeddings (what DDP/FSDP wrap)."""

        def __init__(self, emb: Embedder):
            super().__init__()
            self.backbone = emb.model
            self._emb = (emb,)  # not a submodule

        def forward(self, **batch: torch.Tensor) -> torch.Tensor:  # -> [B, D]
            return self._emb[0].embed(batch)

    return EmbedModule


def resolve_lora(lora: LoraSection, *, kind: str, model_type: str | None) -> LoraSection:
    """``lora`` with its "the model's own" values filled in: ``enabled`` (None: LoRA for decoders, full
    fine-tuning for encoders) and, when LoRA is on and ``model_type`` is known, ``target_modules`` (empty:
    :func:`anna_embed.models.lora_target_modules`)."""
    from anna_embed.models import lora_target_modules

    enabled = lora.enabled if lora.enabled is not None else kind == "decoder"
    targets = lora.target_modules
    if enabled and not targets and model_type is not None:
        targets = lora_target_modules(model_type)
    return replace(lora, enabled=enabled, target_modules=targets)


def prepare_for_training(
    emb: Embedder, lora: LoraSection, *, gradient_checkpointing: bool = False
) -> tuple[Embedder, Any]:
    """Wrap the embedder's backbone with LoRA in place (or unfreeze it); returns ``(emb, peft_model)``.

    ``lora``'s None / empty values are resolved by :func:`resolve_lora`. Full fine-tuning trains every
    weight except an encoder's ``pooler`` (embeddings never use its output; an unused trainable weight
    would also stall DDP's gradient reduction).
    """
    model = emb.model
    lora = resolve_lora(lora, kind=emb.config.kind, model_type=model.config.model_type)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if not lora.enabled:
        for name, p in model.named_parameters():
            p.requires_grad_(not name.startswith("pooler."))
        model.train()
        return emb, None
    from peft import LoraConfig, get_peft_model

    peft_cfg = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
    )
    peft_model = get_peft_model(model, peft_cfg)  # injects adapters into `model` itself
    if gradient_checkpointing:
        model.enable_input_require_grads()
    model.train()
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    logger.info("LoRA r=%d on %s: %d trainable of %d parameters", lora.r, lora.target_modules, n_train, n_all)
    return emb, peft_model


def train(
    cfg: TrainConfig, *, resume: bool = False, callbacks: Sequence[Callable[[StepInfo], None]] = ()
) -> Path:
    """Run training as configured; returns the saved model folder."""
    return Trainer(cfg, resume=resume).fit(callbacks)


def add_cli(verb: str, parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """``anna-embed train --config FILE [--set key=value ...] [--resume]``."""
    parser.add_argument("--config", help="TOML config (see configs/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=5e-5 (repeatable)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")

    def run(args: argparse.Namespace) -> int:
        cfg = C.load(TrainConfig, args.config, args.overrides)
        try:
            out = train(cfg, resume=args.resume)
        except TrainingDivergedError as err:
            logger.error("%s", err)
            return 3
        logger.info("done: %s", out)
        return 0

    return run

"""The training loop: LoRA (or full) contrastive + soft-label fine-tuning of a decoder or encoder embedder.

``anna-embed train --config configs/train/demo.toml [--set optim.lr=5e-5 ...] [--resume]`` runs on one CPU;
the same command under ``accelerate launch`` or ``torchrun`` runs data-parallel on several GPUs or nodes.

One step (:meth:`Trainer.fit`, then :meth:`Trainer._train_step`): batch ``(epoch, i)`` as prompt strings
(:mod:`~anna_embed.train.batches`) -> tokens -> query and document embeddings -> loss
(:mod:`~anna_embed.train.losses`, labels from :mod:`~anna_embed.train.labels`) -> backward -> optimizer
step -> a metrics row. Around it: the student (:mod:`~anna_embed.train.lora`), the schedule
(:mod:`~anna_embed.train.schedule`), the run folder (:mod:`~anna_embed.train.run_folder`: one run per
folder), checkpoints and the model folder (:mod:`~anna_embed.train.checkpoint`; ``--resume``,
:mod:`~anna_embed.train.resume`, reaches the same final weights as an uninterrupted run), the run's records
(:mod:`~anna_embed.train.report`) and the quick validation (:mod:`~anna_embed.train.quick_eval`). A
non-finite loss stops the run before the update, keeping the last good checkpoint. A decoder student
trains LoRA with instructions and few-shot examples; an encoder keeps its pooling, takes no instructions
unless ``model.instructions`` says so, and trains every weight unless ``lora.enabled``
(:class:`~anna_embed.train.config.ModelSection`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from anna_embed import config as C
from anna_embed.distributed import close_at_exit
from anna_embed.io import write_json
from anna_embed.train import losses
from anna_embed.train.batches import TrainBatch, collate, plan_batches, uses_in_batch
from anna_embed.train.checkpoint import save_checkpoint, save_model
from anna_embed.train.config import TrainConfig, validate
from anna_embed.train.data import TrainingSet
from anna_embed.train.fsdp import clip_gradients, configure_launch, shard
from anna_embed.train.gradcache import gather_with_grad, grad_cache_step, sum_over_processes
from anna_embed.train.labels import own_positives, soft_labels
from anna_embed.train.lora import EmbedModule, load_student
from anna_embed.train.quick_eval import quick_eval_row
from anna_embed.train.report import (
    batch_tokens,
    data_manifest,
    log_row,
    prompt_counts,
    tensorboard_writer,
    training_dataset_names,
    write_prompt_stats,
)
from anna_embed.train.resume import load_checkpoint
from anna_embed.train.run_folder import check_saved_config, claim_run_folder
from anna_embed.train.schedule import Phase, group_size, lr_factor, phase, plan_steps

logger = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


@dataclass(frozen=True)
class StepInfo:
    """Passed to callbacks after every optimiser step."""

    step: int
    loss: float
    checkpoint: Path | None


Callback = Callable[[StepInfo], None]


class Trainer:
    """Holds the run's state; :meth:`fit` runs it. Built by :func:`train` (``resume``, ``force``: there)."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, force: bool = False):
        validate(cfg)  # every numeric setting, before anything loads
        self.cfg = cfg
        self.run_dir = Path(cfg.run.output_dir)
        # cpu=True without CUDA: accelerate then sets up gloo under torchrun (2 CPU processes in the tests)
        self.acc = Accelerator(mixed_precision=cfg.optim.mixed_precision, cpu=not torch.cuda.is_available())
        close_at_exit()
        configure_launch(self.acc, cfg)
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.sharded = cfg.run.distributed == "fsdp" and self.world > 1  # one process: nothing to shard
        claim_run_folder(self.acc, self.run_dir, C.to_dict(cfg), resume=resume, force=force)
        torch.manual_seed(cfg.run.seed)
        if not cfg.data.sources:
            raise ValueError("data.sources is empty: give at least one training file")
        self.data = TrainingSet.from_sources(cfg.data.sources)
        self.global_batch = cfg.optim.batch_size * self.world
        self.steps_per_epoch = len(self._batches(0))
        if self.steps_per_epoch == 0:
            raise ValueError(f"no task has {self.global_batch} records: lower optim.batch_size")
        # the resolved config (the model's own pooling, length, LoRA targets...) is what the run saves
        self.cfg, self.emb, self.peft_model = load_student(cfg, device=str(self.acc.device))
        check_saved_config(self.run_dir, C.to_dict(self.cfg))  # now with the model's own values resolved
        # with optim.max_tokens: the cumulative tokens of every planned step (tokenizing only, no forward)
        self.total_steps, self.planned_tokens = plan_steps(
            self.cfg.optim,
            self.steps_per_epoch,
            lambda steps: sum_over_processes(
                self.acc, [batch_tokens(self.emb, self._collate_step(s)) for s in steps]
            ),
        )
        if self.sharded:  # before the optimizer, which must hold the sharded parameters
            shard(self.emb.model, world=self.world, mixed_precision=cfg.optim.mixed_precision)
        params = [p for p in self.emb.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(
                s, warmup=cfg.optim.warmup_steps, total=self.total_steps, kind=cfg.optim.scheduler
            ),
        )
        # the scheduler stays unprepared: accelerate would step it once per process. A sharded backbone is
        # not prepared either: FSDP's hooks gather its weights and reduce its gradients
        self.module = EmbedModule(self.emb)
        if not self.sharded:
            self.module, self.optimizer = self.acc.prepare(self.module, self.optimizer)
        self.step = 0
        self.tokens = 0  # non-pad tokens encoded so far, all processes (see batch_tokens)
        self.seconds_before = 0.0  # training wall time of earlier sessions (a resumed run)
        self._fit_started: float | None = None
        self.last_checkpoint: Path | None = None
        self.prompt_stats: dict[str, int] = {}  # since this (re)start, see prompt_counts
        self.manifest = data_manifest(cfg.data.sources, self.data)
        if resume and (
            found := load_checkpoint(  # the newest loadable checkpoint of this same run (or None)
                self.acc,
                self.run_dir,
                model=self.emb.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                config=C.to_dict(self.cfg),
                manifest=self.manifest,
                total_steps=self.total_steps,
                sharded=self.sharded,
            )
        ):
            self.last_checkpoint, state = found
            self.step, self.tokens = state["step"], state.get("tokens", 0)
            self.seconds_before = state.get("train_seconds", 0.0)
            logger.info("resumed from %s (step %d of %d)", found[0], self.step, self.total_steps)
        self._start_step = self.step

    # ------------------------------------------------------------------ the loop
    def fit(self, callbacks: Sequence[Callback] = ()) -> Path:
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
            step_phase = self._phase(self.step)
            batch = self._collate_step(self.step)  # prompt strings of this process's share
            self._count_prompts(batch)
            step_tokens = sum_over_processes(self.acc, [batch_tokens(self.emb, batch)])[0]
            out = self._train_step(batch)  # tokens -> embeddings -> loss -> backward
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
                clip_gradients(self.acc, self.module, cfg.optim.grad_clip, sharded=self.sharded)
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
                    "phase": step_phase,
                }
                t_last, ex_last = now, 0
                log_row(self.run_dir, row, writer)
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
        write_prompt_stats(
            self.acc, self.run_dir, self.prompt_stats, from_step=self._start_step, to_step=self.step
        )
        return self.save_model()

    def _train_step(self, batch: TrainBatch) -> losses.LossOutput:
        """Tokens -> embeddings -> loss -> backward for one batch (GradCache: the same, chunk by chunk)."""
        teacher, teacher_batch = soft_labels(
            batch, self.acc, scope=self.cfg.loss.distill_scope, vectors=self.data.teacher
        )
        if self.cfg.loss.grad_cache_chunk > 0:
            return grad_cache_step(
                self.module,
                self.emb,
                batch,
                self.acc,
                chunk=self.cfg.loss.grad_cache_chunk,
                loss_fn=lambda q, d: self._loss(q, d, batch, teacher, teacher_batch),
            )
        # queries and documents in separate forwards, so short queries are not padded to document length
        q_emb = self.module(**self.emb.tokenize(batch.queries, extra=batch.query_extra or None))  # [B, D]
        d_tokens = self.emb.tokenize(batch.documents, extra=batch.document_extra or None)
        d_emb = self.module(**d_tokens)  # [B * G, D]
        out = self._loss(q_emb, d_emb, batch, teacher, teacher_batch)  # loss
        if torch.isfinite(out.loss):
            self.acc.backward(out.loss)  # backward (a non-finite loss stops the run in fit)
        return out

    def _loss(
        self,
        q_emb: torch.Tensor,
        d_emb: torch.Tensor,
        batch: TrainBatch,
        teacher: torch.Tensor,
        teacher_batch: torch.Tensor | None = None,
    ) -> losses.LossOutput:
        """:func:`~anna_embed.train.losses.embedding_loss` of this process's queries against its documents,
        or every process's (gathered, in rank order) when the batch uses in-batch negatives."""
        lc, b = self.cfg.loss, len(batch.queries)
        docs, offset = (gather_with_grad(d_emb), self.rank * b) if batch.in_batch else (d_emb, 0)
        return losses.embedding_loss(
            q_emb,
            docs,
            group_size=batch.group_size,
            in_batch=batch.in_batch,
            own_positive=own_positives(batch, self.acc, offset),
            student_temperature=lc.student_temperature,
            teacher_scores=teacher,
            teacher_temperature=lc.teacher_temperature,
            kl_weight=self._kl_weight(),
            query_offset=offset,
            teacher_batch_scores=teacher_batch,
        )

    # ------------------------------------------------------------------ batches and the curriculum
    def _batches(self, epoch: int) -> list[list[int]]:
        """The epoch's batch plan (computed once per epoch; a pure function of seed and epoch)."""
        cached = getattr(self, "_plan", None)
        if cached is None or cached[0] != epoch:
            names = [r.task.name for r in self.data.records]
            plan = plan_batches(names, batch_size=self.global_batch, seed=self.cfg.run.seed, epoch=epoch)
            self._plan = cached = (epoch, plan)
        return cached[1]

    def _collate_step(self, step: int) -> TrainBatch:
        """This process's share of batch ``step`` as prompt strings (a pure function of seed and step)."""
        cfg = self.cfg
        epoch, i = divmod(step, self.steps_per_epoch)
        bs = cfg.optim.batch_size
        local = self._batches(epoch)[i][self.rank * bs : (self.rank + 1) * bs]
        return collate(
            self.data,
            local,
            seed=cfg.run.seed,
            epoch=epoch,
            group_size=self._group_size(local, step=step),
            max_shots=cfg.data.max_shots,
            prompter=self.emb,
            in_batch=cfg.data.in_batch,
            instructions=self.emb.config.use_instructions,
        )

    def _phase(self, step: int) -> Phase:
        """The curriculum's phase of 0-based ``step`` (:func:`anna_embed.train.schedule.phase`)."""
        return phase(step, self.cfg.data.hard_negatives_after)

    def _kl_weight(self) -> float:
        """``loss.kl_weight`` at the current step: 0 in the curriculum's ``in_batch_only`` phase."""
        return 0.0 if self._phase(self.step) == "in_batch_only" else self.cfg.loss.kl_weight

    def _group_size(self, indices: Sequence[int], *, step: int | None = None) -> int:
        """``G`` of a batch at ``step`` (default: the current one); see :func:`.schedule.group_size`."""
        in_batch = uses_in_batch(self.data.records[indices[0]].task, self.cfg.data.in_batch)
        return group_size(
            self.cfg.data, in_batch=in_batch, phase=self._phase(self.step if step is None else step)
        )

    # ------------------------------------------------------------------ records, checkpoints, output
    def _count_prompts(self, batch: TrainBatch) -> None:
        """Add one batch to the run's prompt counts (see :func:`~anna_embed.train.report.prompt_counts`)."""
        counts = prompt_counts(self.emb, batch)
        self.prompt_stats = {k: self.prompt_stats.get(k, 0) + v for k, v in counts.items()}

    def _quick_eval(self, writer: Any) -> None:
        """Quick validation on the main process, or on all of a sharded run's (forwards gather weights)."""
        if (self.acc.is_main_process or self.sharded) and self.cfg.run.eval_file:
            row = quick_eval_row(self.emb, self.cfg.run, step=self.step, tokens=self.tokens)
            self.module.train()
            if self.acc.is_main_process:
                log_row(self.run_dir, row, writer)

    def _train_seconds(self) -> float:
        """Wall seconds spent in :meth:`fit` so far, earlier sessions of a resumed run included."""
        started = self._fit_started
        return self.seconds_before + (time.perf_counter() - started if started is not None else 0.0)

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step-NNNNNNN`` (:func:`anna_embed.train.checkpoint.save_checkpoint`)."""
        self.last_checkpoint = save_checkpoint(
            self.acc,
            self.run_dir,
            model=self.emb.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            cfg=self.cfg,
            manifest=self.manifest,
            step=self.step,
            steps_per_epoch=self.steps_per_epoch,
            total_steps=self.total_steps,
            tokens=self.tokens,
            train_seconds=self._train_seconds,
            keep=self.cfg.run.keep_checkpoints,
            sharded=self.sharded,
        )
        return self.last_checkpoint

    def save_model(self) -> Path:
        """Merge the adapter and save the embedder folder (plus ``adapter/`` and ``training.json``)."""
        return save_model(
            self.acc,
            self.run_dir,
            self.emb,
            self.peft_model,
            cfg=self.cfg,
            manifest=self.manifest,
            training_datasets=training_dataset_names(self.cfg.data.sources, self.data),
            steps=self.step,
            tokens=self.tokens,
            train_seconds=self._train_seconds,
            # a sharded backbone is exported from an unsharded copy that receives the gathered weights
            unsharded=(lambda: load_student(self.cfg, device="cpu")[1:]) if self.sharded else None,
        )


def train(
    cfg: TrainConfig, *, resume: bool = False, force: bool = False, callbacks: Sequence[Callback] = ()
) -> Path:
    """Run training as configured; returns the saved model folder. ``resume`` continues the run that
    ``run.output_dir`` holds (same config, newest loadable checkpoint); ``force`` deletes that earlier run
    first (:mod:`~anna_embed.train.run_folder`: a fresh start into another run's folder is refused)."""
    return Trainer(cfg, resume=resume, force=force).fit(callbacks)

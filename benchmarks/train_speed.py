"""Training throughput: anna-embed's loop vs sentence-transformers' trainer with MultipleNegativesRankingLoss.

Both sides train the same backbone with the same LoRA adapter, batch size, sequence length, temperature
(MNRL ``scale = 1 / tau``) and the same prompt strings (built by :mod:`anna_embed.prompts`), on
``(query, positive)`` pairs with in-batch negatives only, so the work per step is the same. Each side runs
in its own subprocess, so its peak RSS (and peak CUDA memory on a GPU) is its own. Throughput is measured
between the end of the first step and the end of the last one (the first step pays one-time costs).

    python benchmarks/train_speed.py --model smollm2-135m-instruct \\
        --data ../shared/data/train/scifact_train.jsonl --task SciFact --steps 6 --batch-size 8 \\
        --max-length 128
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rates(stamps: list[tuple[float, float]], batch_size: int) -> dict[str, float]:
    """Examples per wall-clock second and per CPU second of this process, from step 1's end to the last's.

    On a shared CPU the wall-clock rate depends on the other load; the CPU-time rate much less.
    """
    n = (len(stamps) - 1) * batch_size
    return {
        "examples_per_s": n / (stamps[-1][0] - stamps[0][0]),
        "examples_per_cpu_s": n / (stamps[-1][1] - stamps[0][1]),
    }


def _peak_memory_mb() -> dict[str, float]:
    import torch

    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_ours(a: argparse.Namespace) -> dict[str, float]:
    from dataclasses import replace

    from anna_embed import config as C
    from anna_embed.train.config import DataSource, TrainConfig
    from anna_embed.train.loop import Trainer

    n = a.steps * a.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pairs.jsonl"
        data.write_text("".join(json.dumps({"query": q, "positive": p}) + "\n" for q, p in _raw_pairs(a, n)))
        cfg = C.build(
            TrainConfig,
            {},
            [
                f"model.name={a.model}",
                f"model.dtype={a.dtype}",
                f"model.max_length={a.max_length}",
                f"lora.r={a.lora_r}",
                f"lora.alpha={2 * a.lora_r}",
                "lora.dropout=0.0",
                "data.group_size=1",
                "data.max_shots=0",
                "data.in_batch=always",
                "loss.kl_weight=0",
                f"loss.student_temperature={a.temperature}",
                f"optim.batch_size={a.batch_size}",
                f"optim.max_steps={a.steps}",
                "optim.warmup_steps=0",
                "optim.lr=1e-4",
                f"run.output_dir={tmp}/run",
                "run.save_every=0",
            ],
        )
        cfg = replace(cfg, data=replace(cfg.data, sources=(DataSource(str(data), task=a.task),)))
        trainer = Trainer(cfg)
        stamps: list[tuple[float, float]] = []
        trainer.save_model = lambda: Path(tmp)  # type: ignore[method-assign]  # not part of the timing
        trainer.save_checkpoint = lambda: Path(tmp)  # type: ignore[method-assign]
        trainer.fit(callbacks=[lambda info: stamps.append((time.perf_counter(), time.process_time()))])
    return {**_rates(stamps, a.batch_size), **_peak_memory_mb()}


def _raw_pairs(a: argparse.Namespace, n: int) -> list[tuple[str, str]]:
    from anna_embed.train.config import DataSource
    from anna_embed.train.data import load_records

    recs = load_records(DataSource(a.data, task=a.task, max_records=4 * n))
    seen, out = set(), []
    for r in recs:
        if r.query not in seen:
            seen.add(r.query)
            out.append((r.query, r.positives[0]))
    return out[:n]


def run_st(a: argparse.Namespace) -> dict[str, float]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import TrainerCallback

    from anna_embed.model.weights import resolve
    from anna_embed.prompts import build_prompt
    from anna_embed.tasks import get_task
    from anna_embed.train.lora import lora_target_modules

    n = a.steps * a.batch_size
    spec = get_task(a.task)
    pairs = [(build_prompt(q, "query", spec), build_prompt(p, "document", spec)) for q, p in _raw_pairs(a, n)]
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(a.dtype, torch.float32)
    body = Transformer(str(resolve(a.model)), max_seq_length=a.max_length, model_kwargs={"dtype": dtype})
    model = SentenceTransformer(
        modules=[body, Pooling(body.get_embedding_dimension(), "lasttoken"), Normalize()], device=a.device
    )
    lora = LoraConfig(
        r=a.lora_r,
        lora_alpha=2 * a.lora_r,
        lora_dropout=0.0,
        bias="none",
        target_modules=list(lora_target_modules(body.model.config.model_type)),
    )
    get_peft_model(body.model, lora)  # in place, as anna-embed does (ST's add_adapter needs peft>=0.22)
    stamps: list[tuple[float, float]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *args, **kwargs):
            stamps.append((time.perf_counter(), time.process_time()))

    with tempfile.TemporaryDirectory() as tmp:
        args = SentenceTransformerTrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=a.batch_size,
            max_steps=a.steps,
            learning_rate=1e-4,
            warmup_steps=0,
            lr_scheduler_type="linear",
            max_grad_norm=1.0,
            save_strategy="no",
            logging_strategy="no",
            report_to=[],
            seed=0,
            dataloader_num_workers=0,
            use_cpu=a.device == "cpu",
            bf16=False,
            batch_sampler="no_duplicates",
        )
        ds = Dataset.from_dict({"anchor": [q for q, _ in pairs], "positive": [p for _, p in pairs]})
        loss = MultipleNegativesRankingLoss(model, scale=1.0 / a.temperature)
        SentenceTransformerTrainer(
            model=model, args=args, train_dataset=ds, loss=loss, callbacks=[Clock()]
        ).train()
    return {**_rates(stamps, a.batch_size), **_peak_memory_mb()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--data", default="../shared/data/train/scifact_train.jsonl")
    p.add_argument("--task", default="SciFact")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--temperature", type=float, default=0.02)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="cuda" if os.environ.get("CUDA_VISIBLE_DEVICES") else "cpu")
    p.add_argument(
        "--order", default="ours,st", help="which side runs first (load drifts on shared machines)"
    )
    p.add_argument("--only", choices=["ours", "st"], help=argparse.SUPPRESS)
    p.add_argument("--out", help="write the results as JSON here")
    a = p.parse_args()
    if a.only:
        print(json.dumps(run_ours(a) if a.only == "ours" else run_st(a)))
        return
    results = {}
    for side in a.order.split(","):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--only", side]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.exit(f"{side} failed:\n{proc.stderr[-4000:]}")
        results[side] = json.loads(proc.stdout.strip().splitlines()[-1])
    ratio = results["ours"]["examples_per_s"] / results["st"]["examples_per_s"]
    cpu_ratio = results["ours"]["examples_per_cpu_s"] / results["st"]["examples_per_cpu_s"]
    report = {
        "settings": {k: v for k, v in vars(a).items() if k not in ("only", "out")},
        **results,
        "throughput_ratio_ours_over_st": ratio,
        "cpu_time_ratio_ours_over_st": cpu_ratio,
    }
    print(json.dumps(report, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

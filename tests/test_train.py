"""Training loop on a tiny random Llama: end to end, resume, NaN guard, GradCache, prompts, configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from anna_embed import config as C
from anna_embed.tasks import get_task
from anna_embed.train.batches import collate
from anna_embed.train.checkpoint import latest_checkpoint
from anna_embed.train.config import DataSource, LoraSection, TrainConfig
from anna_embed.train.data import TrainingSet, load_records
from anna_embed.train.loop import Trainer, TrainingDivergedError, train
from anna_embed.train.schedule import lr_factor
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
WORDS = [
    "cell",
    "protein",
    "gene",
    "virus",
    "cancer",
    "drug",
    "trial",
    "mouse",
    "blood",
    "brain",
    "heart",
    "liver",
    "lung",
    "acid",
    "dose",
    "risk",
    "rate",
    "high",
    "low",
    "increase",
    "decrease",
    "cause",
    "effect",
    "study",
    "patient",
]


def _records() -> list[dict]:
    rows = []
    for i in range(16):
        a, b, c = WORDS[i % len(WORDS)], WORDS[(3 * i + 1) % len(WORDS)], WORDS[(5 * i + 2) % len(WORDS)]
        rows.append(
            {
                "query": f"{a} {b} {i}",
                "pos": [f"{a} {b} {c} study {i}"],
                "neg": [f"{c} {a} trial {i + 1}", f"{b} dose {i + 2}"],
                "pos_scores": [0.8],
                "neg_scores": [0.5, 0.3],
                "task": "SciFact",
            }
        )
    for i in range(8):
        rows.append(
            {
                "query": f"{WORDS[i]} {WORDS[i + 8]} please",
                "pos": [f"intent {i % 2}"],
                "neg": [f"intent {(i + 1) % 2}"],
                "label": f"intent {i % 2}",
                "task": "Banking77Classification",
            }
        )
    return rows


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A random 2-layer Llama + word-level tokenizer saved as a folder, and training/eval files."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    from anna_embed.tasks import TASKS

    root = tmp_path_factory.mktemp("tiny")
    rows = _records()
    texts = (
        [json.dumps(r) for r in rows] + [t.instruction for t in TASKS.values()] + ["Instruct Query Response"]
    )
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "[EOS]"]))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
    )
    cfg = LlamaConfig(
        vocab_size=fast.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    model_dir = root / "model"
    LlamaModel(cfg).save_pretrained(model_dir)
    fast.save_pretrained(model_dir)
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sts = root / "sts.jsonl"
    sts.write_text(
        "".join(
            json.dumps(
                {"sentence1": f"{WORDS[i]} cell", "sentence2": f"{WORDS[i]} gene", "score": float(i % 5)}
            )
            + "\n"
            for i in range(10)
        )
    )
    return {"model": model_dir, "data": data, "sts": sts}


def _cfg(tiny: dict[str, Path], out: Path, *extra: str) -> TrainConfig:
    overrides = [
        f"model.name={tiny['model']}",
        "model.dtype=float32",
        "model.max_length=64",
        "lora.r=4",
        "lora.alpha=8",
        "lora.target_modules=q_proj,v_proj",
        f"run.output_dir={out}",
        "run.save_every=2",
        "run.keep_checkpoints=10",
        "optim.batch_size=4",
        "optim.lr=5e-3",
        "optim.warmup_steps=1",
        "optim.max_steps=5",
        "data.group_size=2",
        "data.max_shots=2",
        "loss.kl_weight=0.5",
        "loss.teacher_temperature=0.1",
        *extra,
    ]
    cfg = C.build(TrainConfig, {}, overrides)
    return replace(cfg, data=replace(cfg.data, sources=(DataSource(str(tiny["data"])),)))


def test_lr_schedule() -> None:
    assert [lr_factor(s, warmup=2, total=6, kind="linear") for s in range(6)] == [
        0.5,
        1.0,
        1.0,
        0.75,
        0.5,
        0.25,
    ]
    assert lr_factor(4, warmup=0, total=8, kind="cosine") == pytest.approx(0.5)
    assert lr_factor(100, warmup=2, total=6, kind="constant") == 1.0


def test_tiny_run_end_to_end(tiny: dict[str, Path], tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    from anna_embed.model.embedder import Embedder

    cfg = _cfg(tiny, tmp_path / "run", "run.eval_every=5", f"run.eval_file={tiny['sts']}")
    base = Embedder.from_pretrained(tiny["model"], dtype="float32", device="cpu")
    probe = ["cell gene study", "virus dose trial"]
    before = base.encode_queries(probe, task="SciFact")
    trainer = Trainer(cfg)
    # an earlier run killed before its first checkpoint left rows behind: a fresh start drops them
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 9.0}\n')
    out = trainer.fit()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in rows if "loss" in r]
    assert [r["step"] for r in losses] == [1, 2, 3, 4, 5]
    assert all(r["loss"] > 0 and r["examples_per_s"] > 0 for r in losses)
    assert {r["task"] for r in losses} <= {"SciFact", "Banking77Classification"}
    assert any("eval_spearman" in r for r in rows)
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    ckpt = latest_checkpoint(tmp_path / "run")
    assert ckpt is not None and ckpt.name == "step-0000005"
    for name in ("config.json", "data_manifest.json", "trainable.pt", "optimizer.pt", "rng-0.pt"):
        assert (ckpt / name).is_file(), name
    manifest = json.loads((ckpt / "data_manifest.json").read_text())
    assert manifest["records_per_task"] == {"SciFact": 16, "Banking77Classification": 8}
    # the saved folder reproduces the trained (merged) model, in our loader and in sentence-transformers
    trained = trainer.emb.encode_queries(probe, task="SciFact")
    loaded = Embedder.from_pretrained(out, device="cpu")
    assert not (abs(before - trained).max() < 1e-4)  # training changed the model
    assert abs(loaded.encode_queries(probe, task="SciFact") - trained).max() < 1e-5
    assert "SciFact" in loaded.config.training_datasets and "train" in loaded.config.training_datasets
    st = SentenceTransformer(str(out), device="cpu")
    prefix = loaded.query_prefix("SciFact")
    st_vecs = st.encode([prefix + t for t in probe], normalize_embeddings=True)
    assert abs(st_vecs - trained).max() < 1e-4
    meta = json.loads((out / "training.json").read_text())
    assert meta["steps"] == 5 and meta["data_manifest"]["records"] == 24
    # the few-shot budgets travel with the model; no query lost a token of its own to examples
    assert (loaded.config.shot_max_tokens, loaded.config.examples_max_length) == (
        cfg.data.shot_max_tokens,
        cfg.data.examples_max_length,
    )
    stats = json.loads((tmp_path / "run" / "prompt_stats.json").read_text())
    assert stats["queries"] == 5 * 4 and stats["queries_cut_by_examples"] == 0


class _Crash(Exception):
    pass


def _final_trainable(run: Path) -> dict[str, torch.Tensor]:
    ckpt = latest_checkpoint(run)
    assert ckpt is not None
    return torch.load(ckpt / "trainable.pt")


def test_kill_and_resume_reaches_same_weights(tiny: dict[str, Path], tmp_path: Path) -> None:
    full = _cfg(tiny, tmp_path / "full", "optim.max_steps=6", "lora.dropout=0.1")
    train(full)
    cut = _cfg(tiny, tmp_path / "cut", "optim.max_steps=6", "lora.dropout=0.1")

    def crash_after_3(info) -> None:
        if info.step == 3:
            raise _Crash

    with pytest.raises(_Crash):
        train(cut, callbacks=[crash_after_3])
    assert latest_checkpoint(tmp_path / "cut").name == "step-0000002"  # step 3 was lost with the crash
    train(cut, resume=True)
    a, b = _final_trainable(tmp_path / "full"), _final_trainable(tmp_path / "cut")
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
    la = [json.loads(x)["loss"] for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert la == pytest.approx(lb, rel=1e-5) and len(la) == 6


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny, tmp_path, monkeypatch) -> None:
    import anna_embed.train.losses as L

    real = L.embedding_loss
    calls = {"n": 0}

    def flaky(*args, **kw):
        calls["n"] += 1
        out = real(*args, **kw)
        return out if calls["n"] < 3 else L.LossOutput(out.loss * float("nan"), out.contrastive, out.kl)

    monkeypatch.setattr(L, "embedding_loss", flaky)
    cfg = _cfg(tiny, tmp_path / "nan", "optim.max_steps=6")
    with pytest.raises(TrainingDivergedError, match=r"step 3 .*step-0000002"):
        train(cfg)
    assert latest_checkpoint(tmp_path / "nan").name == "step-0000002"
    assert not (tmp_path / "nan" / "model").exists()


def _step_grads(cfg: TrainConfig) -> tuple[float, dict[str, torch.Tensor]]:
    trainer = Trainer(cfg)
    batch = collate(
        trainer.data,
        list(range(4)),
        seed=0,
        epoch=0,
        group_size=2,
        max_shots=2,
        prompter=trainer.emb,
    )
    out = trainer._train_step(batch)
    grads = {n: p.grad.clone() for n, p in trainer.emb.model.named_parameters() if p.requires_grad}
    return out.loss.item(), grads


def test_grad_cache_step_gradients_equal_plain(tiny: dict[str, Path], tmp_path: Path) -> None:
    loss_a, plain = _step_grads(_cfg(tiny, tmp_path / "plain", "lora.dropout=0.0"))
    loss_b, cached = _step_grads(_cfg(tiny, tmp_path / "gc", "lora.dropout=0.0", "loss.grad_cache_chunk=3"))
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert plain.keys() == cached.keys() and len(plain) > 0
    assert all(plain[k].abs().sum() > 0 for k in plain if "lora_B" in k)  # lora_A's grads are 0 at init
    for k in plain:
        assert torch.allclose(plain[k], cached[k], atol=1e-5, rtol=1e-3), k  # padding differs per chunk


@pytest.fixture
def reset_accelerate() -> Iterator[Callable[[], None]]:
    """accelerate's state is a process-wide singleton fixed at first use: reset around (and within) a test."""
    from accelerate.state import AcceleratorState, GradientState

    def reset() -> None:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()

    reset()
    yield reset
    reset()


def test_grad_cache_step_equals_plain_under_bf16_autocast(
    tiny: dict[str, Path], tmp_path: Path, reset_accelerate: Callable[[], None]
) -> None:
    loss_fp32, _ = _step_grads(_cfg(tiny, tmp_path / "fp32", "lora.dropout=0.0"))
    reset_accelerate()
    bf16 = ("lora.dropout=0.0", "optim.mixed_precision=bf16")
    loss_a, plain = _step_grads(_cfg(tiny, tmp_path / "plain", *bf16))
    loss_b, cached = _step_grads(_cfg(tiny, tmp_path / "gc", *bf16, "loss.grad_cache_chunk=3"))
    assert loss_a != pytest.approx(loss_fp32, rel=1e-4)  # autocast is really on (bf16 moves it ~2e-3)
    assert loss_a == pytest.approx(loss_b, rel=2.0**-8)
    assert plain.keys() == cached.keys() and all(plain[k].abs().sum() > 0 for k in plain if "lora_B" in k)
    # Chunks of 3 pad and batch differently from the plain forwards, so bf16 matmuls round differently.
    # bf16 keeps 8 significant bits (eps 2^-8 ~ 0.4%); allow two roundings of the whole gradient, 2^-7 of
    # its norm (measured: ~0.3%; bf16 vs fp32 differ by ~1%). Elementwise rtol would trip on tiny entries.
    for k in plain:
        assert (plain[k] - cached[k]).norm() <= 2.0**-7 * plain[k].norm(), k


def test_grad_cache_step_goes_through_accelerator_backward(
    tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both paths call ``accelerator.backward``; a fake loss scaler there scales both alike.

    The fake multiplies the loss by S, as an fp16 ``GradScaler`` does (accelerate has no scaler on CPU).
    A GradCache step that bypassed ``accelerator.backward`` would come out S times smaller than plain.
    """
    from accelerate import Accelerator

    scale, real, calls = 2.0**10, Accelerator.backward, []

    def scaled(self: Accelerator, loss: torch.Tensor, **kwargs: object) -> None:
        calls.append(loss.ndim)
        real(self, loss * scale, **kwargs)

    monkeypatch.setattr(Accelerator, "backward", scaled)
    _, plain = _step_grads(_cfg(tiny, tmp_path / "plain", "lora.dropout=0.0"))
    assert calls == [0]
    _, cached = _step_grads(_cfg(tiny, tmp_path / "gc", "lora.dropout=0.0", "loss.grad_cache_chunk=3"))
    assert calls == [0] * (1 + 2 + 3)  # plain: 1; GradCache: 4 queries and 8 documents in chunks of 3
    for k in plain:
        assert torch.allclose(plain[k], cached[k], atol=1e-5 * scale, rtol=1e-3), k


def test_gradient_checkpointing_and_full_finetuning(tiny: dict[str, Path], tmp_path: Path) -> None:
    loss_a, plain = _step_grads(_cfg(tiny, tmp_path / "a", "lora.dropout=0.0"))
    loss_b, ckpt = _step_grads(
        _cfg(tiny, tmp_path / "b", "lora.dropout=0.0", "model.gradient_checkpointing=true")
    )
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    for k in plain:
        assert torch.allclose(plain[k], ckpt[k], atol=1e-6, rtol=1e-4), k
    _, full = _step_grads(_cfg(tiny, tmp_path / "c", "lora.enabled=false"))
    assert "layers.0.mlp.up_proj.weight" in full and all("lora" not in k for k in full)
    assert full["layers.0.self_attn.q_proj.weight"].abs().sum() > 0


def _capturing_embedder(model: Path) -> tuple[Any, list[str], list[list[int]]]:
    """A tiny Embedder whose encode records the strings and token ids it would embed."""
    import numpy as np

    from anna_embed.model.embedder import Embedder

    emb = Embedder.from_pretrained(model, dtype="float32", device="cpu")
    strings: list[str] = []
    ids: list[list[int]] = []
    real = emb.encode

    def capture(texts, prefix="", **kw):
        strings.extend(prefix + t for t in texts)
        return real(texts, prefix=prefix, prefix_cache=False, **kw)

    emb.encode = capture
    emb._run_sorted = lambda batch, *a: ids.extend(batch) or np.zeros((len(batch), emb.dimension))
    return emb, strings, ids


def _unpadded(emb: Any, texts: list[str], extra: list[int]) -> list[list[int]]:
    """The ids training feeds the model (``Embedder.tokenize``), padding removed."""
    batch = emb.tokenize(texts, extra=extra)
    rows = zip(batch["input_ids"], batch["attention_mask"], strict=True)
    return [ids[mask.bool()].tolist() for ids, mask in rows]


def test_collator_strings_and_ids_equal_what_encode_queries_and_eval_build(tiny: dict[str, Path]) -> None:
    from mteb.types import PromptType

    from anna_embed.model.mteb import EmbedderBackend, MtebEncoder
    from anna_embed.model.tokenization import CLIP_MARK
    from anna_embed.train.report import prompt_counts

    emb, seen, seen_ids = _capturing_embedder(tiny["model"])
    ts = TrainingSet(load_records(DataSource(str(tiny["data"]))))
    own = emb.check_prefix(emb.query_prefix("SciFact"))
    emb.config = replace(emb.config, max_length=own + 3, shot_max_tokens=2)  # 3-word queries: truncated
    one = emb.fit_examples("SciFact", examples=[(ts.records[1].query, ts.records[1].response)])
    emb.config = replace(emb.config, examples_max_length=one.example_tokens * 3 // 2)  # about one example
    dropped = clipped = 0
    for epoch in range(4):
        idx = [0, 5, 9]
        batch = collate(ts, idx, seed=1, epoch=epoch, group_size=2, max_shots=3, prompter=emb)
        dropped += batch.examples_dropped
        clipped += sum(CLIP_MARK in q for q in batch.queries)
        counts = prompt_counts(emb, batch)
        assert counts["queries_cut_by_examples"] == 0 and counts["queries_truncated_alone"] == 3
        trained = _unpadded(emb, batch.queries, batch.query_extra)
        for row, i in enumerate(idx):
            shots = [
                (ts.records[s].query, ts.records[s].response)
                for s in ts.sample_shots(i, seed=1, epoch=epoch, max_shots=3)
            ]
            seen.clear(), seen_ids.clear()
            emb.encode_queries([ts.records[i].query], task=get_task("SciFact"), examples=shots)
            assert seen == [batch.queries[row]] and seen_ids == [trained[row]]
            evaluator = MtebEncoder(EmbedderBackend(emb, "tiny"), examples={"SciFact": shots})
            assert evaluator.prefix("SciFact", "Retrieval", PromptType.query) + ts.records[i].query == seen[0]
            seen.clear()
            emb.encode_documents([ts.records[i].positives[0]], task="SciFact")
            assert seen == [batch.documents[2 * row]]
    assert dropped > 0 and clipped > 0  # the budgets were exercised


@pytest.mark.parametrize("task", ["STSBenchmark", "Banking77Classification"])
def test_symmetric_documents_get_the_eval_prompt(tiny: dict[str, Path], task: str) -> None:
    from anna_embed.model.mteb import EmbedderBackend, MtebEncoder
    from anna_embed.train.data import parse_record

    emb, seen, seen_ids = _capturing_embedder(tiny["model"])
    rows = [r for r in _records() if r["task"] == task] or [
        {"query": f"{WORDS[i]} cell {i}", "positive": f"{WORDS[i]} gene {i}", "task": task} for i in range(8)
    ]
    ts = TrainingSet([parse_record(r, path=Path("mem"), line=n + 1) for n, r in enumerate(rows)])
    with_shots = 0
    for epoch in range(3):
        idx = [0, 3, 6]
        batch = collate(ts, idx, seed=2, epoch=epoch, group_size=2, max_shots=2, prompter=emb)
        trained = _unpadded(emb, batch.documents, batch.document_extra)
        for row, i in enumerate(idx):
            shots = [
                (ts.records[s].query, ts.records[s].response)
                for s in ts.sample_shots(i, seed=2, epoch=epoch, max_shots=2)
            ]
            with_shots += bool(shots)
            evaluator = MtebEncoder(EmbedderBackend(emb, "tiny"), examples={task: shots})
            prefix = evaluator.prefix(task, get_task(task).type, None)  # mteb: no role on symmetric tasks
            assert batch.queries[row] == prefix + ts.records[i].query
            for j in range(2):
                text = batch.doc_texts[2 * row + j]
                assert batch.documents[2 * row + j] == prefix + text
                seen.clear(), seen_ids.clear()
                evaluator.encode_texts([text], prefix)
                assert seen_ids == [trained[2 * row + j]]
    assert with_shots > 0


def test_old_character_shot_budget_is_a_clear_error() -> None:
    with pytest.raises(C.ConfigError, match=r"shot_max_chars.*shot_max_tokens"):
        C.build(TrainConfig, {"data": {"shot_max_chars": 300}}, [])
    cfg = C.build(TrainConfig, {}, ["data.shot_max_tokens=40", "data.examples_max_length=96"])
    assert (cfg.data.shot_max_tokens, cfg.data.examples_max_length) == (40, 96)


def test_configs_parse() -> None:
    files = sorted((ROOT / "configs" / "train").glob("*.toml"))
    assert {f.stem for f in files} >= {
        "demo",
        "full",
        "no_shots",
        "no_soft_labels",
        "no_margin_filter",
        "inbatch_only",
    }
    for f in files:
        cfg = C.load(TrainConfig, f)
        assert cfg.data.sources, f
    assert C.load(TrainConfig, ROOT / "configs" / "train" / "no_shots.toml").data.max_shots == 0
    assert C.load(TrainConfig, ROOT / "configs" / "train" / "no_soft_labels.toml").loss.kl_weight == 0.0


#: Each ablation file of configs/train: full.toml plus these overrides, nothing else (``SOURCES``: the
#: full recipe's sources, mined again without the margin filter into outputs/mined_nofilter/).
VARIANT_OVERRIDES = {
    "no_shots": ["data.max_shots=0", "run.output_dir=outputs/ablation/no_shots"],
    "no_soft_labels": ["loss.kl_weight=0", "run.output_dir=outputs/ablation/no_soft_labels"],
    "inbatch_only": [
        "data.in_batch_group_size=1",
        "loss.kl_weight=0",
        "run.output_dir=outputs/ablation/inbatch_only",
    ],
    "no_margin_filter": ["run.output_dir=outputs/ablation/no_margin_filter", "SOURCES"],
}


@pytest.mark.parametrize("name", sorted(VARIANT_OVERRIDES))
def test_variant_configs_are_full_plus_their_overrides(name: str) -> None:
    folder = ROOT / "configs" / "train"
    full = C.load(TrainConfig, folder / "full.toml")
    nofilter = [{"path": s.path.replace("/mined/", "/mined_nofilter/")} for s in full.data.sources]
    sets = [f"data.sources={json.dumps(nofilter)}" if x == "SOURCES" else x for x in VARIANT_OVERRIDES[name]]
    variant = C.load(TrainConfig, folder / f"{name}.toml")
    assert variant == C.load(TrainConfig, folder / "full.toml", sets) and variant != full
    # the command line still applies last, on top of the file's overrides
    assert C.load(TrainConfig, folder / f"{name}.toml", ["data.max_shots=2"]).data.max_shots == 2


def test_lora_defaults_documented() -> None:
    assert LoraSection().alpha == 2 * LoraSection().r


_TWO_PROC = r"""
import json, sys
from dataclasses import replace
from anna_embed import config as C
from anna_embed.train.config import DataSource, TrainConfig
from anna_embed.train.loop import train
cfg = C.load(TrainConfig, sys.argv[1])
train(replace(cfg, data=replace(cfg.data, sources=(DataSource(sys.argv[2]),))))
"""


def _one_vs_two_processes(
    tiny: dict[str, Path], tmp_path: Path, script: str, extra: tuple[str, ...], *args: str
) -> tuple[dict[int, list[dict[str, Any]]], dict[int, dict[str, torch.Tensor]]]:
    """Run ``script`` under torchrun as 1 process x batch 4 and 2 processes x batch 2 (CPU, gloo).

    Returns each run's metrics rows and final trainable weights, keyed by the number of processes.
    """
    (tmp_path / "run.py").write_text(script)
    rows, weights = {}, {}
    for procs, bs in ((1, 4), (2, 2)):
        overrides = (
            "optim.max_steps=2",
            f"optim.batch_size={bs}",
            "lora.dropout=0.0",
            "data.in_batch=always",
        )
        cfg = _cfg(tiny, tmp_path / f"p{procs}", *overrides, *extra)
        cfg_file = tmp_path / f"p{procs}.json"
        cfg_file.write_text(json.dumps(C.to_dict(replace(cfg, data=replace(cfg.data, sources=())))))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
        port = free_port()
        launch = ["torch.distributed.run", f"--nproc_per_node={procs}", f"--master_port={port}"]
        cmd = [
            sys.executable,
            "-m",
            *launch,
            str(tmp_path / "run.py"),
            str(cfg_file),
            str(tiny["data"]),
            *args,
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        metrics = (tmp_path / f"p{procs}" / "metrics.jsonl").read_text().splitlines()
        rows[procs] = [json.loads(r) for r in metrics]
        weights[procs] = _final_trainable(tmp_path / f"p{procs}")
    return rows, weights


def _assert_same_run(
    rows: dict[int, list[dict[str, Any]]], weights: dict[int, dict[str, torch.Tensor]]
) -> None:
    assert [r["loss"] for r in rows[1]] == pytest.approx([r["loss"] for r in rows[2]], rel=1e-5)
    for k, v in weights[1].items():
        assert torch.allclose(v, weights[2][k], atol=1e-5), k


@pytest.mark.parametrize("extra", [(), ("loss.grad_cache_chunk=1",)], ids=["plain", "gradcache"])
def test_two_processes_match_one_process_on_concatenated_batch(tiny, tmp_path: Path, extra) -> None:
    """torchrun with 2 CPU (gloo) processes x batch 2 == 1 process x batch 4: same losses and weights (DDP;
    with GradCache too, whose re-embedding backward passes sync gradients only on the last chunk)."""
    _assert_same_run(*_one_vs_two_processes(tiny, tmp_path, _TWO_PROC, extra))


def test_train_config_loads_without_torch():
    import subprocess
    import sys

    code = "import sys, anna_embed.train.config; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_curriculum_trains_in_batch_only_before_hard_negatives_after(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    """Steps < N: in-batch-type batches have G = 1 and no KL; then the full recipe; classification keeps G."""
    n = 4  # epoch 0 of the tiny plan: SciFact x3, Banking77 x2, SciFact (both tasks on both sides of N)
    cfg = _cfg(tiny, tmp_path / "cur", "optim.max_steps=6", f"data.hard_negatives_after={n}")
    trainer = Trainer(cfg)
    seen: list[tuple[int, str, int, bool, float]] = []
    real_step = trainer._train_step

    def spy(batch: Any) -> Any:
        seen.append((trainer.step, batch.task, batch.group_size, batch.in_batch, trainer._kl_weight()))
        return real_step(batch)

    trainer._train_step = spy
    trainer.fit()
    g = cfg.data.group_size
    for step, task, group, in_batch, kl_weight in seen:
        early = step < n
        assert in_batch == (task == "SciFact")
        assert group == (1 if early and task == "SciFact" else g), (step, task)
        assert kl_weight == (0.0 if early else cfg.loss.kl_weight), step
    assert {(s < n, t) for s, t, *_ in seen} == {
        (early, task) for early in (True, False) for task in ("SciFact", "Banking77Classification")
    }
    rows = [json.loads(x) for x in (tmp_path / "cur" / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["in_batch_only"] * n + ["full"] * (6 - n)
    assert all(r["kl"] == 0 for r in rows[:n])
    assert any(r["kl"] > 0 for r in rows[n:] if r["task"] == "SciFact")  # teacher scores count again
    # G = 1 leaves nothing to distil, so check the KL switch where groups stay: every type group-only
    never = _cfg(
        tiny, tmp_path / "never", "optim.max_steps=3", "data.hard_negatives_after=3", "data.in_batch=never"
    )
    train(never)
    rows = [json.loads(x) for x in (tmp_path / "never" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["task"], r["kl"]) for r in rows] == [("SciFact", 0.0)] * 3


def _plain_token_counts(tiny: dict[str, Path], cfg: TrainConfig, steps: int) -> list[int]:
    """Oracle: non-pad tokens of each step's queries and documents, by a plain loop over the batch plan."""
    from anna_embed.model.embedder import Embedder
    from anna_embed.train.batches import plan_batches

    m, d = cfg.model, cfg.data
    emb = Embedder.from_pretrained(tiny["model"], dtype="float32", max_length=m.max_length, device="cpu")
    emb.config = replace(
        emb.config, shot_max_tokens=d.shot_max_tokens, examples_max_length=d.examples_max_length
    )
    ts = TrainingSet(load_records(DataSource(str(tiny["data"]))))
    names = [r.task.name for r in ts.records]
    bs = cfg.optim.batch_size
    per_epoch = len(plan_batches(names, batch_size=bs, seed=cfg.run.seed, epoch=0))
    counts = []
    for step in range(steps):
        epoch, i = divmod(step, per_epoch)
        idx = plan_batches(names, batch_size=bs, seed=cfg.run.seed, epoch=epoch)[i]
        b = collate(
            ts,
            idx,
            seed=cfg.run.seed,
            epoch=epoch,
            group_size=d.group_size,
            max_shots=d.max_shots,
            prompter=emb,
        )
        texts = [
            *zip(b.queries, b.query_extra, strict=True),
            *zip(b.documents, b.document_extra, strict=True),
        ]
        # one text at a time, so no padding: its ids' length is its token count
        counts.append(sum(len(_unpadded(emb, [t], [n])[0]) for t, n in texts))
    return counts


def test_max_tokens_fixes_total_steps_and_tokens_are_cumulative(
    tiny: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import itertools

    cfg = _cfg(tiny, tmp_path / "tok", "optim.max_steps=20")
    cum = list(itertools.accumulate(_plain_token_counts(tiny, cfg, 8)))
    assert cum[0] > 0
    for budget, steps in ((cum[3], 4), (cum[3] + 1, 5), (cum[7], 8)):
        planned = Trainer(replace(cfg, optim=replace(cfg.optim, max_tokens=budget)))
        assert planned.total_steps == steps and planned.planned_tokens == cum[:steps], budget
    # max_steps (or the data's epochs) bounds the run: a warning, not an endless run
    capped = replace(cfg, optim=replace(cfg.optim, max_steps=None, epochs=1, max_tokens=10**9))
    with caplog.at_level("WARNING", logger="anna_embed.train"):
        assert Trainer(capped).total_steps == 6
    assert "max_tokens=1000000000 not reached" in caplog.text
    # the run: cumulative tokens in every row, reaching the budget exactly at its last step
    trainer = Trainer(replace(cfg, optim=replace(cfg.optim, max_tokens=cum[3])))
    out = trainer.fit()
    rows = [json.loads(x) for x in (tmp_path / "tok" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and [r["tokens"] for r in rows] == cum[:4]
    meta = json.loads((out / "training.json").read_text())
    assert (meta["steps"], meta["tokens"]) == (4, cum[3]) and meta["train_seconds"] > 0
    assert meta["config"]["optim"]["max_tokens"] == cum[3]


def test_resume_with_max_tokens_reaches_same_weights(tiny: dict[str, Path], tmp_path: Path) -> None:
    import itertools

    base = _cfg(tiny, tmp_path / "x", "optim.max_steps=20")
    budget = list(itertools.accumulate(_plain_token_counts(tiny, base, 6)))[4] + 1  # reached at step 6
    extra = (
        "optim.max_steps=20",
        f"optim.max_tokens={budget}",
        "lora.dropout=0.1",
        "data.hard_negatives_after=2",
    )
    train(_cfg(tiny, tmp_path / "full", *extra))
    cut = _cfg(tiny, tmp_path / "cut", *extra)

    def crash_after_3(info) -> None:
        if info.step == 3:
            raise _Crash

    with pytest.raises(_Crash):
        train(cut, callbacks=[crash_after_3])
    assert latest_checkpoint(tmp_path / "cut").name == "step-0000002"
    train(cut, resume=True)
    a, b = _final_trainable(tmp_path / "full"), _final_trainable(tmp_path / "cut")
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
    ra, rb = (
        [json.loads(x) for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
        for r in ("full", "cut")
    )
    assert [r["step"] for r in ra] == [1, 2, 3, 4, 5, 6]
    assert [(r["tokens"], r["phase"]) for r in ra] == [(r["tokens"], r["phase"]) for r in rb]
    assert ra[-1]["tokens"] >= budget > ra[-2]["tokens"]
    for run in ("full", "cut"):
        meta = json.loads((tmp_path / run / "model" / "training.json").read_text())
        assert (meta["steps"], meta["tokens"]) == (6, ra[-1]["tokens"]) and meta["train_seconds"] > 0


def test_two_processes_plan_and_count_the_tokens_of_one(tiny, tmp_path: Path) -> None:
    """optim.max_tokens under torchrun (2 processes x batch 2): each process counts its share, the sums
    give the single process's plan (batch 4): the same steps and cumulative tokens as the plain count."""
    import itertools

    cum = list(itertools.accumulate(_plain_token_counts(tiny, _cfg(tiny, tmp_path / "x"), 4)))
    script = tmp_path / "run.py"
    script.write_text(_TWO_PROC)
    cfg = _cfg(tiny, tmp_path / "p2", "optim.max_steps=20", "optim.batch_size=2", "lora.dropout=0.0")
    cfg = replace(cfg, optim=replace(cfg.optim, max_tokens=cum[2] + 1))
    cfg_file = tmp_path / "p2.json"
    cfg_file.write_text(json.dumps(C.to_dict(replace(cfg, data=replace(cfg.data, sources=())))))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    port = str(free_port())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    proc = subprocess.run(
        [*cmd, str(script), str(cfg_file), str(tiny["data"])],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(r) for r in (tmp_path / "p2" / "metrics.jsonl").read_text().splitlines()]
    assert [r["tokens"] for r in rows] == cum[:4]
    meta = json.loads((tmp_path / "p2" / "model" / "training.json").read_text())
    assert (meta["steps"], meta["tokens"]) == (4, cum[3])


# ----------------------------------------------------------------------------- batch-scope KL (issue 11)


def _teacher_npz(tiny: dict[str, Path], path: Path) -> Path:
    """Random unit teacher vectors for every query and text of the tiny data (a stand-in for mining's)."""
    import numpy as np

    from anna_embed.records import TeacherEmbeddings

    rows = [json.loads(x) for x in tiny["data"].read_text().splitlines()]
    docs = list(dict.fromkeys((r["task"], t) for r in rows for t in r["pos"] + r["neg"]))
    rng = np.random.default_rng(0)

    def unit(n: int) -> np.ndarray:
        v = rng.normal(size=(n, 8)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    TeacherEmbeddings(
        teacher="bi:random",
        score_kind="cosine",
        query_texts=tuple(r["query"] for r in rows),
        query_emb=unit(len(rows)),
        document_texts=tuple(t for _, t in docs),
        document_tasks=tuple(task for task, _ in docs),
        document_emb=unit(len(docs)),
    ).save(path)
    return path


def _with_teacher(cfg: TrainConfig, data: Path, teacher: Path | None) -> TrainConfig:
    src = DataSource(str(data), teacher_embeddings=None if teacher is None else str(teacher))
    return replace(cfg, data=replace(cfg.data, sources=(src,)))


def test_batch_distill_scope_covers_the_batch_and_keeps_group_only_types(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    teacher = _teacher_npz(tiny, tmp_path / "train.teacher.npz")
    outs = {}
    for scope in ("group", "batch"):
        cfg = _cfg(tiny, tmp_path / scope, "lora.dropout=0.0", f"loss.distill_scope={scope}")
        trainer = Trainer(_with_teacher(cfg, tiny["data"], teacher))
        kw = dict(seed=0, epoch=0, group_size=2, max_shots=2, prompter=trainer.emb)
        retrieval = collate(trainer.data, [0, 1, 2, 3], **kw)  # SciFact: in-batch negatives
        labels = collate(trainer.data, [16, 17, 18, 19], **kw)  # Banking77: group-only
        assert retrieval.in_batch and retrieval.teacher_d_emb.shape == (8, 8) and not labels.in_batch
        outs[scope] = (trainer._train_step(retrieval), trainer._train_step(labels))
    (group_r, group_l), (batch_r, batch_l) = outs["group"], outs["batch"]
    assert batch_r.contrastive.item() == pytest.approx(group_r.contrastive.item(), rel=1e-6)
    assert batch_r.kl.item() > 0 and abs(batch_r.kl.item() - group_r.kl.item()) > 1e-3
    assert batch_l.kl.item() == pytest.approx(group_l.kl.item(), rel=1e-6)  # group-only keeps the group KL
    trainer.data.teacher = None  # as if no source named a teacher file
    with pytest.raises(ValueError, match="--teacher-embeddings"):
        trainer._train_step(retrieval)


def test_batch_distill_scope_grad_cache_equals_plain(tiny: dict[str, Path], tmp_path: Path) -> None:
    teacher = _teacher_npz(tiny, tmp_path / "train.teacher.npz")
    results = []
    for extra in ((), ("loss.grad_cache_chunk=3",)):
        cfg = _cfg(tiny, tmp_path / "gc", "lora.dropout=0.0", "loss.distill_scope=batch", *extra)
        results.append(_step_grads(_with_teacher(cfg, tiny["data"], teacher)))
    (loss_a, plain), (loss_b, cached) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    for k in plain:
        assert torch.allclose(plain[k], cached[k], atol=1e-5, rtol=1e-3), k


_TWO_PROC_TEACHER = r"""
import sys
from dataclasses import replace
from anna_embed import config as C
from anna_embed.train.config import DataSource, TrainConfig
from anna_embed.train.loop import train
cfg = C.load(TrainConfig, sys.argv[1])
src = DataSource(sys.argv[2], teacher_embeddings=sys.argv[3])
train(replace(cfg, data=replace(cfg.data, sources=(src,))))
"""


def test_batch_distill_scope_two_processes_match_one(tiny: dict[str, Path], tmp_path: Path) -> None:
    """torchrun 2 x batch 2 == 1 x batch 4 with the teacher's document vectors gathered across processes."""
    teacher = _teacher_npz(tiny, tmp_path / "train.teacher.npz")
    extra = ("loss.distill_scope=batch",)
    rows, weights = _one_vs_two_processes(tiny, tmp_path, _TWO_PROC_TEACHER, extra, str(teacher))
    for procs_rows in rows.values():  # Banking77 has no mined scores: only the batch KL
        assert all(r["kl"] > 0 for r in procs_rows), procs_rows
    _assert_same_run(rows, weights)

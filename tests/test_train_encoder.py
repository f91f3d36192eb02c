"""Encoder students (issue 16): a tiny random BERT sentence-transformers folder trained by ``train``.

The same Trainer, data, losses and checkpoints as a decoder: full fine-tuning by default, the folder's own
pooling, no instructions; the exported folder loads in sentence-transformers with the trained vectors.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from anna_embed import config as C
from anna_embed.train.batches import collate
from anna_embed.train.checkpoint import latest_checkpoint
from anna_embed.train.config import DataSource, LoraSection, TrainConfig
from anna_embed.train.loop import Trainer, train
from anna_embed.train.lora import resolve_lora
from conftest import build_backbone, build_bert_folder, build_tokenizer, free_port

TOPICS = ["cell", "protein", "gene", "virus", "cancer", "drug", "trial", "mouse", "blood", "brain", "heart"]
PROBE = ["cell protein study", "virus drug trial", "heart blood"]


def _records() -> list[dict[str, Any]]:
    rows = []
    for i in range(16):
        a, b, c = TOPICS[i % 11], TOPICS[(3 * i + 1) % 11], TOPICS[(5 * i + 2) % 11]
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
    return rows


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bert")
    rows = _records()
    texts = [t for r in rows for t in [r["query"], *r["pos"], *r["neg"]]] + PROBE
    folder = build_bert_folder(root, texts, max_seq_length=48)
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"model": folder, "data": data}


def _cfg(bert: dict[str, Path], out: Path, *extra: str) -> TrainConfig:
    overrides = [
        f"model.name={bert['model']}",
        f"run.output_dir={out}",
        "run.save_every=2",
        "run.keep_checkpoints=10",
        "optim.batch_size=4",
        "optim.lr=2e-3",
        "optim.warmup_steps=1",
        "optim.max_steps=6",
        "data.group_size=3",
        "loss.student_temperature=0.05",
        "loss.kl_weight=0.5",
        "loss.teacher_temperature=0.1",
        *extra,
    ]
    cfg = C.build(TrainConfig, {}, overrides)
    return replace(cfg, data=replace(cfg.data, sources=(DataSource(str(bert["data"])),)))


def _collate(trainer: Trainer, indices: list[int]) -> Any:
    """Records ``indices`` as the trainer collates them (its instructions setting, no shots)."""
    emb = trainer.emb
    kw = dict(seed=0, epoch=0, group_size=3, max_shots=0, instructions=emb.config.use_instructions)
    return collate(trainer.data, indices, prompter=emb, **kw)


def _fixed_batch_loss(trainer: Trainer) -> float:
    """The loss on one fixed batch with dropout off and no gradient (the same batch before and after)."""
    batch = _collate(trainer, list(range(8)))
    teacher = torch.as_tensor(batch.teacher_scores, dtype=torch.float32)  # [B, G], NaN where unknown
    trainer.module.eval()
    with torch.no_grad():
        q = trainer.module(**trainer.emb.tokenize(batch.queries))
        d = trainer.module(**trainer.emb.tokenize(batch.documents))
        loss = trainer._loss(q, d, batch, teacher).loss.item()
    trainer.module.train()
    return loss


def test_encoder_defaults_resolve_to_the_models_own(bert: dict[str, Path], tmp_path: Path) -> None:
    """Default sections on a BERT folder: mean pooling and max_seq_length from the folder, no instructions,
    every weight but the unused pooler trained in float32 (even with dtype = auto); the run saves them."""
    trainer = Trainer(_cfg(bert, tmp_path / "run"))
    c = trainer.emb.config
    assert (c.kind, c.pooling, c.max_length, c.use_instructions) == ("encoder", "mean", 48, False)
    assert trainer.peft_model is None and trainer.cfg.model.dtype == "float32"
    assert all(p.dtype == torch.float32 for p in trainer.emb.model.parameters())
    frozen = {n for n, p in trainer.emb.model.named_parameters() if not p.requires_grad}
    assert frozen == {"pooler.dense.weight", "pooler.dense.bias"}
    m, lora = trainer.cfg.model, trainer.cfg.lora
    assert (m.pooling, m.max_length, m.instructions, lora.enabled) == ("mean", 48, False, False)
    batch = trainer._collate_step(0)  # what the training loop feeds the model (data.max_shots = 3)
    assert batch.queries == [
        trainer.data.records[i].query for i in batch.indices
    ]  # raw: no instruction, no shots
    assert batch.documents == batch.doc_texts


def test_decoder_defaults_are_unchanged(tmp_path: Path) -> None:
    """The same None defaults on a decoder folder resolve to the recipe: EOS pooling, 512 tokens,
    instructions, LoRA on every attention and MLP projection."""
    tok = build_tokenizer()
    build_backbone("llama", len(tok)).save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _records()))
    cfg = _cfg({"model": tmp_path / "llama", "data": data}, tmp_path / "run", "model.dtype=float32")
    trainer = Trainer(cfg)
    m, lora = trainer.cfg.model, trainer.cfg.lora
    assert (m.pooling, m.max_length, m.instructions) == ("last", 512, True)
    assert lora.enabled and lora.target_modules == (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    trainable = [n for n, p in trainer.emb.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert trainer.emb.config.use_instructions


def test_encoder_training_lowers_the_loss_and_exports_to_sentence_transformers(
    bert: dict[str, Path], tmp_path: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    from anna_embed.model.embedder import Embedder

    base = SentenceTransformer(str(bert["model"]), device="cpu").encode(PROBE)
    trainer = Trainer(_cfg(bert, tmp_path / "run", "optim.max_steps=12"))
    before = _fixed_batch_loss(trainer)
    out = trainer.fit()
    after = _fixed_batch_loss(trainer)
    assert after < 0.8 * before, (before, after)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13)) and all(r["kl"] > 0 for r in rows)
    trainer.module.eval()
    trained = trainer.emb.encode(PROBE)
    st = SentenceTransformer(str(out), device="cpu")
    np.testing.assert_allclose(st.encode(PROBE), trained, atol=1e-5)
    assert np.abs(trained - base).max() > 1e-2  # training changed the vectors
    np.testing.assert_allclose(Embedder.from_pretrained(out, device="cpu").encode(PROBE), trained, atol=1e-5)
    modules = [m["type"].rsplit(".", 1)[-1] for m in json.loads((out / "modules.json").read_text())]
    assert modules == ["Transformer", "Pooling", "Normalize"]
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode"] == "mean"  # sentence-transformers 6's format
    saved = json.loads((out / "anna_embed.json").read_text())
    assert (saved["kind"], saved["pooling"], saved["use_instructions"]) == ("encoder", "mean", False)
    assert st.max_seq_length == 48
    meta = json.loads((out / "training.json").read_text())
    assert meta["config"]["lora"]["enabled"] is False and meta["config"]["model"]["pooling"] == "mean"


def test_encoder_kill_and_resume_reaches_the_same_weights(bert: dict[str, Path], tmp_path: Path) -> None:
    """BERT's dropout (0.1) is on while training: the restored RNG must replay it exactly."""

    class Crash(Exception):
        pass

    def crash_after_3(info: Any) -> None:
        if info.step == 3:
            raise Crash

    train(_cfg(bert, tmp_path / "full"))
    cut = _cfg(bert, tmp_path / "cut")
    with pytest.raises(Crash):
        train(cut, callbacks=[crash_after_3])
    assert latest_checkpoint(tmp_path / "cut").name == "step-0000002"
    train(cut, resume=True)
    a, b = (torch.load(latest_checkpoint(tmp_path / r) / "trainable.pt") for r in ("full", "cut"))
    assert a.keys() == b.keys() and "encoder.layer.0.attention.self.query.weight" in a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    losses = [
        [json.loads(x)["loss"] for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
        for r in ("full", "cut")
    ]
    assert losses[0] == losses[1] and len(losses[0]) == 6


def _step_grads(cfg: TrainConfig) -> tuple[float, dict[str, torch.Tensor]]:
    trainer = Trainer(cfg)
    trainer.module.eval()  # dropout off: both paths see the same network
    batch = _collate(trainer, [0, 1, 2, 3])
    out = trainer._train_step(batch)
    grads = {n: p.grad.clone() for n, p in trainer.emb.model.named_parameters() if p.grad is not None}
    return out.loss.item(), grads


def test_encoder_grad_cache_step_equals_plain(bert: dict[str, Path], tmp_path: Path) -> None:
    loss_a, plain = _step_grads(_cfg(bert, tmp_path / "plain"))
    loss_b, cached = _step_grads(_cfg(bert, tmp_path / "gc", "loss.grad_cache_chunk=3"))
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert plain.keys() == cached.keys() and "embeddings.word_embeddings.weight" in plain
    for k in plain:
        assert torch.allclose(plain[k], cached[k], atol=1e-5, rtol=1e-3), k  # chunks pad differently


def test_encoder_with_lora_trains_adapters_only_and_exports_merged(
    bert: dict[str, Path], tmp_path: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    lora = (
        "lora.enabled=true",
        "lora.r=4",
        "lora.alpha=8",
        "model.dtype=float32",
    )  # auto: bf16 base on some CPUs
    trainer = Trainer(_cfg(bert, tmp_path / "run", *lora))
    assert trainer.cfg.lora.target_modules == ("query", "key", "value", "output.dense", "intermediate.dense")
    trainable = [n for n, p in trainer.emb.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    adapted = {n.split(".lora_")[0] for n in trainable}
    assert len(adapted) == 2 * 6 and not any("pooler" in n for n in adapted)  # 6 Linear layers per block
    out = trainer.fit()
    trainer.module.eval()
    trained = trainer.emb.encode(PROBE)  # the merged backbone
    np.testing.assert_allclose(SentenceTransformer(str(out), device="cpu").encode(PROBE), trained, atol=1e-5)
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()


def test_encoder_instructions_when_asked(bert: dict[str, Path], tmp_path: Path) -> None:
    """``model.instructions = true``: the task instruction prefixes the encoder's queries, and the export
    saves it as the task's prompt, so sentence-transformers reproduces the vectors with ``prompt_name``."""
    from sentence_transformers import SentenceTransformer

    trainer = Trainer(_cfg(bert, tmp_path / "run", "model.instructions=true", "data.max_shots=0"))
    batch = _collate(trainer, [0, 1])
    prefix = trainer.emb.query_prefix("SciFact")
    assert prefix and batch.queries == [prefix + trainer.data.records[i].query for i in (0, 1)]
    out = trainer.save_model()
    trainer.module.eval()
    mine = trainer.emb.encode_queries(PROBE, task="SciFact")
    st = SentenceTransformer(str(out), device="cpu")
    np.testing.assert_allclose(st.encode(PROBE, prompt_name="SciFact-query"), mine, atol=1e-5)
    assert not np.allclose(st.encode(PROBE), mine, atol=1e-3)  # the instruction changes the vectors


ARCHITECTURES = ["llama", "qwen2", "mistral", "gemma3_text", "phi3", "bert", "roberta", "mpnet", "distilbert"]


def _tiny(arch: str) -> torch.nn.Module:
    import transformers as T

    small = dict(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    configs = {
        "llama": lambda: T.LlamaConfig(**small, num_key_value_heads=2),
        "qwen2": lambda: T.Qwen2Config(**small, num_key_value_heads=2),
        "mistral": lambda: T.MistralConfig(**small, num_key_value_heads=2),
        "gemma3_text": lambda: T.Gemma3TextConfig(**small, num_key_value_heads=2, head_dim=8),
        "phi3": lambda: T.Phi3Config(**small, num_key_value_heads=2, pad_token_id=0),
        "bert": lambda: T.BertConfig(**small),
        "roberta": lambda: T.RobertaConfig(**small),
        "mpnet": lambda: T.MPNetConfig(**small),
        "distilbert": lambda: T.DistilBertConfig(vocab_size=64, dim=16, n_layers=1, n_heads=2, hidden_dim=32),
    }
    return T.AutoModel.from_config(configs[arch]())


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_default_lora_targets_are_every_projection_of_the_architecture(arch: str) -> None:
    """peft's rule (a name equal to, or ending with '.' + a target) picks every Linear layer of the block,
    attention and MLP, and nothing else (not an encoder's unused pooler)."""
    model = _tiny(arch)
    assert model.config.model_type == arch
    targets = resolve_lora(LoraSection(), kind="decoder", model_type=arch).target_modules
    linear = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}

    def hit(name: str, target: str) -> bool:
        return name == target or name.endswith("." + target)

    picked = {n for n in linear if any(hit(n, t) for t in targets)}
    assert picked == {n for n in linear if not n.startswith("pooler.")}, sorted(linear - picked)
    assert all(any(hit(n, t) for n in linear) for t in targets)  # no dead entry


def test_lora_resolution_by_kind_and_unknown_architectures() -> None:
    assert resolve_lora(LoraSection(), kind="encoder", model_type="bert").enabled is False
    assert resolve_lora(LoraSection(), kind="decoder", model_type="llama").enabled is True
    mine = resolve_lora(LoraSection(enabled=True, target_modules=("q",)), kind="encoder", model_type="nope")
    assert mine.target_modules == ("q",)  # the user's own list is kept
    with pytest.raises(ValueError, match=r"set lora\.target_modules"):
        resolve_lora(LoraSection(enabled=True), kind="encoder", model_type="nomic_bert")


def test_cls_pooling_folder_keeps_its_pooling(tmp_path: Path) -> None:
    """A sentence-transformers 6 folder (``{"pooling_mode": "cls"}``) is read as cls pooling, with the vectors
    sentence-transformers computes."""
    from sentence_transformers import SentenceTransformer

    from anna_embed.model.embedder import Embedder

    folder = build_bert_folder(tmp_path, PROBE, pooling="cls", max_seq_length=16)
    emb = Embedder.from_pretrained(folder, device="cpu")
    assert (emb.config.kind, emb.config.pooling, emb.config.max_length) == ("encoder", "cls", 16)
    expect = SentenceTransformer(str(folder), device="cpu").encode(PROBE)
    np.testing.assert_allclose(emb.encode(PROBE), expect, atol=1e-5)


_TWO_PROC = r"""
import sys
from dataclasses import replace
from anna_embed import config as C
from anna_embed.train.config import DataSource, TrainConfig
from anna_embed.train.loop import train
cfg = C.load(TrainConfig, sys.argv[1])
train(replace(cfg, data=replace(cfg.data, sources=(DataSource(sys.argv[2]),))))
"""


def test_encoder_two_processes_match_one_process(bert: dict[str, Path], tmp_path: Path) -> None:
    """torchrun, 2 CPU (gloo) processes x batch 2 == 1 process x batch 4 for full fine-tuning: the same
    losses and weights (DDP reduces every trainable weight's gradient, so none may go unused: the pooler
    is frozen)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "run.py").write_text(_TWO_PROC)
    texts = [t for r in _records() for t in [r["query"], *r["pos"], *r["neg"]]]
    # no dropout: one process and two draw different masks
    bert = {**bert, "model": build_bert_folder(tmp_path, texts, max_seq_length=48, dropout=0.0)}
    rows, weights = {}, {}
    for procs, bs in ((1, 4), (2, 2)):
        extra = ("optim.max_steps=2", f"optim.batch_size={bs}", "data.in_batch=always", "run.save_every=0")
        cfg = _cfg(bert, tmp_path / f"p{procs}", *extra)
        cfg_file = tmp_path / f"p{procs}.json"
        cfg_file.write_text(json.dumps(C.to_dict(replace(cfg, data=replace(cfg.data, sources=())))))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root / "src")}
        port = str(free_port())
        launch = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={procs}",
            "--master_port",
            port,
        ]
        cmd = [*launch, str(tmp_path / "run.py"), str(cfg_file), str(bert["data"])]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows[procs] = [
            json.loads(r)["loss"] for r in (tmp_path / f"p{procs}" / "metrics.jsonl").read_text().splitlines()
        ]
        weights[procs] = torch.load(latest_checkpoint(tmp_path / f"p{procs}") / "trainable.pt")
    assert rows[1] == pytest.approx(rows[2], rel=1e-5) and len(rows[1]) == 2
    assert "encoder.layer.1.output.dense.weight" in weights[1]
    for k, v in weights[1].items():
        assert torch.allclose(v, weights[2][k], atol=1e-5), k

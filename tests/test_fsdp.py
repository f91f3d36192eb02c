"""Sharded training (``run.distributed = "fsdp"``, FSDP2 on gloo): 2 CPU processes against 1.

Two torchrun launches cover LoRA, full fine-tuning and GradCache: the first trains each straight (4 steps,
a checkpoint every 2, the model exported at the end, the quick evaluation on) and a copy that crashes after
step 3; the second, in new processes, resumes each copy from its step-2 checkpoint. Checked: the sharded
run equals one process on the concatenated batch (losses, weights, exported vectors), the resumed run
equals the straight one exactly, and the export is the same model folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from anna_embed import config as C
from anna_embed.model.embedder import Embedder
from anna_embed.train.checkpoint import checkpoints
from anna_embed.train.loop import train
from conftest import free_port
from test_train import _cfg, _final_trainable, tiny  # noqa: F401  (tiny: the fixture)

ROOT = Path(__file__).resolve().parents[1]

#: name -> overrides on top of the shared ones; each runs sharded and as the 1-process reference
MODES = {
    "lora": (),
    "full": ("lora.enabled=false",),
    "gradcache": ("loss.grad_cache_chunk=1",),
}

_WORKER = r"""
import json, sys
from dataclasses import replace
from anna_embed import config as C
from anna_embed.train.config import DataSource, TrainConfig
from anna_embed.train.loop import train

class Crash(Exception):
    pass

def crash_after_3(info):
    if info.step == 3:
        raise Crash

phase, data, *configs = sys.argv[1:]
for path in configs:
    cfg = C.load(TrainConfig, path)
    cfg = replace(cfg, data=replace(cfg.data, sources=(DataSource(data),)))
    if phase == "train" and cfg.run.output_dir.endswith("straight"):
        train(cfg)
    elif phase == "train":
        try:
            train(cfg, callbacks=[crash_after_3])
        except Crash:
            pass
    elif cfg.run.output_dir.endswith("cut"):
        train(cfg, resume=True)
"""


def _config(files: dict[str, Path], out: Path, mode: str, batch_size: int, distributed: str) -> Any:
    return _cfg(
        files,
        out,
        "optim.max_steps=4",
        f"optim.batch_size={batch_size}",
        "lora.dropout=0.0",
        "data.in_batch=always",
        "run.save_every=2",
        "run.eval_every=2",
        f"run.eval_file={files['sts']}",
        f"run.distributed={distributed}",
        *MODES[mode],
    )


def _rows(run: Path) -> tuple[list[float], list[float]]:
    """The run's training losses and quick-evaluation Spearman values, in order."""
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    return losses, [v for r in rows for k, v in r.items() if "spearman" in k]


def _vectors(model: Path) -> torch.Tensor:
    emb = Embedder.from_pretrained(str(model), device="cpu")
    texts = ["alpha cell gene", "beta protein", "a query about gamma"]
    return torch.from_numpy(emb.encode(texts, batch_size=2, show_progress=False))


@pytest.fixture(scope="module")
def runs(tiny: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """Every mode: the 1-process reference (batch 4, in this process), and the 2-process sharded runs."""
    root = tmp_path_factory.mktemp("fsdp")
    for mode in MODES:
        train(_config(tiny, root / mode / "one", mode, 4, "ddp"))
    files = []
    for mode in MODES:
        for name in ("straight", "cut"):
            cfg = _config(tiny, root / mode / name, mode, 2, "fsdp")
            path = root / f"{mode}-{name}.json"
            path.write_text(json.dumps(C.to_dict(replace(cfg, data=replace(cfg.data, sources=())))))
            files.append(str(path))
    (root / "worker.py").write_text(_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    for phase in ("train", "resume"):  # the resume runs in new processes
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
        cmd += [f"--master_port={free_port()}", str(root / "worker.py"), phase, str(tiny["data"]), *files]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
    return root


@pytest.mark.parametrize("mode", MODES)
def test_fsdp_two_processes_match_one_process(runs: Path, mode: str) -> None:
    """2 sharded processes x batch 2 == 1 process x batch 4: losses, quick-eval rows, weights, export."""
    one, sharded = runs / mode / "one", runs / mode / "straight"
    (loss_1, eval_1), (loss_2, eval_2) = _rows(one), _rows(sharded)
    assert len(loss_1) == 4 and loss_2 == pytest.approx(loss_1, rel=1e-5)
    assert len(eval_1) == 2 and eval_2 == pytest.approx(eval_1, abs=1e-6)  # run on every rank, logged once
    a, b = _final_trainable(one), _final_trainable(sharded)
    assert a.keys() == b.keys() and len(a) > 0
    if mode == "full":
        assert len(a) == sum(1 for _ in Embedder.from_pretrained(str(one / "model")).model.parameters())
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=0), k
    # the export: the same folder as one process writes, vectors equal within float tolerance
    files = {p.relative_to(one / "model") for p in (one / "model").rglob("*")}
    assert files == {p.relative_to(sharded / "model") for p in (sharded / "model").rglob("*")}
    assert torch.allclose(_vectors(one / "model"), _vectors(sharded / "model"), atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_fsdp_kill_and_resume_equals_the_straight_run(runs: Path, mode: str) -> None:
    """Crash after step 3, resume in new processes from step 2: the same losses, weights and vectors."""
    straight, cut = runs / mode / "straight", runs / mode / "cut"
    assert [c.name for c in checkpoints(cut)] == ["step-0000002", "step-0000004"]
    state = json.loads((checkpoints(cut)[0] / "state.json").read_text())
    assert state["sharded"] is True and state["world_size"] == 2
    assert _rows(cut)[0] == _rows(straight)[0]
    a, b = _final_trainable(straight), _final_trainable(cut)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(_vectors(straight / "model"), _vectors(cut / "model"))


def test_a_sharded_checkpoint_resumes_only_a_sharded_run(tiny: dict[str, Path], runs: Path) -> None:  # noqa: F811
    """run.distributed is part of the run's config: a 1-process (ddp) resume of a sharded run is refused."""
    from anna_embed.train.run_folder import RunFolderError

    cfg = _config(tiny, runs / "lora" / "straight", "lora", 2, "ddp")
    with pytest.raises(RunFolderError, match=r"run\.distributed"):
        train(cfg, resume=True)

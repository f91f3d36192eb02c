"""Training hardening (issue 15): safe checkpoint loading, fallback past a broken checkpoint, one run per
run folder, and numeric settings checked before any model loads."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import anna_embed.train.config as train_config
import test_train
from anna_embed import config as C
from anna_embed.train.checkpoint import latest_checkpoint
from anna_embed.train.config import TrainConfig
from anna_embed.train.loop import Trainer, train
from anna_embed.train.schedule import plan_steps
from test_train import _cfg, _Crash, _final_trainable

tiny = test_train.tiny  # the tiny Llama and its data (a module-scoped fixture)
CKPT2, CKPT4 = "checkpoints/step-0000002", "checkpoints/step-0000004"


@pytest.fixture(scope="module")
def finished(tiny: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-step run with checkpoints at steps 2 and 4 (copy it before changing it)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    train(_cfg(tiny, run, "optim.max_steps=4"))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    return run


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


class _RunsCode:
    """Unpickling this runs a shell command (what a hostile checkpoint can hold)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (self.command,)


# ---------------------------------------------------------------------------------------------------- 1


def test_every_checkpoint_file_loads_with_weights_only(finished: Path) -> None:
    for path in sorted((finished / CKPT4).glob("*.pt")):
        torch.load(path, weights_only=True)  # raises on anything but tensors and plain data


@pytest.mark.parametrize("name", ["scheduler.pt", "optimizer.pt", "rng-0.pt", "trainable.pt"])
def test_resume_refuses_a_checkpoint_file_that_would_run_code(
    tiny: dict[str, Path],
    finished: Path,
    tmp_path: Path,
    name: str,
) -> None:
    run = _copy(finished, tmp_path / "run")
    shutil.rmtree(run / CKPT2)  # no older checkpoint to fall back to
    probe, marker = tmp_path / "probe", tmp_path / "MARKER"
    torch.save(_RunsCode(f"touch {probe}"), tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)  # the payload is live: unsafe loading runs it
    assert probe.exists()
    torch.save(_RunsCode(f"touch {marker}"), run / CKPT4 / name)
    with pytest.raises(ValueError, match=rf"{CKPT4}/{name}.*(not loaded|cannot be loaded)") as err:
        Trainer(_cfg(tiny, run, "optim.max_steps=4"), resume=True)
    assert "no code" in str(err.value) or "refused" in str(err.value)
    assert not marker.exists()


def test_old_checkpoints_with_numpy_rng_state_still_resume(
    tiny: dict[str, Path],
    finished: Path,
    tmp_path: Path,
) -> None:
    """Checkpoints written before the change pickled the RNG states as Python tuples and a numpy array;
    they resume (the array is the one non-plain type allowed, for the RNG file only)."""
    run = _copy(finished, tmp_path / "run")
    random.seed(7)
    np.random.seed(7)
    old = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "cuda": None,
    }
    torch.save(old, run / CKPT4 / "rng-0.pt")
    random.seed(1)
    np.random.seed(1)
    trainer = Trainer(_cfg(tiny, run, "optim.max_steps=4"), resume=True)
    assert trainer.step == 4
    assert random.getstate() == old["python"]
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), old["numpy"], strict=True))


# ---------------------------------------------------------------------------------------------------- 2


def test_a_truncated_optimizer_state_is_an_error_naming_the_file(
    tiny: dict[str, Path],
    finished: Path,
    tmp_path: Path,
) -> None:
    run = _copy(finished, tmp_path / "run")
    shutil.rmtree(run / CKPT2)
    opt = run / CKPT4 / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[: opt.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"{CKPT4}/optimizer.pt: cannot be loaded"):
        Trainer(_cfg(tiny, run, "optim.max_steps=4"), resume=True)


def test_resume_falls_back_to_the_previous_complete_checkpoint(
    tiny: dict[str, Path],
    finished: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = _copy(finished, tmp_path / "run")
    opt = run / CKPT4 / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[: opt.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="anna_embed.train"):
        trainer = Trainer(_cfg(tiny, run, "optim.max_steps=4"), resume=True)
    assert trainer.step == 2
    assert (run / "checkpoints" / ".skipped-step-0000004" / "optimizer.pt").is_file()  # set aside, kept
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("step-0000004" in w and "optimizer.pt" in w and "step-0000002" in w for w in warning), warning
    trainer.fit()  # steps 3 and 4 again: the same weights as the first time
    a, b = _final_trainable(finished), _final_trainable(run)
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k


def test_a_checkpoint_without_state_is_skipped(tiny: dict[str, Path], finished: Path, tmp_path: Path) -> None:
    run = _copy(finished, tmp_path / "run")
    (run / CKPT4 / "state.json").write_text('{"step": 4, "epo')
    assert Trainer(_cfg(tiny, run, "optim.max_steps=4"), resume=True).step == 2


# ---------------------------------------------------------------------------------------------------- 3


def _rows(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_new_run_into_a_used_folder_is_refused_unless_forced(
    tiny: dict[str, Path],
    finished: Path,
    tmp_path: Path,
) -> None:
    run = _copy(finished, tmp_path / "run")
    before = sorted(p.name for p in (run / "checkpoints").iterdir()), (run / "metrics.jsonl").read_text()
    other = _cfg(tiny, run, "optim.max_steps=3", "optim.lr=2e-3")
    with pytest.raises(ValueError, match=r"already holds a training run.*--resume.*--force"):
        train(other)
    # the same config: still another run (its checkpoints and model are there)
    with pytest.raises(ValueError, match=r"already holds a training run"):
        train(_cfg(tiny, run, "optim.max_steps=4"))
    assert (
        sorted(p.name for p in (run / "checkpoints").iterdir()),
        (run / "metrics.jsonl").read_text(),
    ) == before
    (run / "notes.txt").write_text("mine")  # not the run's: kept
    train(other, force=True)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000002", "step-0000003"]
    assert latest_checkpoint(run).name == "step-0000003"
    assert [(r["step"], r["lr"]) for r in _rows(run)][:1] == [(1, 2e-3)] and len(_rows(run)) == 3
    meta = json.loads((run / "model" / "training.json").read_text())
    assert meta["steps"] == 3 and meta["config"]["optim"]["lr"] == 2e-3
    assert json.loads((run / "config.json").read_text())["config"]["optim"]["max_steps"] == 3
    assert (run / "notes.txt").read_text() == "mine"


def test_resume_with_another_config_names_the_differing_keys(
    tiny: dict[str, Path],
    finished: Path,
    tmp_path: Path,
) -> None:
    run = _copy(finished, tmp_path / "run")
    changed = _cfg(tiny, run, "optim.max_steps=120", "optim.lr=2e-3", "data.max_shots=1")
    with pytest.raises(ValueError, match=r"data\.max_shots.*optim\.lr.*optim\.max_steps") as err:
        train(changed, resume=True)
    assert "--force" in str(err.value)
    assert json.loads((run / "model" / "training.json").read_text())["steps"] == 4  # untouched
    # the harmless keys (how often to log, evaluate, keep) may change: it resumes
    harmless = ("optim.max_steps=4", "run.log_every=2", "run.keep_checkpoints=3", "run.eval_every=0")
    assert Trainer(_cfg(tiny, run, *harmless), resume=True).step == 4


def test_resume_refuses_changed_training_data(tiny: dict[str, Path], tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text(tiny["data"].read_text())
    cfg = _cfg(tiny, tmp_path / "run", "optim.max_steps=2")
    cfg = replace(cfg, data=replace(cfg.data, sources=(replace(cfg.data.sources[0], path=str(data)),)))
    train(cfg)
    data.write_text(tiny["data"].read_text().replace("cell", "cells"))  # same path, other bytes
    with pytest.raises(ValueError, match=rf"{data}.*changed.*step-0000002"):
        Trainer(cfg, resume=True)
    moved = replace(
        cfg, data=replace(cfg.data, sources=(replace(cfg.data.sources[0], path=str(tiny["data"])),))
    )
    with pytest.raises(ValueError, match=r"data\.sources"):  # another file: another config
        Trainer(moved, resume=True)


def test_a_run_killed_before_its_first_checkpoint_restarts_with_the_same_config(
    tiny: dict[str, Path],
    tmp_path: Path,
) -> None:
    """Nothing to mix: only its own config.json and stale rows; another config is still refused."""
    run = tmp_path / "run"
    cfg = _cfg(tiny, run, "optim.max_steps=3", "run.save_every=0")

    def crash(info: Any) -> None:
        if info.step == 2:
            raise _Crash

    with pytest.raises(_Crash):
        train(cfg, callbacks=[crash])
    assert (run / "config.json").is_file() and latest_checkpoint(run) is None
    with pytest.raises(ValueError, match=r"optim\.lr"):
        Trainer(_cfg(tiny, run, "optim.max_steps=3", "run.save_every=0", "optim.lr=1e-3"))
    train(cfg)
    assert [r["step"] for r in _rows(run)] == [1, 2, 3]


def test_cli_passes_force_and_refuses_it_with_resume(monkeypatch: pytest.MonkeyPatch) -> None:
    import anna_embed.train.loop as loop
    from anna_embed.train.cli import add_cli

    seen: dict[str, Any] = {}
    monkeypatch.setattr(loop, "train", lambda cfg, **kw: seen.update(kw) or Path("out"))
    parser = argparse.ArgumentParser()
    run = add_cli("train", parser)
    assert run(parser.parse_args(["--force"])) == 0
    assert seen == {"resume": False, "force": True}
    with pytest.raises(SystemExit):
        parser.parse_args(["--force", "--resume"])
    with pytest.raises(ValueError, match="force"):
        train(TrainConfig(), resume=True, force=True)


# ---------------------------------------------------------------------------------------------------- 4

BAD = [
    ("optim.max_steps", 0),
    ("optim.max_steps", -3),
    ("optim.epochs", 0),
    ("optim.max_tokens", 0),
    ("optim.max_tokens", -5),
    ("optim.batch_size", 0),
    ("optim.lr", 0.0),
    ("optim.lr", -1e-4),
    ("optim.lr", math.nan),
    ("optim.lr", math.inf),
    ("optim.weight_decay", -0.1),
    ("optim.warmup_steps", -1),
    ("optim.grad_clip", -1.0),
    ("run.save_every", -1),
    ("run.keep_checkpoints", 0),
    ("run.log_every", 0),
    ("run.eval_every", -2),
    ("run.eval_max_pairs", 0),
    ("run.seed", -1),
    ("data.group_size", 0),
    ("data.max_shots", -1),
    ("data.shot_max_tokens", 0),
    ("data.examples_max_length", -1),
    ("data.in_batch_group_size", 0),
    ("data.hard_negatives_after", -1),
    ("loss.student_temperature", 0.0),
    ("loss.teacher_temperature", -0.05),
    ("loss.kl_weight", -1.0),
    ("loss.grad_cache_chunk", -1),
    ("lora.r", 0),
    ("lora.alpha", 0),
    ("lora.dropout", 1.0),
    ("lora.dropout", -0.1),
    ("model.max_length", 0),
]


def _set(cfg: TrainConfig, dotted: str, value: Any) -> TrainConfig:
    section, key = dotted.split(".")
    return replace(cfg, **{section: replace(getattr(cfg, section), **{key: value})})


@pytest.mark.parametrize(("field", "value"), BAD, ids=[f"{f}={v}" for f, v in BAD])
def test_nonsense_numbers_are_refused_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"{field}\b.*{value}" if not isinstance(value, float) else field):
        train_config.validate(_set(TrainConfig(), field, value))


def test_a_data_source_with_no_records_is_refused() -> None:
    from anna_embed.train.config import DataSource

    cfg = TrainConfig()
    cfg = replace(
        cfg, data=replace(cfg.data, sources=(DataSource("a.jsonl"), DataSource("b", max_records=0)))
    )
    with pytest.raises(ValueError, match=r"data\.sources\[1\]\.max_records"):
        train_config.validate(cfg)


def test_unset_values_stay_unset() -> None:
    train_config.validate(TrainConfig())  # max_steps, max_tokens, in_batch_group_size, max_length: None
    train_config.validate(
        C.build(TrainConfig, {}, ["optim.max_steps=None", "optim.max_tokens=none", "run.save_every=0"])
    )


@pytest.mark.parametrize(
    ("field", "value"), [("optim.max_steps", 0), ("optim.max_steps", -3), ("optim.lr", 0.0)]
)
def test_the_trainer_refuses_before_loading_a_model(
    tiny: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    field: str,
    value: Any,
) -> None:
    import anna_embed.train.loop as loop

    def no_load(*args: Any, **kw: Any) -> Any:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(loop, "load_student", no_load)
    with pytest.raises(ValueError, match=field):
        train(_set(_cfg(tiny, tmp_path / "run"), field, value))
    assert not (tmp_path / "run").exists()


def test_the_setting_in_force_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    optim = replace(TrainConfig().optim, max_steps=3, epochs=2)
    with caplog.at_level(logging.INFO, logger="anna_embed.train"):
        assert plan_steps(optim, 10, lambda steps: [1] * len(steps)) == (3, [])
    said = [r.getMessage() for r in caplog.records if "in force" in r.getMessage()]
    assert len(said) == 1 and "optim.max_steps=3" in said[0] and "optim.epochs=2" in said[0]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="anna_embed.train"):
        assert plan_steps(replace(optim, max_tokens=5), 10, lambda steps: [2] * len(steps))[0] == 3
    said = [r.getMessage() for r in caplog.records if "in force" in r.getMessage()]
    assert len(said) == 1 and "optim.max_tokens=5" in said[0]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="anna_embed.train"):
        assert plan_steps(replace(optim, max_steps=None), 10, lambda steps: [1] * len(steps)) == (20, [])
    assert not [r for r in caplog.records if "in force" in r.getMessage()]  # only epochs: nothing to choose


def test_every_numeric_setting_has_a_bound() -> None:
    from dataclasses import fields

    numeric = {
        f"{section.name}.{f.name}"
        for section in fields(TrainConfig)
        for f in fields(getattr(TrainConfig(), section.name))
        if f.type in ("int", "float", "int | None", "float | None")
    }
    assert numeric == set(train_config.LOWER_BOUNDS)

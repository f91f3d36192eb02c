"""Hardening of ``eval`` and the config overrides (issue 15): what a reused result folder holds, one policy
for unknown task names, and errors that name the file, line, key or value at fault.

The folder-policy tests use a deterministic hash backend (mteb's evaluators still score its vectors) so
they need no model; the task-name tests go through the command line with real tiny model folders.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from anna_embed import config
from anna_embed.evaluate.tasks import TaskFolderError, load_task

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
STS, PAIRS = "STSBenchmark", "TwitterSemEval2015"


def _texts(task: str) -> list[str]:
    rows = [json.loads(x) for x in (FIXTURES / task / "test.jsonl").read_text().splitlines()]
    return [r[k] for r in rows for k in ("sentence1", "sentence2")]


#: The first text of the ``MyPairs`` task that :func:`_crash_data` writes: where a crash is staged.
CRASH_TEXT = "Crash here: pair 0, first sentence."


def _crash_data(root: Path) -> Path:
    """A data folder with the STS fixture and ``MyPairs``, a user's own pair task whose texts no other
    task holds (so a backend crashing on :data:`CRASH_TEXT` fails in that task only)."""
    shutil.copytree(FIXTURES / STS, root / STS)
    rows = [
        {
            "sentence1": f"Crash here: pair {i}, first sentence.",
            "sentence2": f"Pair {i}, second.",
            "label": i % 2,
        }
        for i in range(8)
    ]
    (root / "MyPairs").mkdir()
    (root / "MyPairs" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


class HashBackend:
    """A deterministic stand-in model: each text's vector is seeded by the hash of (model_id, text).

    ``crash_on`` makes ``encode`` raise when it meets that text (a failure in the middle of a run).
    """

    def __init__(self, model_id: str = "hash-a", *, crash_on: str | None = None):
        self.model_id, self.crash_on = model_id, crash_on
        self.training_datasets: tuple[str, ...] = ()

    def query_prefix(self, task: object, *, examples: Sequence[tuple[str, str]] = ()) -> str:
        return ""

    def document_prefix(self, task: object, *, examples: Sequence[tuple[str, str]] = ()) -> str:
        return ""

    def encode(self, texts: list[str], *, prefix: str, batch_size: int, show_progress: bool) -> np.ndarray:
        if self.crash_on is not None and self.crash_on in texts:
            raise RuntimeError("simulated crash while encoding")
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(f"{self.model_id}\x00{text}".encode()).digest()[:8], "big")
            rows.append(np.random.default_rng(seed).standard_normal(16))
        return np.asarray(rows, dtype=np.float32)


def _eval(out: Path, tasks: list[str], *, model: str = "model-a", backend: object = None, **kw: object):
    from anna_embed.evaluate import EvalConfig, run_eval

    force = bool(kw.pop("force", False))
    if isinstance(backend, str):  # a backend by name: loads the model
        kw["backend"], backend = backend, None
    else:
        backend = backend or HashBackend()
    cfg = EvalConfig(model=model, output=out, tasks=tuple(tasks), data_dir=kw.pop("data_dir", FIXTURES), **kw)
    return run_eval(cfg, backend=backend, show_progress=False, force=force)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------- a reused result folder


def test_same_model_and_settings_accumulate_and_the_summary_covers_every_result(tmp_path, caplog):
    from anna_embed.evaluate.report import leaderboard

    out = tmp_path / "run"
    first = _eval(out, [STS])
    with caplog.at_level(logging.INFO, logger="anna_embed.evaluate"):
        second = _eval(out, [PAIRS])
    assert set(second["tasks"]) == {STS, PAIRS} and second["tasks_this_run"] == [PAIRS]
    assert second["scores"][STS] == pytest.approx(first["scores"][STS])
    summary = (out / "summary.md").read_text()
    assert f"| {STS} |" in summary and f"| {PAIRS} |" in summary
    run = json.loads((out / "run.json").read_text())
    assert run["mean_task"] == pytest.approx(np.mean([first["scores"][STS], second["scores"][PAIRS]]))
    assert run["types"] == {STS: "STS", PAIRS: "PairClassification"}
    # the leaderboard and the summary now agree on what the folder holds
    (row,) = leaderboard([out])
    assert row["mean_task"] == pytest.approx(run["mean_task"])
    assert any("earlier run" in r.getMessage() and STS in r.getMessage() for r in caplog.records)


def test_another_model_is_refused_and_force_replaces_its_results(tmp_path):
    from anna_embed.evaluate.report import ResultFolderError, read_results

    out = tmp_path / "run"
    _eval(out, [STS], model="model-a")
    before = _snapshot(out)
    with pytest.raises(ResultFolderError, match=r"model 'model-a'.*--force") as err:
        _eval(out, [PAIRS], model="model-b", backend=HashBackend("hash-b"))
    assert str(out) in str(err.value)
    assert _snapshot(out) == before  # refused before anything was written
    run = _eval(out, [PAIRS], model="model-b", backend=HashBackend("hash-b"), force=True)
    assert run["tasks"] == [PAIRS] and not (out / f"{STS}.json").exists()
    name, scores, _ = read_results(out)
    assert name == "model-b" and list(scores) == [PAIRS]
    assert (out / "cache" / "embeddings.sqlite").is_file()  # the cache is keyed by model: it stays


def test_changed_settings_are_refused_naming_the_setting(tmp_path):
    from anna_embed.evaluate.report import ResultFolderError

    out = tmp_path / "run"
    _eval(out, [STS], limit=5)
    with pytest.raises(ResultFolderError, match=r"limit: 5 there, None now"):
        _eval(out, [PAIRS])
    with pytest.raises(ResultFolderError, match=r"split: 'test' there, 'dev' now"):
        _eval(out, [PAIRS], limit=5, split="dev")
    assert _eval(out, [PAIRS], limit=5)["tasks"] == [STS, PAIRS]  # batch size is not a setting that counts


def test_changed_weights_under_the_same_name_replace_only_when_nothing_stale_stays(tmp_path, caplog):
    from anna_embed.evaluate.report import ResultFolderError

    out = tmp_path / "run"
    _eval(out, [STS, PAIRS], backend=HashBackend("weights-1"))
    before = _snapshot(out)
    with pytest.raises(ResultFolderError, match=rf"changed.*{PAIRS}"):
        _eval(out, [STS], backend=HashBackend("weights-2"))  # PAIRS would stay from the old weights
    assert _snapshot(out) == before
    with caplog.at_level(logging.WARNING, logger="anna_embed.evaluate"):
        run = _eval(out, [PAIRS, STS], backend=HashBackend("weights-2"))  # e.g. a retrained model
    assert run["model_id"] == "weights-2" and set(run["tasks"]) == {STS, PAIRS}
    assert any("changed" in r.getMessage() for r in caplog.records)


def test_a_stage_folder_redone_with_other_settings_is_replaced_with_force(tmp_path):
    """The pipeline's eval/<label> stage: a changed eval config re-runs into the same folder, which the
    stage (whose fingerprint covers the config) redoes with ``force=True``; its marker is not a result."""
    from anna_embed.evaluate.report import ResultFolderError
    from anna_embed.stage import Stage

    stage = Stage(tmp_path / "eval", "student", "fp-1", force=False)
    stage.finish({"scores": _eval(stage.dir, [STS, PAIRS], limit=8)["scores"]})
    stage = Stage(tmp_path / "eval", "student", "fp-2", force=False)  # eval.limit 8 -> 4, PAIRS dropped
    assert not stage.done()
    with pytest.raises(ResultFolderError, match="limit: 8 there, 4 now"):
        _eval(stage.dir, [STS], limit=4)
    run = _eval(stage.dir, [STS], limit=4, force=True)
    assert run["tasks"] == [STS] and list(run["scores"]) == [STS] and run["limit"] == 4
    assert not (stage.dir / f"{PAIRS}.json").exists() and (stage.dir / "stage.json").is_file()


def test_cli_refuses_another_model_and_force_replaces(tmp_path, capsys):
    from anna_embed.cli import main
    from conftest import build_bert_folder

    a = build_bert_folder(tmp_path / "a", _texts(STS), seed=1)
    b = build_bert_folder(tmp_path / "b", _texts(STS), seed=2)
    out = tmp_path / "run"
    common = ["--tasks", STS, "--data-dir", str(FIXTURES), "--output", str(out), "--no-progress"]
    assert main(["eval", "--model", str(a), *common]) == 0
    capsys.readouterr()
    assert main(["eval", "--model", str(b), *common]) == 2
    err = capsys.readouterr().err
    assert f"model '{a}'" in err and "--force" in err
    assert json.loads((out / "run.json").read_text())["model"] == str(a)
    assert main(["eval", "--model", str(b), *common, "--force"]) == 0
    assert json.loads((out / "run.json").read_text())["model"] == str(b)


# ------------------------------------------------------------------------------------ unknown task names


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_unknown_task_is_an_error_with_suggestions_before_any_model_loads(
    kind, tmp_path, capsys, monkeypatch, make_embedder
):
    import anna_embed.evaluate.adapter as adapter
    from anna_embed.cli import main
    from conftest import build_bert_folder

    if kind == "encoder":
        model = build_bert_folder(tmp_path / "bert", ["a man plays guitar"])
    else:
        model = make_embedder("llama").save(tmp_path / "llama")

    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(adapter, "load_backend", no_load)
    out = tmp_path / "run"
    argv = ["eval", "--model", str(model), "--data-dir", str(FIXTURES), "--output", str(out)]
    assert main([*argv, "--tasks", "STSBenchmrk"]) == 2
    assert "Did you mean: STSBenchmark" in capsys.readouterr().err
    assert main([*argv, "--tasks", "MyRetreival"]) == 2  # a user's own folder under --data-dir
    assert "Did you mean: MyRetrieval" in capsys.readouterr().err
    assert not out.exists()


def test_unknown_task_without_data_dir_suggests_registry_and_mteb_names():
    with pytest.raises(TaskFolderError, match=r"'SciFactt'.*not an mteb task.*Did you mean: SciFact"):
        load_task("SciFactt", None)
    with pytest.raises(TaskFolderError, match=r"Did you mean: .*ArguAna"):
        load_task("ArguAnaa", None)


# ------------------------------------------------------------------------------------- named messages


def test_malformed_json_override_names_the_key_the_value_and_the_position():
    from anna_embed.train.config import TrainConfig

    bad = '[{"path": "a.jsonl",}]'
    with pytest.raises(config.ConfigError) as err:
        config.build(TrainConfig, {}, [f"data.sources={bad}"])
    msg = str(err.value)
    assert "data.sources" in msg and bad in msg and "line 1 column 21" in msg

    @dataclass(frozen=True)
    class Opt:
        weights: dict[str, float] = field(default_factory=dict)

    with pytest.raises(config.ConfigError, match=r"weights: malformed JSON .*'\{a: 1\}'.*line 1 column 2"):
        config.build(Opt, {}, ["weights={a: 1}"])


def test_malformed_task_json_names_the_file_line_and_column(tmp_path):
    folder = tmp_path / "MyOwnTask"
    folder.mkdir()
    (folder / "test.jsonl").write_text((FIXTURES / STS / "test.jsonl").read_text())
    (folder / "task.json").write_text('{\n  "type": "STS"\n  "instruction": "x"\n}\n')
    with pytest.raises(TaskFolderError, match=r"MyOwnTask/task\.json:3: malformed JSON .*column 3"):
        load_task("MyOwnTask", tmp_path)
    (folder / "task.json").write_text('{"type": "Sts"}')
    with pytest.raises(TaskFolderError, match=r"task\.json: field 'type': 'Sts' is not one of"):
        load_task("MyOwnTask", tmp_path)
    (folder / "task.json").write_text('["STS"]')
    with pytest.raises(TaskFolderError, match=r"task\.json: expected a JSON object"):
        load_task("MyOwnTask", tmp_path)


def test_a_failed_eval_leaves_no_new_folder_behind(tmp_path):
    nested = tmp_path / "new" / "deeper" / "run"
    with pytest.raises(TaskFolderError):
        _eval(nested, [STS, "NoSuchTask"])
    assert not (tmp_path / "new").exists()
    # a crash in the second task, with the cache outside the folder: nothing of the run stays
    data, out = _crash_data(tmp_path / "data"), tmp_path / "crashed"
    crash = HashBackend(crash_on=CRASH_TEXT)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _eval(out, [STS, "MyPairs"], backend=crash, data_dir=data, cache_dir=tmp_path / "c.sqlite")
    assert not out.exists()


def test_a_crash_in_a_new_folder_keeps_only_the_vectors_already_encoded(tmp_path):
    data, out = _crash_data(tmp_path / "data"), tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _eval(out, [STS, "MyPairs"], backend=HashBackend(crash_on=CRASH_TEXT), data_dir=data)
    assert [str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()] == ["cache/embeddings.sqlite"]
    run = _eval(out, [STS, "MyPairs"], data_dir=data)  # no results there yet; STS's vectors are cached
    assert run["tasks"] == [STS, "MyPairs"]


def test_a_failed_eval_keeps_everything_an_existing_folder_held(tmp_path):
    data, out, cache = _crash_data(tmp_path / "data"), tmp_path / "run", tmp_path / "c.sqlite"
    _eval(out, [STS], data_dir=data, cache_dir=cache)
    (out / "notes.txt").write_text("mine")
    before = _snapshot(out)
    crash = HashBackend(crash_on=CRASH_TEXT)
    with pytest.raises(RuntimeError, match="simulated crash"):  # STS is re-run (same score), then a crash
        _eval(out, [STS, "MyPairs"], backend=crash, data_dir=data, cache_dir=cache)
    assert _snapshot(out) == before
    with pytest.raises(RuntimeError, match="simulated crash"):  # --force clears only when the run succeeds
        _eval(out, ["MyPairs"], model="other", backend=crash, data_dir=data, cache_dir=cache, force=True)
    assert _snapshot(out) == before


def test_a_missing_data_dir_fails_at_once_without_the_hub_or_the_model(tmp_path, monkeypatch):
    import mteb

    import anna_embed.evaluate.adapter as adapter

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("reached the hub or the model")

    monkeypatch.setattr(adapter, "load_backend", forbidden)
    monkeypatch.setattr(mteb, "evaluate", forbidden)
    env = dict(os.environ)
    missing = tmp_path / "no-such-dir"
    with pytest.raises(FileNotFoundError, match=rf"{missing}: no such data folder"):
        _eval(tmp_path / "run", [STS], backend="embedder", data_dir=missing)
    assert not (tmp_path / "run").exists()
    assert dict(os.environ) == env  # nothing global (HF_HUB_OFFLINE...) was set

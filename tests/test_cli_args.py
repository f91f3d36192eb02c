"""Flags generated from config dataclasses (:mod:`anna_embed.cli_args`), and the verbs that use them."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, replace
from typing import Literal

import pytest

from anna_embed.cli import main
from anna_embed.cli_args import (
    MIN,
    add_arguments,
    add_override_arguments,
    attribute_docs,
    from_args,
    overrides_from_args,
)
from anna_embed.mine.config import MineConfig


@dataclass(frozen=True)
class Every:
    """Every kind of field the generator knows.

    Attributes:
        name: A required string.
        count: A bounded integer,
            described over two lines.
        ratio: A float.
        flag: Off unless given.
        progress: On unless ``--no-progress``.
        mode: One of a closed set.
        tasks: Names, comma-separated on the command line.
        sizes: Integers.
        limit: An optional integer (None: no limit).
        note: An optional string with a 100% sign.
        kind: An optional closed choice.
    """

    name: str
    count: int = field(default=3, metadata={MIN: 1})
    ratio: float = 0.5
    flag: bool = False
    progress: bool = True
    mode: Literal["fast", "slow"] = "fast"
    tasks: tuple[str, ...] = ("A", "B")
    sizes: list[int] = field(default_factory=lambda: [1, 2])
    limit: int | None = None
    note: str | None = None
    kind: Literal["x", "y"] | None = None


def _parser(cls: type = Every) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t")
    add_arguments(parser, cls)
    return parser


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings if s not in ("-h", "--help")}


def test_defaults_are_the_dataclass_defaults():
    cfg = from_args(Every, _parser().parse_args(["--name", "n"]))
    assert cfg == Every(name="n")


def test_every_field_kind_round_trips():
    argv = [
        "--name", "n", "--count", "7", "--ratio", "0.25", "--flag", "--no-progress", "--mode", "slow",
        "--tasks", " X, Y,,Z ", "--sizes", "4,5", "--limit", "9", "--note", "hi", "--kind", "y",
    ]  # fmt: skip
    cfg = from_args(Every, _parser().parse_args(argv))
    assert cfg == Every("n", 7, 0.25, True, False, "slow", ("X", "Y", "Z"), [4, 5], 9, "hi", "y")
    # and back: the flags of a config rebuild the same config
    back = []
    for f in dataclasses.fields(Every):
        value = getattr(cfg, f.name)
        if isinstance(value, bool):
            back += [] if value == f.default else [f"--{'no-' if f.default else ''}{f.name}"]
        else:
            text = ",".join(map(str, value)) if isinstance(value, tuple | list) else str(value)
            back += [f"--{f.name.replace('_', '-')}", text]
    assert from_args(Every, _parser().parse_args(back)) == cfg


def test_flags_types_choices_and_required():
    flags = _flags(_parser())
    names = ["name", "count", "ratio", "flag", "no-progress", "mode", "tasks", "sizes", "limit", "note"]
    assert sorted(flags) == sorted(f"--{n}" for n in [*names, "kind"])
    assert flags["--name"].required and not flags["--count"].required
    assert flags["--mode"].choices == ["fast", "slow"] and flags["--kind"].choices == ["x", "y"]
    assert flags["--flag"].default is False and flags["--no-progress"].default is True


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--count", "0"], "argument --count: must be >= 1, got 0"),
        (["--count", "x"], "argument --count: expected an integer, got 'x'"),
        (["--mode", "medium"], "argument --mode: invalid choice: 'medium'"),
        (["--ratio", "x"], "argument --ratio: invalid float value: 'x'"),
        ([], "the following arguments are required: --name"),
    ],
)
def test_bad_values_are_refused_by_argparse(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(argv if not argv or argv[0] == "--name" else ["--name", "n", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_help_comes_from_the_docstring():
    docs = attribute_docs(Every)
    assert docs["count"] == "A bounded integer, described over two lines."
    assert docs["progress"] == "On unless ``--no-progress``."
    text = _parser().format_help()
    assert "A bounded integer, described over two lines (default: 3)." in " ".join(text.split())
    assert "100% sign" in text and "On unless --no-progress" in " ".join(text.split())


def test_exclude_and_given_values():
    parser = argparse.ArgumentParser()
    add_arguments(parser, Every, exclude=("tasks",))
    assert "--tasks" not in _flags(parser)
    cfg = from_args(Every, parser.parse_args(["--name", "n"]), tasks=("Q",))
    assert cfg.tasks == ("Q",)


def test_an_unsupported_type_is_an_error():
    @dataclass(frozen=True)
    class Bad:
        table: dict[str, int] = field(default_factory=dict)

    with pytest.raises(TypeError, match="table"):
        _parser(Bad)


def _verb_flags(verb: str) -> dict[str, tuple[object, bool]]:
    """``--flag -> (default, required)`` of a verb's parser, as ``anna-embed`` builds it."""
    import importlib

    from anna_embed.cli import COMMANDS

    parser = argparse.ArgumentParser()
    importlib.import_module(COMMANDS[verb][0]).add_cli(verb, parser)
    return {s: (a.default, a.required) for s, a in _flags(parser).items()}


def test_eval_and_encode_keep_their_flags_and_defaults():
    """The flags (and defaults) the hand-written parsers had before they were generated."""
    assert _verb_flags("eval") == {
        "--model": (None, True),
        "--tasks": ((), False),  # was None: both mean no --tasks
        "--benchmark": (None, False),
        "--data-dir": (None, False),
        "--output": (None, True),
        "--force": (False, False),
        "--backend": ("embedder", False),
        "--shots": (0, False),
        "--seed": (42, False),
        "--limit": (None, False),
        "--split": ("test", False),
        "--batch-size": (32, False),
        "--cache-dir": (None, False),
        "--dtype": ("float32", False),
        "--max-length": (None, False),
        "--instructions": ("auto", False),
        "--task-type": (None, False),
        "--no-progress": (False, False),
    }
    assert _verb_flags("encode") == {
        "--model": (None, True),
        "--input": (None, True),
        "--output": (None, True),
        "--task": (None, False),
        "--instruction": (None, False),
        "--role": ("query", False),
        "--shots": (0, False),
        "--data-dir": (None, False),
        "--examples": (None, False),
        "--seed": (42, False),
        "--batch-size": (16, False),
        "--max-length": (None, False),
        "--dimensions": (None, False),
        "--dtype": ("float32", False),
    }


def test_eval_cli_builds_the_config_run_eval_gets(monkeypatch, tmp_path, capsys):
    import anna_embed.evaluate.cli as eval_cli
    from anna_embed.evaluate import EvalConfig

    seen = {}

    def fake_run_eval(cfg, **kw):
        seen.update(cfg=cfg, **kw)
        return {"scores": {"STS12": 1.0}}

    monkeypatch.setattr(eval_cli, "run_eval", fake_run_eval)
    (tmp_path / "summary.md").write_text("table\n")
    argv = ["eval", "--model", "m", "--tasks", "STS12, SciFact", "--output", str(tmp_path), "--shots", "2"]
    assert main([*argv, "--instructions", "off", "--no-progress", "--force"]) == 0
    cfg = EvalConfig(model="m", output=str(tmp_path), tasks=("STS12", "SciFact"), shots=2, instructions="off")
    assert seen == {"cfg": cfg, "show_progress": False, "force": True}
    assert seen["cfg"].use_instructions is False
    assert capsys.readouterr().out == "table\n\n"


# ----------------------------------------------------------------------------- override flags (mine)


def _override_parser(cls: type = Every, **kw) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t")
    add_override_arguments(parser, cls, **kw)
    return parser


def test_override_flags_given_become_exactly_the_override_strings():
    argv = [
        "--count", "7", "--ratio", "0.25", "--flag", "--no-progress", "--mode", "slow",
        "--tasks", " X, Y,,Z ", "--limit", "none", "--note", "a=b", "--kind", "y",
    ]  # fmt: skip
    got = overrides_from_args(Every, _override_parser().parse_args(argv))
    assert got == [
        "count=7", "ratio=0.25", "flag=true", "progress=false", "mode=slow", "tasks=X,Y,Z", "limit=none",
        "note=a=b", "kind=y",
    ]  # fmt: skip
    assert overrides_from_args(Every, _override_parser().parse_args([])) == []  # nothing given: nothing set
    assert overrides_from_args(Every, _override_parser().parse_args(["--progress"])) == ["progress=true"]
    assert overrides_from_args(Every, _override_parser().parse_args(["--limit", "NULL"])) == ["limit=none"]


def test_override_flags_default_to_none_and_take_none_where_optional():
    flags = _flags(_override_parser(exclude=("sizes",)))
    assert "--sizes" not in flags and "--name" in flags and not flags["--name"].required
    assert {a.default for a in flags.values()} == {None}
    assert flags["--mode"].choices == ["fast", "slow"] and flags["--kind"].choices == ["x", "y", "none"]
    assert "--no-flag" in flags and "--no-progress" in flags


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--count", "0"], "argument --count: must be >= 1, got 0"),
        (["--count", "none"], "argument --count: expected an integer, got 'none'"),
        (["--limit", "x"], "argument --limit: expected an integer or none, got 'x'"),
        (["--mode", "none"], "argument --mode: invalid choice: 'none'"),
        (["--ratio", "1e"], "argument --ratio: expected a number, got '1e'"),
        (["--sizes", "1,x"], "argument --sizes: expected comma-separated values, got '1,x'"),
    ],
)
def test_bad_override_values_are_refused_by_argparse(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        _override_parser().parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def _mine(argv: list[str], monkeypatch) -> MineConfig:
    """The :class:`MineConfig` ``anna-embed mine ARGV`` hands the driver (which is faked)."""
    from anna_embed.mine import driver

    seen = {}
    monkeypatch.setattr(driver, "run", lambda cfg, *a, **kw: seen.update(cfg=cfg) or {"summary": []})
    assert main(["mine", "--train", "t.jsonl", "--out", "o.jsonl", *argv]) == 0
    return seen["cfg"]


def test_mine_flags_override_the_config_file_and_set(tmp_path, monkeypatch):
    toml = tmp_path / "mine.toml"
    toml.write_text('top_k = 12\nindex = "hnsw"\nrelative_margin = 0.2\nbm25 = true\nmax_length = 64\n')
    file_cfg = MineConfig(top_k=12, index="hnsw", relative_margin=0.2, bm25=True, max_length=64)
    assert _mine(["--config", str(toml)], monkeypatch) == file_cfg  # no flag: the file's values
    cfg = _mine(["--config", str(toml), "--top-k", "30", "--set", "top_k=5", "--set", "seed=3"], monkeypatch)
    assert cfg == replace(file_cfg, top_k=30, seed=3)  # a flag beats --set, the rest of the file stays
    cfg = _mine(
        ["--config", str(toml), "--relative-margin", "none", "--no-bm25", "--max-length", "none"], monkeypatch
    )
    assert cfg == replace(file_cfg, relative_margin=None, bm25=False, max_length=None)
    cfg = _mine(
        ["--index", "ivf", "--ivf-nlist", "8", "--teacher-embeddings", "--dtype", "auto"], monkeypatch
    )
    assert cfg == MineConfig(index="ivf", ivf_nlist=8, teacher_embeddings=True, dtype="auto")


def test_mine_flags_are_the_overrides_load_gets(monkeypatch):
    import anna_embed.mine.cli as mine_cli

    seen = []
    monkeypatch.setattr(mine_cli, "load", lambda cls, path, overrides: seen.append(overrides) or MineConfig())
    monkeypatch.setattr(mine_cli.driver, "run", lambda *a, **kw: {"summary": []})
    argv = ["--set", "seed=1", "--seed", "2", "--relative-margin", "none", "--bm25", "--max-length", "128"]
    assert main(["mine", "--train", "t", "--out", "o", *argv]) == 0
    assert seen == [["seed=1", "bm25=true", "relative_margin=none", "max_length=128", "seed=2"]]


def test_mine_bad_choice_exits_2_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["mine", "--train", "t", "--out", "o", "--index", "foo"])
    assert exc.value.code == 2
    assert (
        "argument --index: invalid choice: 'foo' (choose from 'flat', 'hnsw', 'ivf')"
        in capsys.readouterr().err
    )


def test_mine_keeps_its_flags_and_every_field_shows_its_docstring():
    flags = _verb_flags("mine")
    old = [
        "retriever", "reranker", "task", "top-k", "index", "relative-margin", "absolute-margin",
        "num-negatives", "sampling", "seed", "batch-size", "max-length", "reranker-max-length",
        "shard-size", "dtype", "bm25", "teacher-embeddings",
    ]  # fmt: skip
    assert {f"--{n}" for n in old} <= set(flags)
    assert all(flags[f"--{n}"] == (None, False) for n in old)  # not given: no override
    for own in ["--train", "--corpus", "--out", "--config", "--set", "--cache-dir", "--report-dir"]:
        assert own in flags
    import anna_embed.mine.cli as mine_cli

    parser = argparse.ArgumentParser()
    mine_cli.add_cli("mine", parser)
    actions = {a.dest: a for a in parser._actions}
    docs = attribute_docs(MineConfig)
    assert set(docs) == {f.name for f in dataclasses.fields(MineConfig)}
    for f in dataclasses.fields(MineConfig):
        shown = " ".join(actions[f.name].help.split())
        first = docs[f.name].replace("``", "").split(" (:")[0].removesuffix(".")
        assert shown.startswith(" ".join(first.split())), f.name
        assert "MineConfig." not in shown
    parser.format_help()  # every help formats (no stray %)

"""File helpers and the typed config mechanism."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from anna_embed import config
from anna_embed.io import InputError, atomic_write, iter_jsonl, read_jsonl


def test_jsonl_errors_name_file_line_and_field(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"text": "a"}\n{"other": 1}\n')
    with pytest.raises(InputError, match=r"x\.jsonl:2: field 'text': missing"):
        read_jsonl(p, required=("text",))
    p.write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(InputError, match=r"x\.jsonl:2: malformed JSON"):
        read_jsonl(p)
    p.write_bytes(b'{"text": "a"}\n\n')
    with pytest.raises(InputError, match=r"x\.jsonl:2: empty line"):
        read_jsonl(p)
    p.write_bytes(b'{"text": "\xff"}\n')
    with pytest.raises(InputError, match=r"x\.jsonl:1: invalid UTF-8"):
        read_jsonl(p)
    p.write_text("[1, 2]\n")
    with pytest.raises(InputError, match="expected a JSON object"):
        read_jsonl(p)
    p.write_text('{"text": ""}\n')
    with pytest.raises(InputError, match="field 'text': empty"):
        read_jsonl(p, required=("text",))
    p.write_text('{"text": "a"}\n\n{"text": "b"}\n')
    assert [n for n, _ in iter_jsonl(p, skip_blank=True)] == [1, 3]


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "out.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(p) as fh:
        fh.write("new partial")
        raise RuntimeError("boom")
    assert p.read_text() == "old"
    assert list(tmp_path.iterdir()) == [p]
    with atomic_write(p) as fh:
        fh.write("new")
    assert p.read_text() == "new"


@dataclass(frozen=True)
class Inner:
    rank: int = 8
    targets: tuple[str, ...] = ("q_proj", "v_proj")


@dataclass(frozen=True)
class Outer:
    lr: float = 1e-4
    mode: Literal["lora", "full"] = "lora"
    limit: int | None = None
    flag: bool = False
    inner: Inner = field(default_factory=Inner)


def test_config_file_plus_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("lr = 0.5\n[inner]\nrank = 4\n")
    cfg = config.load(Outer, f, ["inner.targets=a,b", "flag=true", "limit=3"])
    assert cfg == Outer(lr=0.5, flag=True, limit=3, inner=Inner(rank=4, targets=("a", "b")))
    assert config.build(Outer, {}, ["limit=none"]).limit is None
    config.save(cfg, tmp_path / "resolved.json")
    import json

    saved = json.loads((tmp_path / "resolved.json").read_text())
    assert config.build(Outer, saved["config"]) == cfg


def test_config_errors_are_specific(tmp_path):
    with pytest.raises(config.ConfigError, match="unknown keys"):
        config.build(Outer, {"lrr": 1})
    with pytest.raises(config.ConfigError, match="not one of"):
        config.build(Outer, {}, ["mode=half"])
    with pytest.raises(config.ConfigError, match=r"inner\.rank: expected an integer"):
        config.build(Outer, {}, ["inner.rank=abc"])
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = [\n")
    with pytest.raises(config.ConfigError, match=r"bad\.toml"):
        config.load(Outer, bad)


def test_config_base_and_overrides_chain_then_command_line_last(tmp_path):
    (tmp_path / "base.toml").write_text('lr = 0.5\nmode = "full"\n[inner]\nrank = 4\n')
    (tmp_path / "sub").mkdir()
    mid = tmp_path / "sub" / "mid.toml"  # base is resolved relative to the file, not the working folder
    mid.write_text('base = "../base.toml"\noverrides = ["inner.rank=2", "limit=3"]\n')
    top = tmp_path / "sub" / "top.toml"
    top.write_text('base = "mid.toml"\noverrides = ["limit=5", "flag=true"]\n')
    assert config.load(Outer, mid) == Outer(lr=0.5, mode="full", limit=3, inner=Inner(rank=2))
    # later files override earlier ones, the command line overrides them all
    assert config.load(Outer, top, ["lr=0.25"]) == Outer(
        lr=0.25, mode="full", limit=5, flag=True, inner=Inner(rank=2)
    )
    assert config.load(Outer, top) == config.load(
        Outer, tmp_path / "base.toml", ["inner.rank=2", "limit=5", "flag=true"]
    )


def test_pipeline_config_file_takes_a_base_too(tmp_path):
    from anna_embed.pipeline.config import PipelineConfig

    full = Path(__file__).resolve().parents[1] / "configs" / "full.toml"
    variant = tmp_path / "two_shots.toml"
    variant.write_text(f'base = "{full}"\noverrides = ["train.data.max_shots=2"]\n')
    loaded = config.load(PipelineConfig, variant)
    assert loaded == config.load(PipelineConfig, full, ["train.data.max_shots=2"])
    assert loaded != config.load(PipelineConfig, full) and loaded.train.data.max_shots == 2


def test_config_base_errors_name_the_file(tmp_path):
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text('base = "b.toml"\noverrides = []\n')
    b.write_text('base = "a.toml"\n')
    with pytest.raises(config.ConfigError, match=r"cycle: .*a\.toml -> .*b\.toml -> .*a\.toml"):
        config.load(Outer, a)
    self_ref = tmp_path / "self.toml"
    self_ref.write_text('base = "self.toml"\n')
    with pytest.raises(config.ConfigError, match=r"cycle: .*self\.toml -> .*self\.toml"):
        config.load(Outer, self_ref)
    (tmp_path / "root.toml").write_text("lr = 0.5\n")
    # an unknown key in a file's overrides: the --set error, prefixed with that file
    typo = tmp_path / "typo.toml"
    typo.write_text('base = "root.toml"\noverrides = ["inner.rnk=2"]\n')
    with pytest.raises(config.ConfigError) as file_err:
        config.load(Outer, typo)
    with pytest.raises(config.ConfigError) as cli_err:
        config.load(Outer, tmp_path / "root.toml", ["inner.rnk=2"])
    assert str(file_err.value) == f"{typo}: " + str(cli_err.value).split(": ", 1)[1]
    assert "inner: unknown keys ['rnk']" in str(file_err.value)
    child = tmp_path / "child.toml"  # the error names the file that holds the override, not its child
    child.write_text('base = "typo.toml"\noverrides = ["lr=1"]\n')
    with pytest.raises(config.ConfigError, match=rf"^{re.escape(str(typo))}: inner: unknown keys"):
        config.load(Outer, child)
    typo.write_text('base = "root.toml"\noverrides = ["inner.rank=two"]\n')
    with pytest.raises(
        config.ConfigError, match=rf"^{re.escape(str(typo))}: inner\.rank: expected an integer"
    ):
        config.load(Outer, child)
    mixed = tmp_path / "mixed.toml"
    mixed.write_text('base = "root.toml"\nlr = 0.1\n')
    with pytest.raises(config.ConfigError, match=r"mixed\.toml: .*'overrides' only, not as \['lr'\]"):
        config.load(Outer, mixed)
    orphan = tmp_path / "orphan.toml"
    orphan.write_text('overrides = ["lr=0.1"]\n')
    with pytest.raises(config.ConfigError, match=r"orphan\.toml: 'overrides' needs a 'base'"):
        config.load(Outer, orphan)
    missing = tmp_path / "missing.toml"
    missing.write_text('base = "nowhere.toml"\n')
    with pytest.raises(config.ConfigError, match=r"nowhere\.toml: config file not found"):
        config.load(Outer, missing)
    (tmp_path / "notlist.toml").write_text('base = "root.toml"\noverrides = "lr=0.1"\n')
    with pytest.raises(config.ConfigError, match="must be a list of 'key=value' strings"):
        config.load(Outer, tmp_path / "notlist.toml")


def test_atomic_dir_replaces_only_on_success(tmp_path):
    from anna_embed.io import atomic_dir

    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("v1")
    assert (target / "a.txt").read_text() == "v1"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("v2 partial")
        raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]

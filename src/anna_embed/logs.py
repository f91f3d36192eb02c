"""What the ``anna-embed`` command prints: our log lines, with the dependencies' known-benign noise filtered.

Quiet (the default): anna-embed's own INFO lines and every WARNING, the dependencies' INFO chatter off
(:data:`CHATTY_LOGGERS` at WARNING), the known-benign warnings of :data:`BENIGN_WARNINGS` and
:data:`BENIGN_LOG_MESSAGES` dropped by message pattern, and the dependencies' short per-file progress bars
off (:data:`QUIET_BARS`: transformers' bar per weights file loaded or saved; datasets' preprocessing bars),
so a run shows its stages, one progress bar per long loop, and its result. Verbose (``-v``): DEBUG for
every logger and nothing filtered.

Each filter names what it drops (logger, category, module, message pattern) and why it is benign; an
unrelated warning of the same library still shows. The filters live here only; :func:`setup_logging` is
called by :mod:`anna_embed.cli` (library code never configures logging).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class BenignWarning:
    """A ``warnings.warn`` of a dependency that needs no action from the user.

    Attributes:
        message: Regex matched at the start of the message (case-insensitive, as :mod:`warnings` does).
        category: Warning class (subclasses match too).
        module: Regex matched against the module that warns.
        why: Why it is benign here.
    """

    message: str
    category: type[Warning]
    module: str
    why: str


#: mteb says it twice, as a warning and as a log line, for every evaluation of such a task.
SUPERSEDED = r"The task '[^']+' is superseded by"

BENIGN_WARNINGS: tuple[BenignWarning, ...] = (
    BenignWarning(
        SUPERSEDED,
        UserWarning,
        r"mteb(\.|$)",
        "the local task folders are laid out as the versions we name; the newer version is a choice, "
        "recorded in the results",
    ),
    BenignWarning(
        r"`is_gradient_checkpointing` is deprecated",
        FutureWarning,
        r"transformers(\.|$)",
        "a transformers 5 rename that peft still calls; nothing for the user to change",
    ),
    BenignWarning(
        r"(Precision|Recall|F-score)( and F-score)? is ill-defined",
        UserWarning,  # sklearn's UndefinedMetricWarning
        r"sklearn(\.|$)",
        "mteb's macro F1 over labels a small test split never predicts: scored 0, as mteb reports it",
    ),
    BenignWarning(
        r"The number of unique classes is greater than 50% of the number of samples",
        UserWarning,
        r"sklearn(\.|$)",
        "mteb's few-sample classifiers on a subsampled task (--limit runs, marked not comparable)",
    ),
)

#: logger -> message patterns dropped from it (records logged on that very logger).
BENIGN_LOG_MESSAGES: dict[str, tuple[str, ...]] = {
    "mteb.abstasks.abstask": (SUPERSEDED,),  # see BENIGN_WARNINGS
    # anna-embed tokenizes without truncation, then truncates itself and appends EOS
    # (anna_embed.model.tokenization.encode_ids), so the tokenizer sees the whole text first.
    "transformers.tokenization_utils_base": (
        r"Token indices sequence length is longer than the specified maximum sequence length",
    ),
}

#: Dependencies whose INFO lines show only with ``-v`` (their warnings always show).
CHATTY_LOGGERS = (
    "mteb",  # per-experiment and per-phase progress lines
    "sentence_transformers",  # e.g. "Loaded 142 prompts with these keys: [...]" at every save
    "faiss",  # which CPU build it loaded
    "datasets",
    "numexpr",
    "accelerate",
    "httpx",
)

#: transformers' progress bars (by description) that show only with ``-v``: one per file, each short.
QUIET_BARS = frozenset({"Loading weights", "Writing model shards"})

VERBOSE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class DropMessages(logging.Filter):
    """Drops records whose message matches one of ``patterns`` (regexes, searched)."""

    def __init__(self, patterns: Sequence[str]) -> None:
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        """False (drop) when the record's message matches a pattern."""
        message = record.getMessage()
        return not any(p.search(message) for p in self.patterns)


class _QuietFormatter(logging.Formatter):
    """``HH:MM:SS message``; warnings and errors keep their level and logger."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(message)s", datefmt="%H:%M:%S")
        self._loud = logging.Formatter(VERBOSE_FORMAT, datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return self._loud.format(record) if record.levelno >= logging.WARNING else super().format(record)


_LOG_FILTERS = {name: DropMessages(patterns) for name, patterns in BENIGN_LOG_MESSAGES.items()}


def _quiet_bar(factory: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """transformers' tqdm hook: the bars of :data:`QUIET_BARS` are built disabled, the others as asked."""
    if kwargs.get("desc") in QUIET_BARS:
        kwargs = {**kwargs, "disable": True}
    return factory(*args, **kwargs)


def _quiet_transformers(module: ModuleType) -> None:
    if hasattr(module, "set_tqdm_hook"):  # transformers >= 5
        module.set_tqdm_hook(_quiet_bar)


def _quiet_datasets(module: ModuleType) -> None:
    module.disable_progress_bars()  # an explicit HF_DATASETS_DISABLE_PROGRESS_BARS=0 still wins


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``callback(module)`` right after ``name`` is first imported (heavy libraries are not imported
    just to configure them: ``anna-embed models list`` never loads transformers)."""

    def __init__(self, name: str, callback: Callable[[ModuleType], None]) -> None:
        self.name, self.callback = name, callback

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        """The module's own spec, its loader set to run the callback after the module's code."""
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once; and let the other finders find the module
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            exec_module, callback = spec.loader.exec_module, self.callback

            def exec_then_call(module: ModuleType) -> None:
                exec_module(module)
                callback(module)

            spec.loader.exec_module = exec_then_call  # type: ignore[method-assign]
        return spec


def _after_import(name: str, callback: Callable[[ModuleType], None] | None) -> None:
    """Run ``callback`` on module ``name`` now if it is imported, else after its import; None: cancel."""
    sys.meta_path[:] = [f for f in sys.meta_path if not (isinstance(f, _AfterImport) and f.name == name)]
    if callback is None:
        return
    if name in sys.modules:
        callback(sys.modules[name])
    else:
        sys.meta_path.insert(0, _AfterImport(name, callback))


def setup_logging(verbose: bool = False) -> None:
    """Configure the command's output: quiet by default, everything with ``verbose``.

    The root logger gets a stderr handler at INFO (DEBUG when verbose) unless another is configured
    already (as :func:`logging.basicConfig`). Called once per process by the command line; a verbose call
    after a quiet one restores the loggers and progress bars, but leaves the warning filters (wrap the
    calls in :class:`warnings.catch_warnings` to undo them).

    Args:
        verbose: Show DEBUG lines, the dependencies' INFO lines, the benign warnings and every progress bar.
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "anna_embed", False)]
    if not root.handlers or ours:
        handler = ours[0] if ours else logging.StreamHandler()
        handler.anna_embed = True  # type: ignore[attr-defined]
        handler.setFormatter(
            logging.Formatter(VERBOSE_FORMAT, datefmt="%H:%M:%S") if verbose else _QuietFormatter()
        )
        if not ours:
            root.addHandler(handler)
        root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)
    for name, drop in _LOG_FILTERS.items():
        (logging.getLogger(name).removeFilter if verbose else logging.getLogger(name).addFilter)(drop)
    if not verbose:
        for w in BENIGN_WARNINGS:  # an identical filter is replaced, not added twice
            warnings.filterwarnings("ignore", message=w.message, category=w.category, module=w.module)
    _after_import("transformers.utils.logging", None if verbose else _quiet_transformers)
    _after_import("datasets.utils.tqdm", None if verbose else _quiet_datasets)
    if verbose and "transformers.utils.logging" in sys.modules:
        tlog = sys.modules["transformers.utils.logging"]
        if getattr(tlog, "_tqdm_hook", None) is _quiet_bar:
            tlog.set_tqdm_hook(None)

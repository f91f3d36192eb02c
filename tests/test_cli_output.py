"""What the command prints: ``--version``, and quiet output by default (the dependencies' known-benign
warnings and log lines filtered by name, unrelated ones kept) versus everything with ``-v``."""

from __future__ import annotations

import logging
import sys
import warnings

import pytest

from anna_embed import __version__
from anna_embed.cli import main
from anna_embed.logs import CHATTY_LOGGERS, _after_import, _quiet_bar, setup_logging

SUPERSEDED = (
    "The task 'Banking77Classification' is superseded by 'Banking77Classification.v2'. We recommend using "
    "the newer version of the task unless you are running a specific benchmark."
)
TOO_LONG = (
    "Token indices sequence length is longer than the specified maximum sequence length for this model "
    "(155 > 64). Running this sequence through the model will result in indexing errors"
)


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_prints_the_package_version(flag, capsys):
    assert main([flag]) == 0
    assert capsys.readouterr().out.strip() == f"anna-embed {__version__}"


@pytest.fixture
def restore_output():
    """Each test switches modes; leave the process as verbose mode found it (levels, filters, hooks)."""
    with warnings.catch_warnings():
        yield
        setup_logging(verbose=True)


def _warn(message: str, category: type[Warning], module: str) -> None:
    warnings.warn_explicit(message, category, f"{module.replace('.', '/')}.py", 1, module=module)


def _emitted(verbose: bool) -> list[str]:
    """Warnings that reach the user after ``setup_logging(verbose)``: benign ones and look-alikes."""
    from sklearn.exceptions import UndefinedMetricWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        setup_logging(verbose)
        _warn(SUPERSEDED, UserWarning, "mteb.evaluate")
        _warn(
            "`is_gradient_checkpointing` is deprecated and will be removed in v6.",
            FutureWarning,
            "transformers.modeling_utils",
        )
        _warn(
            "Precision is ill-defined and being set to 0.0 in labels with no predicted samples.",
            UndefinedMetricWarning,
            "sklearn.metrics._classification",
        )
        _warn(
            "The number of unique classes is greater than 50% of the number of samples.",
            UserWarning,
            "sklearn.utils.multiclass",
        )
        _warn("Some other mteb warning", UserWarning, "mteb.evaluate")  # same library, other message
        _warn(SUPERSEDED, UserWarning, "mypackage.tasks")  # same message, another library
        _warn("`foo` is deprecated", FutureWarning, "transformers.modeling_utils")
    return [f"{w.filename}: {w.message}" for w in caught]


def test_quiet_drops_the_named_benign_warnings_and_keeps_unrelated_ones(restore_output):
    shown = _emitted(verbose=False)
    assert shown == [
        "mteb/evaluate.py: Some other mteb warning",
        f"mypackage/tasks.py: {SUPERSEDED}",
        "transformers/modeling_utils.py: `foo` is deprecated",
    ]


def test_verbose_keeps_every_warning(restore_output):
    assert len(_emitted(verbose=True)) == 7


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("verbose", [False, True])
def test_benign_log_lines_are_dropped_by_logger_and_pattern_unless_verbose(verbose, restore_output):
    setup_logging(verbose)
    seen = {}
    for name, messages in (
        ("transformers.tokenization_utils_base", [TOO_LONG, "an unrelated tokenizer warning"]),
        ("mteb.abstasks.abstask", [SUPERSEDED, "an unrelated mteb warning"]),
        ("anna_embed.demo", [TOO_LONG]),  # the pattern is dropped only from the logger that says it
    ):
        log, collect = logging.getLogger(name), _Collect()
        log.addHandler(collect)
        try:
            for message in messages:
                log.warning(message)
        finally:
            log.removeHandler(collect)
        seen[name] = collect.messages
    if verbose:
        assert seen["transformers.tokenization_utils_base"] == [TOO_LONG, "an unrelated tokenizer warning"]
        assert seen["mteb.abstasks.abstask"] == [SUPERSEDED, "an unrelated mteb warning"]
    else:
        assert seen["transformers.tokenization_utils_base"] == ["an unrelated tokenizer warning"]
        assert seen["mteb.abstasks.abstask"] == ["an unrelated mteb warning"]
    assert seen["anna_embed.demo"] == [TOO_LONG]


def test_dependencies_info_lines_only_with_verbose(restore_output):
    setup_logging(verbose=False)
    for name in CHATTY_LOGGERS:
        log = logging.getLogger(name)
        assert log.level == logging.WARNING and log.isEnabledFor(logging.WARNING)
    assert logging.getLogger("sentence_transformers.base.model").getEffectiveLevel() == logging.WARNING
    setup_logging(verbose=True)
    assert all(logging.getLogger(name).level == logging.NOTSET for name in CHATTY_LOGGERS)


def test_transformers_short_bars_are_off_unless_verbose(restore_output):
    from transformers.utils import logging as tlog

    def factory(*args, **kwargs):
        return kwargs

    assert _quiet_bar(factory, (), {"desc": "Loading weights"}) == {
        "desc": "Loading weights",
        "disable": True,
    }
    assert _quiet_bar(factory, (), {"desc": "Writing model shards"})["disable"] is True
    assert _quiet_bar(factory, (), {"desc": "train"}) == {"desc": "train"}  # our long loops keep theirs
    setup_logging(verbose=False)
    installed = tlog.set_tqdm_hook(None)
    tlog.set_tqdm_hook(installed)
    assert installed is _quiet_bar
    setup_logging(verbose=True)
    assert tlog.set_tqdm_hook(None) is None


def test_a_library_not_imported_yet_is_configured_when_it_is(tmp_path, monkeypatch):
    (tmp_path / "late_library_xyz.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    _after_import("late_library_xyz", lambda m: seen.append(m.VALUE))
    try:
        assert seen == []
        import late_library_xyz  # noqa: F401

        assert seen == [1]
        assert not any(getattr(f, "name", None) == "late_library_xyz" for f in sys.meta_path)
    finally:
        _after_import("late_library_xyz", None)
        sys.modules.pop("late_library_xyz", None)


def test_verbose_flag_goes_before_or_after_the_verb(capsys, restore_output):
    with pytest.raises(SystemExit) as exit_:
        main(["-v", "models", "--help"])
    assert exit_.value.code == 0 and "anna-embed models" in capsys.readouterr().out

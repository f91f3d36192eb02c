"""Evaluation: a thin adapter to mteb, from local task folders.

``run_eval(EvalConfig(model=, output=, tasks=, data_dir=))`` (:func:`anna_embed.evaluate.driver.run_eval`) is
the stage. Modules: ``config`` (:class:`EvalConfig`, from which the ``eval`` flags are generated),
``readers`` (one validating reader per task type), ``tasks`` (folders -> mteb task objects),
``adapter`` (the backends and the embedding cache that
:class:`anna_embed.model.mteb.MtebEncoder`, the one mteb adapter, serves), ``report`` (result
folders, summaries, the leaderboard), ``driver`` (the run), ``cli`` (``eval`` and ``leaderboard``).
"""

from anna_embed.evaluate.config import EvalConfig
from anna_embed.evaluate.driver import run_eval

__all__ = ["EvalConfig", "run_eval"]

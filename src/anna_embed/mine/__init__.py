"""Hard-negative mining with teacher soft labels: encode -> search -> rescore -> filter.

``run(cfg, train, out)`` (:func:`anna_embed.mine.driver.run`) is the stage; :class:`MineConfig` its settings.
Modules: ``config`` (settings and the types the steps pass on), ``inputs`` (records and corpus),
``teachers`` / ``rerankers`` (who scores), ``search`` (candidates and cached rescoring), ``filter`` (the
pure margin filter), ``report`` (counts, summary, histogram), ``driver`` (the run), ``cli``.
"""

from anna_embed.mine.config import MineConfig
from anna_embed.mine.driver import run

__all__ = ["MineConfig", "run"]

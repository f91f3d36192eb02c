"""``anna-embed adapt``: fit an embedding model to one corpus with a teacher, in one command.

``run(cfg)`` (:func:`anna_embed.adapt.driver.run`) chains the stages; :class:`AdaptConfig` (with
:func:`load_config`) holds the settings. Modules: ``config`` (settings and the stage configs derived from
them), ``data`` (records and the validation split), ``report`` (scores before and after, the report),
``driver`` (the chain), ``cli``.
"""

from anna_embed.adapt.config import AdaptConfig, load_config, mine_config, train_config
from anna_embed.adapt.driver import run

__all__ = ["AdaptConfig", "load_config", "mine_config", "run", "train_config"]

"""The main job, ``anna-embed pipeline`` / ``anna-embed demo``: provision -> data -> mine -> train -> evaluate
-> report, from one config.

``run(cfg)`` (:func:`anna_embed.pipeline.driver.run`) chains the stages; :class:`PipelineConfig` holds the
recipe and :data:`DEMO_CONFIG` the demo's. Modules: ``config``, ``data`` (sources -> training records),
``report``, ``driver`` (the chain), ``cli``.
"""

from anna_embed.pipeline.config import DEMO_CONFIG, PipelineConfig, SourceSpec, demo_path
from anna_embed.pipeline.driver import run

__all__ = ["DEMO_CONFIG", "PipelineConfig", "SourceSpec", "demo_path", "run"]

"""``anna-embed adapt``: fit an embedding model to one corpus with a teacher, in one command.

``anna-embed adapt --model all-minilm-l6-v2 --train DATA [--corpus corpus.jsonl] [--teacher NAME]
[--eval HELD_OUT] --out OUT [--set key=value ...]`` chains the stages other verbs run one by one:

1. **data**: training records from a BEIR folder (``corpus.jsonl``, the queries, ``qrels/train.tsv``; via
   :func:`anna_embed.convert.beir_records`) or a pairs JSONL (``{query, positive, negative?}``); with
   ``data.validation_fraction`` a share of the training queries, chosen by a hash of their ids, is held out
   as a validation folder (choose settings there, never on the test queries);
2. **mine**: the teacher (default: the model itself) retrieves candidates from the corpus, rescores them and
   applies the adaptive margin filter (:func:`anna_embed.mine.run`); ``negatives = "in_batch"`` skips it;
3. **train**: InfoNCE + KL on the mined records (:func:`anna_embed.train.train`; an encoder keeps its pooling,
   trains every weight and takes no instructions), resumed from its newest checkpoint after a crash;
4. **eval**: the base and the adapted model on the held-out queries (``qrels/test.tsv`` of ``--eval``) and on
   the validation folder, with mteb's retrieval evaluator (:func:`anna_embed.evaluate.run_eval`);
5. **report**: ``OUT/report/README.md`` (scores, loss curve, mining histogram) beside the adapted model
   ``OUT/model`` (loads in sentence-transformers).

The resolved :class:`AdaptConfig` is saved as ``OUT/adapt.json``. Mining and training write stage markers
(settings and input hashes): a rerun skips what is finished unless ``--force``. Teacher and evaluation
embeddings are cached under ``cache_dir`` (default ``OUT/cache``); runs that share it (arms of an
experiment) encode the corpus once per model.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from anna_embed import config as C
from anna_embed.adapt_data import PreparedData, prepare_data
from anna_embed.io import write_json
from anna_embed.mine import MineConfig
from anna_embed.train_config import (
    DataSection,
    LossSection,
    ModelSection,
    OptimSection,
    RunSection,
    TrainConfig,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdaptData:
    """The user's data.

    Attributes:
        train: A BEIR folder (``corpus.jsonl``, ``queries_{train_split}.jsonl`` or ``queries.jsonl``,
            ``qrels/{train_split}.tsv``) or a pairs JSONL file (``{query, positive, negative?}``).
        corpus: Corpus JSONL (``{_id, title, text}``) mined for negatives; default: the BEIR folder's
            ``corpus.jsonl``; for a pairs file without it, the records' own texts.
        eval: A BEIR folder whose ``qrels/test.tsv`` queries are held out: both models are scored on them.
        train_split: Which qrels (and queries) file of the BEIR folder holds the training queries.
        task: Task name of the records and results; None: the BEIR folder's (or pairs file's) name.
        instruction: The task's instruction for models that take instructions (None: the registry's, or a
            generic retrieval instruction for a task the registry lacks).
        validation_fraction: Share of the training queries (BEIR input) held out as ``OUT/data/validation``,
            chosen by a hash of the query id (the same queries whatever the seed); 0: none.
    """

    train: str = ""
    corpus: str | None = None
    eval: str | None = None
    train_split: str = "train"
    task: str | None = None
    instruction: str | None = None
    validation_fraction: float = 0.0


@dataclass(frozen=True)
class AdaptEval:
    """Evaluation settings (see :func:`anna_embed.evaluate.run_eval`).

    Attributes:
        batch_size: Encoding batch size.
        limit: First N held-out queries only (a smoke run; scores NOT comparable).
        dtype: Encoding dtype.
    """

    batch_size: int = 64
    limit: int | None = None
    dtype: Literal["float32", "bfloat16", "auto"] = "float32"


#: The defaults are common practice for fine-tuning a small sentence-transformers encoder (full fine-tuning,
#: batch 32, lr 5e-5 with weight decay 0.01, temperature 0.05 = sentence-transformers' scale 20, three hard
#: negatives per query): NOT yet chosen on validation data (docs/ADAPT.md).
ADAPT_TRAIN = TrainConfig(
    model=ModelSection(name="all-minilm-l6-v2"),
    data=DataSection(group_size=4, max_shots=0),
    loss=LossSection(student_temperature=0.05, teacher_temperature=0.05, kl_weight=1.0),
    optim=OptimSection(batch_size=32, lr=5e-5, weight_decay=0.01, warmup_steps=10, epochs=3),
    run=RunSection(save_every=50, keep_checkpoints=1),  # a full-model checkpoint is 3x the weights
)
#: Retriever and reranker "" mean the teacher (``bi:TEACHER`` as reranker, the same model: the corpus is
#: encoded once). Teachers only score, so they run in bf16 where the CPU/GPU supports it (``auto``).
ADAPT_MINE = MineConfig(retriever="", reranker="", top_k=50, num_negatives=7, dtype="auto")


@dataclass(frozen=True)
class AdaptConfig:
    """Everything ``anna-embed adapt`` does; saved as ``OUT/adapt.json``.

    Attributes:
        output_dir: Run folder (``--out``).
        cache_dir: Teacher and evaluation embedding caches (default ``OUT/cache``); share it between runs.
        seed: Seed of mining's sampling and of training.
        teacher: The mining teacher and soft-label source (None: the model itself).
        negatives: ``mined`` (teacher hard negatives with the margin filter, and their soft labels) or
            ``in_batch`` (no mining: each query against the other queries' positives only, no KL).
        data: The user's data.
        mine: Mining settings (``retriever`` / ``reranker`` empty: the teacher).
        train: Training settings (``data.sources`` and ``run.output_dir`` are filled in).
        eval: Evaluation settings.
    """

    output_dir: str = "outputs/adapt"
    cache_dir: str | None = None
    seed: int = 0
    teacher: str | None = None
    negatives: Literal["mined", "in_batch"] = "mined"
    data: AdaptData = field(default_factory=AdaptData)
    mine: MineConfig = field(default_factory=lambda: ADAPT_MINE)
    train: TrainConfig = field(default_factory=lambda: ADAPT_TRAIN)
    eval: AdaptEval = field(default_factory=AdaptEval)


# ----------------------------------------------------------------------------- stages


def train_config(
    cfg: AdaptConfig, data: PreparedData, mined: Path | None, teacher_vectors: Path | None
) -> TrainConfig:
    """The training run's config: ``cfg.train`` on the (mined) records, in ``OUT/train``, with ``cfg.seed``.

    ``negatives = "in_batch"`` trains on the plain records with ``G = 1`` (each query against the other
    queries' positives; no teacher scores, so no KL), as the ablation's ``inbatch_only`` does.
    """
    from anna_embed.data import DataSource

    t = cfg.train
    vectors = None if teacher_vectors is None else str(teacher_vectors)
    source = DataSource(str(mined or data.records), task=data.task, teacher_embeddings=vectors)
    d = replace(
        t.data, sources=(source,), **({"in_batch_group_size": 1} if cfg.negatives == "in_batch" else {})
    )
    run = replace(t.run, output_dir=str(Path(cfg.output_dir) / "train"), seed=cfg.seed)
    return replace(t, data=d, run=run)


def mine_config(cfg: AdaptConfig, task: str) -> MineConfig:
    """``cfg.mine`` with the teacher filled in (retriever ``TEACHER``, reranker ``bi:TEACHER``)."""
    teacher = cfg.teacher or cfg.train.model.name
    m = cfg.mine
    return replace(
        m,
        retriever=m.retriever or teacher,
        reranker=m.reranker or f"bi:{teacher}",
        task=task,
        seed=cfg.seed,
        teacher_embeddings=m.teacher_embeddings or cfg.train.loss.distill_scope == "batch",
    )


def run(cfg: AdaptConfig, *, force: bool = False) -> dict[str, Any]:
    """Run every stage (skipping finished ones unless ``force``); returns the report's data."""
    from anna_embed import mine, train
    from anna_embed.adapt_report import evaluate, write_report
    from anna_embed.pipeline import Stage, Timer, _fingerprint
    from anna_embed.teachers import teacher_embeddings_path

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cfg.cache_dir) if cfg.cache_dir else out / "cache"
    C.save(cfg, out / "adapt.json")
    timed = Timer()
    timings = timed.seconds

    data = timed("data", lambda: prepare_data(cfg, out))
    mined = vectors = None
    if cfg.negatives == "mined":
        mcfg = mine_config(cfg, data.task)
        stage = Stage(
            out, "mine", _fingerprint(C.to_dict(mcfg), data.records, data.corpus or ""), force=force
        )
        mined = stage.dir / "mined.jsonl"
        if not stage.done():
            stage.dir.mkdir(parents=True, exist_ok=True)
            manifest = timed(
                "mine",
                lambda: mine.run(
                    mcfg,
                    data.records,
                    mined,
                    corpus=data.corpus,
                    cache_dir=cache / "mine",
                    report_dir=stage.dir,
                ),
            )
            stage.finish(
                {"summary": manifest["summary"], "counts": manifest["counts"], "seconds": timings["mine"]}
            )
        timings.setdefault("mine", stage.info().get("seconds", 0.0))  # a finished stage: its own run's time
        vectors = teacher_embeddings_path(mined) if mcfg.teacher_embeddings else None
    tcfg = train_config(cfg, data, mined, vectors)
    inputs = [p for p in (mined or data.records, vectors) if p is not None]
    tstage = Stage(out, "train", _fingerprint(C.to_dict(tcfg), *inputs), force=force)
    if not tstage.done():
        run_dir, pending = tstage.dir, tstage.dir / "pending.json"
        resume = (
            not force
            and pending.is_file()
            and json.loads(pending.read_text()) == {"fingerprint": tstage.fingerprint}
        )
        if not resume:  # another config's checkpoints must not be resumed
            shutil.rmtree(run_dir, ignore_errors=True)
            write_json(pending, {"fingerprint": tstage.fingerprint})
        model = timed("train", lambda: train.train(tcfg, resume=resume))
        shutil.rmtree(out / "model", ignore_errors=True)
        os.replace(model, out / "model")
        tstage.finish({"model": str(out / "model"), "seconds": timings["train"]})
    timings.setdefault("train", tstage.info().get("seconds", 0.0))
    evals = timed("eval", lambda: evaluate(cfg, data, out, cache))
    return write_report(cfg, data, out, evals, timings)


# ----------------------------------------------------------------------------- CLI

#: Flags that are shortcuts for ``--set key=value``.
_FLAGS = {
    "model": "train.model.name",
    "train": "data.train",
    "corpus": "data.corpus",
    "eval": "data.eval",
    "teacher": "teacher",
    "out": "output_dir",
}


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> AdaptConfig:
    """:class:`AdaptConfig` from its defaults (``adapt``'s own training and mining defaults, not those of
    the section classes), a TOML/JSON file's values on top, then ``key=value`` overrides.

    Raises:
        ConfigError: A file or override that does not fit (the file is named).
    """
    import tomllib

    tree = C.to_dict(AdaptConfig())
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise C.ConfigError(f"{p}: config file not found")
        try:
            _merge(tree, json.loads(p.read_text()) if p.suffix == ".json" else tomllib.loads(p.read_text()))
            return C.build(AdaptConfig, tree, overrides)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError, C.ConfigError) as err:
            raise C.ConfigError(f"{p}: {err}") from None
    return C.build(AdaptConfig, tree, overrides)


def _merge(tree: dict[str, Any], update: dict[str, Any]) -> None:
    """Deep-merge ``update`` into ``tree`` (tables merge key by key, other values replace)."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            _merge(tree[key], value)
        else:
            tree[key] = value


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    """The ``--set`` list a command line amounts to: its shortcut flags first, then its own ``--set``."""
    flags = [
        f"{key}={getattr(args, name)}" for name, key in _FLAGS.items() if getattr(args, name) is not None
    ]
    return flags + list(args.overrides)


def add_cli(verb: str, parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """``anna-embed adapt --model NAME --train DATA [--corpus F] [--teacher NAME] [--eval DIR] --out OUT``."""
    parser.add_argument("--model", help="the model to adapt (default all-minilm-l6-v2; train.model.name)")
    parser.add_argument("--train", help="BEIR folder (queries + qrels/train.tsv) or pairs JSONL (data.train)")
    parser.add_argument("--corpus", help="corpus JSONL mined for negatives (default: the BEIR folder's)")
    parser.add_argument("--teacher", help="mining teacher and soft labels (default: the model itself)")
    parser.add_argument("--eval", help="BEIR folder whose qrels/test.tsv queries are held out (data.eval)")
    parser.add_argument("--out", help="output folder (output_dir)")
    parser.add_argument("--config", help="TOML/JSON file of AdaptConfig fields")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a field"
    )
    parser.add_argument("--force", action="store_true", help="rerun finished stages")

    def main(args: argparse.Namespace) -> int:
        cfg = load_config(args.config, overrides_from_args(args))
        report = run(cfg, force=args.force)
        print(report["table"])
        print(f"\nreport: {report['report']}   model: {Path(cfg.output_dir) / 'model'}")
        return 0

    return main

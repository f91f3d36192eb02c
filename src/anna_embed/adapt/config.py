"""``anna-embed adapt``: its settings (:class:`AdaptConfig`) and the stage configs derived from them.

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

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from anna_embed import config as C
from anna_embed.evaluate.config import EvalConfig, EvalDtype
from anna_embed.mine.config import MineConfig
from anna_embed.train.config import (
    DataSection,
    DataSource,
    LossSection,
    ModelSection,
    OptimSection,
    RunSection,
    TrainConfig,
)


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
    """Evaluation settings (each scoring run is an :class:`~anna_embed.evaluate.config.EvalConfig`,
    :func:`eval_config`; the defaults this section does not change are that class's).

    Attributes:
        batch_size: Encoding batch size.
        limit: First N held-out queries only (a smoke run; scores NOT comparable).
        dtype: Encoding dtype.
    """

    batch_size: int = 64
    limit: int | None = EvalConfig.limit
    dtype: EvalDtype = EvalConfig.dtype


#: The setting measured on SciFact (docs/RESULTS.md, issue 16): full fine-tuning, batch 32, temperature 0.05
#: (sentence-transformers' scale 20), weight decay 0.01, 1 positive + 1 mined negative per query with soft
#: labels over the whole batch, 3 warm-up steps. lr 2e-4 was chosen on validation claims over 5e-5; the rest
#: was fixed, not tuned. The measured runs stopped at 250,000 tokens (0.75 of a pass over 697 claims): one
#: epoch is the nearest whole-pass default.
ADAPT_TRAIN = TrainConfig(
    model=ModelSection(name="all-minilm-l6-v2"),
    data=DataSection(group_size=2, max_shots=0),
    loss=LossSection(
        student_temperature=0.05, teacher_temperature=0.05, kl_weight=1.0, distill_scope="batch"
    ),
    optim=OptimSection(batch_size=32, lr=2e-4, weight_decay=0.01, warmup_steps=3, epochs=1),
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


@dataclass(frozen=True)
class PreparedData:
    """What the data stage wrote. ``validation`` / ``held_out``: BEIR folders scored before and after."""

    records: Path
    corpus: Path | None
    task: str
    train_queries: int
    validation: Path | None
    held_out: Path | None
    overlap: int


def train_config(
    cfg: AdaptConfig, data: PreparedData, mined: Path | None, teacher_vectors: Path | None
) -> TrainConfig:
    """The training run's config: ``cfg.train`` on the (mined) records, in ``OUT/train``, with ``cfg.seed``.

    ``negatives = "in_batch"`` trains on the plain records with ``G = 1`` (each query against the other
    queries' positives; no teacher scores, so no KL and no batch-wide soft labels), as the ablation's
    ``inbatch_only`` does.
    """
    t = cfg.train
    if cfg.negatives == "in_batch":
        t = replace(t, loss=replace(t.loss, distill_scope="group"))  # nothing to distil without a teacher
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


def eval_config(
    cfg: AdaptConfig, model: str, task: str, data_dir: Path, output: Path, cache: Path
) -> EvalConfig:
    """How ``model`` is scored on ``task`` (found under ``data_dir``) into ``output``: ``cfg.eval``'s
    settings, zero-shot, the embedding cache under ``cache``."""
    return EvalConfig(
        model=model,
        output=str(output),
        tasks=(task,),
        data_dir=str(data_dir),
        batch_size=cfg.eval.batch_size,
        limit=cfg.eval.limit,
        dtype=cfg.eval.dtype,
        cache_dir=str(cache / "eval" / "embeddings.sqlite"),
    )


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> AdaptConfig:
    """:class:`AdaptConfig` from its defaults (``adapt``'s own training and mining defaults, not those of
    the section classes), a TOML/JSON file's values on top (a file may be ``base`` + ``overrides``, as
    every config file, :func:`anna_embed.config.load`), then ``key=value`` overrides.

    Raises:
        ConfigError: A file or override that does not fit (the file is named).
    """
    return C.load(AdaptConfig, path, overrides, defaults=AdaptConfig())

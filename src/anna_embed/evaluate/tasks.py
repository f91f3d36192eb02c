"""Local task folders -> mteb task objects with their data already loaded (no hub access).

Each reader turns one folder of the documented layout (``docs/EVALUATION.md``) into the exact in-memory
structure the mteb ``AbsTask`` subclass of that type evaluates, then marks the task ``data_loaded`` so
mteb's own evaluators run on it unchanged:

==================  =========================================  ===============================================
type                files                                      what the mteb task receives
==================  =========================================  ===============================================
STS                 ``test.jsonl`` {sentence1, sentence2,      ``Dataset(sentence1, sentence2, score)``; mteb
                    score} (optional ``lang``)                 normalises the score with the task's min/max
PairClassification  ``test.jsonl`` {sentence1, sentence2,      ``Dataset(sentence1, sentence2, labels)``
                    label}
Classification      ``train.jsonl`` + ``test.jsonl``           ``DatasetDict(train, test)`` of (text, label)
                    {text, label}
Clustering          ``test.jsonl``: one set per line           legacy tasks: the sets; v2 tasks: the task's
                    {sentences: [...], labels: [...]}          own ``dataset_transform`` (or a flat list)
Retrieval           ``corpus.jsonl``, ``queries.jsonl``,       ``RetrievalSplitData`` (corpus, queries,
                    ``qrels/test.tsv``                         relevant_docs, top_ranked=None)
Reranking           ``test.jsonl`` {query, positive: [...],    ``RetrievalSplitData`` with ``top_ranked`` (the
                    negative: [...]} or Retrieval + top_ranked  candidates), ids as mteb's old-format loader
Summarization       ``test.jsonl`` {text, human_summaries,     ``Dataset`` with those columns
                    machine_summaries, relevance}
==================  =========================================  ===============================================

A folder that is not an MTEB task is evaluated under the name the user gives it: its type comes from an
optional ``task.json`` (``{"type": ..., "instruction": ...}``) or from the files present.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anna_embed.evaluate.readers import (
    TaskFolderError,
    read_beir,
    read_classification,
    read_clustering_sets,
    read_pairs,
    read_reranking,
    read_sts,
    read_summarization,
    read_task_info,
)
from anna_embed.io import iter_jsonl
from anna_embed.tasks import TASK_TYPES, did_you_mean, find_task

logger = logging.getLogger(__name__)

#: Template tasks whose metadata a user's own folder borrows (name, dataset and prompt replaced).
_TEMPLATE_TASK = {
    "Classification": "Banking77Classification",
    "Clustering": "TwentyNewsgroupsClustering.v2",
    "PairClassification": "TwitterURLCorpus",
    "Reranking": "AskUbuntuDupQuestions",
    "Retrieval": "SciFact",
    "STS": "STSBenchmark",
    "Summarization": "SummEvalSummarization.v2",
}


@dataclass(frozen=True)
class LocalTask:
    """An mteb task ready to evaluate, with where its data came from.

    Attributes:
        task: The mteb ``AbsTask`` (data loaded when ``folder`` is set).
        name: The name results are saved under (the mteb task name, or the user's own).
        type: The task type.
        folder: The local folder the data was read from; ``None`` means mteb loads it from the hub.
        instruction: The instruction for instructed models (registry, ``task.json`` or a generic one).
        limit: The ``--limit`` applied (``None``: the full test set).
    """

    task: Any
    name: str
    type: str
    folder: Path | None
    instruction: str
    limit: int | None = None


# ---------------------------------------------------------------------------------------------- layout


def detect_type(folder: Path) -> str | None:
    """Guess a folder's task type from its files and the first test record; ``None`` when unclear."""
    if (folder / "corpus.jsonl").is_file() and (folder / "queries.jsonl").is_file():
        return "Reranking" if any((folder / "top_ranked").glob("*")) else "Retrieval"
    test = folder / "test.jsonl"
    if not test.is_file():
        return None
    first: dict[str, Any] = next((rec for _, rec in iter_jsonl(test)), {})
    if "machine_summaries" in first:
        return "Summarization"
    if "sentences" in first and isinstance(first.get("sentences"), list):
        return "Clustering"
    if "query" in first and "positive" in first:
        return "Reranking"
    if "sentence1" in first and "score" in first:
        return "STS"
    if "sentence1" in first and "label" in first:
        return "PairClassification"
    if "text" in first and "label" in first:
        return "Classification"
    return None


def _check_type(folder: Path, expected: str) -> None:
    found = detect_type(folder)
    if found is None:
        raise TaskFolderError(folder, None, f"no {expected} data found (layout: docs/EVALUATION.md)")
    compatible = {expected} | ({"Retrieval"} if expected == "Reranking" else set())
    if found not in compatible:
        raise TaskFolderError(
            folder, None, f"the folder holds {found} data (by its files/fields) but the task is {expected}"
        )


# ----------------------------------------------------------------------------------------- task objects


def _mteb_task(name: str) -> Any | None:
    import mteb

    try:
        return mteb.get_task(name)
    except (KeyError, ValueError):
        return None


def _subset_for(task: Any, name: str, present: list[str]) -> list[str]:
    """The hf_subsets to evaluate: the registry's choice (e.g. STS17 en-en), else what the data holds."""
    spec = find_task(name)
    wanted = None if spec is None else spec.subset
    if wanted is not None:
        return [wanted]
    return present


def custom_task(name: str, type_: str, *, instruction: str | None = None) -> Any:
    """An mteb task class instance for a user's own folder, with metadata borrowed from a template task."""
    if type_ not in TASK_TYPES:
        raise ValueError(f"Unknown task type {type_!r}; expected one of {', '.join(TASK_TYPES)}")
    import mteb

    template = mteb.get_task(_TEMPLATE_TASK[type_])
    base = next(c for c in type(template).__mro__ if c.__name__.startswith("AbsTask"))
    if type_ == "Clustering":  # sets of sentences, no down-sampling: the legacy evaluator
        from mteb.abstasks import AbsTaskClusteringLegacy

        base = AbsTaskClusteringLegacy
    meta = template.metadata.model_copy(
        update={
            "name": name,
            "description": f"Local task {name} ({type_}).",
            "dataset": {"path": f"local/{name}", "revision": "local"},
            "prompt": instruction,
            "eval_splits": ["test"],
            "eval_langs": ["eng-Latn"],
            "superseded_by": None,
            "adapted_from": None,
        }
    )
    attrs: dict[str, Any] = {"metadata": meta}
    for attr in ("min_score", "max_score"):
        if hasattr(template, attr):
            attrs[attr] = getattr(template, attr)
    cls = type(f"Local{type_}Task", (base,), attrs)
    return cls()


def load_task(
    name: str,
    data_dir: str | Path | None,
    *,
    limit: int | None = None,
    type_: str | None = None,
    split: str = "test",
) -> LocalTask:
    """Build the mteb task for ``name``, with its data injected from ``data_dir`` when a folder exists.

    Args:
        name: An mteb task name (``STS17``, ``SummEvalSummarization.v2``), a local folder name
            (``SummEval``, ``NFCorpus-preprocessed-analog``) or the name of a user's own folder.
        data_dir: Root of the task folders (``None``: hub only).
        limit: Keep only the first ``limit`` test items (smoke runs; scores are not comparable).
        type_: Task type of a user's own folder (else ``task.json`` or the files decide).
        split: The file evaluated: ``test`` (MTEB's split), or ``validation`` / ``dev`` for choosing
            settings without touching a test set (STS and PairClassification folders only: the file
            ``{split}.jsonl`` is scored in place of ``test.jsonl``; ``validation`` falls back to
            ``dev.jsonl`` where a folder has no ``validation.jsonl``).

    Raises:
        FileNotFoundError: ``data_dir`` is given but is not a folder.
        TaskFolderError: No folder and no mteb task of that name (with the closest names: the one policy
            for unknown names, whatever the model), a bad ``task.json``, a missing file or a type mismatch.
        InputError: A malformed record (file, line and field named).
    """
    check_data_dir(data_dir)
    spec = find_task(name)
    if spec is not None:
        folder_name, mteb_name, instruction = spec.folder, spec.name, spec.instruction
    else:
        folder_name, mteb_name, instruction = name, name, None
    task = _mteb_task(mteb_name)
    if task is None and spec is None and mteb_name != name:
        task = _mteb_task(name)
    folder = Path(data_dir) / folder_name if data_dir is not None else None
    if folder is None or not folder.is_dir():
        if task is None:
            raise _unknown_task(name, data_dir, folder, registered=spec is not None)
        logger.info("No local folder for %s: mteb loads it from the hub.", name)
        task.filter_eval_splits([split])
        if spec is not None and spec.subset is not None:
            task.hf_subsets = [spec.subset]
        ttype = task.metadata.type
        return LocalTask(task, task.metadata.name, ttype, None, instruction or _generic(ttype), limit)

    if task is None:
        info = read_task_info(folder / "task.json")
        ttype = type_ or info.get("type") or detect_type(folder)
        if ttype is None:
            raise TaskFolderError(folder, None, 'cannot tell the task type: add task.json {"type": ...}')
        instruction = info.get("instruction") or _generic(ttype)
        task = custom_task(name, ttype, instruction=info.get("instruction"))
    ttype = task.metadata.type
    if ttype not in TASK_TYPES:
        raise TaskFolderError(folder, None, f"task type {ttype} is not supported")
    _check_type(folder, ttype)
    inject(task, folder, limit=limit, split=split)
    return LocalTask(task, task.metadata.name, ttype, folder, instruction or _generic(ttype), limit)


def check_data_dir(data_dir: str | Path | None) -> None:
    """Fail at once when a data folder is given but is not there (instead of trying the hub per task).

    Raises:
        FileNotFoundError: ``data_dir`` is not an existing folder (the message names it).
    """
    if data_dir is None:
        return
    path = Path(data_dir)
    if not path.is_dir():
        what = "not a folder" if path.exists() else "no such data folder"
        raise FileNotFoundError(f"{path}: {what} (--data-dir: the folder holding one sub-folder per task)")


def _unknown_task(
    name: str, data_dir: str | Path | None, folder: Path | None, *, registered: bool
) -> TaskFolderError:
    """The error for a name that is neither a folder under ``data_dir`` nor an mteb task, whatever the
    model, with the closest registry, folder and mteb task names (:func:`anna_embed.tasks.did_you_mean`)."""
    where = folder if folder is not None else Path(name)
    if registered:  # one of our own tasks (the demo's): it exists only as a folder
        return TaskFolderError(where, None, f"no such task folder, and {name!r} is not an mteb task")
    root = None if data_dir is None else Path(data_dir)
    folders = [p.name for p in root.iterdir() if p.is_dir()] if root is not None and root.is_dir() else []
    hint = did_you_mean(name, [*folders, *_mteb_task_names()])
    return TaskFolderError(
        where, None, f"unknown task {name!r}: no such task folder, and not an mteb task.{hint}"
    )


def _mteb_task_names() -> list[str]:
    """Every task name mteb knows (``mteb.get_tasks()``, its public listing: ~0.1 s, no data loaded)."""
    import mteb

    return [t.metadata.name for t in mteb.get_tasks()]


#: Task types whose local folders can be scored on another split than ``test`` (``load_task(split=)``).
SPLIT_TYPES = ("STS", "PairClassification")


def _generic(ttype: str) -> str:
    return {
        "Classification": "Classify the given text.",
        "Clustering": "Identify the topic or theme of the given text.",
        "PairClassification": "Find texts that mean the same as the given text.",
        "Reranking": "Given a query, find the documents that answer it.",
        "Retrieval": "Given a query, find the documents that answer it.",
        "STS": "Find sentences with the same meaning.",
        "Summarization": "Given a summary, find summaries with the same content.",
    }[ttype]


def _resolve_subsets(task: Any, folder: Path, langs: list[str]) -> dict[str, str]:
    """Map each hf_subset to evaluate to the ``lang`` value of the records that hold it."""
    name = task.metadata.name
    if not task.metadata.is_multilingual:
        if len(langs) != 1:
            raise TaskFolderError(folder, None, f"{name} has one subset but the records hold {langs}")
        return {"default": langs[0]}
    chosen = _subset_for(task, name, langs)
    if langs == ["default"] and len(chosen) == 1:
        return {chosen[0]: "default"}  # records carry no ``lang``: they are the one subset evaluated
    missing = [s for s in chosen if s not in langs]
    if missing:
        raise TaskFolderError(folder, None, f"no records for subset(s) {missing} of {name}; found {langs}")
    return {s: s for s in chosen}


def _place(task: Any, folder: Path, per_lang: dict[str, Any], make: Any) -> None:
    mapping = _resolve_subsets(task, folder, list(per_lang))
    if task.metadata.is_multilingual:
        task.dataset = {subset: make(per_lang[lang]) for subset, lang in mapping.items()}
        task.hf_subsets = list(mapping)
    else:
        task.dataset = make(per_lang[mapping["default"]])


def inject(task: Any, folder: Path, *, limit: int | None = None, split: str = "test") -> None:
    """Read ``folder`` into ``task.dataset`` in the structure its mteb evaluator expects; mark it loaded.

    ``split`` other than ``test`` (STS and PairClassification only) reads ``{split}.jsonl``; mteb still
    files the scores under its ``test`` key, so callers record the split themselves (``run.json``).
    """
    from datasets import Dataset, DatasetDict

    name, ttype = task.metadata.name, task.metadata.type
    if split != "test" and ttype not in SPLIT_TYPES:
        raise TaskFolderError(
            folder, None, f"{name} is a {ttype} task: only {' and '.join(SPLIT_TYPES)} evaluate another split"
        )
    task.filter_eval_splits(["test"])

    def single_split(cols: dict[str, list]) -> Any:
        return DatasetDict(test=Dataset.from_dict(cols))

    if ttype == "STS":
        _place(task, folder, read_sts(folder, name, split, limit=limit), single_split)
    elif ttype == "PairClassification":
        _place(task, folder, {"default": read_pairs(folder, name, split, limit=limit)}, single_split)
    elif ttype == "Classification":
        train_split = getattr(task, "train_split", "train")
        test = read_classification(folder, "test", limit)
        train = read_classification(folder, train_split, None if limit is None else 10 * limit)
        missing = [lang for lang in test if lang not in train]
        if missing:
            raise TaskFolderError(folder / f"{train_split}.jsonl", None, f"no training records for {missing}")
        both = {lang: (test[lang], train[lang]) for lang in test}
        _place(
            task,
            folder,
            both,
            lambda tt: DatasetDict({"test": Dataset.from_dict(tt[0]), train_split: Dataset.from_dict(tt[1])}),
        )
    elif ttype == "Clustering":
        _load_clustering(task, read_clustering_sets(folder, limit=limit))
    elif ttype in ("Retrieval", "Reranking"):
        data = read_reranking(folder, limit=limit) if ttype == "Reranking" else read_beir(folder, limit=limit)
        if not data["queries"]["id"]:
            raise TaskFolderError(folder, None, "no query has a relevance judgement in qrels/test.tsv")
        split = {
            "corpus": Dataset.from_dict(data["corpus"]),
            "queries": Dataset.from_dict(data["queries"]),
            "relevant_docs": data["relevant_docs"],
            "top_ranked": data.get("top_ranked"),
        }
        task.dataset = {"default": {"test": split}}
    elif ttype == "Summarization":
        task.dataset = single_split(read_summarization(folder, limit=limit))
    else:  # pragma: no cover - guarded by load_task
        raise TaskFolderError(folder, None, f"unsupported task type {ttype}")
    task.data_loaded = True


def _load_clustering(task: Any, sets: dict[str, list]) -> None:
    from datasets import Dataset, DatasetDict
    from mteb.abstasks import AbsTaskClusteringLegacy

    raw = DatasetDict(test=Dataset.from_dict(sets))
    if isinstance(task, AbsTaskClusteringLegacy):
        task.dataset = raw
        return
    own_transform = any(
        "dataset_transform" in c.__dict__ for c in type(task).__mro__ if not c.__name__.startswith("AbsTask")
    )
    if own_transform:  # e.g. TwentyNewsgroupsClustering.v2 flattens the sets itself
        task.dataset = raw
        task.dataset_transform()
        return
    flat = {
        "sentences": [s for group in sets["sentences"] for s in group],
        "labels": [lab for group in sets["labels"] for lab in group],
    }
    task.dataset = DatasetDict(test=Dataset.from_dict(flat))

"""Task registry: every task anna-embed knows, with its type, main metric and instruction.

The registry covers the 41 tasks of MTEB(eng, v2), the MTEB tasks whose local copies live under a data
directory (the layout is documented in ``docs/DATA.md``) and the training sets the recipe mixes in. Each
entry carries a one-sentence instruction in the E5-Mistral style (a short imperative naming what the
query is and what should come back). The instruction is what
:mod:`anna_embed.prompts` wraps into the query prompt.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

TaskType = Literal[
    "Classification",
    "Clustering",
    "PairClassification",
    "Reranking",
    "Retrieval",
    "STS",
    "Summarization",
]
TASK_TYPES: tuple[str, ...] = get_args(TaskType)

#: Main score per task type, as mteb reports it (``main_score`` in its result JSON).
MAIN_METRIC: dict[str, str] = {
    "Classification": "accuracy",
    "Clustering": "v_measure",
    "PairClassification": "max_ap",
    "Reranking": "map_at_1000",
    "Retrieval": "ndcg_at_10",
    "STS": "cosine_spearman",
    "Summarization": "cosine_spearman",
}

#: Task types whose two sides are the same kind of text: the instruction goes on both sides.
SYMMETRIC_TYPES: frozenset[str] = frozenset(
    {"Classification", "Clustering", "PairClassification", "STS", "Summarization"}
)


@dataclass(frozen=True)
class TaskSpec:
    """One task: what it is called, what it measures and how its queries are instructed.

    Attributes:
        name: The MTEB task name (or our own name for a training set).
        type: One of :data:`TASK_TYPES`.
        instruction: One sentence describing the task, used in the query prompt.
        local_dir: Folder name of the local copy under a data directory, when it differs from ``name``.
        subset: The mteb subset (hf_subset) MTEB(eng, v2) scores, when the task has several.
        in_benchmark: Whether the task is one of the 41 tasks of MTEB(eng, v2).
    """

    name: str
    type: TaskType
    instruction: str
    local_dir: str | None = None
    subset: str | None = None
    in_benchmark: bool = False

    @property
    def main_metric(self) -> str:
        """The metric mteb reports as ``main_score`` for this task."""
        if self.name == "MindSmallReranking":
            return "max_over_subqueries_map_at_1000"
        return MAIN_METRIC[self.type]

    @property
    def symmetric(self) -> bool:
        """True when queries and documents are the same kind of text (instruction on both sides)."""
        return self.type in SYMMETRIC_TYPES

    @property
    def folder(self) -> str:
        """Folder name of the task's local copy."""
        return self.local_dir or self.name


def _t(name: str, type_: TaskType, instruction: str, **kw: object) -> TaskSpec:
    return TaskSpec(name=name, type=type_, instruction=instruction, **kw)  # type: ignore[arg-type]


_STS = "Find sentences with the same meaning."
_B = {"in_benchmark": True}

_TASKS: list[TaskSpec] = [
    # --- MTEB(eng, v2): Classification
    _t(
        "AmazonCounterfactualClassification",
        "Classification",
        "Decide whether an Amazon product review states something counterfactual.",
        subset="en",
        **_B,
    ),
    _t(
        "Banking77Classification",
        "Classification",
        "Given a customer message to a bank, identify which banking intent it expresses.",
        **_B,
    ),
    _t(
        "ImdbClassification",
        "Classification",
        "Decide whether a movie review is positive or negative about the film.",
        **_B,
    ),
    _t(
        "MTOPDomainClassification",
        "Classification",
        "Identify the domain of a request spoken to a virtual assistant.",
        **_B,
    ),
    _t(
        "MassiveIntentClassification",
        "Classification",
        "Given a request spoken to a voice assistant, identify what the user wants done.",
        subset="en",
        **_B,
    ),
    _t(
        "MassiveScenarioClassification",
        "Classification",
        "Given a request spoken to a voice assistant, identify the scenario it belongs to.",
        subset="en",
        **_B,
    ),
    _t(
        "ToxicConversationsClassification",
        "Classification",
        "Decide whether an online comment is toxic.",
        **_B,
    ),
    _t(
        "TweetSentimentExtractionClassification",
        "Classification",
        "Decide whether a tweet's sentiment is positive, neutral or negative.",
        **_B,
    ),
    # --- Clustering
    _t(
        "ArXivHierarchicalClusteringP2P",
        "Clustering",
        "Group arXiv papers by field and sub-field from their titles and abstracts.",
        **_B,
    ),
    _t(
        "ArXivHierarchicalClusteringS2S",
        "Clustering",
        "Group arXiv papers by field and sub-field from their titles.",
        **_B,
    ),
    _t(
        "BiorxivClusteringP2P.v2",
        "Clustering",
        "Group bioRxiv preprints by subject from their titles and abstracts.",
        **_B,
    ),
    _t(
        "MedrxivClusteringP2P.v2",
        "Clustering",
        "Group medRxiv preprints by subject from their titles and abstracts.",
        **_B,
    ),
    _t(
        "MedrxivClusteringS2S.v2", "Clustering", "Group medRxiv preprints by subject from their titles.", **_B
    ),
    _t(
        "StackExchangeClustering.v2",
        "Clustering",
        "Group StackExchange questions by site from their titles.",
        **_B,
    ),
    _t(
        "StackExchangeClusteringP2P.v2",
        "Clustering",
        "Group StackExchange posts by site from their body text.",
        **_B,
    ),
    _t(
        "TwentyNewsgroupsClustering.v2",
        "Clustering",
        "Group newsgroup posts by the newsgroup they were sent to.",
        local_dir="TwentyNewsgroupsClustering",
        **_B,
    ),
    # --- PairClassification
    _t(
        "SprintDuplicateQuestions",
        "PairClassification",
        "Given a Sprint forum question, find questions that ask the same thing.",
        **_B,
    ),
    _t(
        "TwitterSemEval2015",
        "PairClassification",
        "Given a tweet, find tweets that say the same thing.",
        **_B,
    ),
    _t("TwitterURLCorpus", "PairClassification", "Given a tweet, find tweets that say the same thing.", **_B),
    # --- Reranking
    _t(
        "AskUbuntuDupQuestions",
        "Reranking",
        "Given an AskUbuntu question, find questions that ask the same thing.",
        **_B,
    ),
    _t(
        "MindSmallReranking",
        "Reranking",
        "Given news a user has read, find articles the user will want to read next.",
        **_B,
    ),
    # --- Retrieval
    _t("ArguAna", "Retrieval", "Given an argument, find the argument that best counters it.", **_B),
    _t(
        "CQADupstackGamingRetrieval",
        "Retrieval",
        "Given a StackExchange question title, find full posts that ask the same question.",
        **_B,
    ),
    _t(
        "CQADupstackUnixRetrieval",
        "Retrieval",
        "Given a StackExchange question title, find full posts that ask the same question.",
        **_B,
    ),
    _t(
        "ClimateFEVERHardNegatives",
        "Retrieval",
        "Given a claim about the climate, find passages that confirm or contradict it.",
        **_B,
    ),
    _t(
        "FEVERHardNegatives",
        "Retrieval",
        "Given a claim, find Wikipedia passages that confirm or contradict it.",
        **_B,
    ),
    _t(
        "FiQA2018",
        "Retrieval",
        "Given a question about personal finance, find forum answers that address it.",
        **_B,
    ),
    _t(
        "HotpotQAHardNegatives",
        "Retrieval",
        "Given a question that needs several facts, find passages holding one of them.",
        **_B,
    ),
    _t(
        "SCIDOCS",
        "Retrieval",
        "Given the title of a paper, find abstracts of papers it is likely to cite.",
        **_B,
    ),
    _t(
        "TRECCOVID",
        "Retrieval",
        "Given a question about COVID-19, find scientific articles that answer it.",
        **_B,
    ),
    _t(
        "Touche2020Retrieval.v3",
        "Retrieval",
        "Given a debate question, find arguments that take a side on it.",
        **_B,
    ),
    # --- STS
    _t("BIOSSES", "STS", "Find biomedical sentences with the same meaning.", **_B),
    _t("SICK-R", "STS", _STS, **_B),
    _t("STS12", "STS", _STS, **_B),
    _t("STS13", "STS", _STS, **_B),
    _t("STS14", "STS", _STS, **_B),
    _t("STS15", "STS", _STS, **_B),
    _t("STS17", "STS", _STS, subset="en-en", **_B),
    _t("STS22.v2", "STS", "Find news articles that cover the same story.", subset="en", **_B),
    _t("STSBenchmark", "STS", _STS, **_B),
    # --- Summarization
    _t(
        "SummEvalSummarization.v2",
        "Summarization",
        "Given a summary of a news article, find summaries with the same content.",
        local_dir="SummEval",
        **_B,
    ),
    # --- Local MTEB tasks outside MTEB(eng, v2) (or their v1 names)
    _t("STS16", "STS", _STS),
    _t(
        "TwentyNewsgroupsClustering",
        "Clustering",
        "Group newsgroup posts by the newsgroup they were sent to.",
    ),
    _t(
        "SummEval",
        "Summarization",
        "Given a summary of a news article, find summaries with the same content.",
    ),
    _t(
        "SciFact",
        "Retrieval",
        "Given a scientific claim, find paper abstracts that confirm or contradict it.",
    ),
    _t(
        "NFCorpus",
        "Retrieval",
        "Given a health question, find medical articles that answer it.",
        local_dir="NFCorpus-preprocessed-analog",
    ),
    # --- Training sets (names used by the training records' ``task`` field)
    _t("MSMARCO", "Retrieval", "Given a web search query, find passages that answer it."),
    _t("NLI", "STS", "Find sentences with the same meaning."),
    _t("QNLI", "Retrieval", "Given a question, find the Wikipedia sentence that answers it."),
    _t("WikiQA", "Retrieval", "Given a question, find the Wikipedia passage that answers it."),
    _t("TrecQA", "Retrieval", "Given a factoid question, find the sentence that answers it."),
    _t("MSRP", "PairClassification", "Given a news sentence, find sentences that paraphrase it."),
    # --- The demo's own evaluation task (src/anna_embed/demo_data/eval/QNLIRetrieval)
    _t("QNLIRetrieval", "Retrieval", "Given a question, find the Wikipedia sentence that answers it."),
    _t(
        "ClimateFEVER",
        "Retrieval",
        "Given a claim about the climate, find passages that confirm or contradict it.",
    ),
]

TASKS: dict[str, TaskSpec] = {t.name: t for t in _TASKS}


class UnknownTaskError(KeyError):
    """Raised for a task name the registry does not know; the message lists close matches."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly.
        return str(self.args[0])


def find_task(name: str) -> TaskSpec | None:
    """The registry entry for ``name``, or None when the registry does not know it.

    The one fallback policy for unknown names, in three forms: :func:`find_task` where an unknown name
    means "a task of the user's own" (None), :func:`task_or_custom` where it becomes an unregistered
    :class:`TaskSpec`, :func:`get_task` where it is an error.

    Args:
        name: An MTEB task name (``"SciFact"``), a local folder name (``"SummEval"``) or a training-set
            name; case is ignored when no name matches exactly.
    """
    if name in TASKS:
        return TASKS[name]
    for spec in _TASKS:
        if spec.local_dir == name:
            return spec
    lowered = {n.lower(): n for n in TASKS}
    if name.lower() in lowered:
        return TASKS[lowered[name.lower()]]
    return None


def get_task(name: str) -> TaskSpec:
    """Return the registry entry for ``name`` (see :func:`find_task`).

    Args:
        name: An MTEB task name (``"SciFact"``), a local folder name (``"SummEval"``) or a training-set name.

    Raises:
        UnknownTaskError: The name is unknown; the message lists the closest known names.
    """
    spec = find_task(name)
    if spec is not None:
        return spec
    raise UnknownTaskError(f"Unknown task {name!r}.{did_you_mean(name)} ({len(TASKS)} tasks are registered.)")


def did_you_mean(name: str, others: Iterable[str] = (), *, cutoff: float = 0.5) -> str:
    """The hint an unknown task name gets: `` Did you mean: A, B?`` (or ``""`` when nothing is close).

    The one place that suggests names: the registry's names and folder names plus ``others`` (e.g. the
    folders under a data directory, mteb's task names), compared ignoring case, closest first.

    Example:
        >>> did_you_mean("SciFactt")
        ' Did you mean: SciFact?'
    """
    names = [*TASKS, *(t.local_dir for t in _TASKS if t.local_dir), *others]
    lowered: dict[str, str] = {}
    for n in names:
        lowered.setdefault(n.lower(), n)
    close = difflib.get_close_matches(name.lower(), list(lowered), n=5, cutoff=cutoff)
    return f" Did you mean: {', '.join(lowered[c] for c in close)}?" if close else ""


#: Instruction of a user's own task that brings none.
FALLBACK_INSTRUCTION = "Represent the text."


def task_or_custom(name: str, type_: str, instruction: str | None = None) -> TaskSpec:
    """The registry entry for ``name``, or an unregistered task of type ``type_`` (a user's own folder).

    The custom task's instruction is ``instruction`` (e.g. its description) or
    :data:`FALLBACK_INSTRUCTION`.
    """
    spec = find_task(name)
    if spec is not None:
        return spec
    return TaskSpec(name=name, type=type_, instruction=instruction or FALLBACK_INSTRUCTION)  # type: ignore[arg-type]


def benchmark_tasks() -> list[TaskSpec]:
    """The 41 tasks of MTEB(eng, v2), in registry order."""
    return [t for t in _TASKS if t.in_benchmark]

"""Task registry and prompt module."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from anna_embed import prompts as P
from anna_embed.shots import few_shot_pool, sample_examples
from anna_embed.tasks import (
    TASK_TYPES,
    TASKS,
    UnknownTaskError,
    benchmark_tasks,
    get_task,
)

# The shared data folder beside the checkout (or $ANNA_EMBED_SHARED); tests that need it skip without it.
_CANDIDATES = [
    os.environ.get("ANNA_EMBED_SHARED", ""),
    Path(__file__).resolve().parents[2] / "shared",
    "/work/shared",
]
SHARED = next((Path(c) for c in _CANDIDATES if c and Path(c).is_dir()), Path("/nonexistent"))


@pytest.mark.skipif(not (SHARED / "reference").is_dir(), reason="shared reference data not present")
def test_registry_covers_mteb_eng_v2_exactly():
    ref = json.loads((SHARED / "reference" / "mteb_eng_v2_tasks.json").read_text())
    expected = {(name, ttype) for ttype, names in ref["tasks_by_type"].items() for name in names}
    ours = {(t.name, t.type) for t in benchmark_tasks()}
    assert ours == expected
    assert len(ours) == ref["n_tasks"] == 41
    for name, subset in ref["subsets"].items():
        assert get_task(name).subset == subset


@pytest.mark.skipif(not (SHARED / "data" / "mteb").is_dir(), reason="shared data not present")
def test_every_local_task_folder_is_registered():
    for folder in sorted((SHARED / "data" / "mteb").iterdir()):
        spec = get_task(folder.name)
        assert spec.folder == folder.name


def test_every_task_has_type_metric_and_one_sentence_instruction():
    for spec in TASKS.values():
        assert spec.type in TASK_TYPES
        assert spec.main_metric
        assert spec.instruction.endswith(".") and spec.instruction.count(". ") == 0, spec.name
    assert get_task("MindSmallReranking").main_metric == "max_over_subqueries_map_at_1000"
    assert get_task("SciFact").main_metric == "ndcg_at_10"


def test_unknown_task_lists_close_matches():
    with pytest.raises(UnknownTaskError, match="SciFact"):
        get_task("SciFakt")
    assert get_task("scifact").name == "SciFact"
    assert get_task("SummEval").type == "Summarization"


def test_query_prompt_puts_examples_first_then_instruction_and_query():
    prefix = P.query_prefix(instruction="Find X.", examples=[("q1", "r1"), ("q2", "r2")])
    assert prefix == (
        "Instruct: Find X.\nQuery:\nq1\nResponse:\nr1\n\n"
        "Instruct: Find X.\nQuery:\nq2\nResponse:\nr2\n\n"
        "Instruct: Find X.\nQuery:\n"
    )
    assert P.build_prompt("hello", "query", instruction="Find X.") == "Instruct: Find X.\nQuery:\nhello"


def test_document_prompt_depends_on_symmetry():
    assert P.document_prefix("SciFact") == ""
    assert P.document_prefix("STSBenchmark") == P.query_prefix("STSBenchmark")
    assert P.document_prefix("Banking77Classification").startswith("Instruct: ")
    assert P.document_prefix(None) == ""
    with pytest.raises(ValueError):
        P.build_prompt("x", "document", "SciFact", examples=[("a", "b")])
    ex = [("a", "b")]  # symmetric: the document is another query, with the same examples
    assert P.document_prefix("STS12", examples=ex) == P.query_prefix("STS12", examples=ex)
    with pytest.raises(ValueError):
        P.query_prefix(examples=[("a", "b")])


def test_templates_round_trip_and_reject_unknown_keys():
    t = P.PromptTemplates(query="Q {instruction}\n")
    assert P.PromptTemplates.from_dict(t.to_dict()) == t
    with pytest.raises(ValueError, match="Unknown prompt template keys"):
        P.PromptTemplates.from_dict({"querry": "x"})


def test_sample_examples_is_seeded_whole_and_spreads_responses():
    pool = [(f"q{i}", f"r{i}" * 500) for i in range(50)]
    a = sample_examples(pool, 3, seed=1, task="T")
    assert a == sample_examples(pool, 3, seed=1, task="T")
    assert a != sample_examples(pool, 3, seed=2, task="T")
    assert len(a) == 3 and all(e in pool for e in a)  # no character clipping: the model clips by tokens
    assert sample_examples([], 3, seed=0) == []
    labelled = [(f"text {i}", "A" if i < 40 else "B") for i in range(42)]
    assert sorted(r for _, r in sample_examples(labelled, 2, seed=0)) == ["A", "B"]


@pytest.mark.skipif(not (SHARED / "data" / "mteb").is_dir(), reason="shared data not present")
def test_few_shot_pools_come_from_training_data_only():
    data = SHARED / "data" / "mteb"
    pool, source = few_shot_pool("Classification", data / "Banking77Classification")
    assert source == "train.jsonl" and len(pool) == 10003
    pool, source = few_shot_pool("Retrieval", data / "SciFact")
    assert source.startswith("queries_train") and pool
    pool, source = few_shot_pool("PairClassification", data / "TwitterURLCorpus")
    assert pool == []  # its train_lowercased.jsonl is part of MTEB's test set
    assert few_shot_pool("Clustering", data / "TwentyNewsgroupsClustering") == (
        [],
        "none (no training split)",
    )

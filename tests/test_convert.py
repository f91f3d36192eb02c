"""Converters: classification, clustering, STS, NLI, BEIR and pairs into training records."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from anna_embed import convert
from anna_embed.io import InputError

FIX = Path(__file__).parent / "fixtures" / "mine"


def _triplets(name: str, task: str = "Banking77Classification", **kw):
    rows = convert.labelled_texts(FIX / name)
    return rows, list(convert.label_triplets(rows, task=task, type_="Classification", **kw))


def test_classification_positive_shares_the_label_and_negatives_do_not():
    rows, records = _triplets("classification.jsonl", num_negatives=3, seed=1)
    label_of = dict(rows)
    assert len(records) == 7  # the single 'top_up_cash' text has no positive
    for rec in records:
        assert rec["positive"] != rec["query"]
        assert label_of[rec["positive"]] == label_of[rec["query"]] == rec["label"]
        assert len(rec["negative"]) == 3 and len(set(rec["negative"])) == 3
        assert all(label_of[n] != rec["label"] for n in rec["negative"])
        assert (rec["task"], rec["type"]) == ("Banking77Classification", "Classification")
        assert "instruction" not in rec  # the registry has it


def test_label_layout_answers_with_the_label_and_other_labels_as_negatives():
    rows, records = _triplets("classification.jsonl", num_negatives=2, seed=1, layout="label")
    labels = {label for _, label in rows}
    assert len(records) == len(rows)  # every text is a query, even a label's only text
    for rec, (text, label) in zip(records, rows, strict=True):
        assert (rec["query"], rec["positive"], rec["label"]) == (text, label, label)
        assert len(rec["negative"]) == min(2, len(labels) - 1) and label not in rec["negative"]
        assert set(rec["negative"]) <= labels
    with pytest.raises(ValueError, match="layout"):
        _triplets("classification.jsonl", layout="texts")


def test_classification_is_seeded_and_caps_queries_per_label():
    _, a = _triplets("classification.jsonl", seed=1)
    _, b = _triplets("classification.jsonl", seed=1)
    assert a == b
    draws = {json.dumps(_triplets("classification.jsonl", seed=s)[1]) for s in range(6)}
    assert len(draws) > 1
    _, capped = _triplets("classification.jsonl", max_per_label=1)
    assert sorted(r["label"] for r in capped) == ["card_arrival", "exchange_rate", "pin_forgotten"]


def test_integer_labels_use_label_text():
    _, records = _triplets("sentiment.jsonl", task="TweetSentimentExtractionClassification")
    assert {r["label"] for r in records} == {"positive", "negative"}


def test_clustering_sets_are_flattened():
    rows = convert.labelled_texts(FIX / "clustering.jsonl")
    assert len(rows) == 6 and rows[-1] == ("Church history", "religion")
    records = list(
        convert.label_triplets(rows, task="TwentyNewsgroupsClustering", type_="Clustering", num_negatives=2)
    )
    assert len(records) == 6 and all(r["type"] == "Clustering" for r in records)


def test_unregistered_task_needs_an_instruction_and_types_must_agree():
    rows = convert.labelled_texts(FIX / "classification.jsonl")
    with pytest.raises(ValueError, match="give an instruction"):
        next(convert.label_triplets(rows, task="MyIntents", type_="Classification"))
    rec = next(
        convert.label_triplets(rows, task="MyIntents", type_="Classification", instruction="Classify.")
    )
    assert (rec["type"], rec["instruction"]) == ("Classification", "Classify.")
    with pytest.raises(ValueError, match="is a Retrieval task"):
        next(convert.label_triplets(rows, task="SciFact", type_="Classification"))


def test_sts_threshold_and_directions():
    records = list(convert.sts_pairs(FIX / "sts.jsonl", task="STSBenchmark", threshold=4.0))
    pairs = [(r["query"], r["positive"]) for r in records]
    assert pairs == [
        ("A plane is taking off.", "An air plane is taking off."),
        ("An air plane is taking off.", "A plane is taking off."),
        ("A cat sleeps.", "A cat is sleeping."),
        ("A cat is sleeping.", "A cat sleeps."),
    ]
    one_way = list(
        convert.sts_pairs(FIX / "sts.jsonl", task="STSBenchmark", threshold=3.5, both_directions=False)
    )
    assert len(one_way) == 3 and records[0]["type"] == "STS"


def test_nli_groups_labelled_pairs_by_premise():
    records = list(convert.nli_triplets(FIX / "nli_pairs.jsonl"))
    assert records == [
        {
            "query": "Two dogs run in a field.",
            "positive": ["Animals are outside."],
            "negative": ["The dogs are asleep indoors."],
            "task": "NLI",
            "type": "STS",
        },
        {"query": "A child eats an apple.", "positive": ["A kid eats fruit."], "task": "NLI", "type": "STS"},
    ]


def test_nli_triplets_pass_through(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"query": "a", "positive": "b", "negative": "c", "source": "x"}) + "\n")
    assert list(convert.nli_triplets(path)) == [
        {"query": "a", "positive": "b", "negative": "c", "task": "NLI", "type": "STS"}
    ]


def test_beir_groups_relevant_documents():
    records = list(
        convert.beir_records(FIX / "corpus.jsonl", FIX / "queries.jsonl", FIX / "qrels.tsv", task="SciFact")
    )
    assert [r["query"] for r in records] == ["how much caffeine is safe in pregnancy", "how do vaccines work"]
    assert records[0]["positive"] == [
        "Coffee and pregnancy Caffeine intake during pregnancy should stay below 200 mg per day."
    ]
    assert len(records[1]["positive"]) == 2  # d10 has score 0
    assert records[1]["type"] == "Retrieval"


def test_beir_bad_qrels_line_is_located(tmp_path):
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\tnope\t1\n")
    with pytest.raises(InputError) as err:
        list(convert.beir_records(FIX / "corpus.jsonl", FIX / "queries.jsonl", qrels, task="SciFact"))
    assert (err.value.line, err.value.field) == (3, "corpus-id")


def test_malformed_records_name_file_line_and_field(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": 1.5}\n')
    with pytest.raises(InputError) as err:
        convert.labelled_texts(path)
    assert (err.value.path, err.value.line, err.value.field) == (str(path), 2, "label")
    path.write_text('{"sentence1": "a", "sentence2": "b", "score": "high"}\n')
    with pytest.raises(InputError, match=r"c.jsonl:1: field 'score'"):
        list(convert.sts_pairs(path, task="STSBenchmark"))


def test_cli_converts_classification_and_pairs(tmp_path):
    parser = argparse.ArgumentParser()
    main = convert.add_cli("convert", parser)
    out = tmp_path / "out.jsonl"
    args = parser.parse_args(
        [
            "classification",
            "--input",
            str(FIX / "classification.jsonl"),
            "--out",
            str(out),
            "--task",
            "Banking77Classification",
            "--num-negatives",
            "2",
        ]
    )
    assert main(args) == 0
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(records) == 7 and all(len(r["negative"]) == 2 for r in records)
    args = parser.parse_args(
        ["pairs", "--input", str(FIX / "train.jsonl"), "--out", str(out), "--task", "WikiQA"]
    )
    assert main(args) == 0
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(records) == 10 and records[1]["negative"].startswith("Polar bears")
    assert {r["task"] for r in records} == {"WikiQA"} and "instruction" not in records[0]

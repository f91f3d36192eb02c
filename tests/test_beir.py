"""The one qrels parser and the one title + text joiner (anna_embed.beir), and that every reader uses them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anna_embed import convert
from anna_embed.beir import (
    Judgement,
    document_text,
    iter_qrels,
    queries_file,
    read_documents,
    read_qrels,
)
from anna_embed.evaluate.readers import read_beir
from anna_embed.io import InputError
from anna_embed.shots import few_shot_pool

HEADER = "query-id\tcorpus-id\tscore\n"


def _qrels(tmp_path: Path, body: str, header: str = HEADER) -> Path:
    path = tmp_path / "qrels" / "train.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((header + body).encode("utf-8"))
    return path


def test_qrels_keep_every_judgement_in_file_order_with_its_line(tmp_path: Path) -> None:
    path = _qrels(tmp_path, "q1\td1\t1\nq2\td9\t2\nq1\td3\t0\nq3\td1\t-1\n")
    assert list(iter_qrels(path)) == [
        Judgement(2, "q1", "d1", 1),
        Judgement(3, "q2", "d9", 2),
        Judgement(4, "q1", "d3", 0),  # zero and negative scores are kept: callers decide what is relevant
        Judgement(5, "q3", "d1", -1),
    ]
    assert read_qrels(path) == {"q1": {"d1": 1, "d3": 0}, "q2": {"d9": 2}, "q3": {"d1": -1}}
    assert list(read_qrels(path)["q1"]) == ["d1", "d3"]


def test_qrels_read_windows_line_ends_and_a_header_with_spaces(tmp_path: Path) -> None:
    path = _qrels(tmp_path, "q1\td1\t1\r\n", header="query-id \tcorpus-id\tscore\r\n")
    assert read_qrels(path) == {"q1": {"d1": 1}}


@pytest.mark.parametrize(
    ("body", "header", "line", "field", "message"),
    [
        ("q1\td1\t1\n", "", 1, None, "expected the header"),  # a data line where the header belongs
        ("", "", 1, None, "empty file"),
        ("q1\td1\t1\n\nq2\td2\t1\n", HEADER, 3, None, "empty line"),
        ("q1\td1\t1\n\n", HEADER, 3, None, "empty line"),  # a blank line at the end too
        ("q1\td1\n", HEADER, 2, None, "expected 3 tab-separated fields"),
        ("q1\td1\t1\textra\n", HEADER, 2, None, "expected 3 tab-separated fields"),
        ("q1 d1 1\n", HEADER, 2, None, "expected 3 tab-separated fields"),  # spaces, not tabs
        ("\td1\t1\n", HEADER, 2, "query-id", "empty"),
        ("q1\td1 \t1\n", HEADER, 2, "corpus-id", "white space around the id"),
        ("q1\td1\t1.0\n", HEADER, 2, "score", "expected an integer, got '1.0'"),
        ("q1\td1\thigh\n", HEADER, 2, "score", "expected an integer"),
        ("q1\td1\t1\nq2\td1\t1\nq1\td1\t2\n", HEADER, 4, "corpus-id", "judged again (first on line 2)"),
    ],
)
def test_bad_qrels_name_file_line_and_field(
    tmp_path: Path, body: str, header: str, line: int, field: str | None, message: str
) -> None:
    path = _qrels(tmp_path, body, header=header)
    with pytest.raises(InputError, match=r"train\.tsv") as err:
        list(iter_qrels(path))
    assert (err.value.path, err.value.line, err.value.field) == (str(path), line, field)
    assert message in str(err.value)


def test_qrels_that_are_not_utf8_or_missing_are_located(tmp_path: Path) -> None:
    path = _qrels(tmp_path, "")
    path.write_bytes(HEADER.encode() + b"q1\td\xff\t1\n")
    with pytest.raises(InputError, match=r"train\.tsv:2: invalid UTF-8"):
        read_qrels(path)
    with pytest.raises(InputError, match=r"nope\.tsv: file not found"):
        read_qrels(tmp_path / "nope.tsv")


@pytest.mark.parametrize(
    ("title", "text", "joined"),
    [
        ("Coffee", "Caffeine is safe.", "Coffee Caffeine is safe."),
        ("Coffee ", "Caffeine is safe.", "Coffee  Caffeine is safe."),  # mteb keeps the inner spaces
        (" Coffee", " Caffeine ", "Coffee  Caffeine"),
        ("", "  Caffeine is safe. ", "Caffeine is safe."),
        (None, "Caffeine", "Caffeine"),
        ("Coffee", "", "Coffee"),
        ("   ", "Caffeine", "Caffeine"),
    ],
)
def test_documents_are_joined_exactly_as_mteb_joins_them(title: str | None, text: str, joined: str) -> None:
    assert document_text({"title": title, "text": text}) == joined
    mteb_loaders = pytest.importorskip("mteb._create_dataloaders")
    row = {"id": "d", "title": title or "", "text": text}
    assert mteb_loaders._corpus_to_dict(row)["text"] == joined  # the evaluator's own rule, byte for byte


def test_a_document_without_a_title_field_is_its_text() -> None:
    assert document_text({"_id": "d", "text": " Caffeine"}) == "Caffeine"


def test_read_documents_checks_every_record_and_keeps_the_asked_ids(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    rows = [
        {"_id": "d1", "title": "A ", "text": "b"},
        {"_id": 2, "text": "c"},
        {"_id": "d3", "title": None, "text": ""},
    ]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_documents(corpus) == {"d1": "A  b", "2": "c", "d3": ""}
    assert read_documents(corpus, ids={"2"}) == {"2": "c"}
    for bad, field in (
        ({"_id": "d4", "title": "t"}, "text"),
        ({"_id": "d4", "title": 5, "text": "x"}, "title"),
    ):
        corpus.write_text("".join(json.dumps(r) + "\n" for r in [*rows, bad]))
        with pytest.raises(InputError) as err:
            read_documents(corpus, ids={"d1"})  # every record is checked, not only the kept ones
        assert (err.value.line, err.value.field) == (4, field)


def test_a_split_reads_its_own_queries_file_where_there_is_one(tmp_path: Path) -> None:
    assert queries_file(tmp_path, "train") == tmp_path / "queries.jsonl"
    (tmp_path / "queries_train.jsonl").write_text("")
    assert queries_file(tmp_path, "train") == tmp_path / "queries_train.jsonl"
    (tmp_path / "queries_test.jsonl").write_text("")
    assert queries_file(tmp_path, "test") == tmp_path / "queries.jsonl"  # test is always queries.jsonl


def _beir(tmp_path: Path, qrels: str) -> Path:
    folder = tmp_path / "MyTask"
    folder.mkdir()
    docs = [{"_id": f"d{i}", "title": "T ", "text": f"text {i}"} for i in range(3)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    queries = [{"_id": f"q{i}", "text": f"query {i}"} for i in range(3)]
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    _qrels(folder, qrels)
    return folder


def test_the_evaluation_conversion_and_few_shot_readers_share_the_parser_and_the_joiner(
    tmp_path: Path,
) -> None:
    folder = _beir(tmp_path, "q0\td1\t1\nq0\td2\t0\nq1\td0\t2\n")
    data = read_beir(folder, "train")
    assert data["relevant_docs"] == {"q0": {"d1": 1, "d2": 0}, "q1": {"d0": 2}}
    assert data["corpus"]["title"] == ["T ", "T ", "T "]  # mteb joins these itself
    records = list(
        convert.beir_records(
            folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels" / "train.tsv", task="SciFact"
        )
    )
    assert [(r["query"], r["positive"]) for r in records] == [
        ("query 0", ["T  text 1"]),
        ("query 1", ["T  text 0"]),
    ]
    assert few_shot_pool("Retrieval", folder) == (
        [("query 0", "T  text 1"), ("query 1", "T  text 0")],
        "queries.jsonl + qrels/train.tsv",
    )


def test_every_reader_refuses_a_bad_qrels_line_the_same_way(tmp_path: Path) -> None:
    folder = _beir(tmp_path, "q0\td1\t1\nq1\td0\t0.5\n")
    qrels = folder / "qrels" / "train.tsv"
    readers = [
        lambda: read_beir(folder, "train"),
        lambda: list(
            convert.beir_records(folder / "corpus.jsonl", folder / "queries.jsonl", qrels, task="SciFact")
        ),
        lambda: few_shot_pool("Retrieval", folder),
    ]
    for read in readers:
        with pytest.raises(InputError) as err:
            read()
        assert (err.value.path, err.value.line, err.value.field) == (str(qrels), 3, "score")


def test_conversion_refuses_a_judgement_of_an_unknown_query_on_its_line(tmp_path: Path) -> None:
    folder = _beir(tmp_path, "q0\td1\t1\nq7\td0\t0\n")
    with pytest.raises(InputError, match=r"train\.tsv:3: field 'query-id': query 'q7' is not in"):
        list(
            convert.beir_records(
                folder / "corpus.jsonl",
                folder / "queries.jsonl",
                folder / "qrels" / "train.tsv",
                task="SciFact",
            )
        )

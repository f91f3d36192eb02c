"""Record validation, seeded shot/negative sampling, task-homogeneous batches, prompt collation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from anna_embed.io import InputError
from anna_embed.prompts import build_prompt, query_prefix
from anna_embed.train.batches import collate, plan_batches
from anna_embed.train.config import DataSource
from anna_embed.train.data import TrainingSet, load_records


def _write(path: Path, rows: list[dict | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _mined(n: int, task: str = "SciFact", n_neg: int = 3) -> list[dict]:
    return [
        {
            "query": f"claim {i}",
            "pos": [f"abstract {i}"],
            "neg": [f"wrong {i}.{j}" for j in range(n_neg)],
            "pos_scores": [5.0],
            "neg_scores": [float(-j) for j in range(n_neg)],
            "task": task,
        }
        for i in range(n)
    ]


def test_loads_both_record_shapes(tmp_path: Path) -> None:
    mined = load_records(DataSource(str(_write(tmp_path / "m.jsonl", _mined(2)))))
    assert mined[0].positives == ("abstract 0",) and mined[0].neg_scores == (0.0, -1.0, -2.0)
    assert mined[0].task.name == "SciFact"
    plain = load_records(
        DataSource(
            str(
                _write(
                    tmp_path / "p.jsonl",
                    [{"query": "q", "positive": "p", "negative": "n"}, {"query": "q2", "positive": "p2"}],
                )
            ),
            task="NLI",
        )
    )
    assert plain[0].negatives == ("n",) and plain[1].negatives == () and plain[0].task.type == "STS"
    assert math.isnan(plain[0].pos_scores[0]) and math.isnan(plain[0].neg_scores[0])  # unknown: NaN
    assert plain[1].neg_scores == ()


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"positive": "p", "task": "NLI"}, "query"),
        ({"query": "q", "task": "NLI"}, "pos"),
        ({"query": "q", "positive": "p"}, "task"),
        ({"query": "q", "pos": ["a", "b"], "pos_scores": [1.0], "task": "NLI"}, "pos_scores"),
        ({"query": "q", "pos": ["a"], "neg": ["n"], "neg_scores": ["x"], "task": "NLI"}, "neg_scores"),
        ({"query": "q", "positive": "p", "task": "NoSuchTask"}, "task"),
        ({"query": "q", "positive": "p", "task": "X", "type": "Bogus", "instruction": "i"}, "type"),
        ({"query": "q", "positive": "p", "task": "SciFact", "type": "STS"}, "type"),
    ],
)
def test_bad_records_name_file_line_field(tmp_path: Path, row: dict, field: str) -> None:
    path = _write(tmp_path / "bad.jsonl", [{"query": "ok", "positive": "ok", "task": "NLI"}, row])
    with pytest.raises(InputError) as err:
        load_records(DataSource(str(path)))
    assert err.value.line == 2 and err.value.field == field and str(path) in str(err.value)


def test_unknown_task_with_type_and_instruction_is_accepted(tmp_path: Path) -> None:
    row = {"query": "q", "positive": "p", "task": "MyTask", "type": "Retrieval", "instruction": "Find it."}
    rec = load_records(DataSource(str(_write(tmp_path / "u.jsonl", [row]))))[0]
    assert rec.task.instruction == "Find it." and not rec.task.symmetric


def _set_with_duplicates() -> TrainingSet:
    """Records where some share a query or a positive (as climate-fever / trecqa do)."""
    from anna_embed.train.data import parse_record

    rows = _mined(12)
    rows[1]["query"] = rows[0]["query"]  # same query, different positive
    rows[2]["pos"] = rows[0]["pos"]  # same positive, different query
    return TrainingSet([parse_record(r, path=Path("mem"), line=i + 1) for i, r in enumerate(rows)])


def test_shots_never_include_own_pair_and_are_reproducible() -> None:
    ts = _set_with_duplicates()
    counts = set()
    for epoch in range(30):
        for i in range(len(ts)):
            shots = ts.sample_shots(i, seed=7, epoch=epoch, max_shots=3)
            assert shots == ts.sample_shots(i, seed=7, epoch=epoch, max_shots=3)
            assert i not in shots and len(set(shots)) == len(shots) and len(shots) <= 3
            for s in shots:
                assert ts.records[s].query != ts.records[i].query
                assert not set(ts.records[s].positives) & set(ts.records[i].positives)
            counts.add(len(shots))
    assert counts == {0, 1, 2, 3}  # k ~ U{0..K} reaches both ends
    draws = [tuple(ts.sample_shots(i, seed=s, epoch=0, max_shots=3)) for s in range(5) for i in range(12)]
    assert len(set(draws)) > 10  # depends on the seed


def test_groups_fill_with_in_task_random_negatives_whose_scores_are_nan() -> None:
    ts = _set_with_duplicates()
    docs, teacher = ts.sample_group(4, seed=0, epoch=0, group_size=4)
    assert docs[0] == "abstract 4" and set(docs[1:]) == {"wrong 4.0", "wrong 4.1", "wrong 4.2"}
    assert teacher[0] == 5.0 and sorted(teacher[1:]) == [-2.0, -1.0, 0.0]
    for j, d in enumerate(docs[1:], start=1):
        assert teacher[j] == -float(d.rsplit(".", 1)[1])  # scores follow their texts
    docs6, teacher6 = ts.sample_group(4, seed=0, epoch=0, group_size=6)
    assert len(docs6) == 6 and len(set(docs6)) == 6
    assert teacher6[:4] == teacher and all(math.isnan(t) for t in teacher6[4:])  # random: unknown
    assert all(d.startswith("abstract") for d in docs6[4:]) and "abstract 4" not in docs6[1:]


def test_plan_batches_are_task_homogeneous_and_seeded() -> None:
    tasks = ["A"] * 10 + ["B"] * 7 + ["C"] * 2
    batches = plan_batches(tasks, batch_size=3, seed=1, epoch=0)
    assert len(batches) == 3 + 2  # C has fewer records than a batch
    for b in batches:
        assert len(b) == 3 and len({tasks[i] for i in b}) == 1
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat))
    assert batches == plan_batches(tasks, batch_size=3, seed=1, epoch=0)
    assert batches != plan_batches(tasks, batch_size=3, seed=1, epoch=1)


@pytest.fixture
def prompter(tiny_tokenizer):
    """The Embedder's prompt side (tokenizer + budgets) without a model."""
    from anna_embed.model.config import EmbedderConfig
    from anna_embed.model.embedder import Embedder

    return Embedder(None, tiny_tokenizer, EmbedderConfig())


def test_collate_builds_prompts_through_prompts_module(prompter) -> None:
    ts = _set_with_duplicates()
    batch = collate(ts, [3, 4], seed=0, epoch=2, group_size=2, max_shots=2, prompter=prompter)
    assert batch.in_batch and batch.task == "SciFact" and len(batch.documents) == 4
    for row, i in enumerate([3, 4]):
        shots = [
            (ts.records[s].query, ts.records[s].response)
            for s in ts.sample_shots(i, seed=0, epoch=2, max_shots=2)
        ]
        expected = query_prefix("SciFact", examples=shots) + ts.records[i].query
        assert batch.queries[row] == expected
        assert batch.documents[2 * row] == build_prompt(ts.records[i].positives[0], "document", "SciFact")
    with pytest.raises(ValueError, match="one task"):
        collate(
            TrainingSet([*ts.records[:2], *_set_other_task().records]),
            [0, 2],
            seed=0,
            epoch=0,
            group_size=1,
            max_shots=0,
            prompter=prompter,
        )
    with pytest.raises(ValueError, match="prompter"):
        collate(ts, [3, 4], seed=0, epoch=2, group_size=2, max_shots=2)


def _set_other_task() -> TrainingSet:
    from anna_embed.train.data import parse_record

    row = {"query": "text", "positive": "label", "label": "label", "task": "Banking77Classification"}
    return TrainingSet([parse_record(row, path=Path("mem"), line=1)])


def test_classification_batches_use_group_only_and_answer_with_label(prompter) -> None:
    from anna_embed.train.data import parse_record

    rows = [
        {
            "query": f"msg {i}",
            "pos": [f"intent {i % 3}"],
            "neg": [f"intent {(i + 1) % 3}"],
            "label": f"intent {i % 3}",
            "task": "Banking77Classification",
        }
        for i in range(6)
    ]
    ts = TrainingSet([parse_record(r, path=Path("mem"), line=i + 1) for i, r in enumerate(rows)])
    batch = collate(ts, [0, 1, 2], seed=0, epoch=0, group_size=2, max_shots=0, prompter=prompter)
    assert not batch.in_batch
    assert collate(
        ts, [0, 1], seed=0, epoch=0, group_size=2, max_shots=0, prompter=prompter, in_batch="always"
    ).in_batch
    assert ts.records[4].response == "intent 1"
    # symmetric task: documents carry the instruction too
    assert batch.documents[0].startswith(query_prefix("Banking77Classification"))


def test_own_positive_mask_marks_every_copy_but_the_target() -> None:
    from anna_embed.train.batches import own_positive_mask

    positives = [("p0", "p0b"), ("p1",)]
    docs = ["p0", "x", "p1", "p1", "p0b", "y"]  # G = 3: query 0 owns 0..2, query 1 owns 3..5
    assert own_positive_mask(positives, docs, group_size=3) == [
        [False, False, False, False, True, False],
        [False, False, True, False, False, False],
    ]
    # under data parallelism the rows are this process's queries and the columns everyone's documents
    assert own_positive_mask([("p1",)], docs, group_size=3, query_offset=1) == [
        [False, False, True, False, False, False]
    ]


def test_collated_batch_carries_raw_documents_and_positives(prompter) -> None:
    ts = _set_with_duplicates()
    batch = collate(ts, [0, 1], seed=0, epoch=0, group_size=2, max_shots=0, prompter=prompter)
    assert len(batch.doc_texts) == len(batch.documents) == 4 and batch.group_size == 2
    assert batch.teacher_scores.shape == (2, 2) and batch.teacher_scores[0, 0] == 5.0
    for prompt, raw in zip(batch.documents, batch.doc_texts, strict=True):
        assert prompt.endswith(raw)
    assert batch.positives == [ts.records[0].positives, ts.records[1].positives]


# ----------------------------------------------------------------------------- teacher vectors (issue 11)


def _teacher_file(path: Path, rows: list[dict], *, name: str = "bi:t", dim: int = 4) -> tuple[Path, dict]:
    """A ``NAME.teacher.npz`` for mined ``rows`` with a distinct random vector per text."""
    import numpy as np

    from anna_embed.records import TeacherEmbeddings

    rng = np.random.default_rng(0)
    texts = list(dict.fromkeys(t for r in rows for t in r["pos"] + r["neg"]))
    vecs = {("q", i): rng.normal(size=dim).astype(np.float32) for i in range(len(rows))}
    vecs |= {("d", t): rng.normal(size=dim).astype(np.float32) for t in texts}
    TeacherEmbeddings(
        teacher=name,
        score_kind="cosine",
        query_texts=tuple(r["query"] for r in rows),
        query_emb=np.stack([vecs[("q", i)] for i in range(len(rows))]),
        document_texts=tuple(texts),
        document_tasks=tuple(rows[0]["task"] for _ in texts),
        document_emb=np.stack([vecs[("d", t)] for t in texts]),
    ).save(path)
    return path, vecs


def test_collate_carries_the_teachers_vectors_of_the_batch(tmp_path: Path, prompter) -> None:
    import numpy as np

    rows = _mined(6)
    data = _write(tmp_path / "m.jsonl", rows)
    teacher, vecs = _teacher_file(tmp_path / "m.teacher.npz", rows)
    ts = TrainingSet.from_sources([DataSource(str(data), teacher_embeddings=str(teacher))])
    assert ts.teacher == "bi:t"
    batch = collate(ts, [4, 1], seed=0, epoch=0, group_size=3, max_shots=0, prompter=prompter)
    assert batch.teacher_q_emb.shape == (2, 4) and batch.teacher_d_emb.shape == (6, 4)
    np.testing.assert_array_equal(batch.teacher_q_emb, np.stack([vecs[("q", 4)], vecs[("q", 1)]]))
    np.testing.assert_array_equal(batch.teacher_d_emb, np.stack([vecs[("d", t)] for t in batch.doc_texts]))
    # a document the teacher never embedded: no vectors for the batch (it keeps the group KL)
    edited = [{**r, "neg": [f"edited {i}", *r["neg"][1:]]} for i, r in enumerate(rows)]
    ts_edited = TrainingSet.from_sources(
        [DataSource(str(_write(tmp_path / "e.jsonl", edited)), teacher_embeddings=str(teacher))]
    )
    unseen = collate(ts_edited, [0, 1], seed=0, epoch=0, group_size=4, max_shots=0, prompter=prompter)
    assert any(t.startswith("edited") for t in unseen.doc_texts)
    assert unseen.teacher_q_emb is None and unseen.teacher_d_emb is None
    # without a teacher file nothing changes
    plain = TrainingSet.from_sources([DataSource(str(data))])
    assert plain.teacher is None
    assert (
        collate(plain, [4, 1], seed=0, epoch=0, group_size=3, max_shots=0, prompter=prompter).teacher_q_emb
        is None
    )


def test_teacher_file_of_another_mining_run_is_refused(tmp_path: Path) -> None:
    rows = _mined(3)
    teacher, _ = _teacher_file(tmp_path / "m.teacher.npz", rows)
    other = _write(tmp_path / "other.jsonl", _mined(3)[::-1])
    with pytest.raises(InputError, match="query row 0 does not match"):
        TrainingSet.from_sources([DataSource(str(other), teacher_embeddings=str(teacher))])
    data = _write(tmp_path / "m.jsonl", rows)
    second, _ = _teacher_file(tmp_path / "m2.teacher.npz", rows, name="bi:other")
    with pytest.raises(InputError, match="differs from another source"):
        TrainingSet.from_sources(
            [
                DataSource(str(data), teacher_embeddings=str(teacher)),
                DataSource(str(data), teacher_embeddings=str(second)),
            ]
        )

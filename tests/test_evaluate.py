"""Aggregation (Mean(Task), Mean(TaskType), Borda) on hand-made score tables, and result reading."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from anna_embed.evaluate.driver import resolve_tasks
from anna_embed.evaluate.report import leaderboard, main_score
from anna_embed.scores import average_ranks, borda, mean_per_type, mean_task, mean_type, min_ranks

REFERENCE = Path("/work/shared/reference/mteb_eng_v2_all_models.json")


def test_average_ranks_ties_share_the_mean_position():
    assert average_ranks([0.9, 0.5, 0.9, 0.1]) == [1.5, 3.0, 1.5, 4.0]
    assert average_ranks([1.0, 1.0, 1.0]) == [2.0, 2.0, 2.0]
    assert average_ranks([3.0, 2.0, 1.0]) == [1.0, 2.0, 3.0]


def test_min_ranks_ties_share_the_best_position():
    assert min_ranks([5.0, 7.0, 7.0, 1.0]) == [3, 1, 1, 4]
    assert min_ranks([2.0, 2.0]) == [1, 1]


def test_borda_by_hand():
    # 3 models, 2 tasks. T1: A 80, B 70, C 70 -> ranks A1, B2.5, C2.5 -> points 2, 0.5, 0.5
    # T2: A 10, B 30, C 20 -> ranks A3, B1, C2 -> points 0, 2, 1. Sums A2, B2.5, C1.5 -> ranks B1, A2, C3.
    table = {"A": {"T1": 80.0, "T2": 10.0}, "B": {"T1": 70.0, "T2": 30.0}, "C": {"T1": 70.0, "T2": 20.0}}
    out = borda(table)
    assert out == {"A": (2.0, 2), "B": (2.5, 1), "C": (1.5, 3)}


def test_borda_tied_sums_share_the_min_rank_and_missing_tasks_score_zero():
    # A and B swap places on two tasks (tied sums); C misses T2 (0 points there, n_models still 3).
    table = {"A": {"T1": 3.0, "T2": 1.0}, "B": {"T1": 1.0, "T2": 3.0}, "C": {"T1": 2.0, "T2": None}}
    out = borda(table)
    # T1: A 2, C 1, B 0.  T2 (A, B only, n=3): B rank 1 -> 2, A rank 2 -> 1.  Sums: A 3, B 2, C 1.
    assert out == {"A": (3.0, 1), "B": (2.0, 2), "C": (1.0, 3)}
    table["C"]["T2"] = 2.0  # now T2: B 2, C 1, A 0 -> sums A 2, B 2, C 2: all tied at rank 1
    assert {m: r for m, (_, r) in borda(table).items()} == {"A": 1, "B": 1, "C": 1}


def test_means_follow_skipna_false():
    scores = {"S1": 80.0, "S2": 60.0, "C1": 50.0}
    types = {"S1": "STS", "S2": "STS", "C1": "Classification"}
    assert mean_task(scores) == pytest.approx(190 / 3)
    per_type = mean_per_type(scores, types)
    assert per_type == {"STS": 70.0, "Classification": 50.0}
    assert mean_type(per_type) == 60.0
    assert mean_task({"S1": 80.0, "S2": None}) is None
    assert mean_per_type({"S1": 80.0, "S2": float("nan"), "C1": 50.0}, types)["STS"] is None


@pytest.mark.skipif(not REFERENCE.is_file(), reason="shared reference file not available")
def test_borda_and_means_reproduce_the_published_leaderboard():
    ref = json.loads(REFERENCE.read_text())
    table = {m: v["per_task"] for m, v in ref.items()}
    out = borda(table)
    for model, row in ref.items():
        assert out[model][0] == pytest.approx(row["borda_points"]), model
        pts = row["borda_points"]
        tied = sorted(r["borda_rank_183pool"] for r in ref.values() if r["borda_points"] == pts)
        # the reference numbers tied models one after the other; the rule ('min') gives them the block's best
        assert out[model][1] == tied[0], model
    assert (
        sum(
            len([r for r in ref.values() if r["borda_points"] == v["borda_points"]]) > 1 for v in ref.values()
        )
        >= 2
    )  # the reference does contain ties
    tasks_by_type = json.loads((REFERENCE.parent / "mteb_eng_v2_tasks.json").read_text())["tasks_by_type"]
    types = {t: ty for ty, names in tasks_by_type.items() for t in names}
    complete = [m for m, v in ref.items() if all(t in v["per_task"] for t in types)]
    assert complete
    for m in complete[:20]:
        per_type = mean_per_type(ref[m]["per_task"], types)
        assert mean_task(ref[m]["per_task"], list(types)) == pytest.approx(ref[m]["mean_task"])
        assert mean_type(per_type) == pytest.approx(ref[m]["mean_type"])


def _result(task: str, subsets: dict[str, float]) -> dict:
    entries = [{"hf_subset": s, "main_score": v} for s, v in subsets.items()]
    return {"task_name": task, "scores": {"test": entries}}


def test_main_score_picks_the_benchmark_subset():
    assert main_score(_result("STS17", {"en-en": 0.8759, "ko-ko": 0.5})) == pytest.approx(87.59)
    assert main_score(_result("MyTask", {"a": 0.5, "b": 0.7})) == pytest.approx(60.0)
    assert main_score({"task_name": "X", "scores": {}}) is None


def test_leaderboard_ranks_result_folders(tmp_path):
    for model, scores in {
        "m1": {"STS12": 0.7, "SciFact": 0.6},
        "m2": {"STS12": 0.8, "SciFact": 0.5},
        "m3": {"STS12": 0.6},
    }.items():
        folder = tmp_path / model
        folder.mkdir()
        (folder / "run.json").write_text(json.dumps({"model": model}))
        for task, v in scores.items():
            (folder / f"{task}.json").write_text(json.dumps(_result(task, {"default": v})))
    rows = leaderboard([tmp_path / "m1", tmp_path / "m2", tmp_path / "m3"])
    by_model = {r["model"]: r for r in rows}
    # STS12: m2 2, m1 1, m3 0; SciFact: m1 2, m2 1 -> m1 3, m2 3 (tie, rank 1), m3 0
    assert by_model["m1"]["borda_points"] == 3.0 and by_model["m1"]["rank"] == 1
    assert by_model["m2"]["rank"] == 1 and by_model["m3"]["rank"] == 3
    assert by_model["m3"]["mean_task"] is None
    assert by_model["m1"]["mean_task"] == pytest.approx(65.0)
    assert math.isclose(by_model["m1"]["per_type"]["Retrieval"], 60.0)
    named = leaderboard([tmp_path / "m1", tmp_path / "m2"], names=["full", "plain"])
    assert [(r["model"], r["borda_points"]) for r in named] == [("full", 1.0), ("plain", 1.0)]
    assert named[0]["per_task"] == {"SciFact": pytest.approx(60.0), "STS12": pytest.approx(70.0)}
    with pytest.raises(ValueError, match="1 names for 2"):
        leaderboard([tmp_path / "m1", tmp_path / "m2"], names=["full"])


def test_task_table_marks_trained_tasks_and_missing_scores():
    from anna_embed.scores import task_table

    scores = {
        "full": {"STS12": 50.0, "Banking77Classification": 12.5},
        "teacher": {"STS12": 70.0, "Banking77Classification": None},
    }
    lines = task_table(
        scores, ["STS12", "Banking77Classification"], trained_on={"full": {"Banking77Classification"}}
    )
    assert lines.splitlines() == [
        "| model | STS12 | Banking77Classification |",
        "|---|---|---|",
        "| full | 50.00 | 12.50* |",
        "| teacher | 70.00 | — |",
    ]
    with_mean = task_table(scores, ["STS12", "Banking77Classification"], mean=True).splitlines()
    assert with_mean[0].endswith("| Mean(Task) |") and with_mean[1] == "|---|---|---|---|"
    assert with_mean[2:] == ["| full | 50.00 | 12.50 | 31.25 |", "| teacher | 70.00 | — | — |"]


def test_resolve_tasks_benchmark_has_41_tasks():
    names = resolve_tasks(None, "MTEB(eng, v2)")
    assert len(names) == 41 and "STS17" in names and "SummEvalSummarization.v2" in names
    assert resolve_tasks("STS12, SciFact,STS12", None) == ["STS12", "SciFact"]
    with pytest.raises(ValueError):
        resolve_tasks("", None)

"""Each task type end to end through mteb's evaluators on tiny fixture folders with a tiny random model.

Also: the structure handed to mteb per type, the cache, few-shot selection, ``--limit`` and the errors for
missing files/fields and type mismatches.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from anna_embed.evaluate.tasks import TaskFolderError, detect_type, load_task
from anna_embed.io import InputError

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
ALL_TASKS = {
    "STSBenchmark": "STS",
    "TwitterSemEval2015": "PairClassification",
    "Banking77Classification": "Classification",
    "TwentyNewsgroupsClustering": "Clustering",
    "MyRetrieval": "Retrieval",
    "AskUbuntuDupQuestions": "Reranking",
    "SummEval": "Summarization",
}


@pytest.fixture
def backend(make_embedder):
    from anna_embed.model.mteb import EmbedderBackend

    return EmbedderBackend(make_embedder("llama"), model_id="tiny-llama-test")


def test_every_task_type_runs_end_to_end(tmp_path, backend):
    from anna_embed.evaluate import EvalConfig, run_eval

    out = tmp_path / "run"
    run = run_eval(
        EvalConfig(
            model="tiny-llama", tasks=tuple(ALL_TASKS), data_dir=FIXTURES, output=out, shots=2, batch_size=8
        ),
        backend=backend,
        show_progress=False,
    )
    assert run["types"] == ALL_TASKS
    for task in ALL_TASKS:
        data = json.loads((out / f"{task}.json").read_text())
        assert data["task_name"] == task
        score = run["scores"][task]
        assert score is not None and np.isfinite(score), task
        assert -100.0 <= score <= 100.0
    assert {"summary.md", "summary.csv", "summary.png", "run.json", "model_meta.json"} <= {
        p.name for p in out.iterdir()
    }
    summary = (out / "summary.md").read_text()
    assert "Mean(TaskType)" in summary and "MyRetrieval" in summary
    assert run["mean_task"] == pytest.approx(np.mean(list(run["scores"].values())))
    # few-shot sources: train/dev splits where they exist, documented zero-shot fallback elsewhere
    assert run["shot_sources"]["STSBenchmark"] == "train.jsonl"
    assert run["shot_sources"]["TwitterSemEval2015"] == "dev.jsonl"
    assert run["shot_sources"]["SummEval"].startswith("none")


def test_cache_makes_a_rerun_encode_nothing(tmp_path, backend):
    from anna_embed.evaluate import EvalConfig, run_eval

    cache = tmp_path / "emb.sqlite"
    first = run_eval(
        EvalConfig(
            model="tiny", tasks=("STSBenchmark",), data_dir=FIXTURES, output=tmp_path / "a", cache_dir=cache
        ),
        backend=backend,
        show_progress=False,
    )
    calls = []
    original = backend.encode
    backend.encode = lambda texts, **kw: calls.append(len(texts)) or original(texts, **kw)
    second = run_eval(
        EvalConfig(
            model="tiny", tasks=("STSBenchmark",), data_dir=FIXTURES, output=tmp_path / "b", cache_dir=cache
        ),
        backend=backend,
        show_progress=False,
    )
    assert calls == []
    assert second["scores"] == first["scores"]


def test_prompt_too_long_for_max_length_fails_before_any_encoding(tmp_path, backend):
    from dataclasses import replace

    from anna_embed.evaluate import EvalConfig, run_eval
    from anna_embed.tasks import task_or_custom

    # a budget that fits the STS prompt but not the (longer) Banking77 one, which comes second
    n = {
        t: backend.emb.check_prefix(backend.query_prefix(task_or_custom(t, ty, None)))
        for t, ty in [("STSBenchmark", "STS"), ("Banking77Classification", "Classification")]
    }
    assert n["STSBenchmark"] < n["Banking77Classification"] - 1
    backend.emb.config = replace(backend.emb.config, max_length=n["Banking77Classification"])
    calls = []
    backend.encode = lambda texts, **kw: calls.append(len(texts))
    with pytest.raises(ValueError, match=r"^Banking77Classification: The prompt prefix takes \d+ tokens"):
        run_eval(
            EvalConfig(
                model="tiny",
                tasks=("STSBenchmark", "Banking77Classification"),
                data_dir=FIXTURES,
                output=tmp_path / "run",
                shots=0,
            ),
            backend=backend,
            show_progress=False,
        )
    assert calls == [] and not list((tmp_path / "run").glob("*.json"))


def test_cached_vectors_equal_fresh_ones(tmp_path, backend):
    from anna_embed.evaluate.adapter import EmbeddingCache
    from anna_embed.model.mteb import MtebEncoder

    texts = ["A man plays guitar.", "Cats sleep.", "A man plays guitar."]
    enc = MtebEncoder(backend, cache=EmbeddingCache(tmp_path / "c.sqlite"), show_progress=False)
    a = enc.encode_texts(texts, "Instruct: x\nQuery:\n")
    b = enc.encode_texts(texts, "Instruct: x\nQuery:\n")
    fresh = backend.encode(texts, prefix="Instruct: x\nQuery:\n", batch_size=8, show_progress=False)
    np.testing.assert_allclose(a, fresh, atol=1e-6)
    np.testing.assert_array_equal(a, b)
    assert enc.cache.misses == 2 and enc.cache.hits == 4  # the duplicate text was encoded once


def test_prefix_depends_on_role_and_task(backend):
    from anna_embed.model.mteb import MtebEncoder

    enc = MtebEncoder(backend, examples={"SciFact": [("q", "d")]}, show_progress=False)
    q = enc.prefix("SciFact", "Retrieval", "query")
    assert "scientific claim" in q and "Response:\nd" in q
    assert enc.prefix("SciFact", "Retrieval", "document") == ""
    sts = enc.prefix("STS12", "STS", None)
    assert sts.startswith("Instruct: Find sentences with the same meaning.")


def test_loaded_structures_match_what_mteb_expects():
    sts = load_task("STSBenchmark", FIXTURES).task
    assert sts.data_loaded and sts.dataset["test"].column_names == ["sentence1", "sentence2", "score"]
    pc = load_task("TwitterSemEval2015", FIXTURES).task
    assert set(pc.dataset["test"].column_names) == {"sentence1", "sentence2", "labels"}
    retrieval = load_task("MyRetrieval", FIXTURES)
    split = retrieval.task.dataset["default"]["test"]
    assert retrieval.type == "Retrieval"
    assert split["queries"]["id"] == ["q1", "q2", "q3", "q4", "q5"]  # q9 has no qrel: dropped, as mteb does
    assert split["relevant_docs"]["q4"] == {"d7": 1} and split["top_ranked"] is None
    rerank = load_task("AskUbuntuDupQuestions", FIXTURES).task.dataset["default"]["test"]
    assert len(rerank["queries"]) == 3  # the line without negatives is skipped
    positives = ["apositive_test_query1_00000", "apositive_test_query1_00001"]
    assert rerank["top_ranked"]["test_query1"][:2] == positives
    summ = load_task("SummEval", FIXTURES).task
    assert summ.metadata.name == "SummEval" and len(summ.dataset["test"]) == 4


def test_split_scores_the_validation_file_not_the_test_file(tmp_path, backend):
    from anna_embed.evaluate import EvalConfig, run_eval

    pc_dev = [json.loads(x) for x in (FIXTURES / "TwitterSemEval2015" / "dev.jsonl").read_text().splitlines()]
    for split in ("dev", "validation"):  # no validation.jsonl: validation reads dev.jsonl
        pc = load_task("TwitterSemEval2015", FIXTURES, split=split).task.dataset["test"]
        assert pc["sentence1"] == [r["sentence1"] for r in pc_dev]
    folder = tmp_path / "STSBenchmark"
    shutil.copytree(FIXTURES / "STSBenchmark", folder)
    rows = [json.loads(x) for x in (folder / "test.jsonl").read_text().splitlines()]
    validation = [{**r, "sentence1": r["sentence1"] + " (validation)"} for r in rows[:5]]
    (folder / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in validation))
    sts = load_task("STSBenchmark", tmp_path, split="validation").task.dataset["test"]
    assert sts["sentence1"] == [r["sentence1"] for r in validation]
    run = run_eval(
        EvalConfig(
            model="tiny",
            tasks=("STSBenchmark",),
            data_dir=tmp_path,
            output=tmp_path / "run",
            split="validation",
        ),
        backend=backend,
    )
    assert run["split"] == "validation" and run["scores"]["STSBenchmark"] is not None
    with pytest.raises(TaskFolderError, match="only STS and PairClassification"):
        load_task("Banking77Classification", FIXTURES, split="validation")
    with pytest.raises(TaskFolderError, match=r"dev\.jsonl"):
        load_task("STSBenchmark", FIXTURES, split="dev")


def test_registry_names_map_to_folders_and_subsets(tmp_path):
    folder = tmp_path / "STS17"
    folder.mkdir()
    rows = [
        {"lang": lang, "sentence1": f"a {i}", "sentence2": f"b {i}", "score": float(i % 5)}
        for lang in ("en-en", "ko-ko")
        for i in range(6)
    ]
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = load_task("STS17", tmp_path).task
    assert task.hf_subsets == ["en-en"] and len(task.dataset["en-en"]["test"]) == 6
    # same folder as v1, flattened by mteb's own dataset_transform
    v2 = load_task("TwentyNewsgroupsClustering.v2", FIXTURES)
    assert v2.folder.name == "TwentyNewsgroupsClustering"
    assert len(v2.task.dataset["test"]) == 24


def test_limit_truncates_and_is_marked(tmp_path, backend):
    from anna_embed.evaluate import EvalConfig, run_eval

    lt = load_task("STSBenchmark", FIXTURES, limit=5)
    assert len(lt.task.dataset["test"]) == 5
    run = run_eval(
        EvalConfig(model="tiny", tasks=("STSBenchmark",), data_dir=FIXTURES, output=tmp_path, limit=5),
        backend=backend,
        show_progress=False,
    )
    assert run["comparable"] is False
    assert "NOT comparable" in (tmp_path / "summary.md").read_text()


def test_detect_type_of_every_fixture():
    for task, ttype in ALL_TASKS.items():
        assert detect_type(FIXTURES / task) == ttype


def _copy(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    return dst


def test_missing_field_names_file_and_line(tmp_path):
    folder = _copy("STSBenchmark", tmp_path)
    lines = (folder / "test.jsonl").read_text().splitlines()
    bad = json.loads(lines[2])
    del bad["score"]
    lines[2] = json.dumps(bad)
    (folder / "test.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"test\.jsonl:3: field 'score': missing"):
        load_task("STSBenchmark", tmp_path)


def test_wrong_value_type_names_the_field(tmp_path):
    folder = _copy("TwitterSemEval2015", tmp_path)
    with (folder / "test.jsonl").open("a") as fh:
        fh.write(json.dumps({"sentence1": "a", "sentence2": "b", "label": 3}) + "\n")
    with pytest.raises(InputError, match=r"test\.jsonl:13: field 'label': expected 0 or 1"):
        load_task("TwitterSemEval2015", tmp_path)


def test_missing_file_is_named(tmp_path):
    folder = _copy("Banking77Classification", tmp_path)
    (folder / "train.jsonl").unlink()
    with pytest.raises(TaskFolderError, match=r"train\.jsonl: file not found"):
        load_task("Banking77Classification", tmp_path)


def test_folder_of_the_wrong_type_is_refused(tmp_path):
    shutil.copytree(FIXTURES / "MyRetrieval", tmp_path / "STS12")
    with pytest.raises(TaskFolderError, match=r"holds Retrieval data .* the task is STS"):
        load_task("STS12", tmp_path)


def test_unknown_task_without_folder(tmp_path):
    with pytest.raises(TaskFolderError, match="not an mteb task"):
        load_task("NoSuchTask", tmp_path)


MTEB_DATA = Path(os.environ.get("ANNA_EMBED_MTEB_DATA", "/work/shared/data/mteb"))


@pytest.mark.integration
@pytest.mark.skipif(not (MTEB_DATA / "STS17").is_dir(), reason="local MTEB data not available")
def test_minilm_reproduces_the_published_sts17_score(tmp_path):
    """all-MiniLM-L6-v2 on STS17 en-en (250 pairs): published 87.59 (mteb_published_scores.json)."""
    from anna_embed.evaluate import EvalConfig, run_eval
    from anna_embed.model.weights import ModelNotAvailableError

    try:
        cfg = EvalConfig(model="all-minilm-l6-v2", output=tmp_path, tasks=("STS17",), data_dir=MTEB_DATA)
        run = run_eval(cfg, show_progress=False)
    except ModelNotAvailableError as err:
        pytest.skip(str(err))
    assert abs(run["scores"]["STS17"] - 87.59) <= 0.3

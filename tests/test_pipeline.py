"""The pipeline: stage markers, data preparation, and a whole tiny run (tiny random models, demo data)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from anna_embed import config as C
from anna_embed.io import read_jsonl
from anna_embed.pipeline import DEMO_CONFIG, PipelineConfig, SourceSpec, demo_path, run
from anna_embed.pipeline.data import mines, prepare_sources
from anna_embed.stage import Stage, Timer


def test_demo_config_round_trips_through_the_config_mechanism():
    rebuilt = C.build(PipelineConfig, C.to_dict(DEMO_CONFIG))
    assert rebuilt == DEMO_CONFIG
    over = C.build(PipelineConfig, C.to_dict(DEMO_CONFIG), ["train.optim.max_steps=3", "eval.limit=5"])
    assert over.train.optim.max_steps == 3 and over.eval.limit == 5


def test_demo_paths_point_into_the_package():
    for src in DEMO_CONFIG.sources:
        assert demo_path(src.path).is_file()
    assert (demo_path(DEMO_CONFIG.eval.data_dir) / "QNLIRetrieval" / "qrels" / "test.tsv").is_file()
    assert demo_path("/abs/file.jsonl").as_posix() == "/abs/file.jsonl"


def test_stage_marker_skips_only_on_matching_fingerprint(tmp_path):
    stage = Stage(tmp_path, "x", "abc", force=False)
    assert not stage.done()
    stage.finish({"n": 1})
    assert stage.done() and stage.info()["n"] == 1
    assert not Stage(tmp_path, "x", "other", force=False).done()
    assert not Stage(tmp_path, "x", "abc", force=True).done()


def test_prepare_turns_each_source_kind_into_records(tmp_path):
    cfg = replace(DEMO_CONFIG, sources=tuple(replace(s, max_records=20) for s in DEMO_CONFIG.sources))
    out = prepare_sources(cfg, Stage(tmp_path, "data", "f", force=False))
    # QNLI pairs are mined; SNLI keeps its curated contradiction; classification is never mined
    assert [o["mine"] for o in out] == [True, False, False]
    assert out[1]["curated_negatives"]["negatives"] > 0
    for info, src in zip(out, cfg.sources, strict=True):
        rows = read_jsonl(info["path"], required=("query", "positive", "task"))
        assert 0 < len(rows) <= 20 and all(r["task"] == src.task for r in rows)
    bank = read_jsonl(out[2]["path"])
    assert all(r["type"] == "Classification" and r["negative"] for r in bank)
    with pytest.raises(ValueError, match="give its task"):
        prepare_sources(
            replace(cfg, sources=(SourceSpec("demo:train/qnli.jsonl"),)),
            Stage(tmp_path, "d2", "f", force=False),
        )


def _tiny_config(make_embedder, tmp_path, *extra: str) -> PipelineConfig:
    """The demo config on a tiny random decoder (student, retriever, reranker and teacher alike)."""
    base = make_embedder("llama").save(tmp_path / "tiny-base")
    cfg = C.build(
        PipelineConfig,
        C.to_dict(DEMO_CONFIG),
        [
            f"output_dir={tmp_path / 'run'}",
            f"train.model.name={base}",
            "train.model.dtype=float32",
            "train.model.max_length=64",
            "train.optim.max_steps=2",
            "train.optim.batch_size=4",
            f"mine.retriever=bi:{base}",
            f"mine.reranker=bi:{base}",
            "mine.top_k=5",
            "mine.num_negatives=1",
            "mine.relative_margin=none",  # a random teacher puts every candidate near the positive
            "eval.dtype=float32",
            *extra,
        ],
    )
    return replace(cfg, sources=tuple(replace(s, max_records=12) for s in cfg.sources))


def test_tiny_pipeline_end_to_end_and_rerun_skips(make_embedder, tmp_path):
    base = tmp_path / "tiny-base"
    cfg = _tiny_config(
        make_embedder, tmp_path, "train.run.save_every=1", f"eval.teacher={base}", "eval.limit=8"
    )
    report = run(cfg)
    assert [r["model"] for r in report["rows"]] == ["base", "student", "teacher"]
    assert all(r["QNLIRetrieval"] is not None for r in report["rows"])
    root = tmp_path / "run"
    assert (root / "report" / "README.md").is_file() and (root / "report" / "scores.png").is_file()
    assert (root / "train" / "model" / "anna_embed.json").is_file()
    saved = json.loads((root / "train" / "model" / "anna_embed.json").read_text())
    assert saved["training_datasets"]
    # the base model and the teacher are the same weights here, so their scores agree
    rows = {r["model"]: r for r in report["rows"]}
    assert rows["base"]["QNLIRetrieval"] == pytest.approx(rows["teacher"]["QNLIRetrieval"])
    again = run(cfg)
    assert "train" not in again["timings"] and not any(k.startswith("mine") for k in again["timings"])
    assert again["rows"] == report["rows"]


def test_batch_scope_soft_labels_get_the_mined_teacher_vectors(make_embedder, tmp_path):
    from anna_embed.records import TeacherEmbeddings
    from anna_embed.train.config import TrainConfig

    cfg = _tiny_config(
        make_embedder, tmp_path, "train.loss.distill_scope=batch", "eval.teacher=", "eval.limit=4"
    )
    run(cfg)  # without the vectors, the first batch-scope step raises
    root = tmp_path / "run"
    mined = sorted(root.glob("mine/*/mined.jsonl"))
    assert mined
    for path in mined:
        vectors = TeacherEmbeddings.load(path.with_suffix(".teacher.npz"))
        assert vectors.score_kind == "cosine" and len(vectors.query_texts) == len(read_jsonl(path))
    saved = json.loads((root / "train" / "model" / "training.json").read_text())["config"]
    train_cfg = C.build(TrainConfig, saved)
    with_vectors = [s for s in train_cfg.data.sources if s.teacher_embeddings]
    assert len(with_vectors) == len(mined)


def test_batch_scope_soft_labels_over_in_batch_positives_and_no_base_eval(make_embedder, tmp_path):
    # group size 1 (no mined negatives in the batch): the KL term covers the other queries' positives
    cfg = _tiny_config(
        make_embedder,
        tmp_path,
        "train.data.in_batch_group_size=1",
        "train.loss.distill_scope=batch",
        "eval.base=false",
        "eval.teacher=",
        "eval.limit=4",
        "train.optim.max_steps=8",
    )
    report = run(cfg)
    assert [r["model"] for r in report["rows"]] == ["student"]
    assert not (tmp_path / "run" / "eval" / "base").exists()
    steps = read_jsonl(tmp_path / "run" / "train" / "metrics.jsonl")
    assert any(r["kl"] > 0 for r in steps if r["task"] == "QNLI")  # mined, in-batch: distilled


def test_tiny_pipeline_writes_a_model_card_with_the_run_s_scores(make_embedder, tmp_path):
    import mteb
    import yaml

    cfg = _tiny_config(make_embedder, tmp_path, "eval.base=false", "eval.teacher=", "eval.limit=4")
    report = run(cfg)
    card = (tmp_path / "run" / "train" / "model" / "README.md").read_text()
    assert card.startswith("---\n")
    meta = yaml.safe_load(card[4:].split("\n---\n", 1)[0])
    assert meta["library_name"] == "sentence-transformers" and "anna-embed" in meta["tags"]
    (index,) = meta["model-index"]
    got = {r["dataset"]["type"]: r["metrics"][0]["value"] for r in index["results"]}
    (student,) = report["rows"]
    want = {t: student[t] for t in cfg.eval.tasks if student[t] is not None}
    assert got == pytest.approx(want, abs=1e-4) and set(want) == set(cfg.eval.tasks)
    kinds = {r["dataset"]["type"]: (r["task"]["type"], r["metrics"][0]["type"]) for r in index["results"]}
    assert kinds["QNLIRetrieval"] == ("Retrieval", "ndcg_at_10")
    assert kinds["Banking77Classification"] == ("Classification", "accuracy")
    # the base model, the recipe's settings and the data's licences; no generic sentence-transformers card
    for text in (
        "`tiny-llama` (loaded from",
        "LoRA r=8, alpha=16",
        "student temperature 0.02",
        "teacher temperature 0.1, scope `batch`",
        "group size G=2",
        "(G=1 in those batches)",
        "| few-shot | none (`max_shots = 0`) |",
        "AdamW lr 0.001",
        "2 steps,",
        f"`bi:{tmp_path / 'tiny-base'}",
        f"`{demo_path('demo:train/qnli.jsonl')}` | GLUE QNLI dev split",
        "| Banking77Classification | 12 |",
        "CC BY 4.0",
        'prompt_name="QNLI-query"',
        f"mteb {mteb.__version__}",
    ):
        assert text in card, text
    assert "sentence-transformers model trained" not in card and "Unknown" not in card


def test_shipped_pipeline_configs_load_and_demo_matches_the_builtin():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    assert C.load(PipelineConfig, root / "demo.toml") == DEMO_CONFIG
    full = C.load(PipelineConfig, root / "full.toml")
    assert full.train.data.group_size == 8 and len(full.sources) >= 5
    assert C.load(PipelineConfig, root / "ablation.toml").eval.tasks


def _spec(kind: str, mine: bool | None = None) -> SourceSpec:
    return SourceSpec("x.jsonl", kind=kind, task="NLI", mine=mine)  # type: ignore[arg-type]


def test_mining_rule_keeps_curated_negatives_unless_asked(caplog):
    with_neg = [{"query": "q", "positive": "p", "negative": "n"}]
    without = [{"query": "q", "positive": "p"}]
    assert mines(_spec("pairs"), without, symmetric=True)  # nothing curated: mine
    assert mines(_spec("pairs"), with_neg, symmetric=False)  # asymmetric pairs are mined
    assert not mines(_spec("pairs"), with_neg, symmetric=True)  # symmetric + curated: keep them
    assert not mines(_spec("nli"), with_neg, symmetric=True)
    assert not mines(_spec("classification", mine=True), with_neg, symmetric=True)
    assert not mines(_spec("pairs", mine=False), without, symmetric=False)
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert mines(_spec("nli", mine=True), with_neg, symmetric=True)  # explicit opt-in
    assert "curated negatives" in caplog.text


def test_a_stage_resumes_only_work_started_with_its_own_fingerprint(tmp_path):
    first = Stage(tmp_path, "train", "aaaa", force=False)
    assert not first.resumable()  # nothing there: claimed for "aaaa", start afresh
    assert Stage(tmp_path, "train", "aaaa", force=False).resumable()  # killed, same config: resume
    assert not Stage(tmp_path, "train", "aaaa", force=True).resumable()  # forced: afresh
    assert not Stage(tmp_path, "train", "bbbb", force=False).resumable()  # another config: afresh
    assert not Stage(tmp_path, "train", "aaaa", force=False).resumable()  # the folder is now bbbb's
    assert Stage(tmp_path, "train", "aaaa", force=False).resumable()
    # what pipeline and adapt hand the trainer: a run that is not resumed replaces the folder's
    assert Stage(tmp_path, "train", "cccc", force=False).resume_or_restart() == {
        "resume": False,
        "force": True,
    }
    assert Stage(tmp_path, "train", "cccc", force=False).resume_or_restart() == {
        "resume": True,
        "force": False,
    }


def test_a_stage_runs_its_work_once_and_keeps_its_seconds(tmp_path):
    timed, calls = Timer(), []
    info = Stage(tmp_path, "mine", "fp", force=False).run(
        timed, "mine", lambda: calls.append(1) or {"summary": ["x"]}, lambda m: {"summary": m["summary"]}
    )
    assert calls == [1] and (tmp_path / "mine").is_dir()
    assert info == {"fingerprint": "fp", "summary": ["x"], "seconds": timed.seconds["mine"]}

    def boom() -> None:
        raise AssertionError("a finished stage ran again")

    again = Timer()
    assert Stage(tmp_path, "mine", "fp", force=False).run(again, "mine", boom, dict) == info
    assert again.seconds == {}  # skipped: absent from this run's timings (the pipeline's report)...
    Stage(tmp_path, "mine", "fp", force=False).run(again, "mine", boom, dict, recall_time=True)
    assert again.seconds == {"mine": info["seconds"]}  # ...or the time of the run that did it (adapt's)
    with pytest.raises(AssertionError, match="ran again"):
        Stage(tmp_path, "mine", "fp", force=True).run(again, "mine", boom, dict)


def test_pipeline_force_and_a_changed_config_restart_training_instead_of_refusing(make_embedder, tmp_path):
    cfg = _tiny_config(make_embedder, tmp_path, "eval.teacher=", "eval.base=false", "eval.limit=4")
    run(cfg)
    again = run(cfg, force=True)  # the train folder holds the first run: --force replaces it
    assert "train" in again["timings"]
    lr = cfg.train.optim.lr / 2
    changed = replace(cfg, train=replace(cfg.train, optim=replace(cfg.train.optim, lr=lr)))
    other = run(changed)  # another training config in the same folder: trained afresh, not resumed
    assert "train" in other["timings"]
    saved = json.loads((tmp_path / "run" / "train" / "model" / "training.json").read_text())
    assert saved["config"]["optim"]["lr"] == lr and saved["steps"] == cfg.train.optim.max_steps

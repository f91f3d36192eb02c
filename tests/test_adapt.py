"""``anna-embed adapt`` end to end on a tiny random BERT and a tiny BEIR folder; config, data, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from anna_embed import config as C
from anna_embed.adapt import AdaptConfig, load_config, train_config
from anna_embed.adapt.data import is_validation, prepare_data
from anna_embed.io import InputError
from anna_embed.model.weights import resolve_dtype
from conftest import build_bert_folder

WORDS = [
    "cell",
    "gene",
    "virus",
    "drug",
    "trial",
    "mouse",
    "blood",
    "brain",
    "heart",
    "liver",
    "lung",
    "dose",
]


def _doc(i: int) -> str:
    return f"{WORDS[i % 12]} {WORDS[(5 * i + 1) % 12]} {WORDS[(7 * i + 3) % 12]} report {i}"


def _query(i: int) -> str:
    return f"{WORDS[i % 12]} {WORDS[(5 * i + 1) % 12]} question {i}"


def _write_beir(
    folder: Path, n_docs: int = 28, train: range = range(18), test: range = range(18, 24)
) -> Path:
    (folder / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": "", "text": _doc(i)} for i in range(n_docs)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    for name, ids in (("queries_train.jsonl", train), ("queries.jsonl", test)):
        (folder / name).write_text(
            "".join(json.dumps({"_id": f"q{i}", "text": _query(i)}) + "\n" for i in ids)
        )
    for split, ids in (("train", train), ("test", test)):
        rows = "".join(f"q{i}\td{i}\t1\n" for i in ids)
        (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapt")
    beir = _write_beir(root / "mydocs")
    texts = [_doc(i) for i in range(28)] + [_query(i) for i in range(24)]
    return {"model": build_bert_folder(root, texts, max_seq_length=32), "beir": beir}


def _small(tiny: dict[str, Path], out: Path) -> list[str]:
    """Overrides that keep a run to seconds: 3 steps of 4 queries, a small candidate list."""
    return [
        "mine.top_k=8",
        "mine.num_negatives=3",
        "mine.batch_size=16",
        "train.data.group_size=3",
        "train.optim.batch_size=4",
        "train.optim.max_steps=3",
        "train.optim.warmup_steps=1",
        "train.optim.lr=1e-3",
        "train.run.save_every=2",
        "eval.batch_size=16",
    ]


def test_adapt_end_to_end(tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI: mine with the model as its own teacher, train, score before/after on the held-out and the
    validation queries, report; the adapted folder loads in sentence-transformers; a rerun skips stages."""
    from sentence_transformers import SentenceTransformer

    from anna_embed.cli import main
    from anna_embed.model.embedder import Embedder

    out = tmp_path / "out"
    args = ["adapt", "--model", str(tiny["model"]), "--train", str(tiny["beir"]), "--eval", str(tiny["beir"])]
    args += ["--out", str(out), "--set", "data.validation_fraction=0.3"]
    for item in _small(tiny, out):
        args += ["--set", item]
    assert main(args) == 0
    saved = json.loads((out / "adapt.json").read_text())
    assert saved["type"] == "AdaptConfig" and saved["config"]["data"]["validation_fraction"] == 0.3
    # data: the validation queries are held out of training, by id
    val_ids = {
        json.loads(x)["_id"]
        for x in (out / "data" / "mydocs-validation" / "queries.jsonl").read_text().splitlines()
    }
    assert val_ids == {f"q{i}" for i in range(18) if is_validation(f"q{i}", 0.3)} and 0 < len(val_ids) < 18
    records = [json.loads(x) for x in (out / "data" / "mydocs.jsonl").read_text().splitlines()]
    assert {r["query"] for r in records} == {_query(i) for i in range(18) if f"q{i}" not in val_ids}
    assert all((r["task"], r["type"]) == ("mydocs", "Retrieval") for r in records)
    # mining: the teacher's negatives with scores, filtered under the positive's margin
    mined = [json.loads(x) for x in (out / "mine" / "mined.jsonl").read_text().splitlines()]
    assert mined and all(r["neg"] and len(r["neg_scores"]) == len(r["neg"]) for r in mined)
    assert all(max(r["neg_scores"]) <= 0.95 * min(r["pos_scores"]) + 1e-6 for r in mined)
    manifest = json.loads((out / "mine" / "mined.manifest.json").read_text())
    # adapt's teacher runs in bf16 where the CPU has it (mine.dtype = "auto"), and says so in its name
    bf16 = str(resolve_dtype("auto")) == "torch.bfloat16"
    assert manifest["teachers"]["reranker"] == f"bi:{tiny['model']}@256" + ("#bfloat16" if bf16 else "")
    assert manifest["teachers"]["retriever"] == manifest["teachers"]["reranker"]  # one model, both roles
    # the adapted model: trained (3 steps), the same vectors in sentence-transformers
    meta = json.loads((out / "model" / "training.json").read_text())
    assert meta["steps"] == 3 and meta["config"]["lora"]["enabled"] is False
    probe = [_query(1), _doc(2)]
    ours = Embedder.from_pretrained(out / "model", device="cpu").encode(probe)
    np.testing.assert_allclose(
        SentenceTransformer(str(out / "model"), device="cpu").encode(probe), ours, atol=1e-5
    )
    base = Embedder.from_pretrained(tiny["model"], device="cpu").encode(probe)
    assert np.abs(ours - base).max() > 1e-3
    # the report: both query sets scored before and after, loss curve and mining histogram beside it
    scores = json.loads((out / "report" / "scores.json").read_text())["scores"]
    assert set(scores) == {"held-out", "validation"}
    for row in scores.values():
        assert 0 <= row["before"] <= 100 and 0 <= row["after"] <= 100
    assert scores["held-out"]["task"] == "mydocs" and scores["validation"]["task"] == "mydocs-validation"
    readme = (out / "report" / "README.md").read_text()
    assert "| held-out | mydocs |" in readme and "| validation | mydocs-validation |" in readme
    assert "mean pooling, max_length 32, instructions off, full fine-tuning (float32)" in readme
    assert (out / "report" / "loss.png").stat().st_size > 1000 and (out / "report" / "mining.png").is_file()
    # a rerun with the same settings mines and trains nothing
    import anna_embed.mine
    import anna_embed.train

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("stage rerun")

    monkeypatch.setattr(anna_embed.mine, "run", boom)
    monkeypatch.setattr(anna_embed.train, "train", boom)
    assert main(args) == 0
    assert json.loads((out / "report" / "scores.json").read_text())["scores"] == scores


def test_adapt_in_batch_arm_trains_without_mining(tiny: dict[str, Path], tmp_path: Path) -> None:
    """``negatives = in_batch``: no mining, G = 1, no KL; no held-out queries: a report without scores."""
    from anna_embed.adapt import run

    out = tmp_path / "out"
    overrides = [f"train.model.name={tiny['model']}", f"data.train={tiny['beir']}", f"output_dir={out}"]
    cfg = load_config(None, [*overrides, *_small(tiny, out), "negatives=in_batch"])
    report = run(cfg)
    assert not (out / "mine").exists() and report["scores"] == {}
    rows = [json.loads(x) for x in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["kl"] == 0 for r in rows)
    meta = json.loads((out / "model" / "training.json").read_text())
    assert meta["config"]["data"]["in_batch_group_size"] == 1
    assert meta["data_manifest"]["files"][0]["path"].endswith("mydocs.jsonl")  # the plain records
    assert "No mining" in (out / "report" / "README.md").read_text()


def test_a_crashed_training_resumes_and_a_changed_one_starts_afresh(
    tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rerun after a crash resumes from the newest checkpoint (same settings); new settings wipe it."""
    import anna_embed.train
    from anna_embed.adapt import run

    real, calls = anna_embed.train.train, []

    def spy(cfg: object, *, resume: bool = False, force: bool = False, crash_at: int | None = None) -> Path:
        calls.append(resume)
        assert force is not resume  # as the pipeline: a run that is not resumed replaces the folder's

        def crash(info: object) -> None:
            if info.step == crash_at:
                raise KeyboardInterrupt

        return real(cfg, resume=resume, force=force, callbacks=[crash] if crash_at else [])

    out = tmp_path / "out"
    base = [f"train.model.name={tiny['model']}", f"data.train={tiny['beir']}", f"output_dir={out}"]
    base += [*_small(tiny, out), "negatives=in_batch", "train.optim.max_steps=4"]
    monkeypatch.setattr(
        anna_embed.train,
        "train",
        lambda cfg, resume=False, force=False: spy(cfg, resume=resume, force=force, crash_at=3),
    )
    with pytest.raises(KeyboardInterrupt):
        run(load_config(None, base))
    assert (out / "train" / "checkpoints" / "step-0000002").is_dir() and not (out / "model").exists()
    monkeypatch.setattr(anna_embed.train, "train", spy)
    run(load_config(None, base))
    steps = [json.loads(x)["step"] for x in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert calls == [False, True] and steps == [1, 2, 3, 4]
    run(load_config(None, [*base, "train.optim.lr=2e-3"]))
    assert calls == [False, True, False]  # another config: its checkpoints are not resumed
    rows = [json.loads(x) for x in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["lr"]) for r in rows[:2]] == [(1, 2e-3), (2, 2e-3)]  # all rows are the new run's


def test_defaults_survive_overrides_and_config_files(tmp_path: Path) -> None:
    """``--set`` and a TOML file change one field; every other keeps adapt's own default (not the section
    class's: lr 2e-4, batch 32, temperature 0.05, MiniLM), and the defaults round-trip through JSON."""
    assert C.build(AdaptConfig, C.to_dict(AdaptConfig())) == AdaptConfig()
    cfg = load_config(None, ["train.optim.lr=1e-4", "mine.top_k=20"])
    assert (cfg.train.optim.lr, cfg.train.optim.batch_size, cfg.train.loss.student_temperature) == (
        1e-4,
        32,
        0.05,
    )
    assert (cfg.mine.top_k, cfg.mine.retriever, cfg.train.model.name) == (20, "", "all-minilm-l6-v2")
    toml = tmp_path / "adapt.toml"
    toml.write_text("seed = 1\n[train.optim]\nepochs = 5\n[data]\nvalidation_fraction = 0.1\n")
    cfg = load_config(toml, ["train.optim.lr=2e-5"])
    assert (cfg.seed, cfg.train.optim.epochs, cfg.train.optim.lr, cfg.train.optim.weight_decay) == (
        1,
        5,
        2e-5,
        0.01,
    )
    assert cfg.data.validation_fraction == 0.1 and cfg.train.data.group_size == 2
    assert (cfg.train.optim.warmup_steps, cfg.train.loss.distill_scope) == (3, "batch")
    toml.write_text("[train.optim]\nlearning_rate = 1\n")
    with pytest.raises(C.ConfigError, match=r"adapt\.toml.*learning_rate"):
        load_config(toml)


def test_an_adapt_variant_file_is_base_plus_overrides(tmp_path: Path) -> None:
    """``adapt --config`` reads ``base`` + ``overrides`` files as every verb does, on adapt's defaults."""
    (tmp_path / "full.toml").write_text("seed = 1\n[train.optim]\nepochs = 5\n")
    variant = tmp_path / "variant.toml"
    variant.write_text('base = "full.toml"\noverrides = ["train.optim.epochs=2", "negatives=in_batch"]\n')
    cfg = load_config(variant, ["seed=4"])
    assert (cfg.seed, cfg.train.optim.epochs, cfg.negatives) == (4, 2, "in_batch")
    assert (cfg.train.optim.lr, cfg.mine.top_k) == (2e-4, 50)  # adapt's defaults underneath, not the classes'
    variant.write_text('base = "full.toml"\noverrides = ["train.optim.nope=1"]\n')
    with pytest.raises(C.ConfigError, match=r"variant\.toml.*nope"):
        load_config(variant)


def test_mine_and_train_configs_follow_the_teacher_and_the_arm(tiny: dict[str, Path], tmp_path: Path) -> None:
    from anna_embed.adapt import mine_config

    cfg = load_config(None, ["train.model.name=all-minilm-l6-v2", "seed=3"])
    m = mine_config(cfg, "SciFact")
    assert (m.retriever, m.reranker, m.task, m.seed, m.teacher_embeddings) == (
        "all-minilm-l6-v2",
        "bi:all-minilm-l6-v2",
        "SciFact",
        3,
        True,  # adapt's soft labels cover the whole batch: they need the teacher's vectors
    )
    gemma = mine_config(load_config(None, ["teacher=embeddinggemma-300m", "mine.reranker=cross:ce"]), "T")
    assert (gemma.retriever, gemma.reranker) == ("embeddinggemma-300m", "cross:ce")  # --set wins
    group = mine_config(load_config(None, ["train.loss.distill_scope=group"]), "T")
    assert not group.teacher_embeddings  # group-only soft labels are the mined scores themselves
    data = prepare_data(load_config(None, [f"data.train={tiny['beir']}", f"output_dir={tmp_path}"]), tmp_path)
    t = train_config(cfg, data, tmp_path / "mined.jsonl", None)
    assert t.data.sources[0].path == str(tmp_path / "mined.jsonl") and t.run.seed == 3
    assert t.data.in_batch_group_size is None and t.run.output_dir.endswith("train")
    arm_a = train_config(load_config(None, ["negatives=in_batch"]), data, None, None)
    assert arm_a.data.in_batch_group_size == 1 and arm_a.data.sources[0].path == str(data.records)
    assert arm_a.loss.distill_scope == "group"  # no teacher, so nothing batch-wide to distil


def test_validation_split_is_a_stable_function_of_the_query_id() -> None:
    ids = [f"q{i}" for i in range(2000)]
    held = [i for i in ids if is_validation(i, 0.2)]
    assert 0.17 < len(held) / len(ids) < 0.23
    assert held == [i for i in ids if is_validation(i, 0.2)]  # no state, no seed
    assert set(held) <= {i for i in ids if is_validation(i, 0.5)}  # a bigger share keeps the smaller one
    assert not any(is_validation(i, 0.0) for i in ids)
    with pytest.raises(ValueError, match="validation_fraction"):
        is_validation("q1", 1.0)


def test_pairs_jsonl_input(tmp_path: Path) -> None:
    pairs = tmp_path / "faq.jsonl"
    pairs.write_text(
        json.dumps({"query": "how do I reset it", "positive": "Hold the button.", "negative": "Call us."})
        + "\n"
        + json.dumps({"query": "is it waterproof", "positive": ["Yes, to 10 m.", "It is."]})
        + "\n"
    )
    cfg = load_config(None, [f"data.train={pairs}"])
    data = prepare_data(cfg, tmp_path / "out")
    rows = [json.loads(x) for x in data.records.read_text().splitlines()]
    assert data.task == "faq" and data.corpus is None and data.validation is None and data.train_queries == 2
    assert rows[0] == {
        "query": "how do I reset it",
        "positive": "Hold the button.",
        "negative": "Call us.",
        "task": "faq",
        "type": "Retrieval",
        "instruction": "Given a query, find the documents that answer it.",
    }
    with pytest.raises(ValueError, match="BEIR"):
        prepare_data(
            load_config(None, [f"data.train={pairs}", "data.validation_fraction=0.2"]), tmp_path / "o"
        )


def test_bad_inputs_name_file_line_and_field(tmp_path: Path) -> None:
    beir = _write_beir(tmp_path / "docs", n_docs=6, train=range(4), test=range(4, 6))
    out = tmp_path / "out"

    def prepare(*extra: str) -> object:
        return prepare_data(load_config(None, [f"data.train={beir}", *extra]), out)

    with (beir / "qrels" / "train.tsv").open("a") as fh:
        fh.write("q1\td99\t1\n")
    with pytest.raises(InputError, match=r"train\.tsv:6: field 'corpus-id': document 'd99'"):
        prepare()
    (beir / "qrels" / "train.tsv").unlink()
    with pytest.raises(InputError, match=r"qrels/train\.tsv: file not found"):
        prepare()
    with pytest.raises(ValueError, match=r"held-out queries .* are the training queries"):
        prepare(f"data.eval={beir}", "data.train_split=test")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"query": "a", "positive": "b"}\n{"query": "c"}\n')
    with pytest.raises(InputError, match=r"pairs\.jsonl:2: field 'positive': missing"):
        prepare_data(load_config(None, [f"data.train={pairs}"]), out)
    with pytest.raises(InputError, match=r"nowhere: not found"):
        prepare_data(load_config(None, [f"data.train={tmp_path / 'nowhere'}"]), out)
    with pytest.raises(InputError, match=r"missing\.jsonl: file not found"):
        prepare_data(
            load_config(None, [f"data.train={pairs}", f"data.corpus={tmp_path / 'missing.jsonl'}"]), out
        )


def test_held_out_queries_seen_in_training_are_counted_and_an_empty_validation_refused(
    tmp_path: Path,
) -> None:
    beir = _write_beir(tmp_path / "docs", n_docs=8, train=range(5), test=range(3, 8))  # q3, q4 in both
    data = prepare_data(load_config(None, [f"data.train={beir}", f"data.eval={beir}"]), tmp_path / "out")
    assert data.overlap == 2 and data.train_queries == 5
    assert not any(is_validation(f"q{i}", 0.01) for i in range(5))
    with pytest.raises(ValueError, match="holds out none"):
        prepare_data(
            load_config(None, [f"data.train={beir}", "data.validation_fraction=0.01"]), tmp_path / "o"
        )

"""The model card: what it says of a trained folder, its model-index metadata, the licences it finds,
and the card ``anna-embed adapt`` leaves with its scores (tiny random models, hand-made result folders)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from anna_embed.model.card import build_card, read_results, write_card
from anna_embed.model.provenance import hub_id, mining_manifest, recorded_data_notes
from anna_embed.pipeline.config import DEMO_DATA

GENERIC = "This is a [sentence-transformers](https://www.SBERT.net) model"


def front_matter(card: str) -> dict:
    """The YAML between the card's opening ``---`` and the next ``---`` line."""
    assert card.startswith("---\n")
    return yaml.safe_load(card[4:].split("\n---\n", 1)[0])


def _training_config(teacher_temperature: float = 0.05) -> dict:
    return {
        "model": {"name": "/somewhere/tiny-base", "pooling": "last", "dtype": "float32", "max_length": 64},
        "lora": {"enabled": True, "r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj"]},
        "data": {"group_size": 4, "max_shots": 3, "shot_max_tokens": 32, "examples_max_length": 96},
        "loss": {
            "student_temperature": 0.02,
            "teacher_temperature": teacher_temperature,
            "kl_weight": 0.5,
            "distill_scope": "batch",
        },
        "optim": {"batch_size": 16, "lr": 2e-4, "warmup_steps": 3, "scheduler": "linear"},
        "run": {"seed": 7},
    }


def _trained_folder(make_embedder, tmp_path: Path) -> Path:
    """A saved tiny model with a training.json that trained on one mined and one curated file."""
    data = tmp_path / "data"
    (data / "mine").mkdir(parents=True)
    (data / "LICENSES.md").write_text(
        "| file | source | license |\n|---|---|---|\n"
        "| `pairs.jsonl` (12) | My Pairs, Doe et al. 2020 | CC BY 4.0 |\n"
    )
    (data / "pairs.jsonl").write_text("{}\n")
    (data / "other.jsonl").write_text("{}\n")
    mined = data / "mine" / "mined.jsonl"
    mined.write_text("{}\n")
    (data / "mine" / "mined.manifest.json").write_text(
        json.dumps(
            {
                "command": "mine",
                "train": str(data / "pairs.jsonl"),
                "out": str(mined),
                "teachers": {
                    "retriever": "bi:ret@128",
                    "reranker": "bi:teach@128",
                    "reranker_score_kind": "cosine",
                },
                "config": {"task": "SciFact", "top_k": 30, "relative_margin": 0.05, "num_negatives": 3},
                "counts": {"candidates": 360, "dropped_margin": 17, "records_written": 12},
            }
        )
    )
    folder = make_embedder("llama").save(tmp_path / "model", training_datasets=["SciFact", "NLI"])
    (folder / "training.json").write_text(
        json.dumps(
            {
                "config": _training_config(),
                "data_manifest": {
                    "files": [
                        {"path": str(mined), "task": "SciFact"},
                        {"path": str(data / "other.jsonl"), "task": "NLI"},
                    ],
                    "records_per_task": {"SciFact": 12, "NLI": 5},
                    "records": 17,
                },
                "training_datasets": ["SciFact", "NLI"],
                "steps": 9,
                "tokens": 12345,
                "train_seconds": 3.2,
            }
        )
    )
    return folder


def _result_folder(path: Path, scores: dict[str, float | None], *, limit: int | None = None) -> Path:
    """What ``anna-embed eval`` leaves: run.json and one mteb result JSON per task."""
    path.mkdir(parents=True)
    types = {"SciFact": "Retrieval", "STSBenchmark": "STS", "MyTask": "Retrieval"}
    run = {
        "scores": scores,
        "types": {t: types[t] for t in scores},
        "split": "test",
        "limit": limit,
        "shots": 2,
    }
    (path / "run.json").write_text(json.dumps(run | {"data": {t: f"/data/{t}" for t in scores}}))
    for task in scores:
        (path / f"{task}.json").write_text(json.dumps({"task_name": task, "mteb_version": "2.26.24"}))
    return path


def test_a_trained_folder_gets_a_card_with_recipe_data_usage_and_model_index(make_embedder, tmp_path):
    folder = _trained_folder(make_embedder, tmp_path)
    results = _result_folder(tmp_path / "eval", {"SciFact": 61.23456, "STSBenchmark": 70.5, "MyTask": None})
    path = write_card(folder, results={"": results})
    card = path.read_text()
    assert path == folder / "README.md" and GENERIC not in card
    meta = front_matter(card)
    assert meta["library_name"] == "sentence-transformers" and meta["pipeline_tag"] == "sentence-similarity"
    assert "base_model" not in meta  # "tiny-llama" is no hub id: named in the text only
    (index,) = meta["model-index"]
    got = {
        r["dataset"]["name"]: (r["task"]["type"], r["metrics"][0]["type"], r["metrics"][0]["value"])
        for r in index["results"]
    }
    assert got == {
        "SciFact": ("Retrieval", "ndcg_at_10", 61.2346),
        "STSBenchmark": ("STS", "cosine_spearman", 70.5),
    }
    # the recipe's settings, from training.json
    for text in (
        "`tiny-llama` (loaded from `/somewhere/tiny-base`)",
        "LoRA r=8, alpha=16, dropout 0.05 on q_proj",
        "student temperature 0.02",
        "0.5 x KL distillation",
        "teacher temperature 0.05, scope `batch`",
        "16 queries per process and step; group size G=4",
        "k ~ U{0..3} examples per query, each clipped to 32 tokens, at most 96 tokens",
        "AdamW lr 0.0002",
        "9 steps, 12345 tokens",
    ):
        assert text in card, text
    # mining, traced through the manifest beside the mined file; the data with its recorded licence
    assert (
        "`bi:teach@128` (cosine)" in card and "relative_margin 0.05" in card and "dropped 17 of 360" in card
    )
    assert (
        f"| SciFact | 12 | `{tmp_path / 'data' / 'pairs.jsonl'}` | My Pairs, Doe et al. 2020 | CC BY 4.0 |"
        in card
    )
    assert f"| NLI | 5 | `{tmp_path / 'data' / 'other.jsonl'}` | unknown | unknown |" in card
    # usage: the saved prompt names, a few-shot prompt, the Embedder API; scores with the mteb version
    prompts = json.loads((folder / "config_sentence_transformers.json").read_text())["prompts"]
    assert 'prompt_name="SciFact-query"' in card and "SciFact-query" in prompts
    assert "Query:\nEXAMPLE QUERY\nResponse:\nEXAMPLE RESPONSE\n\nInstruct:" in card
    assert 'emb.encode_queries(["..."], task="SciFact", examples=' in card
    assert "mteb 2.26.24" in card and "| SciFact * | Retrieval | ndcg_at_10 | 61.23 |" in card


def test_an_untrained_save_gets_our_card_and_scores_of_a_limited_run_are_marked(make_embedder, tmp_path):
    folder = make_embedder("llama").save(tmp_path / "m")
    card = (folder / "README.md").read_text()
    assert GENERIC not in card and "saved without training" in card and "Not evaluated yet" in card
    assert "model-index" not in front_matter(card)
    results = _result_folder(tmp_path / "eval", {"SciFact": 12.0}, limit=8)
    card = build_card(folder, results={"held-out": results}, name="my-model")
    (entry,) = front_matter(card)["model-index"][0]["results"]
    assert entry["dataset"]["name"] == "SciFact (held-out) [limit 8: NOT comparable]"
    assert "# my-model" in card and "limit 8: NOT comparable" in card


def test_results_of_a_result_folder():
    assert read_results("/nonexistent") == []


def test_licences_and_sources_the_data_notes_record(tmp_path):
    qnli = recorded_data_notes(DEMO_DATA / "train" / "qnli.jsonl")
    assert qnli is not None and qnli.licence == "CC BY-SA 4.0" and qnli.source.startswith("GLUE QNLI")
    assert recorded_data_notes(DEMO_DATA / "train" / "banking77.jsonl").licence == "CC BY 4.0"
    assert recorded_data_notes(DEMO_DATA / "eval" / "QNLIRetrieval").licence == "CC BY-SA 4.0"
    # a SOURCES.md as a data folder keeps it: rows with "License: X" in the notes, sections per task folder
    root = tmp_path / "shared"
    for rel in (
        "train/wiki.jsonl",
        "train/msrp.jsonl",
        "train/nolicence.jsonl",
        "mteb/Bank/train.jsonl",
        "x.jsonl",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("{}\n")
    (root / "SOURCES.md").write_text(
        "# Sources\n\n### Bank\n* Source: a repo.\n* License: CC BY 4.0.\n\n### Other\n* License: MIT.\n\n"
        "## Training data (`train/`)\n\n| file | rows | source (repo @ commit) | notes |\n|---|---|---|---|\n"
        "| wiki.jsonl | 10 | a/b @ 1 | Questions. License CC BY-SA 4.0. |\n"
        "| msrp.jsonl | 5 | c/d @ 2 | Pairs. License: Microsoft Shared Source License. |\n"
        "| nolicence.jsonl | 3 | e/f @ 3 | Nothing said. |\n"
    )
    assert recorded_data_notes(root / "train" / "wiki.jsonl").licence == "CC BY-SA 4.0"
    msrp = recorded_data_notes(root / "train" / "msrp.jsonl")
    assert msrp.licence == "Microsoft Shared Source License" and msrp.source == "c/d @ 2"
    silent = recorded_data_notes(root / "train" / "nolicence.jsonl")
    assert silent is not None and silent.licence is None  # named, licence not recorded: "unknown"
    assert recorded_data_notes(root / "mteb" / "Bank" / "train.jsonl").licence == "CC BY 4.0"
    assert recorded_data_notes(root / "x.jsonl") is None and recorded_data_notes(tmp_path / "missing") is None


def test_hub_ids_and_mining_manifests(tmp_path):
    assert hub_id("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id("BAAI/bge-small-en") == "BAAI/bge-small-en"
    assert hub_id(str(tmp_path)) is None and hub_id("tiny-llama") is None
    (tmp_path / "a.manifest.json").write_text(json.dumps({"command": "convert"}))
    assert mining_manifest(tmp_path / "a.jsonl") is None and mining_manifest(tmp_path / "b.jsonl") is None


def test_adapt_leaves_a_card_with_the_adapted_models_scores(tmp_path):
    from anna_embed.adapt import load_config, run
    from conftest import build_bert_folder

    beir = tmp_path / "docs"
    (beir / "qrels").mkdir(parents=True)
    words = ["cell", "gene", "virus", "drug", "trial", "mouse", "blood", "brain"]
    docs = [f"{words[i % 8]} {words[(3 * i + 1) % 8]} report {i}" for i in range(16)]
    queries = [f"{words[i % 8]} {words[(3 * i + 1) % 8]} question {i}" for i in range(14)]
    (beir / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "text": d}) + "\n" for i, d in enumerate(docs))
    )
    for name, ids in (("queries_train.jsonl", range(10)), ("queries.jsonl", range(10, 14))):
        (beir / name).write_text(
            "".join(json.dumps({"_id": f"q{i}", "text": queries[i]}) + "\n" for i in ids)
        )
    for split, ids in (("train", range(10)), ("test", range(10, 14))):
        rows = "".join(f"q{i}\td{i}\t1\n" for i in ids)
        (beir / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    model = build_bert_folder(tmp_path / "bert", docs + queries, max_seq_length=32)
    out = tmp_path / "out"
    cfg = load_config(
        None,
        [
            f"train.model.name={model}",
            f"data.train={beir}",
            f"data.eval={beir}",
            f"output_dir={out}",
            "mine.top_k=6",
            "mine.num_negatives=2",
            "train.data.group_size=3",
            "train.optim.batch_size=4",
            "train.optim.max_steps=2",
            "train.optim.warmup_steps=1",
        ],
    )
    report = run(cfg)
    card = (out / "model" / "README.md").read_text()
    (index,) = front_matter(card)["model-index"]
    (entry,) = index["results"]
    assert entry["dataset"]["name"] == "docs (held-out)" and entry["task"]["type"] == "Retrieval"
    assert entry["metrics"][0]["value"] == pytest.approx(report["scores"]["held-out"]["after"], abs=1e-4)
    assert "full fine-tuning (float32)" in card and "no instructions" in card and GENERIC not in card
    assert f"`{beir}`" in card  # the training file is traced back to the user's data

"""The ablation script's variant overrides and tables (benchmarks/ablation.py)."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ablation():
    spec = importlib.util.spec_from_file_location("ablation", ROOT / "benchmarks" / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_variant_removes_exactly_its_pillar(ablation, tmp_path):
    steps = ["train.optim.max_tokens=none", "train.optim.max_steps=80"]  # the curriculum follows max_steps
    cfg = {
        n: ablation.variant_config(ROOT / "configs" / "ablation.toml", n, steps, tmp_path)
        for n in ablation.VARIANTS
    }
    full = cfg["full"]
    assert full.train.data.max_shots > 0 and full.eval.shots > 0 and full.train.loss.kl_weight > 0
    assert full.mine.relative_margin is not None and full.train.data.group_size > 1
    assert full.train.data.hard_negatives_after == 0 and full.train.optim.max_tokens is None
    assert full.cache_dir == str(tmp_path / "cache") and full.output_dir == str(tmp_path / "full")
    # everything the variants share: steps, batch, seed, data, base model, evaluated tasks
    for c in cfg.values():
        assert (c.train.optim, c.seed, c.sources, c.train.model, c.eval.tasks, c.cache_dir) == (
            full.train.optim,
            full.seed,
            full.sources,
            full.train.model,
            full.eval.tasks,
            full.cache_dir,
        )
    assert (cfg["no_shots"].train.data.max_shots, cfg["no_shots"].eval.shots) == (0, 0)
    assert cfg["no_shots"].train.loss == full.train.loss and cfg["no_shots"].mine == full.mine
    assert cfg["no_soft_labels"].train.loss.kl_weight == 0
    assert cfg["no_soft_labels"].train.data == full.train.data and cfg["no_soft_labels"].mine == full.mine
    nm = cfg["no_margin_filter"].mine
    assert nm.relative_margin is None and nm.absolute_margin is None and nm.top_k == full.mine.top_k
    assert cfg["no_margin_filter"].train == full.train
    ib = cfg["inbatch_only"]
    assert (ib.train.data.in_batch_group_size, ib.train.loss.kl_weight) == (1, 0)
    assert (ib.train.data.max_shots, ib.eval.shots) == (0, 0)
    # the same per-type batch rule as the full recipe: classification stays group-only with its group
    assert ib.train.data.in_batch == full.train.data.in_batch == "by_type"
    assert ib.train.data.group_size == full.train.data.group_size
    for c in cfg.values():
        assert c.train.data.in_batch == "by_type"
    # inbatch_distill: inbatch_only's texts, plus the teacher's scores over every in-batch candidate
    idl = cfg["inbatch_distill"]
    assert idl.train.data == ib.train.data and idl.eval == ib.eval and idl.mine == ib.mine
    assert idl.train.loss.distill_scope == "batch"
    assert idl.train.loss.kl_weight == full.train.loss.kl_weight > 0
    # hardneg_only: the full recipe's mined groups in in-batch batches, without examples or KL
    hn = cfg["hardneg_only"]
    assert replace(hn.train.data, in_batch_group_size=1) == ib.train.data and hn.train.loss == ib.train.loss
    assert hn.train.data.in_batch_group_size is None and hn.mine == full.mine and hn.eval == ib.eval
    # inbatch_shots: inbatch_only with the full recipe's examples
    ish = cfg["inbatch_shots"]
    assert replace(ish.train.data, max_shots=0) == ib.train.data and ish.train.loss == ib.train.loss
    assert ish.train.data.max_shots == full.train.data.max_shots and ish.eval == full.eval
    # full_batch / full_group: only the soft labels' scope differs from the full recipe
    for name, scope in [("full_batch", "batch"), ("full_group", "group")]:
        c = cfg[name]
        assert c.train.loss.distill_scope == scope, name
        assert replace(c.train.loss, distill_scope=full.train.loss.distill_scope) == full.train.loss, name
        assert (c.train.data, c.mine, c.eval) == (full.train.data, full.mine, full.eval), name
    assert full.train.loss.distill_scope == "batch"  # configs/ablation.toml: the final ablation's setting
    # label_layout changes only how classification sources become records
    ll = cfg["label_layout"]
    assert ll.classification_layout == "label" and full.classification_layout == "text"
    assert (ll.train, ll.mine, ll.eval) == (full.train, full.mine, full.eval)
    # curriculum: the full recipe after inbatch_only's rule for the first third of the steps
    cur = cfg["curriculum"]
    assert cur.train.data.hard_negatives_after == full.train.optim.max_steps // 3 > 0
    assert replace(cur.train.data, hard_negatives_after=0) == full.train.data
    assert (cur.train.loss, cur.mine, cur.eval) == (full.train.loss, full.mine, full.eval)
    assert set(ablation.PILLARS) <= set(ablation.VARIANTS)
    assert "label_layout" not in ablation.PILLARS and "curriculum" not in ablation.PILLARS
    with pytest.raises(ValueError, match="unknown variant"):
        ablation.variant_config(ROOT / "configs" / "ablation.toml", "no_lora", steps, tmp_path)


def test_overrides_reach_every_variant_and_the_curriculum_follows_max_steps(ablation, tmp_path):
    config = ROOT / "configs" / "ablation.toml"
    sets = ["train.optim.max_steps=30", "train.optim.max_tokens=none"]
    for name in ablation.VARIANTS:
        c = ablation.variant_config(config, name, sets, tmp_path)
        assert (c.train.optim.max_steps, c.train.optim.max_tokens) == (30, None), name
        assert c.train.data.hard_negatives_after == (10 if name == "curriculum" else 0), name
    with pytest.raises(ValueError, match="max_steps"):
        ablation.variant_config(
            config, "curriculum", ["train.optim.max_steps=none", "train.optim.max_tokens=none"], tmp_path
        )
    # under a token budget the step count is unknown until training plans it: the switch must be given
    budget = ["train.optim.max_steps=2000", "train.optim.max_tokens=50000"]
    with pytest.raises(ValueError, match="hard_negatives_after=N"):
        ablation.variant_config(config, "curriculum", budget, tmp_path)
    given = ablation.variant_config(
        config, "curriculum", [*budget, "train.data.hard_negatives_after=12"], tmp_path
    )
    assert given.train.data.hard_negatives_after == 12 and given.train.optim.max_tokens == 50000


def test_ablation_config_evaluates_no_task_it_trains_on():
    from anna_embed import config as C
    from anna_embed.pipeline import PipelineConfig

    cfg = C.load(PipelineConfig, ROOT / "configs" / "ablation.toml")
    trained = {s.task for s in cfg.sources}
    assert trained and not trained & set(cfg.eval.tasks)
    assert cfg.eval.limit is None  # full test sets


def _row(model, mean, per_task):
    return {"model": model, "mean_task": mean, "per_task": per_task}


def test_pillar_costs_are_differences_to_the_full_recipe(ablation):
    rows = [
        _row("full", 30.0, {}),
        _row("no_shots", 28.5, {}),
        _row("inbatch_only", 27.25, {}),
        _row("no_soft_labels", None, {}),
    ]
    assert ablation.pillar_costs(rows) == {
        "no_shots": -1.5,
        "no_soft_labels": None,
        "inbatch_only": -2.75,
        "full_vs_inbatch_only": 2.75,
    }


def test_result_folders_keep_one_base_per_prompt_setting(ablation, tmp_path):
    for name, shots in [("full", 1), ("no_soft_labels", 1), ("no_shots", 0)]:
        base = tmp_path / name / "eval" / "base"
        base.mkdir(parents=True)
        (base / "run.json").write_text(json.dumps({"shots": shots}))
        teacher = tmp_path / name / "eval" / "teacher"
        teacher.mkdir()
        (teacher / "run.json").write_text(json.dumps({"model": "embeddinggemma-300m"}))
    rows = ablation.result_folders(tmp_path, ["full", "no_soft_labels", "no_shots"])
    assert list(rows) == [
        "full",
        "base, untrained (1-shot prompts)",
        "no_soft_labels",
        "no_shots",
        "base, untrained (0-shot prompts)",
        "teacher (embeddinggemma-300m)",
    ]
    assert rows["base, untrained (0-shot prompts)"] == tmp_path / "no_shots" / "eval" / "base"


def test_training_costs_table_reads_each_variants_training_json(ablation, tmp_path):
    for name, meta in [
        ("full", {"steps": 80, "tokens": 1234567, "train_seconds": 612.34}),
        ("curriculum", {"steps": 95, "tokens": 1234600}),  # a field missing: n/a
    ]:
        model = tmp_path / name / "train" / "model"
        model.mkdir(parents=True)
        (model / "training.json").write_text(json.dumps({"config": {}, **meta}))
    costs = ablation.training_costs(tmp_path, ["full", "curriculum", "no_shots"])
    assert costs == {
        "full": {"tokens": 1234567, "steps": 80, "train_seconds": 612.34},
        "curriculum": {"tokens": 1234600, "steps": 95, "train_seconds": None},
        "no_shots": None,  # not trained (yet)
    }
    assert ablation.format_costs(costs).splitlines() == [
        "| variant | tokens encoded | steps | training wall s |",
        "|---|---:|---:|---:|",
        "| full | 1,234,567 | 80 | 612.3 |",
        "| curriculum | 1,234,600 | 95 | n/a |",
        "| no_shots | n/a | n/a | n/a |",
    ]

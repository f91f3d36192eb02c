"""The model card: the ``README.md`` of a model folder, in place of sentence-transformers' generic one.

:func:`write_card` reads what the folder holds and writes the card atomically:

* ``anna_embed.json`` (:class:`~anna_embed.model.config.EmbedderConfig`): base model, pooling, budgets,
  prompt templates; ``config_sentence_transformers.json``: the saved prompt names;
* ``training.json`` (written by the training export): the resolved training config (LoRA, losses and
  temperatures, batches, shots, optimiser), steps, tokens, the data manifest (files, records per task);
* beside each training file, the mining manifest ``STEM.manifest.json`` when the file was mined
  (teachers, margin filter, counts);
* the licence and source of each training file where a data folder's notes record them
  (:func:`recorded_data_notes`), else "unknown";
* evaluation result folders of ``anna-embed eval`` (``run.json`` and mteb's result JSONs) when given:
  scores, the mteb version, and Hugging Face ``model-index`` metadata so a hub page shows them.

``Embedder.save`` writes the card of an untrained folder; the training export rewrites it once
``training.json`` exists; ``anna-embed pipeline`` / ``adapt`` rewrite it with the run's scores.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from anna_embed import prompts as P
from anna_embed.io import atomic_write
from anna_embed.model.config import CONFIG_FILE, EmbedderConfig
from anna_embed.model.provenance import hub_id, mining_manifest, recorded_data_notes
from anna_embed.tasks import find_task

CARD_FILE = "README.md"
TRAINING_FILE = "training.json"


def _anna_embed_version() -> str:
    """The installed version (``anna_embed.__version__``: an import cycle, package -> embedder -> card)."""
    try:
        return version("anna-embed")
    except PackageNotFoundError:
        return "(version unknown)"


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def read_results(folder: str | os.PathLike[str], label: str = "") -> list[dict[str, Any]]:
    """One entry per scored task of an ``anna-embed eval`` result folder (``run.json``, mteb's JSONs).

    Returns:
        ``[{task, type, metric, value, split, limit, shots, data, mteb_version, label}]``; ``value`` is the
        mteb main score x100 as ``run.json`` holds it; tasks without a score are left out.
    """
    folder = Path(folder)
    run = _json(folder / "run.json")
    out = []
    for task, value in (run.get("scores") or {}).items():
        if value is None:
            continue
        spec = find_task(task)
        version = _json(folder / f"{task}.json").get("mteb_version")
        out.append(
            {
                "task": task,
                "type": (run.get("types") or {}).get(task) or (spec.type if spec else "Unknown"),
                "metric": spec.main_metric if spec else "main_score",
                "value": round(float(value), 4),
                "split": run.get("split", "test"),
                "limit": run.get("limit"),
                "shots": run.get("shots", 0),
                "data": (run.get("data") or {}).get(task),
                "mteb_version": version,
                "label": label,
            }
        )
    return out


def _dimension(folder: Path) -> int | None:
    """The output dimension: the sentence-transformers Pooling module's, else the backbone's hidden size."""
    modules = folder / "modules.json"
    for module in json.loads(modules.read_text()) if modules.is_file() else []:
        cfg = _json(folder / module.get("path", "") / "config.json")
        if "embedding_dimension" in cfg or "word_embedding_dimension" in cfg:
            return cfg.get("embedding_dimension") or cfg.get("word_embedding_dimension")
    return _json(folder / "config.json").get("hidden_size")


def _front_matter(base: str | None, name: str, results: list[dict[str, Any]]) -> str:
    import yaml  # PyYAML: a dependency of huggingface_hub, hence of transformers

    meta: dict[str, Any] = {}
    if base is not None:
        meta["base_model"] = base
    meta |= {
        "library_name": "sentence-transformers",
        "pipeline_tag": "sentence-similarity",
        "tags": ["sentence-transformers", "sentence-similarity", "feature-extraction", "anna-embed"]
        + (["mteb"] if results else []),
    }
    if results:
        entries = []
        for r in results:
            name_ = r["task"] + (f" ({r['label']})" if r["label"] else "")
            name_ += f" [limit {r['limit']}: NOT comparable]" if r["limit"] else ""
            dataset = {"name": name_, "type": r["task"], "split": r["split"]}
            if r["data"] not in (None, "hub"):
                dataset["revision"] = "local"  # a local folder, not the hub dataset's revision
            metric = {"type": r["metric"], "value": r["value"], "name": f"{r['metric']} (x100)"}
            entries.append({"task": {"type": r["type"]}, "dataset": dataset, "metrics": [metric]})
        meta["model-index"] = [{"name": name, "results": entries}]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000) + "---\n"


def _recipe(cfg: dict[str, Any], training: dict[str, Any]) -> list[str]:
    m, lora, data, loss, opt = (cfg.get(k, {}) for k in ("model", "lora", "data", "loss", "optim"))
    if lora.get("enabled"):
        tune = f"LoRA r={lora['r']}, alpha={lora['alpha']}, dropout {lora['dropout']}"
        tune += f" on {', '.join(lora.get('target_modules') or ['every attention and MLP projection'])}"
    else:
        tune = f"full fine-tuning ({m.get('dtype')})"
    kl = float(loss.get("kl_weight", 0.0))
    losses = f"InfoNCE (student temperature {loss.get('student_temperature')})"
    if kl > 0:
        losses += (
            f" + {kl} x KL distillation of the teacher's scores where records carry them (teacher "
            f"temperature {loss.get('teacher_temperature')}, scope `{loss.get('distill_scope')}`)"
        )
    ibg = data.get("in_batch_group_size")
    rows = [
        ("fine-tuning", tune),
        ("loss", losses),
        (
            "batches",
            f"{opt.get('batch_size')} queries per process and step; group size G={data.get('group_size')} "
            f"(1 positive + G-1 negatives); in-batch negatives "
            f"`{data.get('in_batch')}`" + (f" (G={ibg} in those batches)" if ibg else ""),
        ),
        (
            "few-shot",
            f"k ~ U{{0..{data.get('max_shots')}}} examples per query, each clipped to "
            f"{data.get('shot_max_tokens')} tokens, at most {data.get('examples_max_length')} tokens in all"
            if data.get("max_shots")
            else "none (`max_shots = 0`)",
        ),
        (
            "optimiser",
            f"AdamW lr {opt.get('lr')}, {opt.get('scheduler')} schedule, {opt.get('warmup_steps')} warm-up "
            f"steps, weight decay {opt.get('weight_decay')}, gradient clip {opt.get('grad_clip')}",
        ),
        ("steps / tokens", f"{training.get('steps')} steps, {training.get('tokens')} tokens encoded"),
        ("wall time", f"{training.get('train_seconds')} s of training"),
        ("seed", str(cfg.get("run", {}).get("seed"))),
    ]
    if data.get("hard_negatives_after"):
        rows.append(
            ("curriculum", f"in-batch negatives only for the first {data['hard_negatives_after']} steps")
        )
    return ["| setting | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]


def _mining_lines(mined: list[dict[str, Any]]) -> list[str]:
    """A row per mined training file: teachers, candidates, margin filter, negatives, what it dropped."""
    if not mined:
        return ["No training file was mined here (negatives: curated in the data, or in-batch only)."]
    lines = [
        "| file | task | retriever | teacher (reranker) | candidates | margin filter | negatives | records |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for man in mined:
        c, t, k = man.get("config", {}), man.get("teachers", {}), man.get("counts", {})
        margins = [f"{n} {c[n]}" for n in ("relative_margin", "absolute_margin") if c.get(n) is not None]
        lines.append(
            f"| `{Path(man.get('out', '')).name}` | {c.get('task')} | `{t.get('retriever')}` | "
            f"`{t.get('reranker')}` ({t.get('reranker_score_kind')}) | top {c.get('top_k')}"
            f"{' + BM25' if c.get('bm25') else ''} | {', '.join(margins) or 'off'} ({c.get('normalisation')}"
            f" scores): dropped {k.get('dropped_margin')} of {k.get('candidates')} | {c.get('num_negatives')}"
            f" per query ({c.get('sampling')}, by {c.get('rank_by')}) | {k.get('records_written')} |"
        )
    return lines


def _data_lines(training: dict[str, Any], origins: Mapping[str, str]) -> tuple[list[str], list[dict]]:
    manifest = training.get("data_manifest") or {}
    per_task = manifest.get("records_per_task") or {}
    files = manifest.get("files") or []
    task_files: dict[str | None, int] = {}
    for f in files:
        task_files[f.get("task")] = task_files.get(f.get("task"), 0) + 1
    rows, mined = [], []
    for f in files:
        path, task = f["path"], f.get("task")
        man = mining_manifest(path)
        if man is not None:
            mined.append(man)
        traced = man.get("train") if man else None  # a mined file: the records it was mined from
        origin = origins.get(path) or (traced and origins.get(traced, traced)) or path
        notes = recorded_data_notes(origin)
        count = per_task.get(task) if task is not None and task_files[task] == 1 else None
        rows.append(
            f"| {task or '(per record)'} | {count if count is not None else '—'} | `{origin}` | "
            f"{(notes and notes.source) or 'unknown'} | {(notes and notes.licence) or 'unknown'} |"
        )
    lines = [
        f"{manifest.get('records', '?')} training records; per task: "
        + (", ".join(f"{t} {n}" for t, n in per_task.items()) or "not recorded")
        + ".",
        "",
        "| task | records | file | source | licence |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "Licences and sources are those the data folder's notes record (LICENSES.md, SOURCES.md, "
        'README.md); "unknown" where they record none.',
    ]
    return lines, mined


_ST_USAGE = """```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("{path}")
queries = model.encode(["..."], prompt_name="{task}-query")
documents = model.encode(["..."], prompt_name="{task}-document")
```

The folder saves {n} prompts: `TASK-query`, `TASK-document` and `TASK` (the query prompt, which mteb looks
up) for every task of anna-embed's registry{trained}. A task's instruction goes on queries; documents of
asymmetric tasks (retrieval, reranking) are embedded raw, those of symmetric tasks take the query prompt.

**Few-shot examples** go before the instruction, as in training. The query prompt of `{task}` with one:

```text
{few_shot}{{query}}
```

Pass such a string as `prompt=` to sentence-transformers (it then counts against `max_seq_length`,
{max_length} tokens), or let anna-embed build it: each example clipped to {shot_max} tokens, the examples
given {examples_max} tokens on top of the text's budget:

```python
from anna_embed import Embedder

emb = Embedder.from_pretrained("{path}")
q = emb.encode_queries(["..."], task="{task}", examples=[("a query", "its response")])
d = emb.encode_documents(["..."], task="{task}")
```"""

_PLAIN_USAGE = """This model takes no instructions: embed plain texts.

```python
from sentence_transformers import SentenceTransformer

vectors = SentenceTransformer("{path}").encode(["..."])

from anna_embed import Embedder

vectors = Embedder.from_pretrained("{path}").encode(["..."])
```"""


def _usage(folder: Path, shown: str, cfg: EmbedderConfig, trained: list[str]) -> str:
    """How to call the model: sentence-transformers prompt names, a few-shot prompt, the Embedder API."""
    prompts = _json(folder / "config_sentence_transformers.json").get("prompts") or {}
    named = [t for t in trained if f"{t}-query" in prompts]
    asymmetric = [t for t in named if (spec := find_task(t)) is not None and not spec.symmetric]
    task = (asymmetric or named or [t for t in prompts if "-" not in t] or [None])[0]
    if not cfg.use_instructions or task is None:
        return _PLAIN_USAGE.format(path=f"path/to/{shown}")
    example = [("EXAMPLE QUERY", "EXAMPLE RESPONSE")]
    return _ST_USAGE.format(
        path=f"path/to/{shown}",
        task=task,
        n=len(prompts),
        trained=f" (trained on: {', '.join(f'`{t}`' for t in named)})" if named else "",
        few_shot=P.query_prefix(task, examples=example, templates=cfg.templates),
        max_length=cfg.max_length,
        shot_max=cfg.shot_max_tokens,
        examples_max=cfg.examples_max_length,
    )


def _eval_lines(results: list[dict[str, Any]], trained: set[str]) -> list[str]:
    if not results:
        return ["Not evaluated yet (`anna-embed eval`, or a pipeline run, adds the scores here)."]
    versions = sorted({r["mteb_version"] for r in results if r["mteb_version"]})
    lines = [
        f"mteb {', '.join(versions) or '(version not recorded)'} main scores x100, from local task folders "
        "(`revision: local`).",
        "",
        "| task | type | metric | score | split | shots | data |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        flag = " *" if r["task"] in trained else ""
        note = f"{r['data'] or 'hub'}" + (f" (limit {r['limit']}: NOT comparable)" if r["limit"] else "")
        label = f" ({r['label']})" if r["label"] else ""
        lines.append(
            f"| {r['task']}{label}{flag} | {r['type']} | {r['metric']} | {r['value']:.2f} | {r['split']} | "
            f"{r['shots']} | {note} |"
        )
    if any(r["task"] in trained for r in results):
        lines += ["", "\\* trained on this task's training data: in-domain, not zero-shot."]
    return lines


def build_card(
    folder: str | os.PathLike[str],
    *,
    results: Mapping[str, str | os.PathLike[str]] | None = None,
    origins: Mapping[str, str | os.PathLike[str]] | None = None,
    name: str | None = None,
    folder_name: str | None = None,
) -> str:
    """The card's text (YAML front matter + markdown); see :func:`write_card` for the arguments."""
    folder = Path(folder)
    cfg = EmbedderConfig.from_dict(_json(folder / CONFIG_FILE))
    training = _json(folder / TRAINING_FILE)
    tcfg = training.get("config") or {}
    loaded_from = (tcfg.get("model") or {}).get("name")
    base = cfg.base_model or loaded_from or "unknown"
    name = name or f"{Path(base).name}-anna-embed"
    scored = [r for label, path in (results or {}).items() for r in read_results(path, label)]
    origin_map = {str(k): str(v) for k, v in (origins or {}).items()}
    trained = set(training.get("training_datasets") or cfg.training_datasets)
    hub = hub_id(base)
    dim = _dimension(folder)
    text = [
        f"# {name}",
        "",
        f"A text embedder made with anna-embed {_anna_embed_version()} from `{base}`"
        + (f" ([{hub}](https://huggingface.co/{hub}))" if hub else "")
        + f": {cfg.kind}, {cfg.pooling} pooling, {dim or '?'}-dimensional L2-normalised vectors, cosine "
        f"similarity, up to {cfg.max_length} tokens per text, task instructions "
        f"{'on' if cfg.use_instructions else 'off'}.",
        "",
        "## Base model",
        "",
        f"- base model: `{base}`"
        + (f" (loaded from `{loaded_from}`)" if loaded_from not in (None, base) else ""),
        "- licence of the weights: the base model's",
    ]
    if base == "smollm2-135m-instruct":
        text.append("- weights: GGUF Q4_1 dequantized to float32, a 4-bit approximation of the original")
    mined: list[dict[str, Any]] = []
    if training:
        data_lines, mined = _data_lines(training, origin_map)
        text += ["", "## Training recipe", "", *_recipe(tcfg, training)]
        text += ["", "### Hard negatives and teacher scores", "", *_mining_lines(mined)]
        text += ["", "## Training data", "", *data_lines]
    else:
        text += ["", "## Training", "", "No `training.json` here: this folder was saved without training."]
    text += ["", "## Usage", "", _usage(folder, folder_name or folder.name, cfg, sorted(trained))]
    text += ["", "## Evaluation", "", *_eval_lines(scored, trained)]
    text += [
        "",
        "## Files",
        "",
        f"`{CONFIG_FILE}` (pooling, budgets, prompt templates), `{TRAINING_FILE}` (the resolved training "
        "config, data manifest, steps, tokens), `config_sentence_transformers.json` (the prompts).",
    ]
    return _front_matter(hub, name, scored) + "\n" + "\n".join(text) + "\n"


def write_card(
    folder: str | os.PathLike[str],
    *,
    results: Mapping[str, str | os.PathLike[str]] | None = None,
    origins: Mapping[str, str | os.PathLike[str]] | None = None,
    name: str | None = None,
    folder_name: str | None = None,
) -> Path:
    """(Re)write ``folder/README.md`` atomically from what the folder holds.

    Args:
        folder: A model folder (``anna_embed.json``; ``training.json`` once trained).
        results: ``{label: result folder}`` of ``anna-embed eval`` runs of this model (label ``""`` for
            one run; ``"held-out"`` / ``"validation"`` for adapt's); their scores go into the card and its
            ``model-index``.
        origins: ``{training file: where its records came from}`` (a pipeline's prepared files -> the
            sources it was given), so the card names and licenses the original data; a mined file is
            traced to its input through its mining manifest.
        name: The model's name in the card (default: ``BASE-anna-embed``).
        folder_name: The folder's name in the usage examples (default: its own; a folder being built under
            a temporary name passes its final one).

    Returns:
        The card's path.
    """
    path = Path(folder) / CARD_FILE
    text = build_card(folder, results=results, origins=origins, name=name, folder_name=folder_name)
    with atomic_write(path) as fh:
        fh.write(text)
    return path

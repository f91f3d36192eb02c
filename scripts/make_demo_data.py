"""Build the small demo data shipped in ``src/anna_embed/demo_data`` from the shared copies (dev tool).

    python scripts/make_demo_data.py /path/to/shared/data

Only sets whose licenses allow redistribution are used (see demo_data/LICENSES.md). Selection is seeded
and the train/eval splits are disjoint.
"""

from __future__ import annotations

import json
import random
import sys
from collections import defaultdict
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "anna_embed" / "demo_data"


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def per_label(rows: list[dict], k: int, rng: random.Random) -> list[dict]:
    by = defaultdict(list)
    for r in rows:
        by[r["label"]].append(r)
    out = []
    for label in sorted(by):
        out += rng.sample(by[label], min(k, len(by[label])))
    rng.shuffle(out)
    return out


def main(shared: Path) -> None:
    rng = random.Random(13)
    # --- QNLI (CC BY-SA 4.0): question -> answering Wikipedia sentence
    qnli = [r for r in read(shared / "train" / "qnli_dev_question_sentence.jsonl")]
    rng.shuffle(qnli)
    q_train, q_eval = qnli[:400], qnli[400:550]
    write(
        OUT / "train" / "qnli.jsonl",
        [
            {
                "query": r["query"],
                "positive": r["positive"],
                **({"negative": r["negative"]} if r.get("negative") else {}),
                "task": "QNLI",
            }
            for r in q_train
        ],
    )
    distractors = [r["positive"] for r in qnli[550:900]]
    corpus, qrels, queries = [], [], []
    for i, r in enumerate(q_eval):
        queries.append({"_id": f"q{i}", "text": r["query"]})
        corpus.append({"_id": f"d{i}", "title": "", "text": r["positive"]})
        qrels.append(f"q{i}\td{i}\t1")
        if r.get("negative"):
            corpus.append({"_id": f"n{i}", "title": "", "text": r["negative"]})
    corpus += [{"_id": f"x{j}", "title": "", "text": t} for j, t in enumerate(distractors)]
    ev = OUT / "eval" / "QNLIRetrieval"
    write(ev / "corpus.jsonl", corpus)
    write(ev / "queries.jsonl", queries)
    (ev / "qrels").mkdir(parents=True, exist_ok=True)
    (ev / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels) + "\n")
    # --- SNLI part of the NLI triplets (CC BY-SA 4.0)
    snli = [
        r
        for r in read(shared / "train" / "nli_snli_mnli_dev_triplets.jsonl")
        if r.get("source", "").startswith("snli") and r.get("negative")
    ]
    rng.shuffle(snli)
    write(
        OUT / "train" / "snli.jsonl",
        [
            {"query": r["query"], "positive": r["positive"], "negative": r["negative"], "task": "NLI"}
            for r in snli[:300]
        ],
    )
    # --- Banking77 (CC BY 4.0) and MassiveScenario (CC BY 4.0), MTEB layout, subsampled per label
    bank_train = read(shared / "mteb" / "Banking77Classification" / "train.jsonl")
    bank_test = read(shared / "mteb" / "Banking77Classification" / "test.jsonl")
    bank_tr = per_label(bank_train, 16, rng)
    write(OUT / "eval" / "Banking77Classification" / "train.jsonl", bank_tr)
    write(OUT / "eval" / "Banking77Classification" / "test.jsonl", per_label(bank_test, 6, rng))
    used = {r["text"] for r in bank_tr}
    rest = [r for r in bank_train if r["text"] not in used]
    write(
        OUT / "train" / "banking77.jsonl",
        [{"text": r["text"], "label": r["label"]} for r in per_label(rest, 5, rng)],
    )
    ms_train = read(shared / "mteb" / "MassiveScenarioClassification" / "train.jsonl")
    ms_test = read(shared / "mteb" / "MassiveScenarioClassification" / "test.jsonl")
    strip = lambda rows: [{"text": r["text"], "label": r["label"]} for r in rows]  # noqa: E731
    write(OUT / "eval" / "MassiveScenarioClassification" / "train.jsonl", strip(per_label(ms_train, 40, rng)))
    write(OUT / "eval" / "MassiveScenarioClassification" / "test.jsonl", strip(per_label(ms_test, 25, rng)))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data"))

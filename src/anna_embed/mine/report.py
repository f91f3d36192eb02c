"""What a mining run reports: the counts, the one-line-per-stage summary and the score histogram.

:func:`anna_embed.mine.driver.run` builds the manifest from :func:`mining_counts` and :func:`summary_lines`,
then :func:`write_reports` writes ``NAME.manifest.json``, ``NAME.summary.txt`` and ``NAME.scores.png``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anna_embed.io import atomic_write, write_json

if TYPE_CHECKING:
    from anna_embed.mine.config import FilterResult, MiningQuery


def mining_counts(
    queries: Sequence[MiningQuery],
    cands: Sequence[list[int]],
    is_pos: np.ndarray,
    ranked: np.ndarray,
    result: FilterResult,
    picks: Sequence[np.ndarray],
    n_records: int,
    *,
    num_negatives: int,
) -> dict[str, Any]:
    """The manifest's ``counts``: queries, candidates, what the filter dropped, what was written.

    Args:
        queries: The merged training queries.
        cands: Each query's candidate document ids (retrieved, then given negatives).
        is_pos: ``[Q, C]`` True where a candidate is one of the query's positives.
        ranked: ``[Q, k]`` retrieved ids, ``-1``-padded.
        result: The margin filter's outcome.
        picks: Each query's selected candidate columns.
        n_records: Records written.
        num_negatives: Negatives wanted per query.
    """
    n_sel = np.array([len(p) for p in picks])
    retrieved_pos = [bool(is_pos[r, : int((ranked[r] >= 0).sum())].any()) for r in range(len(queries))]
    return {
        "records_merged_into_queries": sum(len(q.lines) for q in queries),
        "queries": len(queries),
        "positives": sum(len(q.positives) for q in queries),
        "candidates": sum(len(c) for c in cands),
        "queries_positive_retrieved": int(sum(retrieved_pos)),
        "dropped_known_positive": int(result.dropped_positive.sum()),
        "dropped_margin": int(result.dropped_margin.sum()),
        "kept_candidates": int(result.keep.sum()),
        "negatives_selected": int(n_sel.sum()),
        "queries_short": int((n_sel < num_negatives).sum()),
        "queries_without_negatives": int((n_sel == 0).sum()),
        "queries_left_out": len(queries) - n_records,
        "records_written": n_records,
    }


def summary_lines(manifest: dict[str, Any], n_corpus: int, n_extra: int) -> list[str]:
    """One line per stage (candidates, rescoring, filter) from the manifest's counts, config and timings.

    Args:
        manifest: The run manifest (``counts``, ``config``, ``teachers``, ``timings``).
        n_corpus: Documents searched.
        n_extra: Given negatives outside the corpus (rescored, never searched).
    """
    c, cfg, te = manifest["counts"], manifest["config"], manifest["teachers"]
    q = max(c["queries"], 1)
    margins = f"relative {cfg['relative_margin']}, absolute {cfg['absolute_margin']}"
    return [
        f"candidates: {c['queries']} queries (from {c['records_merged_into_queries']} records), corpus "
        f"{n_corpus} documents (+{n_extra} given negatives outside it), retriever {te['retriever']}, "
        f"index {cfg['index']}, bm25 {'on' if cfg['bm25'] else 'off'}: {c['candidates']} candidates "
        f"({c['candidates'] / q:.1f}/query); a positive retrieved for "
        f"{c['queries_positive_retrieved']} queries ({c['queries_positive_retrieved'] / q:.1%})",
        f"rescoring: {c['positives'] + c['candidates']} pairs scored by {te['reranker']} "
        f"({te['reranker_score_kind']}, normalisation {cfg['normalisation']}) in "
        f"{manifest['timings']['rescore_s']:.1f}s",
        f"filter ({margins}): {c['candidates']} candidates -> {c['dropped_known_positive']} known positives, "
        f"{c['dropped_margin']} above the margin ({c['dropped_margin'] / max(c['candidates'], 1):.1%}), "
        f"{c['kept_candidates']} kept; {c['negatives_selected']} negatives selected "
        f"({cfg['sampling']} of window [{cfg['window_start']}, {cfg['window_end']}) by {cfg['rank_by']}); "
        f"{c['queries_short']} queries short of {cfg['num_negatives']} negatives "
        f"({c['queries_without_negatives']} with none); {c['records_written']} records written",
        f"negatives that are another record's positive: {c.get('negatives_other_positive', 'n/a')} of "
        f"{c['negatives_selected']} selected",
    ]


def score_histogram(
    pos: np.ndarray,
    cand: np.ndarray,
    result: FilterResult,
    picks: Sequence[np.ndarray],
    path: Path,
    manifest: dict[str, Any],
) -> None:
    """PNG histogram of normalised teacher scores: positives, selected negatives, dropped by margin."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    selected = np.concatenate([cand[r, cols] for r, cols in enumerate(picks)] or [np.zeros(0)])
    series = [
        ("positives", pos[np.isfinite(pos)]),
        ("kept negatives (selected)", selected),
        ("dropped by margin", cand[result.dropped_margin]),
    ]
    fig, ax = plt.subplots(figsize=(7, 4))
    finite = np.concatenate([s for _, s in series])
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    bins = np.linspace(low, max(high, low + 1e-6), 51)
    for label, values in series:
        ax.hist(values, bins=bins, histtype="step", linewidth=1.5, label=f"{label} (n={len(values)})")
    te = manifest["teachers"]
    ax.set_xlabel(f"normalised teacher score ({te['reranker']}, {manifest['config']['normalisation']})")
    ax.set_ylabel("count")
    ax.set_title(f"mined {Path(manifest['train']).name}: retriever {te['retriever']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    with atomic_write(path, "wb") as fh:
        fh.write(buf.getvalue())


def write_reports(
    manifest: dict[str, Any],
    folder: Path,
    stem: str,
    *,
    pos: np.ndarray,
    cand: np.ndarray,
    result: FilterResult,
    picks: Sequence[np.ndarray],
) -> None:
    """Write ``STEM.manifest.json``, ``STEM.summary.txt`` (``manifest["summary"]``) and ``STEM.scores.png``.

    Args:
        manifest: The run manifest, its ``summary`` lines included.
        folder: Where the three files go.
        stem: Their common name.
        pos: ``[Q, P]`` normalised positive scores, NaN-padded.
        cand: ``[Q, C]`` normalised candidate scores, NaN-padded.
        result: The margin filter's outcome.
        picks: Each query's selected candidate columns.
    """
    write_json(folder / f"{stem}.manifest.json", manifest)
    with atomic_write(folder / f"{stem}.summary.txt") as fh:
        fh.write("\n".join(manifest["summary"]) + "\n")
    score_histogram(pos, cand, result, picks, folder / f"{stem}.scores.png", manifest)

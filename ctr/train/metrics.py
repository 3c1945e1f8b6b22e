"""AUC, logloss and GAUC on numpy arrays (exact, tie-aware)."""

import numpy as np

EPS = 1e-7


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the Mann–Whitney statistic with average ranks for ties.

    Returns ``nan`` when only one class is present.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # boundaries of runs of equal values
    starts = np.r_[0, np.flatnonzero(sorted_x[1:] != sorted_x[:-1]) + 1]
    ends = np.r_[starts[1:], x.size]
    avg = (starts + ends + 1) / 2.0  # 1-based average rank of each run
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy with probabilities clipped to [1e-7, 1 - 1e-7]."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """Group AUC: Σ_u n_u·AUC_u / Σ_u n_u over groups that have both classes (n_u = impressions).

    Groups with a single class have no AUC and are left out (DIN's convention).
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(groups, kind="mergesort")
    g, y, s = np.asarray(groups)[order], labels[order], scores[order]
    bounds = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1, g.size]
    total, weight = 0.0, 0
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        pos = int(y[a:b].sum())
        if 0 < pos < b - a:
            total += (b - a) * auc(y[a:b], s[a:b])
            weight += b - a
    return total / weight if weight else float("nan")


def summarize(labels: np.ndarray, probs: np.ndarray, groups: np.ndarray | None = None) -> dict[str, float]:
    """All metrics for one split: ``auc``, ``logloss``, ``gauc`` (when groups are given) and ``rows``."""
    out = {"auc": auc(labels, probs), "logloss": logloss(labels, probs), "rows": float(len(labels))}
    if groups is not None:
        out["gauc"] = gauc(labels, probs, groups)
    return out

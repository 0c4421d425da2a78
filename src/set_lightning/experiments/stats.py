"""Statistics of a budget-ladder study: the convergence rule and a two-level bootstrap of a ratio of means.

* :func:`ladder_verdicts`: a configuration is *converged* at budget ``T`` when doubling the budget
  changes its mean best validation MSE by less than ``tol`` (2%); *not converged* when the doubled
  budget does better by more; *no gain* when it does worse by more (the model over-fits with its
  recipe: like a converged one, it is not climbed further); *unknown* while the next rung is missing.
* :func:`welch_p_value`, :func:`paired_comparison`, :func:`benjamini_hochberg`: the tests of a sweep or
  study report (across seeds; paired over test trajectories; the false discovery rate over a table).
* :func:`hierarchical_ratio`: model A against model B when each has several seeds and every seed
  is scored on the same test trajectories. The bootstrap resamples both levels: seeds (each model's
  own, independently) and trajectories (one draw shared by both models: the trajectories are
  paired). The interval therefore widens with the spread between seeds, which a bootstrap over
  seed-averaged trajectories alone ignores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np


def welch_p_value(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    """Two-sided Welch's t-test p-value; ``None`` when either side has fewer than 2 values."""
    from scipy.stats import ttest_ind

    if len(a) < 2 or len(b) < 2:
        return None
    if np.std(a) == 0 and np.std(b) == 0:
        return 1.0 if np.mean(a) == np.mean(b) else 0.0
    return float(ttest_ind(a, b, equal_var=False).pvalue)


@dataclass
class PairedComparison:
    """Model A against model B, scored on the same test trajectories.

    ``ratio`` is ``mean(a) / mean(b)`` (below 1: A has the lower mean MSE) with its paired
    bootstrap 95% interval ``[ratio_lo, ratio_hi]`` (trajectories resampled with replacement, the
    same indices for both models); ``p_wilcoxon`` is the two-sided Wilcoxon signed-rank p-value of
    the per-trajectory differences (is A better on a typical trajectory?); ``frac_a_better`` the
    share of trajectories on which A's error is lower.
    """

    ratio: float
    ratio_lo: float
    ratio_hi: float
    p_wilcoxon: float
    frac_a_better: float


def paired_comparison(a: Sequence[float], b: Sequence[float], n_boot: int = 10000, seed: int = 0) -> PairedComparison:
    """Compare per-trajectory errors ``a`` and ``b`` (same trajectories, same order).

    Shapes: a, b ``(S,)``.
    """
    from scipy.stats import wilcoxon

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"paired errors must be two 1-D arrays of the same length >= 2, got {a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    ratios = a[idx].mean(1) / b[idx].mean(1)
    lo, hi = np.quantile(ratios, [0.025, 0.975])
    p = float(wilcoxon(a, b).pvalue) if np.any(a != b) else 1.0
    return PairedComparison(float(a.mean() / b.mean()), float(lo), float(hi), p, float(np.mean(a < b)))


def benjamini_hochberg(p_values: Sequence[Optional[float]]) -> list[Optional[float]]:
    """Benjamini-Hochberg adjusted p-values (false discovery rate); ``None`` entries are skipped."""
    idx = [i for i, p in enumerate(p_values) if p is not None]
    out: list[Optional[float]] = [None] * len(p_values)
    if not idx:
        return out
    p = np.array([p_values[i] for i in idx], dtype=np.float64)
    order = np.argsort(p)
    m = len(p)
    adj = np.minimum.accumulate((p[order] * m / np.arange(1, m + 1))[::-1])[::-1]
    for rank, j in enumerate(order):
        out[idx[j]] = float(min(adj[rank], 1.0))
    return out

#: relative change of the mean best validation MSE between rungs below which a rung is converged
CONVERGED_TOL = 0.02
#: the verdicts after which doubling the budget did not pay: the ladder does not climb past such a rung
SETTLED = ("converged", "no gain")


@dataclass(frozen=True)
class Verdict:
    """The ladder's verdict at one budget: ``converged``, ``not converged``, ``no gain`` or ``unknown``.

    ``change`` is ``mean(2T) / mean(T) - 1`` (negative: the doubled budget did better), ``None`` when
    the next rung is missing.
    """

    budget: float
    verdict: str
    change: Optional[float]


def ladder_verdicts(means: Mapping[float, float], tol: float = CONVERGED_TOL) -> list[Verdict]:
    """The verdict of every rung from ``{budget: mean best validation MSE}`` (rungs ``T, 2T, 4T, ...``).

    The rung ``T`` is judged by the rung ``2T``: ``|mean(2T) / mean(T) - 1| < tol`` is converged. A
    curve still falling at ``2T`` by ``tol`` or more is not converged; one rising by ``tol`` or more is
    ``no gain`` (more budget made it worse: :data:`SETTLED`, as converged, for the ladder's climb); the top
    rung is ``unknown`` (nothing to compare it with).
    """
    budgets = sorted(means)
    out = []
    for b in budgets:
        nxt = next((c for c in budgets if np.isclose(c, 2 * b, rtol=1e-6)), None)
        if nxt is None:
            out.append(Verdict(b, "unknown", None))
            continue
        change = means[nxt] / means[b] - 1.0
        verdict = "converged" if abs(change) < tol else "not converged" if change < 0 else "no gain"
        out.append(Verdict(b, verdict, change))
    return out


def change_se(at_t: Sequence[float], at_2t: Sequence[float]) -> float:
    """Standard error of the relative change ``mean(at_2t) / mean(at_t) - 1`` from the seeds' spread.

    Delta method, the two rungs' seeds taken as independent: ``r * sqrt(s_2t^2 / (n_2t m_2t^2) + s_t^2 /
    (n_t m_t^2))`` with ``r = m_2t / m_t``, ``s`` the sample standard deviations. NaN with fewer than two
    seeds on either rung. Beside the ladder's verdict it says whether a change of the size of the tolerance
    can be told from seed noise at all.
    """
    a, b = np.asarray(at_t, dtype=float), np.asarray(at_2t, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    ma, mb = a.mean(), b.mean()
    rel = np.var(b, ddof=1) / (len(b) * mb**2) + np.var(a, ddof=1) / (len(a) * ma**2)
    return float(mb / ma * np.sqrt(rel))


def first_converged(verdicts: Sequence[Verdict]) -> Optional[float]:
    """The lowest budget from which doubling does not pay (:data:`SETTLED`), or ``None``."""
    return next((v.budget for v in verdicts if v.verdict in SETTLED), None)


@dataclass(frozen=True)
class RatioCI:
    """``mean(A) / mean(B)`` with a bootstrap 95% interval ``[lo, hi]``."""

    ratio: float
    lo: float
    hi: float

    @property
    def excludes_one(self) -> bool:
        return self.hi < 1.0 or self.lo > 1.0


def hierarchical_ratio(a: np.ndarray, b: np.ndarray, n_boot: int = 4000, seed: int = 0) -> RatioCI:
    """Ratio of mean errors of A and B with a two-level (seeds, then trajectories) bootstrap interval.

    Each replicate draws ``n_a`` of A's seeds and ``n_b`` of B's seeds with replacement (independently:
    the models' seeds are not paired) and ``S`` trajectories with replacement, the same draw for both
    models (they are scored on the same trajectories), and takes the ratio of the two means.

    Shapes: a ``(n_a, S)``, b ``(n_b, S)``: per-seed, per-trajectory errors (rows: seeds).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or a.shape[1] < 2:
        raise ValueError(f"a and b must be (seeds, trajectories) with the same trajectories, got {a.shape}, {b.shape}")
    rng = np.random.default_rng(seed)
    n_traj = a.shape[1]
    # trajectory draws as counts (weights), shared by A and B: (n_boot, S)
    draws = rng.integers(0, n_traj, size=(n_boot, n_traj))
    weights = np.zeros((n_boot, n_traj))
    np.add.at(weights, (np.arange(n_boot)[:, None], draws), 1.0)

    def means(e: np.ndarray) -> np.ndarray:
        seeds = rng.integers(0, e.shape[0], size=(n_boot, e.shape[0]))
        per_traj = e[seeds].mean(axis=1)  # (n_boot, S): the drawn seeds' average per trajectory
        return (per_traj * weights).sum(axis=1) / n_traj

    ratios = means(a) / means(b)
    lo, hi = np.quantile(ratios, [0.025, 0.975])
    return RatioCI(float(a.mean() / b.mean()), float(lo), float(hi))

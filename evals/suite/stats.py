"""The estimators every eval uses, each returning an :class:`Estimate` with a 95% interval, its
method and the independent unit it counts (mazes, levels, environments).

Why these and not value ± 1.96·stderr: the evals' proportions sit near 0 and 1 on a few hundred
mazes, where the normal interval has width 0 or spills past [0, 1], and many evals take several
correlated samples per maze (positions, frames, source/target pairs), where a standard error over
samples is too small. So proportions get a Wilson (or Clopper–Pearson) interval over units,
means of independent units a Student t interval, correlated samples a cluster bootstrap over whole
units (or, for a mean over a two-way design such as source × target mazes, the two-way
cluster-robust variance), and a metric that cannot be computed says why instead of printing NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
from scipy import stats as _scipy

LEVEL = 0.95
RESAMPLES = 2000
BOOTSTRAP_SEED = 0
ArrayLike = Union[Sequence[float], np.ndarray]


@dataclass(frozen=True)
class Estimate:
    """A number with its 95% interval, how the interval was made and over what independent unit."""

    value: float
    stderr: Optional[float]
    ci_low: Optional[float]
    ci_high: Optional[float]
    n: int
    method: str
    unit: str
    note: Optional[str] = None  # why the value is undefined (NaN), or a caveat worth a reader's eye

    @property
    def defined(self) -> bool:
        """False when the value could not be computed (``note`` says why)."""
        return not math.isnan(self.value)



def undefined(reason: str, n: int = 0, unit: str = "units", method: str = "undefined") -> Estimate:
    """An estimate that cannot be computed, with the reason a reader sees in the row and the report."""
    return Estimate(math.nan, None, None, None, int(n), method, unit, note=reason)


def _singular(unit: str) -> str:
    """``mazes`` → ``maze`` (for "one maze: no interval")."""
    return unit[:-1] if unit.endswith("s") else unit


def _t(n: int) -> float:
    return float(_scipy.t.ppf(0.5 + LEVEL / 2, max(n - 1, 1)))


_Z = float(_scipy.norm.ppf(0.5 + LEVEL / 2))


# -- proportions ----------------------------------------------------------------------------------
def wilson_interval(successes: float, n: int) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (never of width 0, never outside [0, 1])."""
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + _Z ** 2 / (2 * n)) / (1 + _Z ** 2 / n)
    half = _Z * math.sqrt(p * (1 - p) / n + _Z ** 2 / (4 * n * n)) / (1 + _Z ** 2 / n)
    # exact ends at 0 and n (the formula gives them only up to rounding)
    return (0.0 if successes <= 0 else max(0.0, centre - half)), (1.0 if successes >= n else min(1.0, centre + half))


def clopper_pearson_interval(successes: int, n: int) -> tuple[float, float]:
    """The exact (Clopper–Pearson) interval of a binomial proportion."""
    if n <= 0:
        return math.nan, math.nan
    alpha = 1 - LEVEL
    low = 0.0 if successes == 0 else float(_scipy.beta.ppf(alpha / 2, successes, n - successes + 1))
    high = 1.0 if successes == n else float(_scipy.beta.ppf(1 - alpha / 2, successes + 1, n - successes))
    return low, high


def proportion(flags: Union[ArrayLike, int], n: Optional[int] = None, unit: str = "mazes",
               method: str = "wilson") -> Estimate:
    """The fraction of independent ``unit``s where ``flags`` is true (or ``flags`` successes of ``n``)."""
    if n is None:
        array = np.asarray(flags, dtype=float)
        successes, n = float(array.sum()), int(array.size)
    else:
        successes = float(flags)
    if n == 0:
        return undefined(f"no {unit} to count", 0, unit, method)
    p = successes / n
    if method == "wilson":
        low, high = wilson_interval(successes, n)
    elif method == "clopper-pearson":
        low, high = clopper_pearson_interval(int(round(successes)), n)
    else:
        raise ValueError(f"method must be wilson or clopper-pearson, got {method!r}")
    return Estimate(p, math.sqrt(p * (1 - p) / n), low, high, n, method, unit)


# -- means and differences ------------------------------------------------------------------------
def mean(values: ArrayLike, unit: str = "mazes") -> Estimate:
    """The mean of independent per-unit values with a Student t interval."""
    array = np.asarray(values, dtype=float)
    n = int(array.size)
    if n == 0:
        return undefined(f"no {unit}", 0, unit, "t")
    m = float(array.mean())
    if n < 2:
        return Estimate(m, None, None, None, n, "t", unit, note=f"one {_singular(unit)}: no interval")
    stderr = float(array.std(ddof=1) / math.sqrt(n))
    half = _t(n) * stderr
    return Estimate(m, stderr, m - half, m + half, n, "t", unit)


def paired_difference(a: ArrayLike, b: ArrayLike, unit: str = "mazes") -> Estimate:
    """Mean of a − b over units measured under both conditions (t interval on the differences)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples need equal shapes, got {a.shape} and {b.shape}")
    estimate = mean(a - b, unit)
    return replace(estimate, method="paired t")


def two_sample(a: ArrayLike, b: ArrayLike, unit: str = "mazes") -> Estimate:
    """Mean of a − mean of b for two independent samples (Welch's t interval)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size < 2 or b.size < 2:
        return undefined("each sample needs at least two units", int(a.size + b.size), unit, "welch")
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    diff = float(a.mean() - b.mean())
    stderr = math.sqrt(va + vb)
    if stderr == 0:
        return Estimate(diff, 0.0, diff, diff, int(a.size + b.size), "welch", unit,
                        note="no variation in either sample")
    df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    half = float(_scipy.t.ppf(0.5 + LEVEL / 2, df)) * stderr
    return Estimate(diff, stderr, diff - half, diff + half, int(a.size + b.size), "welch", unit)


def proportion_difference(k1: int, n1: int, k2: int, n2: int, unit: str = "mazes") -> Estimate:
    """p1 − p2 of two independent binomial samples (Newcombe's hybrid score interval)."""
    if n1 == 0 or n2 == 0:
        return undefined(f"an empty sample of {unit}", n1 + n2, unit, "newcombe")
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1)
    l2, u2 = wilson_interval(k2, n2)
    diff = p1 - p2
    low = diff - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = diff + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    stderr = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    return Estimate(diff, stderr, low, high, n1 + n2, "newcombe", unit)


def median(values: ArrayLike, unit: str = "mazes") -> Estimate:
    """The median of independent per-unit values with the distribution-free order-statistic interval."""
    array = np.sort(np.asarray(values, dtype=float))
    n = int(array.size)
    if n == 0:
        return undefined(f"no {unit}", 0, unit, "order statistics")
    value = float(np.median(array))
    # the ranks j < k with P(X_(j) <= median <= X_(k)) >= LEVEL from Binomial(n, 1/2)
    low_rank = int(_scipy.binom.ppf((1 - LEVEL) / 2, n, 0.5))
    high_rank = n - low_rank
    if low_rank < 1:
        return Estimate(value, None, float(array[0]), float(array[-1]), n, "order statistics", unit,
                        note=f"too few {unit} for a 95% median interval; the range is shown")
    return Estimate(value, None, float(array[low_rank - 1]), float(array[high_rank]), n, "order statistics", unit)


# -- clustered samples ----------------------------------------------------------------------------
def cluster_bootstrap_each(statistic: Callable[[np.ndarray], ArrayLike], clusters: ArrayLike, unit: str,
                           seed: int = BOOTSTRAP_SEED, resamples: int = RESAMPLES,
                           batched: bool = False) -> list[Estimate]:
    """Several statistics of clustered samples, each with a percentile interval from resampling
    whole clusters: ``statistic(indices)`` returns a vector (say, the coefficients of one fit) from
    the samples at ``indices`` (repeats allowed), computed once per resample for every component.

    ``clusters`` gives each sample's cluster (maze, level, env). The point estimates use every
    sample once; ``n`` is the number of clusters, the independent units.

    ``batched``: with one sample per cluster, ``statistic`` takes a (resamples, n) array of index
    rows and returns a (resamples, components) array, one call for a block of resamples instead of
    a Python call per resample (the same resamples, so the same interval).
    """
    labels = np.asarray(clusters)
    names, inverse = np.unique(labels, return_inverse=True)
    singletons = len(names) == labels.size  # one sample per unit: the cluster index is the sample
    if batched and not singletons:
        raise ValueError("a batched statistic needs one sample per cluster")
    everything = np.arange(labels.size)
    values = np.asarray(statistic(everything[None]), dtype=float)[0] if batched else \
        np.atleast_1d(np.asarray(statistic(everything), dtype=float))
    if len(names) < 2:
        return [_no_interval(float(v), len(names), unit) for v in values]
    chosen = _resampled_clusters(len(names), seed, resamples)
    order = None
    if singletons:
        order = np.empty(len(names), dtype=np.int64)
        order[inverse.reshape(-1)] = np.arange(labels.size)
    draws = np.empty((resamples, values.size))
    if batched:
        block = max(1, _BATCH_ELEMENTS // len(names))  # bounded memory however many units
        for start in range(0, resamples, block):
            draws[start:start + block] = np.asarray(statistic(order[chosen[start:start + block]]), dtype=float)
    else:
        members = None if singletons else [np.flatnonzero(inverse == g) for g in range(len(names))]
        for r in range(resamples):
            draws[r] = statistic(order[chosen[r]] if singletons else np.concatenate([members[g] for g in chosen[r]]))
    return [_percentile(float(v), draws[:, k], len(names), unit) for k, v in enumerate(values)]


_BATCH_ELEMENTS = 1 << 22  # index entries per block of a batched bootstrap


def _resampled_clusters(groups: int, seed: int, resamples: int) -> np.ndarray:
    """(resamples, groups) cluster indices drawn with replacement, in one draw: the same stream as
    drawing them one resample at a time."""
    return np.random.default_rng(seed).integers(0, groups, (resamples, groups))


def _no_interval(value: float, groups: int, unit: str) -> Estimate:
    """A cluster-bootstrap estimate over fewer than two units: the value, no interval."""
    return Estimate(value, None, None, None, groups, "cluster bootstrap", unit, note=f"one {_singular(unit)}: no interval")


def _percentile(value: float, draws: np.ndarray, groups: int, unit: str) -> Estimate:
    """The percentile interval of one statistic's bootstrap draws (undefined ones left out)."""
    finite = draws[np.isfinite(draws)]
    if finite.size < draws.size // 2:
        return replace(undefined("the statistic is undefined on most resamples", groups, unit, "cluster bootstrap"),
                       value=value)
    low, high = np.quantile(finite, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return Estimate(value, float(finite.std(ddof=1)), float(low), float(high), groups, "cluster bootstrap", unit)


def cluster_bootstrap(statistic: Callable[[np.ndarray], float], clusters: ArrayLike, unit: str,
                      seed: int = BOOTSTRAP_SEED, resamples: int = RESAMPLES) -> Estimate:
    """One statistic of clustered samples (see :func:`cluster_bootstrap_each`)."""
    return cluster_bootstrap_each(lambda idx: [statistic(idx)], clusters, unit, seed, resamples)[0]


def cluster_mean(values: ArrayLike, clusters: ArrayLike, unit: str, seed: int = BOOTSTRAP_SEED) -> Estimate:
    """The mean over all samples, its interval from a bootstrap over whole clusters."""
    array = np.asarray(values, dtype=float)
    if np.unique(np.asarray(clusters)).size == array.size:  # one sample per cluster: all resamples at once
        return cluster_bootstrap_each(lambda rows: array[rows].mean(axis=1, keepdims=True), clusters, unit, seed,
                                      batched=True)[0]
    return cluster_bootstrap_means(array[:, None], clusters, unit, seed=seed)


def cluster_bootstrap_means(columns: np.ndarray, clusters: ArrayLike, unit: str,
                            combine: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                            seed: int = BOOTSTRAP_SEED, resamples: int = RESAMPLES) -> Estimate:
    """``combine`` of the means of the columns of ``columns`` (samples × k), its interval from
    resampling whole clusters, every resample at once: a resample's means are its clusters' sums
    over its clusters' sizes, the resamples :func:`cluster_bootstrap_each` draws. ``combine`` maps
    (resamples, k) means to (resamples,) values (default: the first column's mean)."""
    columns = np.asarray(columns, dtype=float).reshape(len(columns), -1)
    combine = combine or (lambda means: means[:, 0])
    _, inverse = np.unique(np.asarray(clusters), return_inverse=True)
    inverse = inverse.reshape(-1)
    groups = int(inverse.max()) + 1 if inverse.size else 0
    value = float(combine(columns.mean(0)[None])[0])
    if groups < 2:
        return _no_interval(value, groups, unit)
    sums = np.stack([np.bincount(inverse, weights=column, minlength=groups) for column in columns.T], axis=1)
    sizes = np.bincount(inverse, minlength=groups).astype(float)
    chosen = _resampled_clusters(groups, seed, resamples)
    draws = np.empty(resamples)
    block = max(1, _BATCH_ELEMENTS // (groups * columns.shape[1]))
    for start in range(0, resamples, block):
        picked = chosen[start:start + block]
        with np.errstate(divide="ignore", invalid="ignore"):
            draws[start:start + block] = combine(sums[picked].sum(1) / sizes[picked].sum(1)[:, None])
    return _percentile(value, draws, groups, unit)


def weighted_bootstrap(statistic: Callable[[np.ndarray], ArrayLike], clusters: ArrayLike, unit: str,
                       seed: int = BOOTSTRAP_SEED, resamples: int = RESAMPLES) -> Estimate:
    """``statistic(weights)`` of clustered samples, where ``weights`` counts how often each sample is
    drawn: all ones for the value, then (block, samples) arrays, one row per resample, for the
    percentile interval. The resamples are :func:`cluster_bootstrap_each`'s, so the interval is the
    one ``cluster_bootstrap(lambda idx: statistic(np.bincount(idx, minlength=samples)))`` gives, from
    a few array operations per block instead of a Python call per resample. The method is
    ``bootstrap`` when every sample is its own cluster, else ``cluster bootstrap``."""
    _, inverse = np.unique(np.asarray(clusters), return_inverse=True)
    inverse = inverse.reshape(-1)
    samples, groups = inverse.size, int(inverse.max()) + 1 if inverse.size else 0
    method = "bootstrap" if groups == samples else "cluster bootstrap"
    value = float(np.asarray(statistic(np.ones(samples)), dtype=float))
    if groups < 2:
        return replace(_no_interval(value, groups, unit), method=method)
    chosen = _resampled_clusters(groups, seed, resamples)
    draws = np.empty(resamples)
    block = max(1, _BATCH_ELEMENTS // samples)  # a block's counts per sample, bounded however many samples
    for start in range(0, resamples, block):
        picked = chosen[start:start + block]
        rows = np.arange(len(picked))[:, None] * groups
        counts = np.bincount((rows + picked).reshape(-1), minlength=len(picked) * groups).reshape(len(picked), groups)
        draws[start:start + block] = np.asarray(statistic(counts[:, inverse].astype(float)), dtype=float)
    return replace(_percentile(value, draws, groups, unit), method=method)


def bootstrap(statistic: Callable[[np.ndarray], float], n: int, unit: str, seed: int = BOOTSTRAP_SEED,
              resamples: int = RESAMPLES, batched: bool = False) -> Estimate:
    """``statistic(indices)`` over ``n`` independent units with a percentile bootstrap interval
    (``batched``: ``statistic`` maps (resamples, n) index rows to (resamples,) values)."""
    if batched:
        return bootstrap_each(lambda rows: np.asarray(statistic(rows))[:, None], n, unit, seed, resamples, True)[0]
    return bootstrap_each(lambda idx: [statistic(idx)], n, unit, seed, resamples)[0]


def bootstrap_each(statistic: Callable[[np.ndarray], ArrayLike], n: int, unit: str, seed: int = BOOTSTRAP_SEED,
                   resamples: int = RESAMPLES, batched: bool = False) -> list[Estimate]:
    """Each component of the vector ``statistic(indices)`` over ``n`` independent units, with a
    percentile bootstrap interval from the same resamples (``batched``: see
    :func:`cluster_bootstrap_each`)."""
    return [replace(e, method="bootstrap")
            for e in cluster_bootstrap_each(statistic, np.arange(n), unit, seed, resamples, batched)]


def two_way_cluster_mean(values: ArrayLike, first: ArrayLike, second: ArrayLike, unit: str) -> Estimate:
    """The mean of samples indexed by two crossed units (e.g. source and target maze), with the
    two-way cluster-robust variance of Cameron, Gelbach and Miller (V₁ + V₂ − V₁₂) and a t interval
    on min(G₁, G₂) − 1 degrees of freedom; ``n`` is the smaller number of clusters."""
    y = np.asarray(values, dtype=float)
    a, b = np.asarray(first), np.asarray(second)
    if y.size == 0:
        return undefined(f"no {unit}", 0, unit, "two-way cluster")
    m = float(y.mean())
    residual = y - m

    def one_way(labels: np.ndarray) -> tuple[float, int]:
        _, inverse = np.unique(labels, return_inverse=True, axis=0)
        inverse = inverse.reshape(-1)
        groups = int(inverse.max()) + 1
        sums = np.bincount(inverse, weights=residual, minlength=groups)
        correction = groups / (groups - 1) if groups > 1 else math.nan
        return float(correction * (sums ** 2).sum() / y.size ** 2), groups

    va, ga = one_way(a)
    vb, gb = one_way(b)
    vab, _ = one_way(np.stack([a, b], axis=1))
    groups = min(ga, gb)
    if groups < 2:
        return Estimate(m, None, None, None, groups, "two-way cluster", unit, note="one cluster: no interval")
    variance = va + vb - vab
    if variance <= 0:  # can happen in small samples; the larger one-way variance is the safe fallback
        variance = max(va, vb)
    stderr = math.sqrt(variance)
    half = _t(groups) * stderr
    return Estimate(m, stderr, m - half, m + half, groups, "two-way cluster", unit)


# -- regression and rank correlation --------------------------------------------------------------
def slope(x: ArrayLike, y: ArrayLike) -> float:
    """The least-squares slope of y on x (NaN when x does not vary)."""
    return float(slope_rows(x, np.asarray(y, dtype=float)[None])[0])


def slope_rows(x: ArrayLike, y_rows: np.ndarray) -> np.ndarray:
    """:func:`slope` of each row of ``y_rows`` on ``x`` (a batched bootstrap's resamples)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y_rows, dtype=float)
    spread = ((x - x.mean()) ** 2).sum()
    if spread == 0:
        return np.full(len(y), math.nan)
    return ((x - x.mean()) * (y - y.mean(1, keepdims=True))).sum(1) / spread


def spearman_rows(x: ArrayLike, y_rows: np.ndarray) -> np.ndarray:
    """:func:`spearman` of ``x`` with each row of ``y_rows`` (NaN where either side is constant):
    the Pearson correlation of the average ranks, as scipy computes it."""
    x, y = np.asarray(x, dtype=float), np.asarray(y_rows, dtype=float)
    out = np.full(len(y), math.nan)
    if x.size < 2 or np.ptp(x) == 0:
        return out
    rx = _scipy.rankdata(x)
    ry = _scipy.rankdata(y, axis=1)
    rx, ry = rx - rx.mean(), ry - ry.mean(1, keepdims=True)
    varying = np.ptp(y, axis=1) > 0
    r = ry[varying]
    out[varying] = (r @ rx) / np.sqrt((r * r).sum(1) * (rx * rx).sum())
    return np.clip(out, -1.0, 1.0)


def spearman(x: ArrayLike, y: ArrayLike) -> Optional[float]:
    """Spearman's rank correlation, or None when either side is constant (undefined)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(_scipy.spearmanr(x, y).statistic)


# -- verdicts -------------------------------------------------------------------------------------
HELD, NOT_HELD, UNDETERMINED = "held", "not held", "undetermined"


def verdict(value: Optional[float], ci_low: Optional[float], ci_high: Optional[float],
            minimum: Optional[float] = None, maximum: Optional[float] = None) -> str:
    """held / not held / undetermined for ``minimum <= value <= maximum`` from the interval: held
    when the whole interval satisfies the bounds, not held when none of it does, undetermined
    when it straddles a bound or the value is undefined. Without an interval the point decides."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return UNDETERMINED
    low = value if ci_low is None else ci_low
    high = value if ci_high is None else ci_high
    inside = (minimum is None or low >= minimum) and (maximum is None or high <= maximum)
    outside = (minimum is not None and high < minimum) or (maximum is not None and low > maximum)
    return HELD if inside else NOT_HELD if outside else UNDETERMINED


def error_bars(estimates: Sequence[Any]) -> np.ndarray:
    """(2, N) matplotlib error-bar lengths below and above each value from its 95% interval (0 without
    one); ``estimates`` are Estimates or anything else with ``value``, ``ci_low`` and ``ci_high`` (Metric rows)."""
    low = [e.value - e.ci_low if e.ci_low is not None else 0.0 for e in estimates]
    high = [e.ci_high - e.value if e.ci_high is not None else 0.0 for e in estimates]
    return np.clip(np.nan_to_num(np.array([low, high], dtype=float)), 0, None)


def as_row(estimate: Estimate) -> dict[str, Any]:
    """The metric-row fields of an estimate."""
    return {"value": estimate.value, "stderr": estimate.stderr, "ci_low": estimate.ci_low,
            "ci_high": estimate.ci_high, "n": estimate.n, "method": estimate.method, "unit": estimate.unit,
            "note": estimate.note}

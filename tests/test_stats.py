"""evals/suite/stats against independent implementations (scipy, statsmodels) and against
simulations with a known answer: coverage of the intervals at the evals' sample sizes and
clustering, and a correlated case where the naive standard error is visibly too small."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from shardlab.evals.suite import stats

statsmodels = pytest.importorskip("statsmodels", reason="statsmodels (the test extra) checks the estimators")
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint  # noqa: E402


@pytest.mark.parametrize("k,n", [(0, 10), (1, 10), (5, 10), (10, 10), (0, 300), (37, 300), (299, 300), (300, 300)])
def test_proportion_intervals_match_statsmodels(k, n):
    wilson = stats.proportion(k, n)
    assert (wilson.ci_low, wilson.ci_high) == pytest.approx(proportion_confint(k, n, method="wilson"), abs=1e-12)
    exact = stats.proportion(k, n, method="clopper-pearson")
    assert (exact.ci_low, exact.ci_high) == pytest.approx(proportion_confint(k, n, method="beta"), abs=1e-9)
    assert wilson.value == exact.value == k / n and wilson.n == n


@pytest.mark.parametrize("flags", [[1] * 50, [0] * 50])
def test_a_proportion_of_0_or_1_has_an_interval_of_positive_width(flags):
    estimate = stats.proportion(flags, unit="mazes")
    assert estimate.ci_high - estimate.ci_low > 0.05
    assert estimate.ci_low <= estimate.value <= estimate.ci_high
    assert estimate.unit == "mazes" and estimate.method == "wilson"


def test_mean_paired_and_welch_match_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.exponential(size=40), rng.normal(1.0, 2.0, size=40)
    m = stats.mean(a)
    assert (m.ci_low, m.ci_high) == pytest.approx(scipy_stats.t.interval(0.95, 39, loc=a.mean(),
                                                                         scale=scipy_stats.sem(a)))
    paired = stats.paired_difference(a, b)
    ci = scipy_stats.ttest_rel(a, b).confidence_interval(0.95)
    assert (paired.ci_low, paired.ci_high) == pytest.approx((ci.low, ci.high))
    welch = stats.two_sample(a, b[:25])
    ci = scipy_stats.ttest_ind(a, b[:25], equal_var=False).confidence_interval(0.95)
    assert (welch.ci_low, welch.ci_high) == pytest.approx((ci.low, ci.high))
    assert welch.value == pytest.approx(a.mean() - b[:25].mean())


@pytest.mark.parametrize("k1,n1,k2,n2", [(40, 50, 20, 50), (300, 300, 150, 300), (3, 10, 0, 12)])
def test_proportion_difference_matches_statsmodels_newcombe(k1, n1, k2, n2):
    estimate = stats.proportion_difference(k1, n1, k2, n2)
    low, high = confint_proportions_2indep(k1, n1, k2, n2, method="newcomb", compare="diff")
    assert (estimate.ci_low, estimate.ci_high) == pytest.approx((low, high), abs=1e-9)


def test_two_way_cluster_matches_statsmodels_ols():
    import statsmodels.api as sm

    rng = np.random.default_rng(1)
    source, target = rng.integers(0, 15, 400), rng.integers(0, 25, 400)
    y = rng.normal(size=15)[source] + rng.normal(size=25)[target] + rng.normal(size=400)
    estimate = stats.two_way_cluster_mean(y, source, target, "mazes")
    fit = sm.OLS(y, np.ones((len(y), 1))).fit(cov_type="cluster", cov_kwds={"groups": np.column_stack([source, target])})
    assert estimate.value == pytest.approx(fit.params[0])
    assert estimate.stderr == pytest.approx(fit.bse[0], rel=1e-9)
    assert estimate.n == 15


def test_cluster_bootstrap_widens_the_interval_of_strongly_correlated_samples():
    """30 mazes × 20 positions whose values share a maze effect: the naive t interval over the
    600 samples is several times too narrow; the cluster bootstrap's is about the one over the
    30 per-maze means."""
    rng = np.random.default_rng(2)
    mazes = np.repeat(np.arange(30), 20)
    values = rng.normal(size=30)[mazes] + 0.1 * rng.normal(size=600)
    naive = stats.mean(values)
    clustered = stats.cluster_mean(values, mazes, "mazes")
    per_maze = stats.mean(values.reshape(30, 20).mean(axis=1))
    assert clustered.n == 30 and naive.n == 600
    assert clustered.stderr > 3 * naive.stderr
    assert clustered.stderr == pytest.approx(per_maze.stderr, rel=0.2)
    assert clustered.value == pytest.approx(values.mean())


@pytest.mark.parametrize("clustered", [False, True], ids=["one sample per unit", "clusters of four"])
def test_the_weighted_bootstrap_is_the_index_bootstrap_of_the_same_resamples(clustered):
    """weighted_bootstrap hands the statistic every resample's draw counts at once; the interval must
    be the one the per-resample index bootstrap gives on the same resamples (a Python loop over
    bincounts of the drawn indices), for a ratio statistic whose value depends on the weights."""
    rng = np.random.default_rng(5)
    clusters = np.repeat(rng.permutation(25) + 100, 4) if clustered else rng.permutation(60) + 7
    x, y = rng.normal(1.0, 1.0, clusters.size), rng.uniform(0.5, 1.5, clusters.size)
    ratio = lambda w: (w @ x) / (w @ y)
    weighted = stats.weighted_bootstrap(ratio, np.arange(clusters.size) if not clustered else clusters, "units")
    by_index = lambda idx: ratio(np.bincount(idx, minlength=clusters.size).astype(float))
    looped = (stats.cluster_bootstrap(by_index, clusters, "units") if clustered
              else stats.bootstrap(by_index, clusters.size, "units"))
    assert weighted.method == looped.method == ("cluster bootstrap" if clustered else "bootstrap")
    assert weighted.n == looped.n == (25 if clustered else 60)
    assert weighted.value == pytest.approx(x.sum() / y.sum(), rel=1e-12)
    for field in ("value", "stderr", "ci_low", "ci_high"):
        assert getattr(weighted, field) == pytest.approx(getattr(looped, field), rel=1e-12, abs=1e-15), field


def _coverage(draw, estimate, truth: float, runs: int = 400, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(runs):
        e = estimate(*draw(rng))
        hits += e.ci_low <= truth <= e.ci_high
    return hits / runs


# coverage at the sample sizes and clustering the evals use (a 95% interval should cover about
# 95% of the time; the bar for an approximate interval is 93%)
COVERAGE_CASES = {
    # goal_misgeneralization's paired gap: 300 layouts, P(cheese) 0.95 in region vs 0.6 outside
    "paired binary gap, 300 layouts": (
        lambda rng: (rng.random(300) < 0.95, rng.random(300) < 0.6),
        lambda a, b: stats.paired_difference(a.astype(float), b.astype(float)), 0.35),
    # steering's per-maze change at the decision square: skewed, 100 mazes
    "skewed mean, 100 mazes": (
        lambda rng: (rng.exponential(size=100) - 1.0,),
        lambda x: stats.mean(x), 0.0),
    # steering transfer: 100 target mazes × 10 source mazes, crossed effects
    "two-way cluster, 100 × 10 source/target": (
        lambda rng: _crossed(rng, 100, 10),
        lambda y, s, t: stats.two_way_cluster_mean(y, s, t, "mazes"), 0.0),
}


def _crossed(rng, targets: int, per_target: int):
    target = np.repeat(np.arange(targets), per_target)
    source = rng.integers(0, targets, targets * per_target)
    y = rng.normal(size=targets)[target] + rng.normal(size=targets)[source] + rng.normal(size=target.size)
    return y, source, target


@pytest.mark.parametrize("case", sorted(COVERAGE_CASES))
def test_interval_coverage_at_the_evals_sizes(case):
    draw, estimate, truth = COVERAGE_CASES[case]
    assert _coverage(draw, estimate, truth) >= 0.93


@pytest.mark.parametrize("n", [50, 100, 300])
def test_exact_coverage_of_the_proportion_intervals(n):
    """Summed over the binomial distribution, not simulated: Wilson covers >= 93% for every p in
    [0.05, 0.95] at the evals' sizes (it dips just under only for n·p below ~2), Clopper–Pearson
    never under 95%."""
    from scipy.stats import binom

    def coverage(p, method):
        covered = [k for k in range(n + 1) if (lambda e: e.ci_low <= p <= e.ci_high)(stats.proportion(k, n, method=method))]
        return float(binom.pmf(covered, n, p).sum())

    grid = np.linspace(0.05, 0.95, 37)
    assert min(coverage(p, "wilson") for p in grid) >= 0.93
    assert min(coverage(p, "clopper-pearson") for p in np.linspace(0.01, 0.99, 25)) >= 0.95


def test_cluster_bootstrap_coverage_with_few_clusters():
    """40 envs × 16 consecutive frames (the sparsity eval's policy noise rows, scaled down)."""
    def estimate(rng):
        envs = np.repeat(np.arange(40), 16)
        values = (rng.random(40)[envs] < 0.7).astype(float) * (rng.random(640) < 0.9)
        return stats.cluster_bootstrap(lambda idx: float(values[idx].mean()), envs, "envs", resamples=300)

    rng = np.random.default_rng(3)
    hits = sum(e.ci_low <= 0.63 <= e.ci_high for e in (estimate(rng) for _ in range(200)))
    assert hits / 200 >= 0.90  # percentile bootstrap on 40 clusters runs slightly under nominal


def test_median_interval_is_distribution_free():
    rng = np.random.default_rng(4)
    truth = math.log(2)  # the median of Exp(1)
    hits = 0
    for _ in range(500):
        e = stats.median(rng.exponential(size=60))
        hits += e.ci_low <= truth <= e.ci_high
    assert hits / 500 >= 0.94


def test_undefined_estimates_say_why():
    e = stats.undefined("every target gave the same return", 12, "levels")
    assert not e.defined and e.note and e.n == 12 and e.ci_low is None
    assert stats.spearman([1, 2, 3], [4, 4, 4]) is None
    assert stats.spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(scipy_stats.spearmanr([1, 2, 3], [1, 3, 2]).statistic)


@pytest.mark.parametrize("low,high,expected", [(0.3, 0.4, "held"), (0.1, 0.2, "not held"), (0.2, 0.3, "undetermined")])
def test_verdict_reads_the_interval(low, high, expected):
    assert stats.verdict((low + high) / 2, low, high, minimum=0.25) == expected
    # the same against a maximum, mirrored
    mirrored = {"held": "not held", "not held": "held", "undetermined": "undetermined"}[expected]
    assert stats.verdict((low + high) / 2, low, high, maximum=0.25) == mirrored
    assert stats.verdict(float("nan"), None, None, minimum=0.25) == "undetermined"

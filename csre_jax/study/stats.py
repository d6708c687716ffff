"""The statistics of a study: spread over seeds, paired differences and their tests.

Seeds are the unit of replication (a paired design: seed k of a variant and seed k of the
baseline share data order and initialisation), and test samples the unit of a per-sample
test. scipy.stats does the tests.
"""

import math

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


def interval(values: np.ndarray) -> tuple[float, float]:
    """The 95% confidence interval of the mean (Student's t over the values); a single value
    has none (nan, nan)."""
    values = np.asarray(values, np.float64)
    if len(values) < 2:
        return math.nan, math.nan
    half = stats.t.ppf((1 + CONFIDENCE) / 2, len(values) - 1) * stats.sem(values)
    return float(values.mean() - half), float(values.mean() + half)


def spread(values) -> dict:
    """n, mean, standard deviation (n - 1), 95% interval of the mean, min and max."""
    values = np.asarray(values, np.float64)
    low, high = interval(values)
    return {
        "n": len(values),
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
        "ci95": [low, high],
        "min": float(values.min()),
        "max": float(values.max()),
    }


def smallest_wilcoxon_p(n: int) -> float:
    """The smallest two-sided p an exact Wilcoxon signed-rank test can reach with n pairs:
    every difference of one sign, 2 / 2^n (0.0625 for 5 seeds)."""
    return 2.0 / 2**n


def paired(variant, baseline) -> dict:
    """Variant minus baseline, seed by seed: the differences, their spread, the paired t
    test's p and the exact Wilcoxon signed-rank test's p (two-sided)."""
    difference = np.asarray(variant, np.float64) - np.asarray(baseline, np.float64)
    result = {"differences": difference.tolist(), **spread(difference)}
    n = len(difference)
    if n < 2 or not difference.any():
        t_p = wilcoxon_p = 1.0 if n >= 2 else math.nan
    else:
        t_p = float(stats.ttest_rel(variant, baseline).pvalue)
        if np.isnan(t_p):  # every difference equal: no spread, the t test is undefined
            t_p = 0.0
        wilcoxon_p = float(stats.wilcoxon(difference, method="exact").pvalue)
    result |= {
        "t_test_p": t_p,
        "wilcoxon_p": wilcoxon_p,
        "wilcoxon_smallest_p": smallest_wilcoxon_p(n),
    }
    return result


def mcnemar(variant_correct: np.ndarray, baseline_correct: np.ndarray) -> dict:
    """Exact McNemar test on paired per-sample outcomes (pooled over seeds): of the samples
    only one of the two gets right, is the variant's share different from one half?"""
    variant_correct = np.asarray(variant_correct, bool)
    baseline_correct = np.asarray(baseline_correct, bool)
    gained = int(np.sum(variant_correct & ~baseline_correct))
    lost = int(np.sum(~variant_correct & baseline_correct))
    p = stats.binomtest(gained, gained + lost, 0.5).pvalue if gained + lost else 1.0
    return {"gained": gained, "lost": lost, "p": float(p)}


def per_class(variant_accuracy: np.ndarray, baseline_accuracy: np.ndarray) -> dict:
    """Per class, the mean over seeds of variant minus baseline accuracy and its 95% interval;
    inputs are (seeds, classes)."""
    difference = np.asarray(variant_accuracy, np.float64) - np.asarray(baseline_accuracy)
    intervals = [interval(column) for column in difference.T]
    return {
        "mean": difference.mean(axis=0).tolist(),
        "ci95": [list(pair) for pair in intervals],
    }


def seeds_for(difference: float, std: float, power: float = 0.8) -> int | None:
    """Seeds a paired t test needs to detect a mean difference of `difference` points at
    p < 0.05 with `power`, when paired differences spread by `std` (the smallest n whose
    noncentral t power reaches it); None without a spread."""
    if not std or not math.isfinite(std) or not difference:
        return None
    for n in range(2, 1001):
        df = n - 1
        critical = stats.t.ppf(1 - (1 - CONFIDENCE) / 2, df)
        shift = abs(difference) / std * math.sqrt(n)
        achieved = stats.nct.sf(critical, df, shift) + stats.nct.cdf(-critical, df, shift)
        if achieved >= power:
            return n
    return None

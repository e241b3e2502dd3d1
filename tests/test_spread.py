"""The rules by which a claim counts as shown over several seeds (mxbn/experiments/spread.py)."""
import math

import numpy as np
import pytest

from mxbn.experiments import spread
from mxbn.experiments.spread import SPREAD_FACTOR, difference, exceeds, fmt, summary


def test_summary_matches_numpy():
    values = [0.81, 0.86, 0.84]
    s = summary(values)
    assert s["mean"] == pytest.approx(np.mean(values)) and s["std"] == pytest.approx(np.std(values, ddof=1))
    assert (s["min"], s["max"], s["n"]) == (0.81, 0.86, 3)
    assert summary([0.5])["std"] == 0.0


def test_a_difference_counts_when_consistent_and_large_against_its_spread():
    assert exceeds([0.90, 0.91, 0.92], [0.85, 0.85, 0.86])           # +0.05, +0.06, +0.06
    assert not exceeds([0.85, 0.85, 0.86], [0.90, 0.91, 0.92])       # the other direction
    # same sign in every seed, but the mean is within SPREAD_FACTOR standard deviations
    d = [0.001, 0.02, 0.05]
    assert np.mean(d) < SPREAD_FACTOR * np.std(d, ddof=1)
    assert not exceeds(d, [0, 0, 0]) and not difference(d, [0, 0, 0])["counts"]
    # large mean, but one seed the other way (the lr-0.5 case of the one-seed report)
    assert not exceeds([0.90, 0.90, 0.87], [0.80, 0.80, 0.88])
    # exactly equal: no difference
    assert not exceeds([0.1, 0.1], [0.1, 0.1])


def test_one_seed_reduces_to_the_sign():
    assert exceeds([0.6], [0.5]) and not exceeds([0.5], [0.6])


def test_a_missing_value_never_counts():
    assert not exceeds([0.9, None, 0.9], [0.5, 0.5, 0.5])
    assert spread.accuracy_or_chance(None) == spread.DIVERGED_ACCURACY
    assert spread.accuracy_or_chance(float("nan")) == spread.DIVERGED_ACCURACY
    assert spread.accuracy_or_chance(0.7) == 0.7


def test_fmt_shows_mean_std_range_and_divergence():
    assert fmt([0.5]) == "0.500"
    assert fmt([0.8, 0.9, 1.0]) == "0.900 ± 0.100 (0.800–1.000)"
    assert fmt([0.8, None, 1.0]).endswith("1 of 3 diverged")
    assert fmt([None, None]) == "diverged in every seed" and fmt([None]) == "diverged"
    assert not math.isnan(summary([1.0, float("nan")])["mean"])


def test_every_and_some_seed():
    assert spread.in_every_seed([True, True]) and not spread.in_every_seed([True, False])
    assert not spread.in_every_seed([])
    assert spread.in_some_seed([False, True]) and not spread.in_some_seed([False])


def test_larger_in_every_seed_is_the_direction_without_the_margin():
    a, b = [0.90, 0.88, 0.95], [0.89, 0.80, 0.80]     # ahead in every seed, but noisy
    assert spread.larger_in_every_seed(a, b) and not exceeds(a, b)
    assert not spread.larger_in_every_seed([0.9, 0.7], [0.8, 0.8]) and not spread.larger_in_every_seed([], [])


def test_fmt_names_what_a_missing_value_means():
    assert fmt([100, None, 300], 0, missing="never reached") == "200 ± 141 (100–300), 1 of 3 never reached"

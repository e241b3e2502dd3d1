"""Numbers over several seeds, and the rules by which a claim counts as shown.

One seed cannot tell a real effect from the noise between runs (a LeNet's
final test accuracy moves by about 1 % from seed to seed), so every
experiment runs each setting once per seed and judges its claims with the
rules below, written once here:

* a **difference** between two settings (BN minus no BN, say, paired by seed)
  counts when it has the same sign in every seed and its mean exceeds
  ``SPREAD_FACTOR`` times its standard deviation over seeds;
* a **threshold** statement ("fails", "learns") holds when it holds in every seed.

A claim is *reproduced* when it holds by these rules, *partly* when a part of
it does, or when its direction holds in every seed but without the margin
(``larger_in_every_seed``), and *not reproduced* otherwise.

With one seed (``--quick``) the standard deviation is 0 and the rules reduce
to the single run's sign and threshold: quick verdicts are not evidence.
"""
import math

import numpy as np

__all__ = ["SPREAD_FACTOR", "DIVERGED_ACCURACY", "summary", "fmt", "difference", "exceeds", "larger_in_every_seed",
           "in_every_seed",
           "in_some_seed", "mean", "accuracy_or_chance"]

# A difference counts when |mean| > SPREAD_FACTOR x its standard deviation over seeds
# (with 3 seeds, about a t statistic of 3.5) and has the same sign in every seed.
SPREAD_FACTOR = 2.0
# A classifier whose weights became NaN predicts one class: chance on 10 balanced classes.
DIVERGED_ACCURACY = 0.1


def _values(values):
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)


def summary(values):
    """mean, std (ddof 1; 0 for one value), min, max and the values themselves (NaN-aware)."""
    v = _values(values)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return dict(mean=None, std=None, min=None, max=None, n=len(v), values=[None] * len(v))
    std = float(np.std(finite, ddof=1)) if finite.size > 1 else 0.0
    return dict(mean=float(finite.mean()), std=std, min=float(finite.min()), max=float(finite.max()),
                n=len(v), values=[None if not math.isfinite(x) else float(x) for x in v])


def mean(values):
    return summary(values)["mean"]


def fmt(values, digits=3, missing="diverged"):
    """"0.876 ± 0.004 (0.871-0.880)" for several seeds, "0.876" for one.

    A missing value (None, NaN) is said so with ``missing``: in the experiments
    a run that diverged, unless the caller names another reason.
    """
    s = summary(values)
    if s["mean"] is None:
        return missing + (" in every seed" if s["n"] > 1 else "")
    if s["n"] == 1:
        return f"{s['mean']:.{digits}f}"
    text = f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"
    absent = sum(x is None for x in s["values"])
    return text + (f", {absent} of {s['n']} {missing}" if absent else "")


def difference(a, b):
    """Per-seed differences a - b, their summary, and whether they count (see the module doc)."""
    d = _values(a) - _values(b)
    s = summary(d)
    counts = bool(np.all(np.isfinite(d)) and (np.all(d > 0) or np.all(d < 0))
                  and abs(s["mean"]) > SPREAD_FACTOR * s["std"])
    return dict(s, counts=counts)


def exceeds(a, b):
    """a is larger than b by the spread rule."""
    d = difference(a, b)
    return d["counts"] and d["mean"] > 0


def larger_in_every_seed(a, b):
    """a > b in every seed, whatever the spread: the direction of a claim, without its margin
    (what makes a claim "partly" shown when the spread rule is not met)."""
    d = _values(a) - _values(b)
    return bool(d.size) and bool(np.all(d > 0))


def in_every_seed(flags):
    return bool(len(flags)) and all(bool(f) for f in flags)


def in_some_seed(flags):
    return any(bool(f) for f in flags)


def accuracy_or_chance(value):
    """A diverged run's accuracy (None) as what its NaN weights predict: chance."""
    return DIVERGED_ACCURACY if value is None or not math.isfinite(value) else value

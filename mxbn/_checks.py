"""Argument checks shared by the library: what counts as a number or an integer, and the checks
whose message is the same wherever they are made.  Each check raises ``error`` (ValueError unless
the caller names its own subclass, e.g. ConfigError) with a message naming the argument, what it
got and what was expected."""
import math
import numbers

__all__ = ["is_real", "is_integer", "positive_int", "non_negative_int", "finite_positive", "finite_non_negative",
           "in_range"]


def is_real(value):
    """A real number; bool is not one (True would silently be 1)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(name, value, error=ValueError):
    if not is_integer(value) or value < 1:
        raise error(f"{name} must be a positive integer, got {value!r}")


def non_negative_int(name, value, error=ValueError):
    if not is_integer(value) or value < 0:
        raise error(f"{name} must be a non-negative integer, got {value!r}")


def finite_positive(name, value, error=ValueError):
    if not is_real(value) or not value > 0 or not math.isfinite(value):
        raise error(f"{name} must be a finite number > 0, got {value!r}")


def finite_non_negative(name, value, error=ValueError):
    if not is_real(value) or not value >= 0 or not math.isfinite(value):
        raise error(f"{name} must be a finite number >= 0, got {value!r}")


def in_range(name, value, lo, hi, hi_open=False, error=ValueError):
    if not is_real(value) or not lo <= value or not (value < hi if hi_open else value <= hi):
        raise error(f"{name} must be in [{lo}, {hi}{')' if hi_open else ']'}, got {value!r}")

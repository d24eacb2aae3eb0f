"""Parameter checks the clusterers' scikit-learn estimators share (SCAN, TURTLE)."""
from __future__ import annotations

import numbers

import numpy as np
from sklearn.utils import check_random_state

from ..errors import NolabelValueError


def check_integers(estimator, names: tuple[str, ...]) -> None:
    """Each named parameter of `estimator` is an integer (not a bool): scikit-learn's conformance checks
    pass floats and expect a ValueError."""
    for name in names:
        value = getattr(estimator, name)
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise NolabelValueError(f"{name} must be an integer, got {value!r}")


def integer_seed(random_state) -> int:
    """An int seed from scikit-learn's random_state: an int as it is; None or a RandomState draws one."""
    if isinstance(random_state, numbers.Integral):
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))

"""The one exception type that means "the user's input or environment is wrong".

The CLI prints its message on a single line and exits with code 2; anything else is a bug and
keeps its traceback.
"""


class NolabelError(Exception):
    """A problem the user can fix (bad input, missing file, refused overwrite, ...)."""


class NolabelValueError(NolabelError, ValueError):
    """A NolabelError about a bad value or input array, also a ValueError.

    Raised by the scikit-learn-compatible estimators (`nolabel.cluster.PCA`, `KMeans`): scikit-learn's
    meta-estimators and conformance checks expect ValueError for bad input, the CLI NolabelError.
    """

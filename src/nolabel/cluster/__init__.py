"""The clusterers, behind one interface (scikit-learn's estimators): PCA, KMeans, SCAN on
frozen features and TURTLE on several spaces' frozen features. Their stages write the same
clustering artifact (`nolabel.clustering`).

`SCAN` and `TURTLE` are imported on first use, so the PCA + k-means stage loads no training code.
"""
from .kmeans import KMeans
from .pca import PCA

__all__ = ["KMeans", "PCA", "SCAN", "TURTLE"]


def __getattr__(name: str):
    if name == "SCAN":
        from .scan import SCAN

        return SCAN
    if name == "TURTLE":
        from .turtle import TURTLE

        return TURTLE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

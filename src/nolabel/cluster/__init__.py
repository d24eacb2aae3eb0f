"""The clusterers, behind one interface (scikit-learn's estimators): PCA, KMeans and SCAN on
frozen features. Their stages write the same clustering artifact (`nolabel.clustering`).

`SCAN` is imported on first use, so the PCA + k-means stage loads no training code.
"""
from .kmeans import KMeans
from .pca import PCA

__all__ = ["KMeans", "PCA", "SCAN"]


def __getattr__(name: str):
    if name == "SCAN":
        from .scan import SCAN

        return SCAN
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Clustering stages: PCA and k-means (more clusterers join this list)."""
from .kmeans import KMeans
from .pca import PCA
from .scan import SCAN

__all__ = ["KMeans", "PCA", "SCAN"]

"""Clustering stages: PCA and k-means (more clusterers join this list)."""
from .kmeans import KMeans
from .pca import PCA

__all__ = ["KMeans", "PCA"]

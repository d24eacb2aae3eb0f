"""Pretext training for data without downloadable self-supervised weights (SimCLR)."""
from .simclr import (ProjectionHead, SimCLRConfig, SimCLRResult, extract_features, nt_xent_loss, pretrain_simclr,
                     train_simclr, weighted_knn_predict)

__all__ = ["ProjectionHead", "SimCLRConfig", "SimCLRResult", "extract_features", "nt_xent_loss", "pretrain_simclr",
           "train_simclr", "weighted_knn_predict"]

"""Methods that train a backbone: SimCLR (SCAN's pretext step) and DeepCluster v1/v2."""
from .deepcluster import DeepClusterResult, train_deepcluster
from .simclr import (ProjectionHead, SimCLRConfig, SimCLRResult, extract_features, nt_xent_loss, pretrain_simclr,
                     train_simclr, weighted_knn_predict)

__all__ = ["DeepClusterResult", "ProjectionHead", "SimCLRConfig", "SimCLRResult", "extract_features", "nt_xent_loss",
           "pretrain_simclr", "train_deepcluster", "train_simclr", "weighted_knn_predict"]

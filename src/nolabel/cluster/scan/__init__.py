"""SCAN clustering (Van Gansbeke et al. 2020, "Learning to Classify Images without Labels").

A clustering head maps an image to a distribution p(x) over K clusters. The loss asks an image and
one of its mined neighbours to agree, and the mean prediction to spread over all clusters:

    loss = -mean_x log <p(x), p(n(x))>  -  entropy_weight * H(mean_x p(x))

where n(x) is drawn per step among x's K stored neighbours and x itself, and H is the entropy (the
batch mean stands in for the dataset mean). Several heads train side by side from the same inputs;
the one with the lowest SCAN loss on the whole dataset (no labels involved) is kept.

- `loss`: the SCAN loss of a batch, and of a whole dataset's predictions (head selection);
- `heads`: the clustering heads;
- `train`: one training loop for two modes - `train_scan_features` (heads only, on frozen
  precomputed features, with optional features of augmented views `(V, N, D)`: what ImageNet scale
  and CPUs need) and `train_scan_network` (backbone and heads together on images, with batched
  tensor augmentation, `nolabel.augment.StrongAugment` by default, as SCAN does);
- `stage`: the stage from files (`run_scan`, `nolabel scan`) and prediction of new images;
- `estimator`: `SCAN`, heads on frozen features as a scikit-learn clusterer (fit / predict).
"""
from ...config import ScanConfig
from .estimator import SCAN
from .heads import ClusterHeads, ListHead
from .loss import ScanLoss, entropy, scan_loss, scan_loss_of_probabilities, select_head
from .stage import (apply_stage_pca, load_stage_inputs, predict_scan, project_inputs, run_scan, stage_source,
                    write_augmented_views)
from .train import (FeatureInputs, ImageInputs, ScanResult, load_scan, save_scan, train_scan_features,
                    train_scan_network)

__all__ = ["ClusterHeads", "FeatureInputs", "ImageInputs", "ListHead", "SCAN", "ScanConfig", "ScanLoss", "ScanResult",
           "apply_stage_pca", "entropy", "load_scan", "load_stage_inputs", "predict_scan", "project_inputs",
           "run_scan", "save_scan", "scan_loss", "scan_loss_of_probabilities", "select_head", "stage_source",
           "train_scan_features", "train_scan_network", "write_augmented_views"]

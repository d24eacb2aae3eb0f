"""scikit-learn's `load_digits`: 1,797 8x8 handwritten digits, 10 classes, shipped with sklearn."""
from __future__ import annotations

import numpy as np

from .dataset import ArrayImageDataset, Request

DIGITS_MAX = 16  # load_digits pixels count ink in 4x4 blocks: 0..16


def load_digits(req: Request) -> ArrayImageDataset:
    """The digits as uint8 (1797, 8, 8) images, 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = np.rint(bunch.images * (255.0 / DIGITS_MAX)).astype(np.uint8)
    classes = [str(c) for c in bunch.target_names]
    names = [f"all/{i}" for i in range(len(images))]
    return ArrayImageDataset(req.spec, images, bunch.target, classes, names, req.on_bad_image)

"""nolabel: unsupervised image clustering and its evaluation."""

__version__ = "0.1.0"

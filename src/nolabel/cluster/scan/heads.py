"""SCAN's clustering heads: several heads trained side by side; the one of lowest loss is kept."""
from __future__ import annotations

import torch
import torch.nn as nn

from ...errors import NolabelError


class ClusterHeads(nn.Module):
    """`n_heads` independent clustering heads, (B, in_dim) -> list of n_heads logits (B, n_clusters).

    hidden_dim 0: a linear layer per head (SCAN's head on a trained backbone); > 0: Linear -> BN ->
    ReLU -> Linear, which frozen features of a network trained for another task need.
    """

    def __init__(self, in_dim: int, n_clusters: int, n_heads: int = 10, hidden_dim: int = 0):
        super().__init__()
        if n_clusters < 2 or n_heads < 1:
            raise NolabelError(f"need n_clusters >= 2 and n_heads >= 1, got {n_clusters} and {n_heads}")
        self.in_dim, self.n_clusters, self.hidden_dim = in_dim, n_clusters, hidden_dim

        def head() -> nn.Module:
            if hidden_dim <= 0:
                return nn.Linear(in_dim, n_clusters)
            return nn.Sequential(nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim),
                                 nn.ReLU(inplace=True), nn.Linear(hidden_dim, n_clusters))

        self.heads = nn.ModuleList(head() for _ in range(n_heads))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [h(x) for h in self.heads]

    def single(self, index: int) -> nn.Module:
        """Head `index` alone, as a module (B, in_dim) -> (B, n_clusters)."""
        return self.heads[index]


class ListHead(nn.Module):
    """One network returning a one-element list of logits: the calling convention of ClusterHeads,
    for a single kept head (self-labeling trains and saves its weights under this wrapper's `body`)."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.body(x)]

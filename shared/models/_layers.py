"""Layers the models written here share."""

from __future__ import annotations

import torch
from torch import nn


class ConditionalLayer(nn.Module):
    """``expr_L(x) + cond_L(condition)``: a linear layer fed a cell's input and its condition.

    The condition is scPoli's embedding or trVAE's one-hot vector; scArches' ``CondLayers``.
    """

    def __init__(self, n_in: int, n_out: int, n_cond: int, *, bias: bool) -> None:
        super().__init__()
        self.expr_L = nn.Linear(n_in, n_out, bias=bias)
        self.cond_L = nn.Linear(n_cond, n_out, bias=False)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """The layer's pre-activation."""
        return self.expr_L(x) + self.cond_L(condition)


def normed(n_out: int, *, layer_norm: bool, dropout_rate: float) -> nn.Sequential:
    """Layer norm (no affine parameters) or nothing, then ReLU and dropout: what follows each of scArches' layers."""
    norm = nn.LayerNorm(n_out, elementwise_affine=False) if layer_norm else nn.Identity()
    return nn.Sequential(norm, nn.ReLU(), nn.Dropout(p=dropout_rate))

"""scGen's network: a plain VAE on log-normalized expression, no condition anywhere.

The math of scArches' scGen (``vaeArith``; Lotfollahi et al. 2019, *Nat Methods* 16:715) on
scvi-tools' :class:`~scvi.module.base.BaseModuleClass`:

* the input is the cell's counts normalized to 10,000 and ``log1p``-transformed (scGen's
  tutorial does this beforehand; here the module does it, so every fedarches model reads raw counts);
* encoder and decoder are fully connected layers without bias, each followed by batch norm, leaky
  ReLU (slope 0.3) and dropout, as in scGen's paper; the decoder ends in a linear layer giving the
  log-normalized expression;
* the loss is the mean squared error over cells and genes plus ``kl_weight`` times the KL divergence
  to N(0, 1) summed over the minibatch (scArches' ``alpha=1e-6``).

Batches never enter the network: scGen removes batch effects afterwards, by latent arithmetic per
cell type (:func:`fedarches.shared.models.scgen.shift_to_targets`).
"""

from __future__ import annotations

from itertools import pairwise

import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn
from torch.distributions import Normal

TARGET_SUM = 1e4


def _block(n_in: int, n_out: int, dropout_rate: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, n_out, bias=False), nn.BatchNorm1d(n_out), nn.LeakyReLU(0.3), nn.Dropout(dropout_rate)
    )


def log_normalize(counts: torch.Tensor) -> torch.Tensor:
    """``log1p`` of counts scaled to 10,000 per cell (scanpy's ``normalize_total`` then ``log1p``)."""
    return torch.log1p(counts / counts.sum(dim=-1, keepdim=True).clamp_min(1.0) * TARGET_SUM)


class ScGenModule(BaseModuleClass):
    """scGen's VAE.

    Parameters
    ----------
    n_input
        Number of genes.
    n_hidden
        Encoder layer widths (the decoder uses them reversed); scArches' ``hidden_layer_sizes``.
    n_latent
        Latent dimensions (scArches' ``z_dimension``).
    dropout_rate
        Dropout after each hidden layer.
    kl_weight
        Weight of the KL term summed over the minibatch (scArches' ``alpha``).
    """

    def __init__(
        self,
        n_input: int,
        *,
        n_hidden: tuple[int, ...] = (256, 128),
        n_latent: int = 10,
        dropout_rate: float = 0.05,
        kl_weight: float = 1e-6,
    ) -> None:
        super().__init__()
        self.n_input, self.n_latent, self.kl_weight = n_input, n_latent, kl_weight
        sizes = [n_input, *n_hidden]
        self.encoder = nn.Sequential(*(_block(a, b, dropout_rate) for a, b in pairwise(sizes)))
        self.mean_encoder = nn.Linear(sizes[-1], n_latent)
        self.log_var_encoder = nn.Linear(sizes[-1], n_latent)
        back = [n_latent, *reversed(n_hidden)]
        self.decoder = nn.Sequential(*(_block(a, b, dropout_rate) for a, b in pairwise(back)))
        self.expression = nn.Linear(back[-1], n_input)

    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"x": tensors[REGISTRY_KEYS.X_KEY]}

    def _get_generative_input(
        self, tensors: dict[str, torch.Tensor], inference_outputs: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return {"z": inference_outputs["z"]}

    @auto_move_data
    def inference(self, x: torch.Tensor, n_samples: int = 1) -> dict[str, torch.Tensor]:
        """Posterior ``q(z | x)`` on log-normalized counts, and a sample of it."""
        x_log = log_normalize(x)
        hidden = self.encoder(x_log)
        mean, log_var = self.mean_encoder(hidden), self.log_var_encoder(hidden)
        qz = Normal(mean, torch.exp(0.5 * log_var))
        z = qz.rsample() if n_samples == 1 else qz.rsample((n_samples,))
        return {"z": z, "qz": qz, "x_log": x_log}

    @auto_move_data
    def generative(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """The log-normalized expression ``z`` decodes to."""
        return {"x_hat": self.expression(self.decoder(z))}

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, torch.Tensor],
        generative_outputs: dict[str, torch.Tensor],
        kl_weight: float = 1.0,
    ) -> LossOutput:
        """Mean squared error + ``self.kl_weight`` * KL summed over the minibatch (scvi's warm-up multiplies it)."""
        squared = (generative_outputs["x_hat"] - inference_outputs["x_log"]).square().mean(dim=-1)
        qz = inference_outputs["qz"]
        variance = qz.scale.square()
        kl = 0.5 * (variance - variance.log() - 1 + qz.loc.square()).sum(dim=-1)
        loss = squared.mean() + kl_weight * self.kl_weight * kl.sum()
        return LossOutput(loss=loss, reconstruction_loss=squared, kl_local=kl)

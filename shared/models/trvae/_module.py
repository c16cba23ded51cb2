"""trVAE's network: a conditional VAE whose conditions enter as one-hot columns, with an MMD penalty.

The math of scArches' trVAE (Lotfollahi et al. 2020, *Bioinformatics* 36:i610) on scvi-tools'
:class:`~scvi.module.base.BaseModuleClass`:

* the condition (batch) enters the first encoder layer and the first decoder layer as one-hot
  columns (``encoder.layers.0.cond_L`` and ``decoder_first.cond_L``: one weight column per condition);
* the encoder reads ``log1p`` counts; the decoder gives negative-binomial means (softmax times the
  cell's total counts) with one inverse dispersion per gene and condition (``theta``);
* the maximum mean discrepancy (multi-scale Gaussian kernels) between the conditions' cells in a
  minibatch, on the first decoder layer's output (``y``, the trVAE paper's choice) or on ``z``, is
  added with weight ``beta``.

Surgery adds one column per new condition to the two ``cond_L`` weights and to ``theta``, and trains
only those.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.module.base import LossOutput
from torch import nn

from fedarches.shared.models._base import CountsCVAE
from fedarches.shared.models._layers import ConditionalLayer, normed

# the kernel widths of scArches' multi-scale RBF kernel (its ``mmd_loss_calc``)
MMD_ALPHAS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1, 5, 10, 15, 20, 25, 30, 35, 100, 1e3, 1e4, 1e5, 1e6)


class TrVAEModule(CountsCVAE):
    """trVAE's conditional VAE.

    Parameters
    ----------
    n_input
        Number of genes.
    n_batch
        Number of conditions.
    n_hidden
        Encoder layer widths (the decoder uses them reversed); scArches' ``hidden_layer_sizes``.
    n_latent
        Latent dimensions.
    dropout_rate
        Dropout after each hidden layer.
    use_layer_norm
        Layer norm (no affine parameters) after each hidden layer.
    beta
        Weight of the MMD penalty (0 turns it off).
    mmd_on
        ``"y"``: the first decoder layer's output; ``"z"``: the latent.
    """

    def __init__(
        self,
        n_input: int,
        n_batch: int,
        *,
        n_hidden: tuple[int, ...] = (128, 128),
        n_latent: int = 10,
        dropout_rate: float = 0.05,
        use_layer_norm: bool = True,
        beta: float = 1.0,
        mmd_on: str = "y",
    ) -> None:
        super().__init__()
        if mmd_on not in ("y", "z"):
            msg = f"mmd_on must be 'y' or 'z', not {mmd_on!r}"
            raise ValueError(msg)
        self.n_input, self.n_batch, self.n_latent = n_input, n_batch, n_latent
        self.beta, self.mmd_on = beta, mmd_on
        block = {"layer_norm": use_layer_norm, "dropout_rate": dropout_rate}
        sizes = [n_input, *n_hidden]
        self.encoder_first = ConditionalLayer(sizes[0], sizes[1], n_batch, bias=True)
        self.encoder_first_out = normed(sizes[1], **block)
        self.encoder_hidden = nn.Sequential(
            *(nn.Sequential(nn.Linear(a, b), normed(b, **block)) for a, b in pairwise(sizes[1:]))
        )
        self.mean_encoder = nn.Linear(sizes[-1], n_latent)
        self.log_var_encoder = nn.Linear(sizes[-1], n_latent)
        back = [n_latent, *reversed(n_hidden)]
        self.decoder_first = ConditionalLayer(back[0], back[1], n_batch, bias=False)
        self.decoder_first_out = normed(back[1], **block)
        self.decoder_hidden = nn.Sequential(
            *(nn.Sequential(nn.Linear(a, b, bias=False), normed(b, **block)) for a, b in pairwise(back[1:]))
        )
        self.mean_decoder = nn.Linear(back[-1], n_input)
        self.theta = nn.Parameter(torch.randn(n_input, n_batch))

    def _one_hot(self, batch_index: torch.Tensor) -> torch.Tensor:
        return F.one_hot(batch_index.long().view(-1), self.n_batch).to(torch.float32)

    def encode(self, x_log: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        """The encoder's last hidden layer, the condition one-hot in its first."""
        hidden = self.encoder_first_out(self.encoder_first(x_log, self._one_hot(batch_index)))
        return self.encoder_hidden(hidden)

    def decode(self, z: torch.Tensor, batch_index: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Gene logits, and the first decoder layer's output ``y`` (where the MMD may apply)."""
        y = self.decoder_first_out(self.decoder_first(z, self._one_hot(batch_index)))
        return self.mean_decoder(self.decoder_hidden(y)), {"y": y}

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, torch.Tensor],
        generative_outputs: dict[str, object],
        kl_weight: float = 1.0,
    ) -> LossOutput:
        """Reconstruction + ``kl_weight`` * KL + ``beta`` * MMD between conditions, averaged over cells."""
        reconstruction, kl = self.elbo_terms(tensors, inference_outputs, generative_outputs)
        features = generative_outputs["y"] if self.mmd_on == "y" else inference_outputs["z"]
        mmd = self.beta * conditions_mmd(features, tensors[REGISTRY_KEYS.BATCH_KEY]) if self.beta else 0.0
        loss = torch.mean(reconstruction + kl_weight * kl) + mmd
        return LossOutput(
            loss=loss,
            reconstruction_loss=reconstruction,
            kl_local=kl,
            extra_metrics={"mmd": torch.as_tensor(mmd).detach()},
        )


def conditions_mmd(features: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
    """Sum over pairs of conditions present in the minibatch of the MMD between their cells' ``features``."""
    codes = batch_index.long().view(-1)
    groups = [features[codes == code] for code in torch.unique(codes)]
    total = torch.zeros((), device=features.device)
    for i, first in enumerate(groups):
        for second in groups[:i]:
            total = total + mmd(first, second)
    return total


def mmd(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Maximum mean discrepancy with scArches' multi-scale Gaussian kernel."""
    return _kernel(first, first).mean() + _kernel(second, second).mean() - 2 * _kernel(first, second).mean()


def _kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    alphas = torch.tensor(MMD_ALPHAS, dtype=a.dtype, device=a.device)
    distances = torch.cdist(a, b).square()
    return torch.exp(-distances[None] / (2 * alphas[:, None, None])).sum(dim=0)

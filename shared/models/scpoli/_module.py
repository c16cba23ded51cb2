"""scPoli's network: a conditional VAE with learned condition embeddings and cell-type prototypes.

The math of scArches' scPoli (De Donno et al. 2023, *Nat Methods* 20:1683), written on scvi-tools'
:class:`~scvi.module.base.BaseModuleClass`: the module holds only the network and its losses; data
handling, training and surgery live in the model class.

* Each condition (batch) has a learned embedding (``embedding.weight``, one row per condition, its
  norm capped at ``embedding_max_norm``), injected into the first encoder and decoder layers.
* The encoder reads ``log1p`` counts; the decoder gives negative-binomial means (softmax scaled by the
  cell's total counts) with one inverse dispersion per gene and condition (``theta``, one column per
  condition).
* Each labelled cell type has a prototype, a point in latent space (``prototypes``, a buffer: it is
  set from cell means by the model, never by gradients); labelled cells are pulled towards their
  type's prototype by ``eta`` times their Euclidean distance to it.

Surgery adds one embedding row and one ``theta`` column per new condition, and trains only those.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.module.base import LossOutput
from torch import nn

from fedarches.shared.models._base import CountsCVAE
from fedarches.shared.models._layers import ConditionalLayer, normed


class _Block(nn.Module):
    """A conditional layer, then layer norm (no affine), ReLU and dropout, as scPoli's first layers."""

    def __init__(self, n_in: int, n_out: int, n_cond: int, *, bias: bool, dropout_rate: float, layer_norm: bool):
        super().__init__()
        self.layer = ConditionalLayer(n_in, n_out, n_cond, bias=bias)
        self.out = normed(n_out, layer_norm=layer_norm, dropout_rate=dropout_rate)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.out(self.layer(x, condition))


class ScPoliModule(CountsCVAE):
    """scPoli's conditional VAE with prototypes.

    Parameters
    ----------
    n_input
        Number of genes.
    n_batch
        Number of conditions (each gets an embedding row and a dispersion column).
    n_labels
        Number of label categories, the unlabeled one included (each gets a prototype slot).
    n_hidden
        Width of the one hidden layer of encoder and decoder (scPoli: ``ceil(sqrt(n_input))``).
    n_latent
        Latent dimensions.
    embedding_dim
        Size of a condition's embedding.
    embedding_max_norm
        Largest norm of an embedding as the network sees it.
    dropout_rate
        Dropout after each hidden layer.
    use_layer_norm
        Layer norm (without affine parameters) after each hidden layer.
    """

    def __init__(
        self,
        n_input: int,
        n_batch: int,
        n_labels: int,
        *,
        n_hidden: int | None = None,
        n_latent: int = 10,
        embedding_dim: int = 5,
        embedding_max_norm: float = 1.0,
        dropout_rate: float = 0.05,
        use_layer_norm: bool = True,
    ) -> None:
        super().__init__()
        n_hidden = n_hidden or math.ceil(math.sqrt(n_input))
        self.n_input, self.n_batch, self.n_labels, self.n_latent = n_input, n_batch, n_labels, n_latent
        self.embedding_max_norm = embedding_max_norm
        self.embedding = nn.Embedding(n_batch, embedding_dim)
        self.theta = nn.Parameter(torch.randn(n_input, n_batch))
        block = {"dropout_rate": dropout_rate, "layer_norm": use_layer_norm}
        self.encoder = _Block(n_input, n_hidden, embedding_dim, bias=True, **block)
        self.mean_encoder = nn.Linear(n_hidden, n_latent)
        self.log_var_encoder = nn.Linear(n_hidden, n_latent)
        self.decoder = _Block(n_latent, n_hidden, embedding_dim, bias=False, **block)
        self.mean_decoder = nn.Linear(n_hidden, n_input)
        # prototypes: one slot per label category; `prototype_set` marks those that hold one
        self.register_buffer("prototypes", torch.zeros(n_labels, n_latent))
        self.register_buffer("prototype_set", torch.zeros(n_labels, dtype=torch.bool))
        # pooled per-dimension variance of labelled cells around their prototype: the scale of probabilities
        self.register_buffer("prototype_variance", torch.ones(1))
        self.eta = 0.0  # weight of the prototype loss, set by training (not saved: a training option)

    # ---- the condition embedding --------------------------------------------------------------
    def condition_embedding(self, batch_index: torch.Tensor) -> torch.Tensor:
        """Each cell's condition embedding, rescaled to norm ``embedding_max_norm`` where longer.

        The rescaling is functional (``nn.Embedding(max_norm=...)`` rescales its weight in place on
        every look-up): the stored rows never change outside an optimizer step.
        """
        rows = F.embedding(batch_index.long().view(-1), self.embedding.weight)
        norms = rows.norm(dim=1, keepdim=True)
        scale = torch.clamp(self.embedding_max_norm / (norms + 1e-7), max=1.0).detach()
        return rows * scale

    # ---- the conditional VAE (CountsCVAE) ----------------------------------------------------------
    def encode(self, x_log: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        """The encoder's hidden layer, the condition's embedding injected."""
        return self.encoder(x_log, self.condition_embedding(batch_index))

    def decode(self, z: torch.Tensor, batch_index: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Gene logits, the condition's embedding injected into the first decoder layer."""
        return self.mean_decoder(self.decoder(z, self.condition_embedding(batch_index))), {}

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, torch.Tensor],
        generative_outputs: dict[str, object],
        kl_weight: float = 1.0,
    ) -> LossOutput:
        """Reconstruction + ``kl_weight`` * KL + ``eta`` * prototype loss, averaged over cells."""
        reconstruction, kl = self.elbo_terms(tensors, inference_outputs, generative_outputs)
        prototype = self.prototype_loss(inference_outputs["z"], tensors[REGISTRY_KEYS.LABELS_KEY])
        loss = torch.mean(reconstruction + kl_weight * kl) + self.eta * prototype
        return LossOutput(
            loss=loss,
            reconstruction_loss=reconstruction,
            kl_local=kl,
            extra_metrics={"prototype_loss": prototype.detach()},
        )

    def prototype_loss(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sum over the cell types present of their cells' mean Euclidean distance to the type's prototype.

        Cells whose label has no prototype (the unlabeled category, or a type not yet set) add nothing.
        """
        codes = labels.long().view(-1)
        has_prototype = self.prototype_set[codes]
        if self.eta == 0.0 or not bool(has_prototype.any()):
            return torch.zeros((), device=z.device)
        codes, z = codes[has_prototype], z[has_prototype]
        distances = (z - self.prototypes[codes]).norm(dim=1)
        present, inverse, counts = torch.unique(codes, return_inverse=True, return_counts=True)
        per_type = torch.zeros(len(present), device=z.device).index_add_(0, inverse, distances)
        return (per_type / counts).sum()

    # ---- prototypes --------------------------------------------------------------------------------
    @torch.no_grad()
    def prototype_probabilities(self, latent: torch.Tensor) -> torch.Tensor:
        """Posterior of each prototype's type under isotropic Gaussians of ``prototype_variance``, equal priors.

        ``softmax(-d^2 / (2 variance))``, the prototypical-network rule (Snell et al. 2017) scaled to the
        reference's own spread; scPoli's ``get_prob`` is ``softmax(-d)``, whose sharpness depends on how
        large the latent happens to be.
        """
        distances = self.distances_to_prototypes(latent)
        return torch.softmax(-distances.square() / (2 * self.prototype_variance), dim=1)

    @torch.no_grad()
    def distances_to_prototypes(self, latent: torch.Tensor) -> torch.Tensor:
        """Euclidean distance of each latent point to each prototype (``inf`` where a slot holds none)."""
        distances = torch.cdist(latent, self.prototypes.to(latent.dtype))
        return distances.masked_fill(~self.prototype_set, math.inf)

"""expiMap's network: a conditional VAE whose latent dimensions are gene programs.

The math of scArches' expiMap (Lotfollahi et al. 2023, *Nat Cell Biol* 25:337) on scvi-tools'
:class:`~scvi.module.base.BaseModuleClass`, through the :class:`CountsCVAE` it shares with trVAE:

* the encoder is trVAE's (``log1p`` counts, the condition one-hot in the first layer, layer norm);
  it gives one latent dimension per gene program (``mean_encoder``) and, after surgery that adds
  programs, one per new program (``ext_mean_encoder``);
* the decoder is linear and masked: gene logits are ``z @ (W * mask).T`` plus a column per
  condition (``decoder_cond``) plus, for new programs, ``z_ext @ W_ext.T``; their softmax times the
  cell's total counts is a negative-binomial mean, with one inverse dispersion per gene and
  condition (``theta``). A program's decoder weights can only be non-zero on its own genes, so each
  latent dimension reads as the activity of one named program;
* the KL term is scaled by ``kl_scale`` (scArches' ``alpha_kl``); the group lasso that switches off
  programs the data do not support is a proximal step after each optimizer step
  (:mod:`fedarches.shared.models.expimap._regularizers`), as in scArches, not a loss term.

Surgery adds a column per new condition to ``encoder_first.cond_L.weight``, ``decoder_cond.weight``
and ``theta`` and trains only those, plus any new programs.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import torch
import torch.nn.functional as F
from scvi.module.base import LossOutput
from torch import nn

from fedarches.shared.models._base import CountsCVAE
from fedarches.shared.models._layers import ConditionalLayer, normed


class ExpiMapModule(CountsCVAE):
    """expiMap's conditional VAE with a masked linear decoder.

    Parameters
    ----------
    n_input
        Number of genes.
    n_batch
        Number of conditions.
    mask
        Genes x programs, 1 where a gene belongs to a program (``adata.varm['I']``); ``None`` with
        ``n_programs``: a placeholder the saved state fills in.
    n_programs
        Number of programs (needed only without ``mask``).
    n_hidden
        Encoder layer widths (scArches' ``hidden_layer_sizes``).
    dropout_rate
        Dropout after each hidden layer.
    use_layer_norm
        Layer norm (no affine parameters) after each hidden layer.
    n_new_programs
        Unconstrained programs added by surgery (scArches' ``n_ext``): one latent dimension and one
        decoder column over every gene each.
    kl_scale
        Weight of the KL term (scArches' ``alpha_kl``).
    """

    def __init__(
        self,
        n_input: int,
        n_batch: int,
        mask: np.ndarray | torch.Tensor | None = None,
        *,
        n_programs: int | None = None,
        n_hidden: tuple[int, ...] = (256, 256, 256),
        dropout_rate: float = 0.05,
        use_layer_norm: bool = True,
        n_new_programs: int = 0,
        kl_scale: float = 0.5,
    ) -> None:
        super().__init__()
        if mask is None:
            if n_programs is None:
                msg = "give the gene-program mask (genes x programs) or, to load saved weights, n_programs"
                raise ValueError(msg)
            mask = torch.zeros(n_input, n_programs)
        mask = torch.as_tensor(np.asarray(mask, dtype=np.float32))
        if mask.shape[0] != n_input:
            msg = f"the mask has {mask.shape[0]} genes, the data {n_input}"
            raise ValueError(msg)
        self.n_input, self.n_batch = n_input, n_batch
        self.n_programs, self.n_new_programs = int(mask.shape[1]), int(n_new_programs)
        self.n_latent = self.n_programs + self.n_new_programs
        self.kl_scale = kl_scale
        block = {"layer_norm": use_layer_norm, "dropout_rate": dropout_rate}
        sizes = [n_input, *n_hidden]
        self.encoder_first = ConditionalLayer(sizes[0], sizes[1], n_batch, bias=True)
        self.encoder_first_out = normed(sizes[1], **block)
        self.encoder_hidden = nn.Sequential(
            *(nn.Sequential(nn.Linear(a, b), normed(b, **block)) for a, b in pairwise(sizes[1:]))
        )
        self.mean_encoder = nn.Linear(sizes[-1], self.n_programs)
        self.log_var_encoder = nn.Linear(sizes[-1], self.n_programs)
        self.register_buffer("mask", mask)
        weight = nn.Linear(self.n_programs, n_input, bias=False).weight.detach() * mask
        self.decoder_programs = nn.Parameter(weight)
        self.decoder_cond = nn.Linear(n_batch, n_input, bias=False)
        self.theta = nn.Parameter(torch.randn(n_input, n_batch))
        if self.n_new_programs:
            self.ext_mean_encoder = nn.Linear(sizes[-1], self.n_new_programs)
            self.ext_log_var_encoder = nn.Linear(sizes[-1], self.n_new_programs)
            self.decoder_new_programs = nn.Parameter(
                nn.Linear(self.n_new_programs, n_input, bias=False).weight.detach()
            )

    # ---- the CountsCVAE contract ------------------------------------------------------------------
    def _one_hot(self, batch_index: torch.Tensor) -> torch.Tensor:
        return F.one_hot(batch_index.long().view(-1), self.n_batch).to(torch.float32)

    def encode(self, x_log: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        """The encoder's last hidden layer, the condition one-hot in its first."""
        hidden = self.encoder_first_out(self.encoder_first(x_log, self._one_hot(batch_index)))
        return self.encoder_hidden(hidden)

    def latent_heads(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior means and log-variances: the annotated programs, then the new ones."""
        mean, log_var = self.mean_encoder(hidden), self.log_var_encoder(hidden)
        if self.n_new_programs:
            mean = torch.cat([mean, self.ext_mean_encoder(hidden)], dim=-1)
            log_var = torch.cat([log_var, self.ext_log_var_encoder(hidden)], dim=-1)
        return mean, log_var

    def decode(self, z: torch.Tensor, batch_index: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Gene logits: masked programs, plus new programs, plus the condition's column."""
        programs = z[..., : self.n_programs]
        logits = F.linear(programs, self.decoder_programs * self.mask) + self.decoder_cond(self._one_hot(batch_index))
        if self.n_new_programs:
            logits = logits + F.linear(z[..., self.n_programs :], self.decoder_new_programs)
        return logits, {}

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, torch.Tensor],
        generative_outputs: dict[str, object],
        kl_weight: float = 1.0,
    ) -> LossOutput:
        """Reconstruction + ``kl_weight * kl_scale`` * KL, averaged over cells."""
        reconstruction, kl = self.elbo_terms(tensors, inference_outputs, generative_outputs)
        loss = torch.mean(reconstruction + kl_weight * self.kl_scale * kl)
        return LossOutput(loss=loss, reconstruction_loss=reconstruction, kl_local=kl)

    # ---- programs -------------------------------------------------------------------------------
    def active_programs(self) -> np.ndarray:
        """Which latent dimensions are active: an annotated program with a non-zero decoder column, or a new one."""
        annotated = (self.decoder_programs.detach() * self.mask).abs().sum(dim=0) > 0
        return np.concatenate([annotated.cpu().numpy(), np.ones(self.n_new_programs, dtype=bool)])

    def program_weights(self) -> torch.Tensor:
        """Decoder weights, genes x every program (annotated ones masked, then the new ones)."""
        weights = self.decoder_programs.detach() * self.mask
        if self.n_new_programs:
            weights = torch.cat([weights, self.decoder_new_programs.detach()], dim=1)
        return weights

"""What scArches' conditional VAEs share, on scvi-tools' :class:`~scvi.module.base.BaseModuleClass`.

The encoder reads ``log1p`` counts and ends in mean and log-variance heads (``mean_encoder``,
``log_var_encoder``; scArches adds 1e-4 to the variance); the decoder's softmax times the cell's total
counts is a negative-binomial mean with one inverse dispersion per gene and condition (``theta``,
genes x conditions); the loss is reconstruction plus ``kl_weight`` times the KL to N(0, 1). A
subclass builds its layers and says how the condition enters (:meth:`encode`, :meth:`decode`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LayerField
from scvi.distributions import NegativeBinomial
from scvi.module.base import BaseModuleClass, auto_move_data
from torch.distributions import Normal, kl_divergence

if TYPE_CHECKING:
    from anndata import AnnData

LATENT_VARIANCE_FLOOR = 1e-4


class CountsSetupMixin:
    """``setup_anndata`` of the trVAE, expiMap and scGen models: raw counts, conditions, cell types."""

    @classmethod
    def setup_anndata(  # its locals are the saved set-up arguments: import nothing inside
        cls,
        adata: AnnData,
        batch_key: str | None = None,
        labels_key: str | None = None,
        layer: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Register raw counts (``layer`` or ``X``), the condition (batch) column and the cell types."""
        setup_method_args = cls._get_setup_method_args(**locals())
        fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key),
        ]
        manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        manager.register_fields(adata, **kwargs)
        cls.register_manager(manager)


class CountsCVAE(BaseModuleClass):
    """A conditional VAE on counts: subclasses set ``mean_encoder``, ``log_var_encoder``, ``theta``."""

    def encode(self, x_log: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        """The encoder's last hidden layer for ``log1p`` counts and conditions."""
        raise NotImplementedError

    def latent_heads(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior means and log-variances from the encoder's last hidden layer."""
        return self.mean_encoder(hidden), self.log_var_encoder(hidden)

    def decode(self, z: torch.Tensor, batch_index: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Softmax-able gene logits for ``z`` and conditions, and any extra outputs (e.g. the first layer's)."""
        raise NotImplementedError

    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"x": tensors[REGISTRY_KEYS.X_KEY], "batch_index": tensors[REGISTRY_KEYS.BATCH_KEY]}

    def _get_generative_input(
        self, tensors: dict[str, torch.Tensor], inference_outputs: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return {
            "z": inference_outputs["z"],
            "library": inference_outputs["library"],
            "batch_index": tensors[REGISTRY_KEYS.BATCH_KEY],
        }

    @auto_move_data
    def inference(self, x: torch.Tensor, batch_index: torch.Tensor, n_samples: int = 1) -> dict[str, torch.Tensor]:
        """Posterior ``q(z | x, condition)`` and a sample of it."""
        mean, log_var = self.latent_heads(self.encode(torch.log1p(x), batch_index))
        qz = Normal(mean, (torch.exp(log_var) + LATENT_VARIANCE_FLOOR).sqrt())
        z = qz.rsample() if n_samples == 1 else qz.rsample((n_samples,))
        return {"z": z, "qz": qz, "library": x.sum(dim=1, keepdim=True)}

    @auto_move_data
    def generative(self, z: torch.Tensor, library: torch.Tensor, batch_index: torch.Tensor) -> dict[str, object]:
        """Negative-binomial ``p(x | z, condition)``, with the decoder's extra outputs."""
        logits, extra = self.decode(z, batch_index)
        inverse_dispersion = torch.exp(self.theta.T[batch_index.long().view(-1)])
        px = NegativeBinomial(mu=torch.softmax(logits, dim=-1) * library, theta=inverse_dispersion)
        return {"px": px, **extra}

    @staticmethod
    def elbo_terms(
        tensors: dict[str, torch.Tensor], inference_outputs: dict[str, torch.Tensor], generative_outputs: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-cell reconstruction loss and KL divergence to N(0, 1)."""
        reconstruction = -generative_outputs["px"].log_prob(tensors[REGISTRY_KEYS.X_KEY]).sum(dim=-1)
        qz = inference_outputs["qz"]
        kl = kl_divergence(qz, Normal(torch.zeros_like(qz.loc), torch.ones_like(qz.scale))).sum(dim=-1)
        return reconstruction, kl

"""scGen (scArches' VAE with latent arithmetic for batch removal), on scvi-tools' base classes."""

from fedarches.shared.models.scgen._model import SCGEN, shift_to_targets, type_means
from fedarches.shared.models.scgen._module import ScGenModule

__all__ = ["SCGEN", "ScGenModule", "shift_to_targets", "type_means"]

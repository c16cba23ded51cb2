"""trVAE (scArches' conditional VAE with an MMD penalty between conditions), on scvi-tools' base classes."""

from fedarches.shared.models.trvae._model import TRVAE
from fedarches.shared.models.trvae._module import TrVAEModule

__all__ = ["TRVAE", "TrVAEModule"]

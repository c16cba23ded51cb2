"""expiMap (scArches' interpretable conditional VAE over gene programs), on scvi-tools' base classes."""

from fedarches.shared.models.expimap._model import EXPIMAP
from fedarches.shared.models.expimap._module import ExpiMapModule

__all__ = ["EXPIMAP", "ExpiMapModule"]

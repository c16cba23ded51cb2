"""scPoli (scArches' model of condition embeddings and cell-type prototypes), on scvi-tools' base classes."""

from fedarches.shared.models.scpoli._model import SCPOLI
from fedarches.shared.models.scpoli._module import ScPoliModule

__all__ = ["SCPOLI", "ScPoliModule"]

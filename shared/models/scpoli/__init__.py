"""scPoli (scArches' model of condition embeddings and cell-type prototypes), on scvi-tools' base classes.

Also reads models saved by the scArches package's scPoli (:func:`read_scarches_scpoli`) without
running pickled code, and builds the same model from them (:func:`scarches_to_model`).
"""

from fedarches.shared.models._scarches_files import is_scarches_save
from fedarches.shared.models.scpoli._model import SCPOLI
from fedarches.shared.models.scpoli._module import ScPoliModule
from fedarches.shared.models.scpoli._scarches import ScArchesScPoli, read_scarches_scpoli
from fedarches.shared.models.scpoli._scarches import to_model as scarches_to_model

__all__ = ["SCPOLI", "ScArchesScPoli", "ScPoliModule", "is_scarches_save", "read_scarches_scpoli", "scarches_to_model"]

"""Model backends: one module per scvi-tools model family, one registry that maps names to them.

Only this registry turns a name (``build-reference --model``, ``setup.json``'s ``backend``, a
saved model's ``model_name``) into a backend; every other module asks it.

To add a model family, write a module with a :class:`ModelBackend` subclass and list it in
:data:`BACKENDS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedarches.shared.backends.atac import PEAKVIBackend
from fedarches.shared.backends.base import ModelBackend, ReferenceTraining
from fedarches.shared.backends.citeseq import TOTALANVIBackend, TOTALVIBackend
from fedarches.shared.backends.expimap import EXPIMAPBackend
from fedarches.shared.backends.rna import SCANVIBackend, SCVIBackend
from fedarches.shared.backends.scgen import SCGENBackend
from fedarches.shared.backends.scpoli import SCPOLIBackend
from fedarches.shared.backends.trvae import TRVAEBackend
from fedarches.shared.errors import UserInputError

if TYPE_CHECKING:
    from fedarches.shared.bundle import ReferenceBundle

BACKENDS: dict[str, ModelBackend] = {
    backend.name: backend
    for backend in (
        SCANVIBackend(),
        SCVIBackend(),
        PEAKVIBackend(),
        TOTALVIBackend(),
        TOTALANVIBackend(),
        SCPOLIBackend(),
        TRVAEBackend(),
        EXPIMAPBackend(),
        SCGENBackend(),
    )
}
MODEL_CLASSES: dict[str, str] = {backend.model_class: name for name, backend in BACKENDS.items()}


def get_backend(name: str) -> ModelBackend:
    """The backend called ``name`` (``"scanvi"``, ``"totalvi"``, ...)."""
    try:
        return BACKENDS[name]
    except KeyError:
        msg = f"no model backend {name!r}; fedarches supports {', '.join(BACKENDS)}"
        raise UserInputError(msg) from None


def backend_for_model_class(model_class: str | None, *, source: str = "the model") -> ModelBackend:
    """The backend of a saved scvi-tools model's class (its registry's ``model_name``)."""
    if model_class not in MODEL_CLASSES:
        supported = ", ".join(MODEL_CLASSES)
        msg = f"{source} is a {model_class} model; fedarches maps against {supported} models"
        raise UserInputError(msg, hint="save one of those with model.save(), or build one with build-reference")
    return BACKENDS[MODEL_CLASSES[model_class]]


def backend_for(bundle: ReferenceBundle) -> ModelBackend:
    """The backend of a verified bundle (its ``setup.json`` names it; the schema checked the name)."""
    return BACKENDS[MODEL_CLASSES[bundle.model_class]]


__all__ = [
    "BACKENDS",
    "MODEL_CLASSES",
    "ModelBackend",
    "ReferenceTraining",
    "backend_for",
    "backend_for_model_class",
    "get_backend",
]

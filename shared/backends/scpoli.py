"""scPoli backend: condition embeddings and cell-type prototypes (:class:`fedarches.shared.models.scpoli.SCPOLI`).

scArches' scPoli, written here on scvi-tools' base classes (the scArches package no longer imports on
today's stack). Cell types come from the nearest prototype; each cell also gets scPoli's uncertainty,
its distance to that prototype (``obs['prediction_uncertainty']``). Surgery grows one embedding row and
one ``theta`` column (negative-binomial dispersions) per new batch and trains only those: that is all an
adapter may carry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from fedarches.shared.backends.base import LABELS_KEY, ReferenceTraining, WrittenHereBackend
from fedarches.shared.backends.rna import UNLABELED_CATEGORY
from fedarches.shared.prototypes import PROTOTYPES_TENSOR

if TYPE_CHECKING:
    from fedarches.shared.bundle import ReferenceBundle

TUTORIAL_EPOCHS = 50  # scArches' scPoli surgery tutorial, reference and query alike
UNCERTAINTY_KEY = "prediction_uncertainty"


class SCPOLIBackend(WrittenHereBackend):
    """``SCPOLI``: prototype label transfer, the scArches tutorial's defaults."""

    name: ClassVar[str] = "scpoli"
    model_class: ClassVar[str] = "SCPOLI"
    module_path: ClassVar[str] = "fedarches.shared.models.scpoli"
    latent_key: ClassVar[str] = "X_scPoli"
    has_classifier: ClassVar[bool] = True
    cell_type_call: ClassVar[str] = "nearest prototype"
    needs_labels: ClassVar[bool] = True
    adapter_tensors: ClassVar[tuple[str, ...]] = (r"embedding\.weight", r"theta")
    surgery_epochs: ClassVar[int | None] = TUTORIAL_EPOCHS

    def setup_kwargs(self) -> dict[str, Any]:
        """ScPoli's unlabeled category."""
        return {"unlabeled_category": UNLABELED_CATEGORY}

    def reference_train_kwargs(self, options: ReferenceTraining) -> dict[str, Any]:
        """The tutorial's 50 epochs, without early stopping.

        scvi-tools' early stopping would watch the ELBO and could stop before the prototype phase.
        """
        return {"max_epochs": options.max_epochs or TUTORIAL_EPOCHS, "enable_progress_bar": options.progress_bar}

    def cell_outputs(self, model: Any, bundle: ReferenceBundle, latent: np.ndarray) -> dict[str, Any]:
        """ScPoli's per-cell uncertainty: Euclidean distance from the cell's latent mean to its nearest prototype."""
        distances = model.prototype_distances()
        return {UNCERTAINTY_KEY: distances.min(axis=1).to_numpy().astype(np.float32)}

    def add_cell_types(self, saved: dict[str, Any], prototypes: Mapping[str, np.ndarray]) -> None:
        """Append each new type to the label registry and its prototype to the model's prototypes.

        Existing label codes keep their meaning (new ones go last); the model then predicts the new
        types like any other, for every lab that maps onto it.
        """
        import torch

        field = saved["attr_dict"]["registry_"]["field_registries"][LABELS_KEY]
        mapping = [str(c) for c in field["state_registry"]["categorical_mapping"]]
        clash = sorted(set(prototypes) & set(mapping))
        if clash:
            from fedarches.shared.errors import AdapterError

            msg = f"cell types {clash[:3]} are already in the atlas"
            raise AdapterError(msg)
        names = list(prototypes)
        # scvi-tools keeps the unlabeled category last in the mapping: new types go just before it
        unlabeled = saved["attr_dict"]["registry_"]["setup_args"].get("unlabeled_category")
        at = mapping.index(unlabeled) if unlabeled in mapping else len(mapping)
        grown = [*mapping[:at], *names, *mapping[at:]]
        field["state_registry"]["categorical_mapping"] = np.asarray(grown, dtype=object)
        field["summary_stats"]["n_labels"] = len(mapping) + len(names)
        state = saved["model_state_dict"]
        held = state[PROTOTYPES_TENSOR]
        rows = torch.as_tensor(np.stack([prototypes[n] for n in names]), dtype=held.dtype)
        state[PROTOTYPES_TENSOR] = torch.cat([held[:at], rows, held[at:]])
        present = state["prototype_set"]
        state["prototype_set"] = torch.cat([present[:at], torch.ones(len(names), dtype=torch.bool), present[at:]])

"""scGen backend: batch correction by latent arithmetic (:class:`fedarches.shared.models.scgen.SCGEN`), no surgery.

The reference trains scGen's VAE and corrects its own batches per cell type (scArches' largest-batch
rule); the bundle's embedding holds that corrected latent. A lab trains nothing: its cells are
encoded by the frozen reference, typed, and shifted per type onto the reference's corrected type
means. The types come from the lab's own labels where its query has the reference's labels column
(scGen's tutorial requires them; they never leave the lab), and from kNN on the reference
embedding for every other cell. ``obsm['X_scGen']`` is the corrected latent and
``obsm['scgen_corrected']`` the corrected log-normalized expression of the reference's genes.

Nothing grows in surgery, so an adapter carries no tensor: a lab contributes its label statistics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from fedarches.shared.backends.base import WrittenHereBackend
from fedarches.shared.backends.rna import UNLABELED_CATEGORY

if TYPE_CHECKING:
    from collections.abc import Mapping

    from anndata import AnnData

    from fedarches.shared.bundle import ReferenceBundle

CORRECTED_KEY = "scgen_corrected"
LAB_LABELS = "lab_labels"  # query_inputs' key: the lab's own cell types (None where unknown)
_REFERENCE_UNS = "fedarches_scgen_reference"  # the query AnnData's copy of the reference embedding


class SCGENBackend(WrittenHereBackend):
    """``SCGEN``: the scArches tutorial's scGen; kNN labels, then latent arithmetic per type."""

    name: ClassVar[str] = "scgen"
    model_class: ClassVar[str] = "SCGEN"
    module_path: ClassVar[str] = "fedarches.shared.models.scgen"
    latent_key: ClassVar[str] = "X_scGen"
    cell_type_call: ClassVar[str] = "kNN on the reference, then scGen's per-type correction"
    needs_labels: ClassVar[bool] = True
    surgery_trains: ClassVar[bool] = False
    adapter_tensors: ClassVar[tuple[str, ...]] = ()

    # ---- queries -----------------------------------------------------------------------------
    def query_inputs(self, data: Any, bundle: ReferenceBundle, obs_names: pd.Index) -> tuple[dict[str, Any], dict]:
        """The lab's own cell types, when its query has the reference's labels column; a report of them."""
        key = bundle.setup_args.get("labels_key")
        obs = getattr(data, "obs", None)
        if not key or obs is None or key not in obs:
            return {}, {"cell_types_for_correction": "predicted (the query has no labels column "
                        f"{key!r}, which scGen would use)"}  # fmt: skip
        labels = obs[key].reindex(obs_names).astype(object)
        known = labels.isin(bundle.label_categories).to_numpy()
        values = np.where(known, labels.astype(str).to_numpy(), None)
        report = {
            "cell_types_for_correction": f"obs[{key!r}] where it names a reference type, else predicted",
            "n_cells_lab_labelled": int(known.sum()),
        }
        return {LAB_LABELS: values}, report

    def add_query_inputs(self, query: AnnData, bundle: ReferenceBundle, inputs: Mapping[str, Any]) -> None:
        """Keep the lab's labels and the reference's corrected embedding beside the query (never written out)."""
        embedding = bundle.embedding
        if embedding is None:
            return
        query.uns[_REFERENCE_UNS] = {
            "latent": np.asarray(embedding["latent"]),
            "labels": np.asarray(embedding["labels"]),
            "lab_labels": inputs.get(LAB_LABELS),
            "categories": list(bundle.label_categories),
        }

    # ---- what each cell gets -----------------------------------------------------------------
    def latent(self, model: Any, adata: AnnData | None = None, indices: np.ndarray | None = None) -> np.ndarray:
        """The corrected latent: a reference's batches per type onto the largest one; a query's onto the reference."""
        from fedarches.shared.models.scgen import shift_to_targets, type_means

        reference = (model.adata if adata is None else adata).uns.get(_REFERENCE_UNS)
        if reference is None:  # the reference itself
            corrected = model.corrected_latent(adata, unlabeled=UNLABELED_CATEGORY)
        else:
            latent = model.get_latent_representation(adata)
            categories = np.asarray(reference["categories"], dtype=object)
            codes = np.asarray(reference["labels"])
            labelled = codes >= 0
            reference_latent = np.asarray(reference["latent"])[labelled]
            labels = self._query_types(latent, reference_latent, codes[labelled], categories, reference["lab_labels"])
            batches = model.registered_obs("batch", adata)
            targets = type_means(reference_latent, categories[codes[labelled]])
            corrected = shift_to_targets(latent, labels, batches, targets)
        corrected = np.asarray(corrected, dtype=np.float32)
        return corrected if indices is None else corrected[np.asarray(indices)]

    @staticmethod
    def _query_types(
        latent: np.ndarray, reference_latent: np.ndarray, codes: np.ndarray, categories: np.ndarray, lab_labels: Any
    ) -> np.ndarray:
        """The lab's label where it gave one, else the kNN vote of the reference embedding (before correction)."""
        from fedarches.shared.embedding import knn_label_probabilities

        probabilities = knn_label_probabilities(latent, reference_latent, codes, len(categories))
        predicted = categories[probabilities.argmax(axis=1)].astype(object)
        if lab_labels is not None:
            given = np.asarray(lab_labels, dtype=object)
            predicted = np.where(pd.notna(given), given, predicted)
        return predicted.astype(str)

    def cell_outputs(self, model: Any, bundle: ReferenceBundle, latent: np.ndarray) -> dict[str, Any]:
        """``obsm['scgen_corrected']``: the corrected log-normalized expression of the reference's genes."""
        expression = model.decode(latent)
        return {CORRECTED_KEY: pd.DataFrame(expression, index=model.adata.obs_names, columns=list(bundle.var_names))}

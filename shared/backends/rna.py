"""RNA-only backends: scVI (kNN labels from the reference embedding) and scANVI (its own classifier)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from fedarches.shared.backends.base import ModelBackend, ReferenceTraining

if TYPE_CHECKING:
    from anndata import AnnData

UNLABELED_CATEGORY = "Unknown"


class SCVIBackend(ModelBackend):
    """``scvi.model.SCVI``: cell types by weighted kNN on the reference's latent."""

    name: ClassVar[str] = "scvi"
    model_class: ClassVar[str] = "SCVI"
    latent_key: ClassVar[str] = "X_scVI"


class SCANVIBackend(ModelBackend):
    """``scvi.model.SCANVI``: trained as scVI, then ``SCANVI.from_scvi_model`` (the scArches tutorial)."""

    name: ClassVar[str] = "scanvi"
    model_class: ClassVar[str] = "SCANVI"
    latent_key: ClassVar[str] = "X_scANVI"
    has_classifier: ClassVar[bool] = True
    cell_type_call: ClassVar[str] = "its classifier"
    needs_labels: ClassVar[bool] = True

    def train_reference(
        self, train: AnnData, *, batch_key: str, labels_key: str | None, options: ReferenceTraining
    ) -> Any:
        """Train scVI on ``train``, then scANVI from it with the reference's labels."""
        vae = SCVIBackend().train_reference(train, batch_key=batch_key, labels_key=labels_key, options=options)
        return self._train_classifier(
            self.model_cls().from_scvi_model(vae, unlabeled_category=UNLABELED_CATEGORY), options
        )

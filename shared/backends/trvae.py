"""trVAE backend: scArches' conditional VAE with an MMD penalty (:class:`fedarches.shared.models.trvae.TRVAE`).

Written here on scvi-tools' base classes (the scArches package no longer imports on today's stack).
Cell types by weighted kNN on the reference embedding, as scArches' trVAE tutorial transfers labels.
Surgery grows one column per new batch in the first encoder and first decoder layers' condition
weights and in ``theta`` (negative-binomial dispersions), and trains only those: all an adapter holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from fedarches.shared.backends.base import ModelBackend, ReferenceTraining

if TYPE_CHECKING:
    from pathlib import Path

    from anndata import AnnData

class TRVAEBackend(ModelBackend):
    """``TRVAE``: the scArches tutorial's architecture and training, kNN labels."""

    name: ClassVar[str] = "trvae"
    model_class: ClassVar[str] = "TRVAE"
    module_path: ClassVar[str] = "fedarches.shared.models.trvae"
    latent_key: ClassVar[str] = "X_trVAE"
    adapter_tensors: ClassVar[tuple[str, ...]] = (r"(?:encoder|decoder)_first\.cond_L\.weight", r"theta")

    def train_reference(
        self, train: AnnData, *, batch_key: str, labels_key: str | None, options: ReferenceTraining
    ) -> Any:
        """Train trVAE on ``train`` (``n_layers`` does not apply: the tutorial's two hidden layers of 128)."""
        cls = self.model_cls()
        cls.setup_anndata(train, batch_key=batch_key, labels_key=labels_key)
        model = cls(train, n_latent=options.n_latent)
        model.train(
            max_epochs=options.max_epochs,  # None: the tutorial's 500, with early stopping
            early_stopping=options.early_stopping,
            enable_progress_bar=options.progress_bar,
        )
        return model

    def load_query(self, query: AnnData, model_dir: Path) -> Any:
        """TrVAE surgery: new condition columns and ``theta`` columns train, all else frozen."""
        return self.model_cls().load_query_data(query, str(model_dir))

    def surgery_train_kwargs(self, learning_rate: float) -> dict[str, Any]:
        """``TRVAE.train`` takes the learning rate itself and trains a query without weight decay."""
        return {"lr": learning_rate}

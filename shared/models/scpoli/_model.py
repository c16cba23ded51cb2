"""``SCPOLI``: scArches' scPoli as a scvi-tools model (set-up, training, prototypes, label transfer, surgery).

Defaults follow scArches' scPoli surgery tutorial: ``embedding_dims=5``, ``recon_loss="nb"``, one hidden
layer of ``ceil(sqrt(n_genes))`` units, 10 latent dimensions, dropout 0.05, layer norm; training of 50
epochs, the last 10 with the prototype loss (``pretraining_epochs=40``), ``eta=5`` for a reference and
10 for a query, Adam with ``lr=1e-3``, ``eps=0.01`` and weight decay 0.04 (none on embeddings), KL
weight rising linearly over 100 epochs.

Where this differs from scArches 0.6.1, on purpose:

* Surgery leaves every reference value bit-identical. scArches applies weight decay to ``theta``
  during surgery, which shrinks the reference conditions' dispersions; here old embedding rows and
  ``theta`` columns get no gradient and the query trains without weight decay.
* Latents and predictions use the posterior mean, so they are deterministic (scArches' ``classify``
  samples the latent).
* Prototypes are cell means computed in evaluation mode (scArches: one sampled latent per cell).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LabelsWithUnlabeledObsField, LayerField
from scvi.model.base import ArchesMixin, BaseModelClass, UnsupervisedTrainingMixin, VAEMixin

from fedarches.shared.models._surgery import FC_LAYER_OPTIONS, reference_batch_count, train_only_new_conditions
from fedarches.shared.models.scpoli._module import ScPoliModule

if TYPE_CHECKING:
    from anndata import AnnData

log = logging.getLogger(__name__)

UNLABELED_CATEGORY = "Unknown"
REFERENCE_ETA, QUERY_ETA = 5.0, 10.0  # the tutorial's prototype-loss weights
PRETRAINING_SHARE = 0.8  # the tutorial: 40 of 50 epochs without the prototype loss
TRAINABLE_IN_SURGERY = {"embedding.weight": 0, "theta": 1}  # tensor -> its axis of conditions


class SCPOLI(ArchesMixin, VAEMixin, UnsupervisedTrainingMixin, BaseModelClass):
    """scPoli (De Donno et al. 2023): condition embeddings and cell-type prototypes.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    n_latent
        Latent dimensions.
    n_hidden
        Hidden units (default ``ceil(sqrt(n_genes))``, as scPoli).
    embedding_dim
        Size of each condition's embedding.
    embedding_max_norm
        Largest norm of a condition embedding.
    dropout_rate
        Dropout after each hidden layer.
    use_layer_norm
        Layer norm after each hidden layer.
    """

    _module_cls = ScPoliModule

    def __init__(
        self,
        adata: AnnData | None = None,
        n_latent: int = 10,
        n_hidden: int | None = None,
        embedding_dim: int = 5,
        embedding_max_norm: float = 1.0,
        dropout_rate: float = 0.05,
        use_layer_norm: bool = True,
    ) -> None:
        super().__init__(adata)
        stats = self.summary_stats
        self.module = self._module_cls(
            n_input=stats.n_vars,
            n_batch=stats.n_batch,
            n_labels=stats.n_labels,
            n_hidden=n_hidden,
            n_latent=n_latent,
            embedding_dim=embedding_dim,
            embedding_max_norm=embedding_max_norm,
            dropout_rate=dropout_rate,
            use_layer_norm=use_layer_norm,
        )
        self._model_summary_string = (
            f"scPoli: {stats.n_batch} conditions, {stats.n_labels} label categories, n_latent {n_latent}, "
            f"embedding_dim {embedding_dim}"
        )
        self.n_reference_batches: int | None = None  # set by load_query_data: the frozen conditions
        self.init_params_ = self._get_init_params(locals())

    # ---- set-up --------------------------------------------------------------------------------
    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        batch_key: str | None = None,
        labels_key: str | None = None,
        unlabeled_category: str = UNLABELED_CATEGORY,
        layer: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Register raw counts (``layer`` or ``X``), the condition column and the cell-type column.

        Cells labelled ``unlabeled_category`` are unlabeled: they train the VAE but no prototype.
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            LabelsWithUnlabeledObsField(REGISTRY_KEYS.LABELS_KEY, labels_key, unlabeled_category),
        ]
        manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        manager.register_fields(adata, **kwargs)
        cls.register_manager(manager)

    # ---- training ------------------------------------------------------------------------------
    def train(
        self,
        max_epochs: int | None = 50,
        pretraining_epochs: int | None = None,
        eta: float | None = None,
        lr: float = 1e-3,
        eps: float = 0.01,
        weight_decay: float = 0.04,
        n_epochs_kl_warmup: int = 100,
        batch_size: int = 128,
        plan_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Train: ``pretraining_epochs`` as a conditional VAE, then with the prototype loss.

        A reference sets each labelled type's prototype to its training cells' latent mean when the
        prototype phase starts and after every epoch of it. A query (after :meth:`load_query_data`)
        keeps the reference's prototypes; its labelled cells of reference types are pulled towards
        them, and only the new conditions' embedding rows and ``theta`` columns train, without weight
        decay whatever ``weight_decay`` says (it would shrink frozen reference values).

        Parameters
        ----------
        max_epochs
            Epochs in all (scArches' ``n_epochs``).
        pretraining_epochs
            Epochs before the prototype loss starts (default 80 % of ``max_epochs``, the tutorial's 40/50).
        eta
            Weight of the prototype loss (default 5 for a reference, 10 for a query: the tutorial's).
        lr, eps, weight_decay
            Adam's; embeddings never get weight decay (scArches' optimizer groups).
        n_epochs_kl_warmup
            Epochs over which the KL weight rises linearly from 0 to 1 (scArches' ``alpha_epoch_anneal``).
        batch_size
            Cells per step.
        plan_kwargs
            Further :class:`~scvi.train.TrainingPlan` arguments.
        **kwargs
            :meth:`~scvi.model.base.UnsupervisedTrainingMixin.train` arguments (``early_stopping``, ...).
        """
        max_epochs = int(max_epochs or 50)
        if pretraining_epochs is None:
            pretraining_epochs = round(PRETRAINING_SHARE * max_epochs)
        is_query = self.n_reference_batches is not None
        eta = (QUERY_ETA if is_query else REFERENCE_ETA) if eta is None else float(eta)
        decay = 0.0 if is_query else weight_decay
        if is_query and "weight_decay" in (plan_kwargs or {}):
            plan_kwargs = {k: v for k, v in plan_kwargs.items() if k != "weight_decay"}
        plan = {
            "optimizer": "Custom",
            "optimizer_creator": _AdamGroups(self.module, lr=lr, eps=eps, weight_decay=decay),
            "n_epochs_kl_warmup": n_epochs_kl_warmup,
            **{k: v for k, v in (plan_kwargs or {}).items() if k not in ("lr", "eps")},
        }
        callbacks = [*kwargs.pop("callbacks", []), _PrototypePhase(self, pretraining_epochs, eta, batch_size)]
        self.module.eta = 0.0
        try:
            super().train(max_epochs=max_epochs, batch_size=batch_size, plan_kwargs=plan, callbacks=callbacks, **kwargs)
        finally:
            self.module.eta = 0.0
        if not is_query:
            self._set_prototypes(batch_size=batch_size)  # from the final network, whatever the phase lengths

    # ---- surgery -------------------------------------------------------------------------------
    @classmethod
    def load_query_data(cls, adata: AnnData, reference_model: Any, **kwargs: Any) -> SCPOLI:
        """ScArches surgery: the reference with one new embedding row and ``theta`` column per new condition.

        Only those train (gradient hooks zero the reference's rows and columns); every other value is
        frozen. Options of scvi-tools' ``load_query_data`` that freeze parts of FC layers do not apply.
        """
        kwargs = {k: v for k, v in kwargs.items() if k not in FC_LAYER_OPTIONS}
        model = super().load_query_data(adata, reference_model, unfrozen=True, **kwargs)
        model.n_reference_batches = reference_batch_count(reference_model)
        train_only_new_conditions(model.module, TRAINABLE_IN_SURGERY, model.n_reference_batches)
        return model

    # ---- prototypes and label transfer ---------------------------------------------------------------
    @property
    def cell_types(self) -> list[str]:
        """Cell types with a prototype, in label-registry order."""
        mapping = self._label_mapping()
        return [str(mapping[i]) for i in np.flatnonzero(self.module.prototype_set.cpu().numpy())]

    def get_prototypes(self) -> pd.DataFrame:
        """Prototypes (cell types x latent dimensions)."""
        set_ = self.module.prototype_set.cpu().numpy()
        values = self.module.prototypes.cpu().numpy()[set_]
        return pd.DataFrame(values, index=self.cell_types, columns=[f"z{i}" for i in range(values.shape[1])])

    def prototype_distances(
        self, adata: AnnData | None = None, indices: Sequence[int] | None = None, batch_size: int | None = None,
        latent: np.ndarray | None = None,
    ) -> pd.DataFrame:  # fmt: skip
        """Euclidean distance of each cell's latent mean to each prototype (cells x cell types)."""
        if latent is None:
            latent = self.get_latent_representation(adata, indices=indices, batch_size=batch_size)
        distances = self.module.distances_to_prototypes(torch.as_tensor(np.asarray(latent, dtype=np.float32)))
        columns = np.flatnonzero(self.module.prototype_set.cpu().numpy())
        return pd.DataFrame(distances[:, columns].numpy(), columns=self.cell_types)

    def predict(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        soft: bool = False,
        batch_size: int | None = None,
    ) -> np.ndarray | pd.DataFrame:
        """Nearest prototype per cell; with ``soft``, the prototypes' posterior probabilities (cells x cell types).

        See :meth:`ScPoliModule.prototype_probabilities`.
        """
        latent = self.get_latent_representation(adata, indices=indices, batch_size=batch_size)
        distances = self.prototype_distances(latent=latent)
        if not soft:
            return distances.idxmin(axis=1).to_numpy()
        probabilities = self.module.prototype_probabilities(torch.as_tensor(latent))
        values = probabilities[:, np.flatnonzero(self.module.prototype_set.cpu().numpy())].numpy()
        return pd.DataFrame(values, columns=distances.columns, index=distances.index)

    def classify(
        self, adata: AnnData | None = None, indices: Sequence[int] | None = None, scale_uncertainties: bool = False
    ) -> pd.DataFrame:
        """ScPoli's label transfer: ``prediction`` (nearest prototype) and ``uncertainty`` (its distance).

        With ``scale_uncertainties``, distances are robust-scaled and then min-max scaled to [0, 1]
        over these cells, as scArches' ``classify(scale_uncertainties=True)``.
        """
        distances = self.prototype_distances(adata, indices)
        uncertainty = distances.min(axis=1).to_numpy()
        if scale_uncertainties:
            from sklearn.preprocessing import MinMaxScaler, RobustScaler

            scaled = RobustScaler().fit_transform(uncertainty.reshape(-1, 1))
            uncertainty = MinMaxScaler(feature_range=(0, 1)).fit_transform(scaled).ravel()
        return pd.DataFrame({"prediction": distances.idxmin(axis=1).to_numpy(), "uncertainty": uncertainty})

    def _label_mapping(self) -> np.ndarray:
        return np.asarray(self.adata_manager.get_state_registry(REGISTRY_KEYS.LABELS_KEY).categorical_mapping)

    def _set_prototypes(self, indices: np.ndarray | None = None, batch_size: int = 128) -> None:
        """Each labelled type's prototype := the latent mean of its cells among ``indices`` (default all)."""
        codes = np.asarray(self.get_from_registry(self.adata, REGISTRY_KEYS.LABELS_KEY)).ravel().astype(int)
        indices = np.arange(self.adata.n_obs) if indices is None else np.asarray(indices)
        unlabeled = self._unlabeled_code()
        labelled = indices[codes[indices] != unlabeled]
        if len(labelled) == 0:
            return
        latent = self._latent_means(labelled, batch_size)
        labelled_codes = codes[labelled]
        prototypes = self.module.prototypes.clone()
        present = self.module.prototype_set.clone()
        for code in np.unique(labelled_codes):
            prototypes[code] = torch.as_tensor(latent[labelled_codes == code].mean(axis=0))
            present[code] = True
        self.module.prototypes.copy_(prototypes)
        self.module.prototype_set.copy_(present)
        self._set_prototype_variance(labelled, latent, batch_size)

    def _set_prototype_variance(
        self, labelled: np.ndarray | None = None, latent: np.ndarray | None = None, batch_size: int = 128
    ) -> None:
        """``prototype_variance`` := the mean squared offset of labelled cells' latent means from their prototype.

        Pooled over cells and dimensions; ``labelled`` (default: every labelled cell of a type with a
        prototype) and their ``latent`` means when already computed.
        """
        codes = np.asarray(self.get_from_registry(self.adata, REGISTRY_KEYS.LABELS_KEY)).ravel().astype(int)
        if labelled is None:
            labelled = np.flatnonzero(self.module.prototype_set.cpu().numpy()[codes])
        if len(labelled) == 0:
            return
        if latent is None:
            latent = self._latent_means(labelled, batch_size)
        offsets = latent - self.module.prototypes.cpu().numpy()[codes[labelled]]
        self.module.prototype_variance.fill_(max(float(np.mean(np.square(offsets))), 1e-12))

    def _latent_means(self, indices: np.ndarray, batch_size: int) -> np.ndarray:
        """Posterior means of ``indices`` in evaluation mode, whatever the module's mode was."""
        was_training = self.module.training
        self.module.eval()
        try:
            loader = self._make_data_loader(adata=self.adata, indices=indices, batch_size=batch_size, shuffle=False)
            with torch.no_grad():
                means = [self.module.inference(**self.module._get_inference_input(t))["qz"].loc.cpu() for t in loader]
            return torch.cat(means).numpy()
        finally:
            self.module.train(was_training)

    def _unlabeled_code(self) -> int:
        unlabeled = self.adata_manager.registry["setup_args"].get("unlabeled_category")
        hits = np.flatnonzero(self._label_mapping() == unlabeled)
        return int(hits[0]) if len(hits) else -1


class _PrototypePhase(Callback):
    """Starts the prototype loss after ``pretraining_epochs``; a reference also sets prototypes then and each epoch."""

    def __init__(self, model: SCPOLI, pretraining_epochs: int, eta: float, batch_size: int) -> None:
        self.model, self.pretraining_epochs, self.eta, self.batch_size = model, pretraining_epochs, eta, batch_size

    def _reference(self) -> bool:
        return self.model.n_reference_batches is None

    def _train_indices(self, trainer: Any) -> np.ndarray | None:
        return getattr(trainer.datamodule, "train_idx", None)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch == self.pretraining_epochs:
            if self._reference():
                self.model._set_prototypes(self._train_indices(trainer), self.batch_size)
            self.model.module.eta = self.eta

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch >= self.pretraining_epochs and self._reference():
            self.model._set_prototypes(self._train_indices(trainer), self.batch_size)


class _AdamGroups:
    """Adam with two groups, as scPoli's trainer: embeddings without weight decay, the rest with it.

    A class, not a closure, so that a model's saved training options stay plain data.
    """

    def __init__(self, module: ScPoliModule, *, lr: float, eps: float, weight_decay: float) -> None:
        self.module, self.lr, self.eps, self.weight_decay = module, lr, eps, weight_decay

    def __call__(self, params: Any) -> torch.optim.Optimizer:
        trainable = list(params)
        embedding = [p for p in trainable if p is self.module.embedding.weight]
        rest = [p for p in trainable if p is not self.module.embedding.weight]
        groups = [{"params": embedding, "weight_decay": 0.0}, {"params": rest}]
        groups = [g for g in groups if g["params"]]
        return torch.optim.Adam(groups, lr=self.lr, eps=self.eps, weight_decay=self.weight_decay)

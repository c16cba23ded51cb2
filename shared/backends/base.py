"""The interface every model family implements, so that no other module names a model class.

A backend knows, for one scvi-tools model class that supports scArches surgery
(``ArchesMixin.load_query_data``): how the coordinator trains a reference, which inputs a query
adds besides RNA counts (proteins for totalVI), how the query AnnData is registered, where the
latent goes (``obsm`` key of the scvi-tools tutorials), how cell types are predicted (the model's
classifier, or kNN on the reference embedding), what else each cell gets (denoised proteins), and
exactly which tensors an adapter may carry (its egress allow-list). Everything goes through
scvi-tools' public API: ``setup_anndata``, ``load_query_data``, ``get_latent_representation``,
``predict`` and the saved registry.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from fedarches.shared.errors import AdapterError

if TYPE_CHECKING:
    import scipy.sparse as sp
    from anndata import AnnData
    from mudata import MuData

    from fedarches.shared.bundle import ReferenceBundle

# Linear layers of scvi-tools' FCLayers: covariates (batches) are one-hot columns of these weights.
FC_LAYER_WEIGHT = r"(?:[\w.]+\.)?fc_layers\.Layer \d+\.0\.weight"

# scvi-tools' registry keys, as saved models spell them (scvi.REGISTRY_KEYS; a test checks they agree):
# reading a saved model's registry needs no scvi-tools import (seconds), as when the coordinator merges.
BATCH_KEY = "batch"
LABELS_KEY = "labels"


@dataclass(frozen=True)
class ReferenceTraining:
    """Training options shared by every backend (defaults: the scvi-tools scArches tutorial)."""

    n_latent: int = 10
    n_layers: int = 2
    max_epochs: int | None = None
    classifier_max_epochs: int = 20  # scANVI / totalANVI after their unsupervised model
    n_samples_per_label: int = 100
    early_stopping: bool = True
    progress_bar: bool = True


class ModelBackend:
    """One scvi-tools model family behind fedarches' roles (the coordinator and the labs).

    Subclasses set the class attributes and override what differs; the defaults fit scVI.
    """

    name: ClassVar[str]
    """What ``build-reference --model`` takes and ``setup.json`` records (``"scanvi"``)."""
    model_class: ClassVar[str]
    """scvi-tools' class name, as the saved registry's ``model_name`` spells it (``"SCANVI"``)."""
    module_path: ClassVar[str] = "scvi.model"
    latent_key: ClassVar[str]
    """``obsm`` key of the latent representation, as in scvi-tools' tutorials."""
    has_classifier: ClassVar[bool] = False
    """Predicts cell types itself (``model.predict``); otherwise kNN on the reference embedding."""
    cell_type_call: ClassVar[str] = "kNN on the reference"
    """How cell types are called, in words (the list of backends shows it)."""
    needs_labels: ClassVar[bool] = False
    """Training a reference needs a labels column."""
    needs_gene_programs: ClassVar[bool] = False
    """Training a reference needs gene programs (``varm['I']``, e.g. from a GMT file)."""
    modalities: ClassVar[tuple[str, ...]] = ("RNA",)
    adapter_tensors: ClassVar[tuple[str, ...]] = (FC_LAYER_WEIGHT, r"(?:[\w.]+\.)?px_r")
    """Regular expressions (full match) of the tensors an adapter may carry: its egress allow-list."""
    surgery_trains: ClassVar[bool] = True
    """Surgery trains the query's new columns (scGen's mapping trains nothing: no tensor grows)."""
    surgery_epochs: ClassVar[int | None] = None
    """Epochs of surgery when the lab sets none (``None``: fedarches' step-capped scvi-tools default)."""

    # ---- the model class -------------------------------------------------------------------------
    def model_cls(self) -> type:
        """The scvi-tools class (imported on first use: ``fedarches`` imports no torch at start-up)."""
        import importlib

        return getattr(importlib.import_module(self.module_path), self.model_class)

    # ---- reference ---------------------------------------------------------------------------
    def reference_data(self, data: AnnData | MuData, *keys: str | None) -> AnnData:
        """The reference as one AnnData: a MuData's ``rna`` modality with its ``obs`` columns ``keys``.

        Backends with more inputs (proteins) add them from the MuData's other modalities.
        """
        from fedarches.shared.datafiles import query_rna

        return query_rna(data, *keys)

    def check_reference(self, adata: AnnData) -> None:
        """Refuse, before training, a reference this backend cannot train on (raise UserInputError)."""

    def reference_inputs(self, adata: AnnData, train: AnnData) -> None:
        """Copy the extra inputs of ``adata`` (e.g. proteins) into ``train``, the gene-selected copy."""

    def select_features(self, train: AnnData, n_top: int, batch_key: str) -> np.ndarray | None:
        """Boolean mask of the ``n_top`` features a reference keeps (``train.X`` holds the counts).

        ``None`` (the default, for RNA) means scanpy's ``seurat_v3`` highly variable genes per batch.
        """
        return None

    def train_reference(
        self, train: AnnData, *, batch_key: str, labels_key: str | None, options: ReferenceTraining
    ) -> Any:
        """Register ``train`` and train the reference model on it with scArches' architecture.

        The architecture follows scvi-tools' scArches recommendations (layer norm, no batch norm,
        covariates encoded), so that surgery adds batch columns only.
        """
        cls = self.model_cls()
        cls.setup_anndata(train, batch_key=batch_key, labels_key=labels_key)
        model = cls(train, n_latent=options.n_latent, n_layers=options.n_layers, **self.arches_kwargs())
        model.train(**self._train_kwargs(options))
        return model

    @staticmethod
    def arches_kwargs() -> dict[str, Any]:
        """scvi-tools' recommended architecture for surgery."""
        return {"use_layer_norm": "both", "use_batch_norm": "none", "encode_covariates": True, "dropout_rate": 0.2}

    def _train_classifier(self, model: Any, options: ReferenceTraining) -> Any:
        """Train a semi-supervised model made from its unsupervised one (scANVI's recipe, also totalANVI's)."""
        model.train(
            **{**self._train_kwargs(options), "max_epochs": options.classifier_max_epochs},
            n_samples_per_label=options.n_samples_per_label,
        )
        return model

    @staticmethod
    def _train_kwargs(options: ReferenceTraining) -> dict[str, Any]:
        return {
            "max_epochs": options.max_epochs,
            "early_stopping": options.early_stopping,
            "enable_progress_bar": options.progress_bar,
        }

    def bundle_metadata(self, saved: Mapping[str, Any]) -> dict[str, Any]:
        """Entries of ``setup.json`` beyond the common ones, read from a saved model's dict."""
        return {}

    def label_categories(self, saved: Mapping[str, Any]) -> list[str]:
        """Cell types of the saved model's label registry, the unlabeled category excluded."""
        registry = saved["attr_dict"]["registry_"]
        mapping = registry["field_registries"].get(LABELS_KEY, {}).get("state_registry", {})
        unlabeled = registry["setup_args"].get("unlabeled_category")
        return [str(c) for c in mapping.get("categorical_mapping", []) if c != unlabeled]

    # ---- queries -----------------------------------------------------------------------------
    def query_inputs(self, data: Any, bundle: ReferenceBundle, obs_names: pd.Index) -> tuple[dict[str, Any], dict]:
        """Extra model inputs of a query (``data``: its AnnData or MuData), checked; and a report of them.

        Runs before torch is imported: raise :class:`~fedarches.shared.errors.QueryDataError` for a
        bad input. The default (RNA-only models) takes nothing more.
        """
        return {}, {}

    def query_anndata(
        self,
        counts: sp.csr_matrix,
        batches: Sequence[str],
        obs_names: Sequence[str],
        bundle: ReferenceBundle,
        inputs: Mapping[str, Any] | None = None,
    ) -> AnnData:
        """The AnnData ``load_query_data`` registers: counts, batches, unlabeled labels, extra inputs."""
        import anndata as ad

        setup = bundle.setup_args
        for key in (setup.get("categorical_covariate_keys") or []) + (setup.get("continuous_covariate_keys") or []):
            msg = f"the reference was set up with covariate {key!r}, which fedarches cannot supply for a query yet"
            raise AdapterError(msg, hint="use a reference built without extra covariates")
        obs = pd.DataFrame(index=pd.Index([str(n) for n in obs_names]))
        obs[setup["batch_key"]] = pd.Categorical(np.asarray(batches, dtype=object))
        if setup.get("labels_key"):
            unlabeled = setup.get("unlabeled_category") or bundle.setup.get("unlabeled_category") or "Unknown"
            obs[setup["labels_key"]] = unlabeled
        query = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=bundle.var_names))
        if setup.get("layer"):
            query.layers[setup["layer"]] = counts
        self.add_query_inputs(query, bundle, inputs or {})
        return query

    def add_query_inputs(self, query: AnnData, bundle: ReferenceBundle, inputs: Mapping[str, Any]) -> None:
        """Put the extra inputs into the query AnnData where the registry expects them (zeros when absent)."""

    def load_query(self, query: AnnData, model_dir: Path) -> Any:
        """The scArches surgery set-up: ``load_query_data`` with the decoder's batch-norm frozen."""
        return self.model_cls().load_query_data(query, str(model_dir), freeze_batchnorm_decoder=True)

    def surgery_train_kwargs(self, learning_rate: float) -> dict[str, Any]:
        """``model.train`` arguments that set surgery's learning rate and turn weight decay off.

        Weight decay would shrink the frozen reference weights, so it must be 0. Most models take
        both through ``plan_kwargs``; a model whose ``train`` sets them itself overrides this.
        """
        return {"plan_kwargs": {"weight_decay": 0.0, "lr": learning_rate}}

    # ---- what each cell gets -----------------------------------------------------------------
    def latent(self, model: Any, adata: AnnData | None = None, indices: np.ndarray | None = None) -> np.ndarray:
        """The latent representation (posterior means), float32."""
        return np.asarray(model.get_latent_representation(adata, indices=indices), dtype=np.float32)

    def soft_predictions(self, model: Any, bundle: ReferenceBundle, latent: np.ndarray) -> np.ndarray:
        """Class probabilities (cells x the bundle's label categories)."""
        if self.has_classifier:
            return model.predict(soft=True)[bundle.label_categories].to_numpy()
        from fedarches.shared.embedding import knn_label_probabilities

        embedding = bundle.embedding
        if embedding is None:
            msg = (
                f"this {self.model_class} reference has no embedding with reference labels, "
                "so cell types cannot be predicted"
            )
            raise AdapterError(msg, hint="ask the maintainers to import the reference with --reference-data")
        return knn_label_probabilities(latent, embedding["latent"], embedding["labels"], len(bundle.label_categories))

    def reference_probabilities(
        self, model: Any, adata: AnnData, held_out: np.ndarray, latent: np.ndarray, labels: pd.Categorical,
        fit: np.ndarray,
    ) -> np.ndarray:  # fmt: skip
        """Class probabilities (over ``labels.categories``) of the reference's held-out cells, to calibrate confidence.

        With a classifier, its predictions; otherwise kNN from the other (``fit``) labelled cells,
        as a lab's kNN call sees the reference.
        """
        known = [str(c) for c in labels.categories]
        if self.has_classifier:
            return model.predict(adata, indices=held_out, soft=True)[known].to_numpy()
        from fedarches.shared.embedding import knn_label_probabilities

        codes = np.asarray(labels.codes)
        donors = fit & (codes >= 0)
        donors[held_out] = False
        return knn_label_probabilities(latent[held_out], latent[donors], codes[donors], len(known))

    def reference_labels(self, model: Any, adata: AnnData, labels_key: str | None = None) -> pd.Categorical:
        """Each reference cell's type (NaN: unlabeled), categories = the model's known types in model order.

        Read through the model's label registry; ``labels_key`` (the reference's labels column) serves
        models that register no labels (totalVI).
        """
        from scvi import REGISTRY_KEYS

        key = model.adata_manager.get_state_registry(REGISTRY_KEYS.LABELS_KEY).original_key
        return pd.Categorical(adata.obs[key].astype(str).to_numpy(), categories=self.label_categories_of(model))

    @staticmethod
    def label_categories_of(model: Any) -> list[str]:
        """Cell types of a trained model's label registry, the unlabeled category excluded."""
        from scvi import REGISTRY_KEYS

        registry = model.adata_manager.get_state_registry(REGISTRY_KEYS.LABELS_KEY)
        unlabeled = model.registry_["setup_args"].get("unlabeled_category")
        return [str(c) for c in registry.categorical_mapping if c != unlabeled]

    def cell_outputs(self, model: Any, bundle: ReferenceBundle, latent: np.ndarray) -> dict[str, Any]:
        """``obsm`` entries beyond the latent (e.g. denoised proteins), keyed by their ``obsm`` key.

        ``latent``: what :meth:`latent` gave for the model's cells, so that it is not computed twice.
        """
        return {}

    # ---- adapters and atlases ----------------------------------------------------------------
    def check_adapter_tensors(self, names: Iterable[str]) -> None:
        """Raise :class:`AdapterError` unless every tensor in ``names`` is on this backend's allow-list."""
        patterns = [re.compile(p) for p in self.adapter_tensors]
        outside = sorted(n for n in names if not any(p.fullmatch(n) for p in patterns))
        if outside:
            msg = (
                f"surgery on this {self.model_class} reference grows tensors {outside[:3]} that the {self.name} "
                "backend does not allow to leave a lab"
            )
            raise AdapterError(
                msg, hint="rebuild the reference with fedarches' reference builder (scArches architecture)"
            )

    @staticmethod
    def reference_batch_codes(model: Any, adata: AnnData | MuData) -> np.ndarray:
        """Each reference cell's batch code, as the model registered it."""
        from scvi import REGISTRY_KEYS

        return np.asarray(model.get_from_registry(adata, REGISTRY_KEYS.BATCH_KEY)).ravel()

    @staticmethod
    def batch_categories(saved: Mapping[str, Any]) -> list[str]:
        """Batches of a saved model's registry, in model order."""
        field = saved["attr_dict"]["registry_"]["field_registries"][BATCH_KEY]
        return [str(c) for c in field["state_registry"]["categorical_mapping"]]

    @staticmethod
    def batch_categories_of(model: Any) -> list[str]:
        """Batches of a (query) model, in model order: the reference's, then the query's new ones."""
        from scvi import REGISTRY_KEYS

        return [str(c) for c in model.adata_manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY).categorical_mapping]

    def add_cell_types(self, saved: dict[str, Any], prototypes: Mapping[str, np.ndarray]) -> None:
        """Teach a saved model new cell types from their prototypes (name -> latent point); in place.

        Only prototype models can: the default refuses.
        """
        msg = f"a {self.model_class} atlas cannot learn new cell types from prototypes"
        raise AdapterError(msg, hint="new-type prototypes need an scPoli reference (--model scpoli)")

    def extend_batches(self, saved: dict[str, Any], categories: Sequence[str]) -> None:
        """Make a saved model's registry list ``categories`` as its batches (a merged atlas)."""
        batch_field = saved["attr_dict"]["registry_"]["field_registries"][BATCH_KEY]
        batch_field["state_registry"]["categorical_mapping"] = np.asarray(list(categories), dtype=object)
        batch_field["summary_stats"]["n_batch"] = len(categories)


class WrittenHereBackend(ModelBackend):
    """A family whose model is written here (scPoli, trVAE, expiMap, scGen): its ``train`` sets the tutorial's recipe.

    Subclasses say how the model is made (:meth:`new_model`) and, where it differs, how it is
    registered and trained; surgery is the model's own ``load_query_data``.
    """

    def train_reference(
        self, train: AnnData, *, batch_key: str, labels_key: str | None, options: ReferenceTraining
    ) -> Any:
        """Register ``train``, make the model and train it (``n_layers`` does not apply: each has the tutorial's)."""
        cls = self.model_cls()
        cls.setup_anndata(train, batch_key=batch_key, labels_key=labels_key, **self.setup_kwargs())
        model = self.new_model(cls, train, options)
        model.train(**self.reference_train_kwargs(options))
        return model

    def setup_kwargs(self) -> dict[str, Any]:
        """Further ``setup_anndata`` arguments."""
        return {}

    def new_model(self, cls: type, train: AnnData, options: ReferenceTraining) -> Any:
        """The untrained model on ``train``."""
        return cls(train, n_latent=options.n_latent)

    def reference_train_kwargs(self, options: ReferenceTraining) -> dict[str, Any]:
        """``train`` arguments of a reference (``max_epochs=None``: the model's tutorial default)."""
        return {
            "max_epochs": options.max_epochs,
            "early_stopping": options.early_stopping,
            "enable_progress_bar": options.progress_bar,
        }

    def load_query(self, query: AnnData, model_dir: Path) -> Any:
        """The model's own surgery set-up (``load_query_data``)."""
        return self.model_cls().load_query_data(query, str(model_dir))

    def surgery_train_kwargs(self, learning_rate: float) -> dict[str, Any]:
        """The model's ``train`` takes the learning rate itself and trains a query without weight decay."""
        return {"lr": learning_rate}

"""CITE-seq backends: totalVI (kNN labels) and totalANVI (its own classifier), on RNA and protein counts.

A reference holds RNA counts and antibody-derived tag (ADT) counts of the same cells, the proteins as
a DataFrame in ``obsm['protein_expression']`` (cells x proteins, columns = protein names), the layout
of scvi-tools' totalVI tutorials. A query may bring proteins in either scvi-tools layout (an AnnData's
``obsm['protein_expression']``, or a MuData's ``prot`` modality), some of them, or none: reference
proteins the query lacks are zero-filled, which scvi-tools' ``load_query_data`` records as not measured
in that batch (``protein_batch_mask``), and imputed like every other protein
(``obsm['denoised_protein']``), as in scvi-tools' totalVI reference-mapping tutorial.

Query proteins are checked here, before torch is imported (:func:`query_proteins`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from fedarches.shared._constants import ADATA_KEYS
from fedarches.shared.backends.base import FC_LAYER_WEIGHT, ModelBackend, ReferenceTraining
from fedarches.shared.backends.rna import UNLABELED_CATEGORY
from fedarches.shared.errors import QueryDataError, UserInputError

if TYPE_CHECKING:
    from pathlib import Path

    from anndata import AnnData
    from mudata import MuData

    from fedarches.shared.bundle import ReferenceBundle

log = logging.getLogger(__name__)

PROTEIN_KEY = "protein_expression"
"""``obsm`` key of the protein counts (scvi-tools' tutorials)."""
PROTEIN_NAMES_KEY = "protein_names"
"""``uns`` key of the protein names when ``obsm[PROTEIN_KEY]`` is an array (scvi-tools' older layout)."""
PROTEIN_MODALITY = "prot"
"""MuData modality of the protein counts (scvi-tools' MuData tutorials)."""
IMPUTATION_SAMPLES = 25  # posterior samples averaged per cell, as in the totalVI reference-mapping tutorial
IMPUTATION_CHUNK = 5_000  # cells per get_normalized_expression call: bounds memory at samples x chunk x proteins
_LAYOUT_HINT = (
    "store the ADT counts as a DataFrame in adata.obsm['protein_expression'] (cells x proteins, columns = protein "
    "names), or as a MuData with modalities 'rna' and 'prot', as scvi-tools' totalVI tutorials do"
)
_COUNTS_HINT = (
    "totalVI needs raw integer ADT counts: take them from the counts matrix your pipeline wrote (not CLR- or "
    "log-normalized values)"
)


class MissingProteinsWarning(UserWarning):
    """Some of the reference's proteins are not in the query: they are zero-filled and imputed."""


def _tensor(name: str) -> str:
    return rf"(?:[\w.]+\.)?{name}"


class CITEseqBackend(ModelBackend):
    """What totalVI and totalANVI share: proteins in the reference, the query and the outputs."""

    latent_key: ClassVar[str] = "X_totalVI"
    modalities: ClassVar[tuple[str, ...]] = ("RNA", "protein")
    adapter_tensors: ClassVar[tuple[str, ...]] = (
        FC_LAYER_WEIGHT,
        _tensor("background_pro_alpha"),  # per protein and batch: background prior mean
        _tensor("background_pro_log_beta"),  # ... and its log scale
        _tensor("log_per_batch_efficiency"),  # per protein and batch: capture efficiency
    )

    # ---- reference ---------------------------------------------------------------------------
    def reference_data(self, data: AnnData | MuData, *keys: str | None) -> AnnData:
        """The RNA with ``obsm['protein_expression']``: from a MuData's ``prot`` modality, or as the AnnData has it."""
        adata = super().reference_data(data, *keys)
        if getattr(data, "mod", None) is None or PROTEIN_MODALITY not in data.mod:
            return adata
        proteins, _ = query_proteins(data, adata.obs_names)
        if adata is data.mod["rna"]:  # never change the user's object
            adata = adata.copy()
        adata.obsm[PROTEIN_KEY] = proteins
        return adata

    def check_reference(self, adata: AnnData) -> None:
        """Refuse a reference without named, integer, non-negative protein counts in ``obsm['protein_expression']``."""
        if PROTEIN_KEY not in adata.obsm:
            msg = f"the reference has no obsm[{PROTEIN_KEY!r}], so a {self.model_class} model cannot be trained on it"
            raise UserInputError(msg, hint=_LAYOUT_HINT + "; or build an RNA-only reference (--model scanvi)")
        proteins = adata.obsm[PROTEIN_KEY]
        if not isinstance(proteins, pd.DataFrame):
            msg = f"the reference's obsm[{PROTEIN_KEY!r}] is a {type(proteins).__name__}, without protein names"
            raise UserInputError(
                msg,
                hint="make it a DataFrame named by protein: adata.obsm['protein_expression'] = "
                "pd.DataFrame(counts, index=adata.obs_names, columns=protein_names)",
            )
        names = _protein_names(proteins.columns, f"the reference's obsm[{PROTEIN_KEY!r}]", UserInputError)
        if not names:
            msg = f"the reference's obsm[{PROTEIN_KEY!r}] has no columns: no proteins"
            raise UserInputError(msg, hint=_LAYOUT_HINT)
        _check_counts(proteins, f"the reference's obsm[{PROTEIN_KEY!r}]", UserInputError)

    def reference_inputs(self, adata: AnnData, train: AnnData) -> None:
        """Copy the reference's protein counts into ``train`` (as float32, named by protein)."""
        proteins = adata.obsm[PROTEIN_KEY]
        train.obsm[PROTEIN_KEY] = pd.DataFrame(
            proteins.to_numpy(dtype=np.float32),
            index=train.obs_names,
            columns=[str(c) for c in proteins.columns],
        )

    def train_reference(
        self, train: AnnData, *, batch_key: str, labels_key: str | None, options: ReferenceTraining
    ) -> Any:
        """``TOTALVI.setup_anndata`` with the proteins, then totalVI with scArches' architecture.

        ``TOTALVI.setup_anndata`` takes no labels: totalVI's types come from :meth:`reference_labels`,
        totalANVI registers them in ``from_totalvi_model``.
        """
        cls = TOTALVIBackend().model_cls()
        cls.setup_anndata(train, protein_expression_obsm_key=PROTEIN_KEY, batch_key=batch_key)
        model = cls(train, n_latent=options.n_latent, n_layers_encoder=options.n_layers, **self.arches_kwargs())
        model.train(**self._train_kwargs(options))
        return model

    @staticmethod
    def arches_kwargs() -> dict[str, Any]:
        """scvi-tools' recommended architecture for surgery, in TOTALVAE's arguments."""
        return {"use_layer_norm": "both", "use_batch_norm": "none", "encode_covariates": True}

    def bundle_metadata(self, saved: Mapping[str, Any]) -> dict[str, Any]:
        """The model's protein names, in model order (``setup.json``'s ``protein_names``)."""
        registry = saved["attr_dict"]["registry_"]
        if registry.get("setup_method_name", "setup_anndata") != "setup_anndata":
            msg = f"this {self.model_class} model was set up with {registry.get('setup_method_name')}"
            raise UserInputError(
                msg,
                hint="fedarches imports totalVI models set up with setup_anndata(protein_expression_obsm_key=...); "
                "set the model up again that way and save it",
            )
        from scvi import REGISTRY_KEYS

        names = registry["field_registries"][REGISTRY_KEYS.PROTEIN_EXP_KEY]["state_registry"]["column_names"]
        return {"protein_names": [str(n) for n in names]}

    # ---- queries -----------------------------------------------------------------------------
    def query_inputs(self, data: Any, bundle: ReferenceBundle, obs_names: pd.Index) -> tuple[dict[str, Any], dict]:
        """The query's proteins, aligned to the reference's (zero-filled where absent), and a report.

        Raises
        ------
        QueryDataError
            Proteins without names, named none of the reference's proteins, not integer counts,
            negative, NaN, or for other cells than the query's.
        """
        return align_query_proteins(data, bundle.protein_names, obs_names)

    def add_query_inputs(self, query: AnnData, bundle: ReferenceBundle, inputs: Mapping[str, Any]) -> None:
        """Put the proteins in ``obsm`` (the registry's key), in the reference's order; zeros for an RNA-only query."""
        names = bundle.protein_names
        proteins = inputs.get(PROTEIN_KEY)
        values = (
            np.zeros((query.n_obs, len(names)), dtype=np.float32)
            if proteins is None
            else np.asarray(proteins.to_numpy(), dtype=np.float32)
        )
        key = bundle.setup_args.get("protein_expression_obsm_key") or PROTEIN_KEY
        query.obsm[key] = pd.DataFrame(values, index=query.obs_names, columns=names)
        uns_key = bundle.setup_args.get("protein_names_uns_key")
        if uns_key:
            query.uns[uns_key] = np.asarray(names, dtype=object)

    def load_query(self, query: AnnData, model_dir: Path) -> Any:
        """``load_query_data``, without scvi-tools' warning about proteins missing from the query's batches.

        fedarches has said so already (:class:`MissingProteinsWarning`, ``uns['fedarches']['inputs']``):
        for a query, proteins all zero in a batch are the proteins it did not measure.
        """
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Some proteins have all 0 counts in some batches")
            return super().load_query(query, model_dir)

    def surgery_train_kwargs(self, learning_rate: float) -> dict[str, Any]:
        """``TOTALVI.train`` overwrites ``plan_kwargs``' ``lr`` with its own argument; no adversarial loss.

        ``scale_adversarial_loss=0`` as in scvi-tools' totalVI reference-mapping tutorial: the
        adversarial batch classifier, on when some proteins are missing, would not train reference
        weights but would pull the query's batch columns away from the reference.
        """
        return {"lr": learning_rate, "plan_kwargs": {"weight_decay": 0.0, "scale_adversarial_loss": 0.0}}

    # ---- what each cell gets -----------------------------------------------------------------
    def cell_outputs(self, model: Any, bundle: ReferenceBundle, latent: np.ndarray) -> dict[str, Any]:
        """``obsm['denoised_protein']``: every reference protein, denoised or imputed, as the reference batches see it.

        Foreground protein means from ``get_normalized_expression`` averaged over 25 posterior samples
        and over the reference batches (``transform_batch``), as scvi-tools' totalVI reference-mapping
        tutorial imputes proteins for an RNA-only query. In a merged atlas, the batches that labs
        added in federated rounds (RNA-only ones among them) are left out: the proteins are those the
        original reference measured.
        """
        batches = reference_batches(bundle)
        n_cells = model.adata.n_obs
        parts = []
        for start in range(0, n_cells, IMPUTATION_CHUNK):
            _, proteins = model.get_normalized_expression(
                indices=np.arange(start, min(start + IMPUTATION_CHUNK, n_cells)),
                n_samples=IMPUTATION_SAMPLES,
                return_mean=True,
                transform_batch=batches,
                gene_list=list(bundle.var_names[:1]),  # genes are not kept: compute one, not thousands x samples
            )
            parts.append(proteins)
        denoised = pd.concat(parts).astype(np.float32)
        denoised.columns = [str(c) for c in denoised.columns]
        return {ADATA_KEYS.DENOISED_PROTEIN: denoised[bundle.protein_names]}


class TOTALVIBackend(CITEseqBackend):
    """``scvi.model.TOTALVI``: RNA and protein; cell types by weighted kNN on the reference's latent."""

    name: ClassVar[str] = "totalvi"
    model_class: ClassVar[str] = "TOTALVI"

    def label_categories(self, saved: Mapping[str, Any]) -> list[str]:
        """None: ``TOTALVI.setup_anndata`` registers no labels (the types come from :meth:`reference_labels`)."""
        return []

    def reference_labels(self, model: Any, adata: AnnData, labels_key: str | None = None) -> pd.Categorical:
        """The reference's ``obs[labels_key]``, ``'Unknown'`` and NaN unlabeled (totalVI registers no labels)."""
        if labels_key is None or labels_key not in adata.obs:
            msg = f"a {self.model_class} model records no cell types, and the reference data has no labels column"
            raise UserInputError(
                msg, hint="build the reference with a labels key (the reference data's cell-type column)"
            )
        values = adata.obs[labels_key].astype(object)
        labelled = values.notna().to_numpy() & (values.astype(str) != UNLABELED_CATEGORY).to_numpy()
        known = sorted({str(v) for v in values[labelled]})
        return pd.Categorical(np.where(labelled, values.astype(str), None), categories=known)


class TOTALANVIBackend(CITEseqBackend):
    """``scvi.external.TOTALANVI``: trained as totalVI, then ``TOTALANVI.from_totalvi_model`` and its classifier."""

    name: ClassVar[str] = "totalanvi"
    model_class: ClassVar[str] = "TOTALANVI"
    module_path: ClassVar[str] = "scvi.external"
    has_classifier: ClassVar[bool] = True
    cell_type_call: ClassVar[str] = "its classifier"
    needs_labels: ClassVar[bool] = True

    def train_reference(
        self, train: AnnData, *, batch_key: str, labels_key: str | None, options: ReferenceTraining
    ) -> Any:
        """totalVI, then ``TOTALANVI.from_totalvi_model`` trained with its classifier (scANVI's recipe)."""
        vae = CITEseqBackend.train_reference(self, train, batch_key=batch_key, labels_key=labels_key, options=options)
        return self._train_classifier(
            self.model_cls().from_totalvi_model(vae, unlabeled_category=UNLABELED_CATEGORY, labels_key=labels_key),
            options,
        )

    def surgery_train_kwargs(self, learning_rate: float) -> dict[str, Any]:
        """The ``train`` of totalANVI (scANVI's) takes the learning rate in ``plan_kwargs``; no adversarial loss."""
        return {"plan_kwargs": {"weight_decay": 0.0, "lr": learning_rate, "scale_adversarial_loss": 0.0}}


def reference_batches(bundle: ReferenceBundle) -> list[str]:
    """The bundle's batches but those labs added in federated rounds (its ``lineage``); all when that leaves none."""
    added = {b for step in bundle.setup.get("lineage") or [] for batches in step["labs"].values() for b in batches}
    own = [b for b in bundle.batch_categories if b not in added]
    return own or list(bundle.batch_categories)


# ---- query proteins: found, checked and aligned before torch is imported ---------------------------------
def query_proteins(data: Any, obs_names: pd.Index) -> tuple[pd.DataFrame | None, str]:
    """The query's protein counts (cells in ``obs_names`` order x the query's protein names) and their source.

    Looked for, in order: a MuData's ``prot`` modality (``layers['counts']``, else ``X``; ``var_names``
    name the proteins), then ``obsm['protein_expression']`` of the AnnData (or of a MuData's ``rna``
    modality): a DataFrame named by its columns, or an array named by ``uns['protein_names']``.
    ``(None, "none")`` when the query has no proteins (an RNA-only query).

    Raises
    ------
    QueryDataError
        Unnamed or repeated protein names; values that are not finite, non-negative integers; rows
        for other cells than the query's.
    """
    mods = getattr(data, "mod", None)
    if mods is not None and PROTEIN_MODALITY in mods:
        prot = mods[PROTEIN_MODALITY]
        source = f"mod[{PROTEIN_MODALITY!r}]"
        if "counts" in prot.layers:
            matrix, source = prot.layers["counts"], f"{source}.layers['counts']"
        else:
            matrix, source = prot.X, f"{source}.X"
        names = _protein_names(prot.var_names, f"{source}'s var_names", QueryDataError)
        frame = _dense_frame(matrix, prot.obs_names, names, source)
        return _rows_for(frame, obs_names, source), source
    holder = mods["rna"] if mods is not None and "rna" in mods else data
    if PROTEIN_KEY not in holder.obsm:
        return None, "none"
    prefix = "mod['rna']." if holder is not data else ""
    source = f"{prefix}obsm[{PROTEIN_KEY!r}]"
    value = holder.obsm[PROTEIN_KEY]
    if isinstance(value, pd.DataFrame):
        names = _protein_names(value.columns, f"the columns of {source}", QueryDataError)
        frame = _dense_frame(value, holder.obs_names, names, source)
    else:
        if PROTEIN_NAMES_KEY not in holder.uns:
            msg = f"{source} is an array without protein names (no DataFrame columns, no uns[{PROTEIN_NAMES_KEY!r}])"
            raise QueryDataError(
                msg,
                hint="name the proteins: adata.obsm['protein_expression'] = pd.DataFrame(counts, "
                "index=adata.obs_names, columns=protein_names), or put the names in adata.uns['protein_names']",
            )
        raw_names = np.asarray(holder.uns[PROTEIN_NAMES_KEY]).ravel()
        names = _protein_names(pd.Index(raw_names), f"{prefix}uns[{PROTEIN_NAMES_KEY!r}]", QueryDataError)
        n_columns = value.shape[1] if value.ndim == 2 else 0
        if len(names) != n_columns:
            msg = f"{prefix}uns[{PROTEIN_NAMES_KEY!r}] names {len(names)} proteins but {source} has {n_columns} columns"
            raise QueryDataError(msg, hint="give exactly one name per column of the protein counts")
        frame = _dense_frame(value, holder.obs_names, names, source)
    return _rows_for(frame, obs_names, source), source


def align_query_proteins(
    data: Any, reference_proteins: list[str], obs_names: pd.Index
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The query's proteins in the reference's order, zero-filled where absent; and a report of them.

    Returns ``({'protein_expression': DataFrame}, report)``, or ``({}, report)`` for an RNA-only query.
    The report (``uns['fedarches']['inputs']``) holds ``source``, ``n_reference_proteins``,
    ``n_present``, ``missing`` (reference proteins not in the query), ``unused`` (query proteins not in
    the reference) and ``rna_only``.

    Warns
    -----
    MissingProteinsWarning
        Some (not all) of the reference's proteins are absent from a query that has proteins.
    """
    frame, source = query_proteins(data, obs_names)
    n_reference = len(reference_proteins)
    if frame is None or frame.shape[1] == 0:
        log.info("the query has no proteins: an RNA-only query; all %d reference proteins are imputed", n_reference)
        report = _report("none", n_reference, [], list(reference_proteins), [], rna_only=True)
        return {}, report
    reference = set(reference_proteins)
    present = [p for p in reference_proteins if p in set(frame.columns)]
    unused = [str(p) for p in frame.columns if p not in reference]
    if not present:
        msg = (
            f"none of the query's {frame.shape[1]} protein names in {source} (e.g. {unused[:3]}) is one of the "
            f"reference's {n_reference} proteins (e.g. {list(reference_proteins)[:3]})"
        )
        raise QueryDataError(
            msg,
            hint="rename the query's proteins to the reference's names (protein_names in the bundle's setup.json), "
            "or drop them to map RNA only",
        )
    missing = [p for p in reference_proteins if p not in set(present)]
    if missing:
        extra = f"; the query's proteins {unused[:3]} are not in the reference" if unused else ""
        warnings.warn(
            f"{len(missing)} of the reference's {n_reference} proteins are not in the query "
            f"(e.g. {missing[:3]}){extra}: they are zero-filled, treated as not measured in this query, and imputed",
            MissingProteinsWarning,
            stacklevel=3,
        )
    aligned = frame.reindex(columns=list(reference_proteins), fill_value=0.0).astype(np.float32)
    return {PROTEIN_KEY: aligned}, _report(source, n_reference, present, missing, unused, rna_only=False)


def _report(
    source: str, n_reference: int, present: list[str], missing: list[str], unused: list[str], *, rna_only: bool
) -> dict[str, Any]:
    return {
        "modality": "protein",
        "source": source,
        "n_reference_proteins": n_reference,
        "n_present": len(present),
        "missing": list(missing),
        "unused": list(unused),
        "rna_only": rna_only,
    }


def _protein_names(index: pd.Index, what: str, error: type[UserInputError]) -> list[str]:
    """Protein names as strings; refuse empty or repeated ones."""
    names = [str(n) for n in index]
    blank = [i for i, n in enumerate(names) if not n.strip() or n.lower() == "nan"]
    if blank:
        msg = f"{what} has {len(blank)} empty protein names (e.g. column {blank[0]})"
        raise error(msg, hint="name every protein (antibody) column")
    seen: set[str] = set()
    repeated = sorted({n for n in names if n in seen or seen.add(n)})
    if repeated:
        msg = f"{what} names proteins more than once: {repeated[:3]}"
        raise error(msg, hint="keep one column per protein (sum or drop the duplicates)")
    return names


def _dense_frame(matrix: Any, index: pd.Index, names: list[str], source: str) -> pd.DataFrame:
    """``matrix`` as a float64 DataFrame, its counts checked."""
    import scipy.sparse as sp

    if matrix is None:
        msg = f"{source} is empty"
        raise QueryDataError(msg, hint=_LAYOUT_HINT)
    if isinstance(matrix, pd.DataFrame):
        try:
            dense = matrix.to_numpy(dtype=np.float64, na_value=np.nan)  # nullable integers: NA as NaN
        except (TypeError, ValueError):
            msg = f"{source} holds non-numeric values"
            raise QueryDataError(msg, hint=_COUNTS_HINT) from None
    else:
        dense = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
    if dense.ndim != 2 or dense.shape[1] != len(names):
        msg = f"{source} has shape {dense.shape}, not cells x {len(names)} named proteins"
        raise QueryDataError(msg, hint=_LAYOUT_HINT)
    if dense.shape[0] != len(index):
        msg = f"{source} has {dense.shape[0]} rows but the cells it belongs to number {len(index)}"
        raise QueryDataError(msg, hint="give one row of protein counts per cell, in the cells' order")
    try:
        values = dense.astype(np.float64)
    except (TypeError, ValueError):
        msg = f"{source} holds non-numeric values"
        raise QueryDataError(msg, hint=_COUNTS_HINT) from None
    frame = pd.DataFrame(values, index=pd.Index([str(i) for i in index]), columns=names)
    _check_counts(frame, source, QueryDataError)
    return frame


def _check_counts(frame: pd.DataFrame, what: str, error: type[UserInputError]) -> None:
    """Refuse non-numeric, NaN, infinite, negative or fractional protein counts, naming one offender."""
    try:
        values = frame.to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError):
        msg = f"{what} holds non-numeric values"
        raise error(msg, hint=_COUNTS_HINT) from None
    finite = np.isfinite(values)
    for bad, says in (
        (~finite, "NaN or infinite values"),
        (finite & (values < 0), "negative values"),
        (finite & (values != np.round(values)), "non-integer values"),
    ):
        hits = np.argwhere(bad)
        if len(hits):
            row, column = hits[0]
            msg = (
                f"{what} holds {says} ({len(hits)} entries; e.g. protein {frame.columns[column]!r}: "
                f"{values[row, column]:.3g}): it is not raw ADT counts"
            )
            raise error(msg, hint=_COUNTS_HINT)


def _rows_for(frame: pd.DataFrame, obs_names: pd.Index, source: str) -> pd.DataFrame:
    """``frame``'s rows in the order of ``obs_names`` (the query's RNA cells); refuse other cells."""
    cells = pd.Index([str(n) for n in obs_names])
    if frame.index.equals(cells):
        return frame
    if len(frame) != len(cells) or not frame.index.is_unique or not frame.index.isin(cells).all():
        msg = f"{source} holds {len(frame)} cells and the query's RNA {len(cells)}, and they are not the same cells"
        raise QueryDataError(
            msg,
            hint="keep the cells measured in both modalities (e.g. mdata = mdata[mdata.obs_names.isin("
            "rna.obs_names) & mdata.obs_names.isin(prot.obs_names)].copy())",
        )
    return frame.loc[cells]

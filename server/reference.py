"""Build a reference bundle: train a backend's model on an atlas, or wrap an existing scvi-tools model.

The backend (:mod:`fedarches.shared.backends`) trains with the scArches recommendations in
scvi-tools (layer norm, no batch norm, covariates encoded) so that query surgery only adds batch
columns; this module adds what every bundle holds: genes, the reference embedding, and the
summary behind calibrated confidence and the Unknown call.
"""

from __future__ import annotations

import io
import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fedarches.shared._training import quiet_training, scoped_seed, torch_threads
from fedarches.shared.backends import ModelBackend, ReferenceTraining, backend_for_model_class, get_backend
from fedarches.shared.bundle import BundleContents
from fedarches.shared.counts import get_counts
from fedarches.shared.errors import UserInputError
from fedarches.shared.features import select_variable_genes
from fedarches.shared.gene_programs import MASK_KEY, TERMS_KEY, read_gmt
from fedarches.shared.quality import DISTANCE_PERCENTILE, ReferenceSummary, fit_reference_summary
from fedarches.shared.weights import load_model_dict, model_dict_bytes

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

log = logging.getLogger(__name__)

UNLABELED_CATEGORY = "Unknown"
MIN_TEMPERATURE_CELLS = 20
# Attributes of a saved scvi-tools model that describe the reference's own cells, not the model
# (``labels_`` is SCANVI's per-cell label array; it is rebuilt from the query on load).
PRIVATE_ATTRS = ("train_indices_", "validation_indices_", "test_indices_", "labels_")
_UNSAFE_MODEL_HINT = (
    "import only a directory written by scvi-tools' model.save(); this model.pt was altered or "
    "made otherwise, and fedarches never unpickles anything but tensors, arrays and plain values"
)
_SYMBOL_COLUMNS = ("gene_symbols", "gene_symbol", "feature_name", "gene_name", "symbol")


@dataclass(frozen=True)
class ReferenceOptions:
    """Training options of :func:`build_reference` (defaults follow the scvi-tools scArches tutorial)."""

    model: str = "scanvi"  # a backend name: fedarches.shared.backends.BACKENDS
    n_latent: int = 10
    n_layers: int = 2
    n_top_genes: int | None = 2000
    max_epochs: int | None = None
    scanvi_max_epochs: int = 20  # the classifier stage of scANVI and totalANVI
    n_samples_per_label: int = 100
    early_stopping: bool = True
    max_embedding_cells: int = 50_000
    seed: int = 0
    progress_bar: bool = True
    threads: int | None = None  # torch threads (None: torch's choice, every core)
    gene_programs: str | Path | None = None  # a GMT file, for models over gene programs (expiMap)


def build_reference(
    adata: AnnData | MuData,
    *,
    batch_key: str,
    labels_key: str,
    layer: str | None = None,
    gene_symbols_key: str | None = None,
    options: ReferenceOptions | None = None,
) -> BundleContents:
    """Train ``options.model``'s reference on ``adata`` (scANVI: scVI, then ``SCANVI.from_scvi_model``).

    ``adata`` may be a MuData (modality ``rna``; ``prot`` for CITE-seq backends). Returns the bundle
    contents: the model, genes, the reference embedding and the reference summary.
    """
    options = options or ReferenceOptions()
    backend = get_backend(options.model)
    adata = backend.reference_data(adata, batch_key, labels_key)
    for key, option in ((batch_key, "--batch-key"), (labels_key, "--labels-key")):
        if key not in adata.obs:
            msg = f"obs has no column {key!r} (given as {option}); columns are {list(adata.obs.columns)}"
            raise UserInputError(msg)
    if adata.n_obs == 0:
        msg = "the reference has no cells"
        raise UserInputError(msg)
    programs = _gene_programs(backend, adata, options.gene_programs, gene_symbols_key)
    if programs is None:
        backend.check_reference(adata)
    counts, source = get_counts(adata, layer)
    log.info("reference: %d cells x %d genes, counts from %s", adata.n_obs, adata.n_vars, source)
    with quiet_training(), torch_threads(options.threads), scoped_seed(options.seed):
        return _train_reference(
            backend,
            adata,
            counts,
            batch_key=batch_key,
            labels_key=labels_key,
            gene_symbols_key=gene_symbols_key,
            options=options,
            programs=programs,
        )


def _gene_programs(
    backend: ModelBackend, adata: AnnData, gmt: str | Path | None, gene_symbols_key: str | None
) -> tuple[np.ndarray, list[str]] | None:
    """The GMT file's genes x programs mask over the reference's genes, and the names; before any training."""
    if gmt is None:
        return None
    if not backend.needs_gene_programs:
        msg = f"--gene-programs applies to models over gene programs (expimap), not to {backend.name}"
        raise UserInputError(msg, hint="drop --gene-programs, or build with --model expimap")
    symbols = _gene_symbols(adata, gene_symbols_key)
    return read_gmt(gmt).mask(adata.var_names.to_numpy() if symbols is None else symbols)


def _train_reference(
    backend: ModelBackend,
    adata: AnnData,
    counts: Any,
    *,
    batch_key: str,
    labels_key: str,
    gene_symbols_key: str | None,
    options: ReferenceOptions,
    programs: tuple[np.ndarray, list[str]] | None = None,
) -> BundleContents:
    import anndata as ad

    train = ad.AnnData(
        X=counts,
        obs=pd.DataFrame(
            {
                batch_key: adata.obs[batch_key].astype(str).to_numpy(),
                labels_key: adata.obs[labels_key].astype(object).fillna(UNLABELED_CATEGORY).astype(str).to_numpy(),
            },
            index=adata.obs_names,
        ),
        var=pd.DataFrame(index=adata.var_names),
    )
    backend.reference_inputs(adata, train)
    symbols = _gene_symbols(adata, gene_symbols_key)
    if programs is not None:
        train.varm[MASK_KEY], train.uns[TERMS_KEY] = programs
    if options.n_top_genes and train.n_vars > options.n_top_genes:
        keep = backend.select_features(train, options.n_top_genes, batch_key)
        if keep is None:
            select_variable_genes(train, options.n_top_genes, batch_key)
            keep = train.var["highly_variable"].to_numpy()
        train = train[:, keep].copy()
        symbols = symbols[keep] if symbols is not None else None
        train.var = pd.DataFrame(index=train.var_names)

    training = ReferenceTraining(
        n_latent=options.n_latent,
        n_layers=options.n_layers,
        max_epochs=options.max_epochs,
        classifier_max_epochs=options.scanvi_max_epochs,
        n_samples_per_label=options.n_samples_per_label,
        early_stopping=options.early_stopping,
        progress_bar=options.progress_bar,
    )
    model = backend.train_reference(train, batch_key=batch_key, labels_key=labels_key, options=training)
    return _contents_from_model(backend, model, train, symbols=symbols, options=options, labels_key=labels_key)


def import_reference(
    model_dir: Path,
    *,
    reference_adata: AnnData | MuData | None = None,
    labels_key: str | None = None,
    gene_symbols_key: str | None = None,
    options: ReferenceOptions | None = None,
) -> BundleContents:
    """Wrap a model saved with scvi-tools' ``model.save()`` (any backend's class) into bundle contents.

    The reference embedding needs the reference cells: pass ``reference_adata``, or save the
    model with ``save_anndata=True``. Without either the bundle carries no embedding, and
    labs get predictions and latents but no ``X_ref_umap``. ``labels_key`` names the reference
    data's cell-type column for models that register no labels (totalVI); others read theirs
    from the model's registry.

    A directory written by the scArches package's scPoli, trVAE or expiMap ``model.save()``
    (``attr.pkl``, ``model_params.pt``, ``var_names.csv``) becomes an ``scpoli``, ``trvae`` or
    ``expimap`` bundle: its files are read without running pickled code
    (:mod:`fedarches.shared.models._scarches_files`). trVAE and expiMap save no cell types: they
    need ``reference_adata`` and ``labels_key``; an expiMap reference's ``uns['terms']`` names its programs.
    """
    options = options or ReferenceOptions()
    from fedarches.shared.models._scarches_files import is_scarches_save

    if is_scarches_save(model_dir):
        return _import_scarches(Path(model_dir), reference_adata, gene_symbols_key, options, labels_key)
    model_file = Path(model_dir) / "model.pt"
    if not model_file.is_file():
        msg = f"{model_dir} has no model.pt: not a directory written by scvi-tools' model.save()"
        raise UserInputError(msg, hint="pass the directory you gave to model.save(...)")
    saved = load_model_dict(model_file.read_bytes(), source=str(model_file), hint=_UNSAFE_MODEL_HINT)
    registry = saved["attr_dict"]["registry_"]
    backend = backend_for_model_class(registry.get("model_name"), source=str(model_dir))
    model_cls = backend.model_cls()
    adata = reference_adata
    if adata is None and (Path(model_dir) / "adata.h5ad").is_file():
        import anndata as ad

        adata = ad.read_h5ad(Path(model_dir) / "adata.h5ad")
    if adata is None:
        return _contents(backend, saved, symbols=None, embedding=None)
    adata = backend.reference_data(adata, labels_key)
    adata = adata[:, list(saved["var_names"])].copy()
    symbols = _gene_symbols(adata, gene_symbols_key)
    with tempfile.TemporaryDirectory() as safe_dir:  # scvi-tools unpickles model.pt unrestricted: give it a safe copy
        (Path(safe_dir) / "model.pt").write_bytes(model_dict_bytes(saved))
        model = model_cls.load(safe_dir, adata=adata)
    with quiet_training(), scoped_seed(options.seed):
        return _contents_from_model(backend, model, adata, symbols=symbols, options=options, labels_key=labels_key)


def _import_scarches(
    model_dir: Path,
    reference_adata: AnnData | MuData | None,
    gene_symbols_key: str | None,
    options: ReferenceOptions,
    labels_key: str | None,
) -> BundleContents:
    """Bundle contents of an scArches save (scPoli, trVAE or expiMap) as fedarches' model: same weights, same latent."""
    from fedarches.shared.models._scarches_files import family_of, read_scarches_save

    family = family_of(read_scarches_save(model_dir))
    if family == "scPoli":
        return _import_scarches_scpoli(model_dir, reference_adata, gene_symbols_key, options)
    if family not in ("trVAE", "expiMap"):
        msg = f"{model_dir} holds an scArches {family} model; fedarches imports scArches' scPoli, trVAE and expiMap"
        hint = "train the reference with build-reference --model scgen instead" if family == "scGen" else None
        raise UserInputError(msg, hint=hint)
    from fedarches.shared.models._scarches_cvae import read_scarches_cvae, to_model

    saved = read_scarches_cvae(model_dir)
    if reference_adata is None or labels_key is None:
        msg = f"an scArches {family} model holds no cell types: its bundle needs the reference cells and their labels"
        raise UserInputError(msg, hint="add --reference-data atlas.h5ad --labels-key cell_type")
    backend = get_backend(family.lower())
    adata = _with_counts(backend.reference_data(reference_adata, saved.condition_key, labels_key))
    terms = None
    if family == "expiMap" and TERMS_KEY in adata.uns:
        terms = [str(t) for t in adata.uns[TERMS_KEY]]
    log.info("scArches %s model: %d genes, %d conditions (%s)", family, len(saved.genes), len(saved.conditions),
             saved.condition_key)  # fmt: skip
    model, adata = to_model(saved, labels_key, adata, terms=terms)
    symbols = _gene_symbols(adata, gene_symbols_key)
    with quiet_training(), scoped_seed(options.seed):
        return _contents_from_model(backend, model, adata, symbols=symbols, options=options, labels_key=labels_key)


def _with_counts(adata: AnnData) -> AnnData:
    """``adata``'s cells with raw counts in ``X`` (``layers['counts']`` or an integer ``X``), as scArches trained on."""
    import anndata as ad

    counts, source = get_counts(adata)
    log.info("reference counts from %s", source)
    return ad.AnnData(X=counts, obs=adata.obs.copy(), var=adata.var.copy(), uns=dict(adata.uns))


def _import_scarches_scpoli(
    model_dir: Path, reference_adata: AnnData | MuData | None, gene_symbols_key: str | None, options: ReferenceOptions
) -> BundleContents:
    """Bundle contents of an scArches scPoli save, as fedarches' ``SCPOLI`` (same weights, same latent)."""
    from fedarches.shared.models.scpoli import read_scarches_scpoli, scarches_to_model

    backend = get_backend("scpoli")
    saved = read_scarches_scpoli(model_dir)
    log.info(
        "scArches scPoli model: %d genes, %d conditions (%s), %d cell types (%s)",
        len(saved.genes), len(saved.conditions), saved.condition_key, len(saved.cell_types), saved.cell_type_key,
    )  # fmt: skip
    adata = None
    if reference_adata is not None:
        adata = _with_counts(backend.reference_data(reference_adata, saved.condition_key, saved.cell_type_key))
    model, adata = scarches_to_model(saved, adata)
    if reference_adata is None:
        with tempfile.TemporaryDirectory() as tmp:
            model.save(tmp, overwrite=True, save_anndata=False)
            model_dict = load_model_dict((Path(tmp) / "model.pt").read_bytes(), source="the converted scPoli model")
        return _contents(backend, model_dict, symbols=None, embedding=None)
    symbols = _gene_symbols(adata, gene_symbols_key)
    with quiet_training(), scoped_seed(options.seed):
        return _contents_from_model(
            backend, model, adata, symbols=symbols, options=options, labels_key=saved.cell_type_key
        )


def _contents_from_model(
    backend: ModelBackend,
    model: Any,
    adata: AnnData,
    *,
    symbols: np.ndarray | None,
    options: ReferenceOptions,
    labels_key: str | None = None,
) -> BundleContents:
    with tempfile.TemporaryDirectory() as tmp:
        model.save(tmp, overwrite=True, save_anndata=False)

        saved = load_model_dict((Path(tmp) / "model.pt").read_bytes(), source="the model scvi-tools just saved")
    labels = backend.reference_labels(model, adata, labels_key)
    embedding = _reference_embedding(backend, model, adata, options, labels)
    contents = _contents(backend, saved, symbols=symbols, embedding=embedding, label_categories=list(labels.categories))
    summary = _reference_summary(backend, model, adata, labels)
    return replace(contents, summary=summary.to_bytes())


def _reference_summary(backend: ModelBackend, model: Any, adata: AnnData, labels: pd.Categorical) -> ReferenceSummary:
    """Fit the mapping-quality summary on the reference cells (see :mod:`fedarches.shared.quality`).

    Gaussians on every labelled cell, the distance threshold from leaving one reference batch
    out; temperature on the validation split's labelled cells (all labelled cells when the split
    holds fewer than 20 of them), from the backend's predictions: its classifier, or kNN from the
    other labelled cells.
    """
    known = [str(c) for c in labels.categories]
    codes = np.asarray(labels.codes)
    latent = backend.latent(model, adata)
    split = getattr(model, "validation_indices_", None)
    validation = np.asarray(split if split is not None else [], dtype=int)
    fit_mask = np.ones(adata.n_obs, dtype=bool)
    fit_mask[validation] = False
    held_out = validation[codes[validation] >= 0]
    if len(held_out) < MIN_TEMPERATURE_CELLS:
        held_out = np.flatnonzero(codes >= 0)
        if not backend.has_classifier:  # a model trained on every cell: kNN needs other cells to vote
            held_out = np.sort(np.random.default_rng(0).permutation(held_out)[: len(held_out) // 2])
            fit_mask = np.ones(adata.n_obs, dtype=bool)
            fit_mask[held_out] = False
    probabilities = backend.reference_probabilities(model, adata, held_out, latent, labels, fit_mask)
    probability_labels = codes[held_out]
    summary = fit_reference_summary(
        latent,
        codes,
        known,
        batches=backend.reference_batch_codes(model, adata),
        probabilities=probabilities,
        probability_labels=probability_labels,
    )
    log.info(
        "reference summary: %d types, temperature %.2f, distance threshold %.2f (p%.0f, %s), %d bytes",
        len(summary.labels),
        summary.temperature,
        summary.distance_threshold,
        DISTANCE_PERCENTILE,
        (summary.info or {}).get("threshold_calibration"),
        summary.nbytes,
    )
    return summary


def _contents(
    backend: ModelBackend,
    saved: dict[str, Any],
    *,
    symbols: np.ndarray | None,
    embedding: dict[str, np.ndarray] | None,
    label_categories: list[str] | None = None,
) -> BundleContents:
    import torch

    attr_dict = saved["attr_dict"]
    for attr in PRIVATE_ATTRS:
        attr_dict.pop(attr, None)
    registry = attr_dict["registry_"]
    setup_args = dict(registry["setup_args"])
    batch_categories = backend.batch_categories(saved)
    if label_categories is None:
        label_categories = backend.label_categories(saved)
    unlabeled = setup_args.get("unlabeled_category")
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    return BundleContents(
        model_pt=buffer.getvalue(),
        model_class=backend.model_class,
        setup_args=setup_args,
        batch_categories=batch_categories,
        label_categories=label_categories,
        gene_ids=[str(g) for g in saved["var_names"]],
        gene_symbols=[str(s) for s in symbols] if symbols is not None else None,
        embedding=embedding,
        description={
            "n_latent": int(attr_dict["init_params_"]["non_kwargs"].get("n_latent", 10)),
            "unlabeled_category": unlabeled,
            "scvi_tools_version": registry.get("scvi_version"),
            **backend.bundle_metadata(saved),
        },
    )


def _reference_embedding(
    backend: ModelBackend, model: Any, adata: AnnData, options: ReferenceOptions, labels: pd.Categorical
) -> dict[str, np.ndarray]:
    """Latent, UMAP and label codes of (a subsample of) the reference cells."""
    import scanpy as sc

    n = adata.n_obs
    rng = np.random.default_rng(options.seed)
    keep = (
        np.sort(rng.choice(n, options.max_embedding_cells, replace=False))
        if n > options.max_embedding_cells
        else np.arange(n)
    )
    latent = backend.latent(model, adata, indices=keep)
    view = sc.AnnData(np.zeros((len(keep), 1), dtype=np.float32), obsm={"X_latent": latent})
    sc.pp.neighbors(view, use_rep="X_latent", random_state=options.seed)
    sc.tl.umap(view, random_state=options.seed)
    codes = np.asarray(labels.codes)[keep].astype(np.int16)
    return {"latent": latent, "umap": view.obsm["X_umap"].astype(np.float32), "labels": codes}


def _gene_symbols(adata: AnnData, key: str | None) -> np.ndarray | None:
    if key is not None:
        if key not in adata.var:
            msg = f"var has no column {key!r} (given as --gene-symbols-key); columns are {list(adata.var.columns)}"
            raise UserInputError(msg)
        return adata.var[key].astype(str).to_numpy()
    for column in _SYMBOL_COLUMNS:
        if column in adata.var:
            return adata.var[column].astype(str).to_numpy()
    return None

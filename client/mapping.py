"""scArches surgery on a lab's query, entirely local: the lab's Python API.

:func:`map_query` annotates an AnnData in place, like a scanpy tool, and returns what may
leave the lab: the adapter (new batch columns only) and suppressed label statistics.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fedarches.client.options import MappingOptions, auto_max_epochs
from fedarches.client.query import MIN_GENE_FRACTION, PreparedQuery, prepare_query
from fedarches.shared import __version__
from fedarches.shared._constants import ADATA_KEYS, AnnDataKeys, added_key
from fedarches.shared._process import peak_rss_bytes
from fedarches.shared._training import quiet_training, scoped_seed, torch_threads
from fedarches.shared.adapters import Adapter, apply_adapters, check_reference_unchanged, extract_adapter
from fedarches.shared.backends import backend_for
from fedarches.shared.embedding import place_on_reference
from fedarches.shared.errors import AdapterError, AdapterSizeError, FedarchesError
from fedarches.shared.labels import DEFAULT_MIN_COUNT, LabelCounts, LabelStatistics, suppress
from fedarches.shared.quality import UNKNOWN_LABEL
from fedarches.shared.surgery import adapter_bytes_per_batch, load_query_model

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

    from fedarches.shared.bundle import ReferenceBundle

log = logging.getLogger(__name__)

DEFAULT_CONFIDENCE_THRESHOLD = 0.5


class ReferenceChangedError(FedarchesError):
    """Surgery altered a reference weight: a bug, never a user error."""

    exit_code = 2
    hint = "please report this with the command you ran; nothing was written"


@dataclass
class MappingResult:
    """What :func:`map_query` produced besides the annotations it wrote into ``adata``."""

    adapter: Adapter
    label_statistics: LabelStatistics
    latent_key: str
    gene_overlap: dict[str, Any]
    n_epochs: int
    timings: dict[str, float] = field(default_factory=dict)
    model: Any = None
    # per cell, kept in the lab: the type each cell is counted as (Unknown included), confidence, low flag
    cell_labels: np.ndarray | None = None
    cell_confidence: np.ndarray | None = None
    cell_low_confidence: np.ndarray | None = None
    label_categories: tuple[str, ...] = ()
    keys: AnnDataKeys = ADATA_KEYS  # where the annotations were written (``key_added``)
    adata: Any = None  # the annotated copy, with ``copy=True``

    def label_counts(self, keep: np.ndarray | None = None) -> LabelCounts:
        """Exact per-type counts over all cells, or over the cells ``keep`` marks."""
        if self.cell_labels is None or self.cell_confidence is None or self.cell_low_confidence is None:
            msg = "this result carries no per-cell labels"
            raise ValueError(msg)
        keep = np.ones(self.cell_labels.shape[0], dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
        return LabelCounts.from_cells(
            self.cell_labels[keep], self.cell_confidence[keep], self.cell_low_confidence[keep], self.label_categories
        )


def map_query(
    adata: AnnData | MuData,
    bundle: ReferenceBundle,
    *,
    batch_key: str | None = None,
    layer: str | None = None,
    lab_name: str = "query",
    options: MappingOptions | None = None,
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
    min_count: int = DEFAULT_MIN_COUNT,
    min_gene_fraction: float = MIN_GENE_FRACTION,
    key_added: str | None = None,
    copy: bool = False,
) -> MappingResult:
    """Map ``adata`` onto ``bundle`` with scArches surgery and annotate it, like a scanpy tool.

    Global state is left as it was found: the random seed is scoped (``scvi.settings.seed``
    and the generators it seeds are restored afterwards), and so is the number of torch threads.

    Reference weights stay frozen (``weight_decay=0``, decoder batch-norm frozen); only the
    query's new batch columns train. Afterwards every reference tensor is checked to be
    bit-identical to the bundle's.

    Parameters
    ----------
    adata
        The query. Raw counts in ``layers['counts']`` (or ``layer``), else in an integer ``X``.
        A MuData (scvi-tools' layout) holds them in modality ``'rna'``, and proteins, if any, in
        ``'prot'``; an AnnData holds proteins in ``obsm['protein_expression']``. Annotations go on
        the MuData's top level (``mdata.obs``, ``mdata.obsm``, ``mdata.uns``).
    bundle
        A verified :class:`~fedarches.shared.bundle.ReferenceBundle`.
    batch_key
        ``obs`` column with the query's batches; without it the query is one batch.
    layer
        Layer holding raw counts, when not ``'counts'`` or ``X``.
    lab_name
        Prefix of the query's batch names in the model.
    options
        Surgery training options.
    confidence_threshold
        Cells whose confidence is below this are flagged low-confidence.
    min_count
        Label statistics suppress counts below this.
    min_gene_fraction
        Refuse queries with fewer of the reference's genes than this share.
    key_added
        Write every annotation under ``{key_added}_{key}`` (``obs``, ``obsm`` and ``uns`` alike, as
        ``sc.pp.neighbors`` does), so that mappings onto several bundles can sit side by side.
        The names used are in ``MappingResult.keys``.
    copy
        Annotate a copy and return it as ``MappingResult.adata``; ``adata`` itself is left unchanged.

    Returns
    -------
    The adapter, label statistics and run facts (what is not written into ``adata``), plus the
    annotated copy when ``copy``. Sets in ``adata`` (names shown without ``key_added``):

    ``obs['predicted_cell_type']`` : categorical
        Predicted reference cell type.
    ``obs['prediction_confidence']`` : float
        Highest class probability, temperature-calibrated when the bundle has a reference summary
        (``obs['prediction_confidence_raw']``: before calibration).
    ``obs['mapping_distance']``, ``obs['mapping_score']``, ``obs['is_unknown']``
        Mahalanobis distance to the nearest reference type in latent space, the share of
        reference cells at least as far, and the Unknown call (see :mod:`fedarches.shared.quality`);
        only with a reference summary.
    ``obs['is_low_confidence']`` : bool
        ``prediction_confidence < confidence_threshold``.
    ``obsm[backend.latent_key]`` : float32
        Latent representation, under the scvi-tools tutorials' key: ``X_scANVI``, ``X_scVI``,
        ``X_totalVI``, ... (see :mod:`fedarches.shared.backends`).
    further ``obsm`` entries of the backend
        e.g. ``obsm['denoised_protein']`` (a DataFrame, one column per reference protein) for totalVI.
    ``obsm['X_ref_umap']`` : float32
        Position on the reference's UMAP (when the bundle has an embedding).
    ``uns['fedarches']`` : dict
        Bundle id, versions, parameters, gene overlap, timings; ``inputs`` reports the backend's
        extra inputs (totalVI: ``n_reference_proteins``, ``n_present``, ``missing``, ``rna_only``).
    """
    options = options or MappingOptions()
    if copy:
        adata = adata.copy()
    keys = ADATA_KEYS.added(key_added)
    backend = backend_for(bundle)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    prepared = prepare_query(
        adata, bundle, batch_key=batch_key, layer=layer, batch_prefix=lab_name, min_gene_fraction=min_gene_fraction
    )
    timings["validate_s"] = time.perf_counter() - start

    with (
        quiet_training(),
        torch_threads(options.threads),
        scoped_seed(options.seed),
        tempfile.TemporaryDirectory() as tmp,
    ):
        tick = time.perf_counter()
        model = _load_query_model(prepared, bundle, Path(tmp))
        reference_state = bundle.reference_state()
        _check_adapter_size(reference_state, _state(model), bundle, model, options.max_adapter_bytes)
        timings["surgery_setup_s"] = time.perf_counter() - tick
        tick, cpu_tick = time.perf_counter(), time.process_time()
        max_epochs = options.max_epochs or auto_max_epochs(
            adata.n_obs, options.batch_size, options.surgery_steps, cap=backend.surgery_epochs
        )
        n_epochs = 0
        if backend.surgery_trains:  # scGen maps without training
            model.train(
                max_epochs=max_epochs,
                batch_size=options.batch_size,
                **backend.surgery_train_kwargs(options.learning_rate),
                early_stopping=options.early_stopping and adata.n_obs >= 50,
                early_stopping_patience=options.early_stopping_patience,
                check_val_every_n_epoch=1 if options.early_stopping else 10,
                enable_progress_bar=options.progress_bar,
            )
            n_epochs = len(model.history["elbo_train"]) if "elbo_train" in model.history else max_epochs
        timings["train_s"] = time.perf_counter() - tick

        tick = time.perf_counter()
        query_state = _state(model)
        changed = check_reference_unchanged(reference_state, query_state)
        if changed:
            msg = f"surgery changed reference tensors {changed[:3]}"
            raise ReferenceChangedError(msg)
        new_batches = _new_batch_categories(model, bundle)
        adapter = extract_adapter(
            reference_state, query_state, bundle_id=bundle.bundle_id, batch_categories=new_batches
        )
        backend.check_adapter_tensors(adapter.tensors)
        latent = backend.latent(model)
        probabilities = backend.soft_predictions(model, bundle, latent)
        cell_outputs = backend.cell_outputs(model, bundle, latent)
        timings["predict_s"] = time.perf_counter() - tick
        timings["cpu_s"] = time.process_time() - cpu_tick  # training and prediction, every thread

    labels = np.asarray(bundle.label_categories)
    predicted = labels[probabilities.argmax(axis=1)]
    raw_confidence = probabilities.max(axis=1).astype(np.float32)
    latent_key = added_key(key_added, backend.latent_key)
    quality = _mapping_quality(bundle, latent, probabilities)
    empty = prepared.empty_cells
    if ADATA_KEYS.UNKNOWN in quality:  # a cell with no counts carries no information: it is not a known type
        quality[ADATA_KEYS.UNKNOWN] = quality[ADATA_KEYS.UNKNOWN] | empty
    confidence = quality.get(ADATA_KEYS.CONFIDENCE, raw_confidence)
    low = confidence < confidence_threshold

    adata.obs[keys.PREDICTION] = pd.Categorical(predicted, categories=bundle.label_categories)
    adata.obs[keys.CONFIDENCE] = confidence
    adata.obs[keys.LOW_CONFIDENCE] = low
    for key, values in quality.items():
        adata.obs[added_key(key_added, key)] = values
    adata.obs[keys.RAW_CONFIDENCE] = raw_confidence
    adata.obsm[latent_key] = latent
    for key, value in cell_outputs.items():  # one value per cell: obs; more: obsm
        if np.ndim(value) == 1:
            adata.obs[added_key(key_added, key)] = value
        else:
            adata.obsm[added_key(key_added, key)] = value
    embedding = bundle.embedding
    if embedding is not None:
        adata.obsm[keys.REF_UMAP] = place_on_reference(latent, embedding["latent"], embedding["umap"])
    categories = list(bundle.label_categories)
    counted = predicted
    if ADATA_KEYS.UNKNOWN in quality:  # Unknown cells are counted as Unknown, not as their nearest type
        counted = np.where(quality[ADATA_KEYS.UNKNOWN], UNKNOWN_LABEL, predicted)
        categories.append(UNKNOWN_LABEL)
    statistics = suppress(LabelCounts.from_cells(counted, confidence, low, categories), min_count=min_count)
    timings["total_s"] = time.perf_counter() - start
    adata.uns[keys.UNS] = {
        "bundle_id": bundle.bundle_id,
        "model_class": bundle.model_class,
        "backend": backend.name,
        "versions": {**bundle.manifest["versions"], "fedarches_mapping": __version__},
        "params": {
            "batch_key": batch_key or "",
            "lab_name": lab_name,
            "max_epochs": max_epochs,
            "learning_rate": options.learning_rate,
            "n_epochs_trained": n_epochs,
            "batch_size": options.batch_size,
            "early_stopping": options.early_stopping,
            "seed": options.seed,
            "confidence_threshold": confidence_threshold,
            "latent_key": latent_key,
            "key_added": key_added or "",
        },
        "counts_source": prepared.counts_source,
        "gene_overlap": prepared.gene_overlap.to_dict(),
        **({"inputs": prepared.inputs_report} if prepared.inputs_report else {}),
        "n_empty_cells": int(empty.sum()),
        "model_batches": list(new_batches),
        "adapter_bytes": adapter.nbytes,
        "reference_weights_unchanged": True,
        "quality": _quality_uns(bundle, quality),
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "peak_rss_bytes": peak_rss_bytes(),  # of the process that mapped, up to the end of mapping
    }
    return MappingResult(
        adapter=adapter,
        label_statistics=statistics,
        latent_key=latent_key,
        gene_overlap=prepared.gene_overlap.to_dict(),
        n_epochs=n_epochs,
        timings=timings,
        model=model,
        cell_labels=np.asarray(counted, dtype=object),
        cell_confidence=np.asarray(confidence, dtype=float),
        cell_low_confidence=np.asarray(low, dtype=bool),
        label_categories=tuple(categories),
        keys=keys,
        adata=adata if copy else None,
    )


def embed_with_adapters(
    adata: AnnData | MuData,
    bundle: ReferenceBundle,
    adapter: Adapter,
    *,
    batch_key: str | None = None,
    layer: str | None = None,
    lab_name: str = "query",
) -> np.ndarray:
    """Latent of ``adata`` from the reference plus ``adapter``, with no training.

    This is how anyone holding the bundle and a lab's adapter reproduces that lab's
    latent space: it rebuilds the query model as ``reference + adapter``.
    """
    if adapter.bundle_id != bundle.bundle_id:
        msg = f"adapter was made against bundle {adapter.bundle_id}, not {bundle.bundle_id}"
        raise AdapterError(msg)
    prepared = prepare_query(adata, bundle, batch_key=batch_key, layer=layer, batch_prefix=lab_name)
    with quiet_training(), tempfile.TemporaryDirectory() as tmp:
        import torch

        model = _load_query_model(prepared, bundle, Path(tmp))
        new_batches = _new_batch_categories(model, bundle)
        if tuple(new_batches) != tuple(adapter.batch_categories):
            msg = f"query batches {new_batches} differ from the adapter's {list(adapter.batch_categories)}"
            raise AdapterError(msg, hint="pass the same --batch-key and lab name as the mapping that made the adapter")
        reference_state = bundle.reference_state()
        adapter.check_against({k: v.shape for k, v in reference_state.items()})
        state = apply_adapters(reference_state, [adapter])
        model.module.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
        model.is_trained_ = True
        return backend_for(bundle).latent(model)


def embed_with_atlas(
    adata: AnnData | MuData,
    atlas: ReferenceBundle,
    *,
    batch_key: str | None = None,
    layer: str | None = None,
    lab_name: str = "query",
) -> np.ndarray:
    """Latent of ``adata`` from a merged atlas that already holds this lab's batches: no surgery, no training."""
    prepared = prepare_query(adata, atlas, batch_key=batch_key, layer=layer, batch_prefix=lab_name, known_batches=True)
    with quiet_training(), tempfile.TemporaryDirectory() as tmp:
        model = _load_query_model(prepared, atlas, Path(tmp))
        model.is_trained_ = True
        return backend_for(atlas).latent(model)


def check_adapter_fits(bundle: ReferenceBundle, batches: np.ndarray, max_adapter_bytes: int) -> int:
    """Refuse a query whose adapter against ``bundle`` would exceed ``max_adapter_bytes``; return its size.

    Adapters grow by the same bytes with every batch; the bytes per batch come from scvi-tools' surgery
    set-up on a probe of empty cells (no training), so this costs seconds whatever the query's size:
    ``join`` calls it before connecting.
    """
    n_batches = len(pd.unique(pd.Series(np.asarray(batches, dtype=object)).astype(str)))
    per_batch = adapter_bytes_per_batch(bundle, bundle.reference_state())
    return _refuse_large_adapter(n_batches, n_batches * per_batch, max_adapter_bytes)


def _mapping_quality(bundle: ReferenceBundle, latent: np.ndarray, probabilities: np.ndarray) -> dict[str, np.ndarray]:
    """Calibrated confidence, mapping distance and score, and the Unknown call, when the bundle allows."""
    summary = bundle.reference_summary
    if summary is None:
        return {}
    calibrated = summary.calibrate(probabilities)
    confidence = calibrated.max(axis=1).astype(np.float32)
    distances = summary.distances(latent)
    return {
        ADATA_KEYS.CONFIDENCE: confidence,
        ADATA_KEYS.MAPPING_DISTANCE: distances,
        ADATA_KEYS.MAPPING_SCORE: summary.scores(distances),
        ADATA_KEYS.UNKNOWN: summary.unknown(distances, confidence),
    }


def _quality_uns(bundle: ReferenceBundle, quality: dict[str, np.ndarray]) -> dict[str, Any]:
    summary = bundle.reference_summary
    if summary is None:
        return {"calibrated": False, "note": "the bundle has no reference summary: raw confidence, no Unknown call"}
    return {
        "calibrated": True,
        "temperature": summary.temperature,
        "distance_threshold": summary.distance_threshold,
        "unknown_confidence_threshold": summary.confidence_threshold,
        "n_unknown": int(quality[ADATA_KEYS.UNKNOWN].sum()),
    }


def _load_query_model(prepared: PreparedQuery, bundle: ReferenceBundle, workdir: Path) -> Any:
    """``load_query_data`` on the prepared input, from verified bundle bytes."""
    return load_query_model(prepared.counts, prepared.batches, prepared.obs_names, bundle, workdir, prepared.inputs)


def _check_adapter_size(
    reference_state: dict[str, np.ndarray],
    query_state: dict[str, np.ndarray],
    bundle: ReferenceBundle,
    model: Any,
    limit: int | None,
) -> int:
    """Refuse, before training, a query whose adapter would exceed ``limit`` bytes; return its size."""
    batches = _new_batch_categories(model, bundle)
    nbytes = extract_adapter(reference_state, query_state, bundle_id=bundle.bundle_id, batch_categories=batches).nbytes
    return _refuse_large_adapter(len(batches), nbytes, limit)


def _refuse_large_adapter(n_batches: int, nbytes: int, limit: int | None) -> int:
    if limit is not None and nbytes > limit:
        per_batch = nbytes // max(1, n_batches)
        msg = (
            f"the query has {n_batches} batches, so its adapter would hold {nbytes:,} bytes "
            f"({per_batch:,} per batch), over the coordinator's limit of {limit:,} bytes "
            f"(at most {limit // max(1, per_batch):,} batches)"
        )
        raise AdapterSizeError(msg)
    return nbytes


def _new_batch_categories(model: Any, bundle: ReferenceBundle) -> list[str]:
    return backend_for(bundle).batch_categories_of(model)[len(bundle.batch_categories) :]


def _state(model: Any) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.module.state_dict().items()}

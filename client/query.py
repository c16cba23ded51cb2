"""Validate a lab's query AnnData against a bundle and prepare the model's input.

Everything here runs before torch or scvi-tools is imported, so a bad file fails in a second
with a message that names the problem and the fix.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fedarches.shared.backends import backend_for
from fedarches.shared.counts import get_counts
from fedarches.shared.datafiles import query_rna
from fedarches.shared.errors import GeneOverlapError, QueryDataError

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

    from fedarches.shared.bundle import ReferenceBundle

log = logging.getLogger(__name__)

MIN_GENE_FRACTION = 0.5
WARN_GENE_FRACTION = 0.8
_ID_COLUMNS = (
    "gene_ids",
    "gene_id",
    "ensembl_id",
    "ensembl",
    "gene_symbols",
    "gene_symbol",
    "feature_name",
    "gene_name",
    "symbol",
)
_ENSEMBL_VERSION = re.compile(r"^(ENS[A-Z]*[GT]\d{6,})\.\d+$")


class LowGeneOverlapWarning(UserWarning):
    """The query has fewer of the reference's genes than recommended."""


class EmptyCellsWarning(UserWarning):
    """Some query cells have no counts in the reference's genes."""


@dataclass(frozen=True)
class GeneOverlap:
    """How the query's genes were matched to the reference's."""

    n_reference: int
    n_present: int
    query_source: str
    reference_column: str

    @property
    def fraction(self) -> float:
        """Share of reference genes found in the query."""
        return self.n_present / self.n_reference

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "n_reference_genes": self.n_reference,
            "n_present": self.n_present,
            "fraction": round(self.fraction, 4),
            "query_source": self.query_source,
            "reference_column": self.reference_column,
        }


@dataclass(frozen=True)
class PreparedQuery:
    """The model's input: counts aligned to the reference genes, one batch name per cell."""

    counts: sp.csr_matrix
    batches: np.ndarray
    obs_names: pd.Index
    gene_overlap: GeneOverlap
    counts_source: str
    empty_cells: np.ndarray  # cells with no count in the reference's genes
    inputs: dict[str, Any] = field(default_factory=dict)  # the backend's extra inputs (proteins), checked
    inputs_report: dict[str, Any] = field(default_factory=dict)  # what they held, for uns['fedarches']


def validate_query(
    adata: AnnData, *, batch_key: str | None = None, layer: str | None = None, batch_prefix: str = "query"
) -> tuple[np.ndarray, sp.csr_matrix, str]:
    """Checks that need no bundle: cells present, unique genes, batch column, raw counts.

    Returns the model batch name of each cell, the counts and where they came from.
    """
    if adata.n_obs == 0:
        msg = "the query has zero cells"
        raise QueryDataError(msg, hint="check the file: it holds no observations")
    if not adata.var_names.is_unique:
        dupes = adata.var_names[adata.var_names.duplicated()].unique()[:3].tolist()
        msg = f"the query has duplicate gene names in var_names (e.g. {', '.join(map(str, dupes))})"
        raise QueryDataError(
            msg, hint="run adata.var_names_make_unique(), or sum duplicate genes, then save the file again"
        )
    batches = _batch_names(adata, batch_key, batch_prefix)
    counts, source = get_counts(adata, layer)
    if counts.nnz == 0:
        msg = f"{source} holds no counts at all: every one of the {adata.n_obs} cells is empty"
        raise QueryDataError(
            msg, hint="check that the counts were saved (another layer? --layer) and that cells were not emptied"
        )
    return batches, counts, source


def prepare_query(
    adata: AnnData | MuData,
    bundle: ReferenceBundle,
    *,
    batch_key: str | None = None,
    layer: str | None = None,
    batch_prefix: str = "query",
    min_gene_fraction: float = MIN_GENE_FRACTION,
    known_batches: bool = False,
) -> PreparedQuery:
    """Check ``adata`` and build the reference-aligned counts the model takes.

    Genes missing from the query are zero-filled, as ``prepare_query_anndata`` does. Query
    batches become ``"{batch_prefix}/{value}"`` (or just ``batch_prefix`` without a batch key)
    so that they can never be mistaken for a reference batch. With ``known_batches`` every
    batch must instead already be in the bundle (a merged atlas holding this lab's batches).

    A MuData gives its RNA from modality ``'rna'`` (``batch_key`` is looked up in its ``obs``, then in
    the MuData's); the backend takes its extra inputs (proteins: modality ``'prot'``) from ``adata``.
    """
    data = adata
    adata = query_rna(data, batch_key)
    batches, counts, source = validate_query(adata, batch_key=batch_key, layer=layer, batch_prefix=batch_prefix)
    if adata is not data:
        source = f"mod['rna'].{source}"
    clash = set(batches).intersection(bundle.batch_categories)
    if known_batches:
        unknown = sorted(set(batches) - clash)
        if unknown:
            msg = f"batches {unknown[:3]} are not in this atlas, so they need surgery, not just embedding"
            raise QueryDataError(msg, hint="map the data with `fedarches-client map` (or join a round) instead")
    elif clash:
        msg = f"query batch {sorted(clash)[0]!r} has the name of a reference batch"
        raise QueryDataError(msg, hint="choose another lab name (--lab-name)")
    overlap, positions = match_genes(adata, bundle.genes)
    if overlap.fraction < min_gene_fraction:
        msg = (
            f"the query has {overlap.n_present}/{overlap.n_reference} reference genes "
            f"({overlap.fraction:.0%}, need at least {min_gene_fraction:.0%})"
        )
        raise GeneOverlapError(msg)
    if overlap.fraction < WARN_GENE_FRACTION:
        warnings.warn(
            f"the query has only {overlap.fraction:.0%} of the reference genes; "
            "missing genes are zero-filled and mapping quality may suffer",
            LowGeneOverlapWarning,
            stacklevel=2,
        )
    aligned = _align(counts, positions, overlap.n_reference)
    empty = np.asarray(aligned.sum(axis=1)).ravel() == 0
    if empty.all():
        msg = (
            f"none of the {adata.n_obs} cells has a count in the reference's {overlap.n_present} genes "
            "present in the query, so nothing can be mapped"
        )
        raise GeneOverlapError(msg)
    if empty.any():
        warnings.warn(
            f"{int(empty.sum())} of {adata.n_obs} cells have no counts in the reference's genes; they carry no "
            "information, so they are called Unknown (filter them first with sc.pp.filter_cells(adata, min_counts=1))",
            EmptyCellsWarning,
            stacklevel=2,
        )
    inputs, report = backend_for(bundle).query_inputs(data, bundle, adata.obs_names)
    return PreparedQuery(aligned, batches, adata.obs_names, overlap, source, empty, inputs, report)


def match_genes(adata: AnnData, reference_genes: pd.DataFrame) -> tuple[GeneOverlap, np.ndarray]:
    """Match query genes to reference genes by the identifier pair with the largest overlap.

    Query identifiers tried: ``var_names`` and common ``var`` columns (Ensembl IDs, symbols);
    reference identifiers: the bundle's ``gene_id`` and ``gene_symbol``. Ensembl version
    suffixes are ignored. Returns the overlap and, per reference gene, its query column or -1.
    """
    candidates = {"var_names": adata.var_names.to_numpy()}
    candidates.update({f"var[{c!r}]": adata.var[c].astype(str).to_numpy() for c in _ID_COLUMNS if c in adata.var})
    best: tuple[GeneOverlap, np.ndarray] | None = None
    for ref_column in ("gene_id", "gene_symbol"):
        ref_ids = [_normalize(g) for g in reference_genes[ref_column]]
        if not any(ref_ids):
            continue
        for source, ids in candidates.items():
            lookup: dict[str, int] = {}
            duplicated: set[str] = set()
            for i, gene in enumerate(ids):
                key = _normalize(str(gene))
                if key in lookup:
                    duplicated.add(key)
                lookup.setdefault(key, i)
            positions = np.array([lookup.get(g, -1) if g else -1 for g in ref_ids])
            n_present = int((positions >= 0).sum())
            if best is None or n_present > best[0].n_present:
                clash = duplicated.intersection(ref_ids)
                if clash and n_present:
                    msg = f"the query's {source} names some reference genes more than once (e.g. {sorted(clash)[0]})"
                    raise QueryDataError(msg, hint="sum or drop the duplicate genes, then save the file again")
                best = (GeneOverlap(len(ref_ids), n_present, source, ref_column), positions)
    assert best is not None  # gene_id is never empty
    return best


def _normalize(gene: str) -> str:
    match = _ENSEMBL_VERSION.match(gene)
    return match.group(1) if match else gene


def _align(counts: sp.csr_matrix, positions: np.ndarray, n_reference: int) -> sp.csr_matrix:
    present = np.flatnonzero(positions >= 0)
    selector = sp.csr_matrix(
        (np.ones(len(present), dtype=np.float32), (positions[present], present)),
        shape=(counts.shape[1], n_reference),
    )
    return (counts @ selector).tocsr().astype(np.float32)


def _batch_names(adata: AnnData, batch_key: str | None, prefix: str) -> np.ndarray:
    if batch_key is None:
        names = np.full(adata.n_obs, prefix, dtype=object)
    else:
        if batch_key not in adata.obs:
            msg = f"obs has no column {batch_key!r} (given as --batch-key); columns are {list(adata.obs.columns)}"
            raise QueryDataError(
                msg, hint="pass --batch-key with one of those columns, or omit it to treat the file as one batch"
            )
        column = adata.obs[batch_key]
        missing = int(column.isna().sum())
        if missing:
            msg = f"obs[{batch_key!r}] is missing (NaN) for {missing} of {adata.n_obs} cells"
            raise QueryDataError(msg, hint=f"fill obs[{batch_key!r}] for every cell, or drop those cells")
        names = np.array([f"{prefix}/{v}" for v in column.astype(str)], dtype=object)
    return names

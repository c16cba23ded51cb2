"""Feature selection every backend can use: scanpy's highly variable genes, made robust to small batches."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anndata import AnnData

log = logging.getLogger(__name__)

HVG_ATTEMPTS = ((0.3, True), (0.6, True), (1.0, True), (0.3, False))  # (loess span, per batch)


def select_variable_genes(train: AnnData, n_top_genes: int, batch_key: str) -> None:
    """The ``seurat_v3`` HVG selection of scanpy, per batch (the scvi-tools tutorials' choice).

    Its loess fit (scikit-misc) fails on sparse, shallow batches (``ValueError: reciprocal condition
    number`` or ``near singularities``, e.g. a small batch thinned to 500 UMIs per cell). Then a wider
    ``span`` is tried, as scanpy advises, and last one fit over all cells instead of one per batch.
    """
    import scanpy as sc

    for i, (span, per_batch) in enumerate(HVG_ATTEMPTS):
        try:
            sc.pp.highly_variable_genes(
                train, flavor="seurat_v3", n_top_genes=n_top_genes, subset=False, span=span,
                batch_key=batch_key if per_batch else None,
            )  # fmt: skip
        except ValueError as err:  # skmisc's loess reports numerical failures as ValueError(bytes)
            if i == len(HVG_ATTEMPTS) - 1:
                raise
            nxt = HVG_ATTEMPTS[i + 1]
            log.warning("seurat_v3 HVG loess failed (span %.1f): %s; retrying with span %.1f%s", span, err, nxt[0],
                        "" if nxt[1] else " over all cells")  # fmt: skip
        else:
            return

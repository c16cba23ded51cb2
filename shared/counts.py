"""Find and check raw counts in an AnnData, before any model sees them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from fedarches.shared._constants import ADATA_KEYS
from fedarches.shared.errors import QueryDataError

if TYPE_CHECKING:
    from anndata import AnnData

_FIX = (
    "scVI needs raw integer counts: store them in layers['counts'] "
    "(e.g. adata.layers['counts'] = adata.raw.X, or from the original count matrix) or pass --layer"
)


def get_counts(adata: AnnData, layer: str | None = None) -> tuple[sp.csr_matrix, str]:
    """Return raw counts as float32 CSR and where they came from; raise on anything else.

    ``layer`` names a layer explicitly; otherwise ``layers['counts']`` is used when present,
    else ``X``. Refused: a missing layer, negative or non-finite values, non-integer values
    (log-normalized or scaled data).
    """
    if layer is not None:
        if layer not in adata.layers:
            msg = f"layer {layer!r} not found; the file has layers {sorted(adata.layers)}"
            raise QueryDataError(msg, hint="pass --layer with one of those names, or omit it to use X")
        matrix, source = adata.layers[layer], f"layers[{layer!r}]"
    elif ADATA_KEYS.COUNTS_LAYER in adata.layers:
        matrix, source = adata.layers[ADATA_KEYS.COUNTS_LAYER], f"layers[{ADATA_KEYS.COUNTS_LAYER!r}]"
    else:
        matrix, source = adata.X, "X"
    if matrix is None:
        msg = f"{source} is empty"
        raise QueryDataError(msg, hint=_FIX)
    counts = sp.csr_matrix(matrix, dtype=np.float32)
    values = counts.data
    if not np.isfinite(values).all():
        msg = f"{source} holds NaN or infinite values"
        raise QueryDataError(msg, hint=_FIX)
    if values.size and values.min() < 0:
        msg = f"{source} holds negative values (min {values.min():.3g}): it looks scaled, not raw counts"
        raise QueryDataError(msg, hint=_FIX)
    fractional = values != np.round(values)
    if fractional.any():
        example = values[fractional][0]
        msg = (
            f"{source} holds non-integer values (e.g. {example:.3g}; max {values.max():.3g}): "
            "it looks log-normalized or scaled, not raw counts"
        )
        raise QueryDataError(msg, hint=_FIX)
    counts.eliminate_zeros()
    return counts, source

"""Cell types of the CITE-seq data from protein markers: the gates the demo data and the benchmarks share.

The only real CITE-seq data here (CITE-seq/ECCITE PBMCs, 500 cells) has no labels, so cells are
gated on their antibody counts: ``scripts/make_demo_citeseq.py`` labels ``data/demo`` with them and
the backend benchmark labels the full file the same way.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["COFACTOR", "DROPPED_PROTEINS", "GATES", "gate_cell_types"]

DROPPED_PROTEINS = ["CD223 (lag3)"]
COFACTOR = 5.0
# (type, gate): applied in order, each to the cells no earlier gate took
GATES: list[tuple[str, str]] = [
    ("B", "`CD19` >= 3"),
    ("Myeloid", "`CD11c` >= 3.5 or `CD11b` >= 5"),
    ("CD4 T", "`CD4` >= 3"),
    ("CD8 T", "`CD8` >= 3 and `CD5` >= 1.5"),
    ("NK", "`CD5` < 1.5 and `CD7` >= 2"),
]


def gate_cell_types(proteins: pd.DataFrame) -> pd.Series:
    """Coarse cell types from ADT counts by the :data:`GATES` on ``arcsinh(ADT / 5)``; NaN where none applies."""
    scaled = np.arcsinh(proteins.astype(float) / COFACTOR)
    labels = pd.Series(np.nan, index=proteins.index, dtype=object)
    for name, gate in GATES:
        hit = scaled.eval(gate).to_numpy() & labels.isna().to_numpy()
        labels[hit] = name
    return labels

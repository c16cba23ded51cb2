"""Derive the small CITE-seq demo split shipped in ``data/demo/`` from ``../shared/data``.

The source is ``citefuse_eccite_pbmc500.h5ad``: 500 ECCITE-seq PBMCs (Mimitou et al. 2019) with RNA
counts, 49 antibody-derived tags (ADT) and a hashtag sample per cell (see ``../shared/data/README.md``).

Split: reference = hashtag samples ``HTO28_5P``, ``HTO29_5P`` and ``HTO44_5P`` (``obs['batch']``);
lab = ``HTO30_5P``, the fourth (100 cells). The lab file keeps its measured proteins so that tests can
hide them and score the imputation of an RNA-only query.

Genes: the 1,000 most variable genes of the reference (scanpy ``seurat_v3`` on raw counts, per
reference sample), among those detected in at least 5 reference cells. Proteins: every ADT but ``CD223 (lag3)``, which has two counts in all 500 cells
(all zero in two samples, which totalVI would treat as not measured there); the isotype controls
(IgG1, IgG2a) stay, as in the scvi-tools tutorials. Each file stores raw RNA counts in
``layers['counts']``, log1p-normalized values in ``X``, and the integer ADT counts as a DataFrame in
``obsm['protein_expression']`` (columns = antibody names), the layout of the scvi-tools totalVI tutorials.

Cell types: the source has none, so coarse types come from protein-marker gating on
``arcsinh(ADT / 5)`` (the cytometry transform; cut-offs sit in the gaps of the bimodal markers), in
this order, each gate taking only cells no earlier gate took:

==========  ======================================  ========================================
type        gate (arcsinh(ADT / 5))                 RNA check (mean log1p CP10k in the gate)
==========  ======================================  ========================================
B           CD19 >= 3                               MS4A1 1.8, CD79A 1.7 (others < 0.1)
Myeloid     CD11c >= 3.5 or CD11b >= 5              LYZ 3.6, CD14 1.3
CD4 T       CD4 >= 3                                IL7R 2.4, CD3E 2.1
CD8 T       CD8 >= 3 and CD5 >= 1.5                 CD8A 2.1, CD3E 2.1
NK          CD5 < 1.5 and CD7 >= 2                  GNLY 4.7, NKG7 4.0, FCGR3A 1.5
==========  ======================================  ========================================

The CD3, CD14 and CD56 antibodies of this panel stain weakly (99th percentile of arcsinh(ADT / 5)
2.3, 2.2 and 2.7), so they gate nothing. 37 of the 500 cells pass no gate (mostly cytotoxic T cells
low in both CD4 and CD8); they are left out of the reference and keep ``cell_type`` NaN in the lab.
``obs['label_source']`` says ``'protein markers'``.

Usage: ``python scripts/make_demo_citeseq.py [SOURCE.h5ad] [OUT_DIR]``
"""

from __future__ import annotations

import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc

from fedarches.bench.citeseq_gates import DROPPED_PROTEINS, GATES, gate_cell_types

REFERENCE_SAMPLES = ["HTO28_5P", "HTO29_5P", "HTO44_5P"]
LAB_SAMPLE = "HTO30_5P"
N_GENES = 1000
MIN_CELLS = 5
PROTEIN_KEY = "protein_expression"


def main(source: Path, out_dir: Path) -> None:
    adata = ad.read_h5ad(source)
    proteins = adata.obsm[PROTEIN_KEY].drop(columns=DROPPED_PROTEINS)
    cell_type = gate_cell_types(proteins)
    reference = adata[adata.obs["batch"].isin(REFERENCE_SAMPLES) & cell_type.notna().to_numpy()].copy()
    sc.pp.filter_genes(reference, min_cells=MIN_CELLS)  # seurat_v3's loess fails on the many all-zero genes
    sc.pp.highly_variable_genes(
        reference, flavor="seurat_v3", n_top_genes=N_GENES, batch_key="batch", layer="counts", subset=False
    )
    order = np.argsort(reference.var["highly_variable_rank"].fillna(np.inf).to_numpy(), kind="stable")
    genes = reference.var_names[order[:N_GENES]]
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = {"citeseq_reference": reference.obs_names, "citeseq_lab": adata.obs_names[adata.obs["batch"] == LAB_SAMPLE]}
    for name, cells in parts.items():
        part = adata[cells, genes].copy()
        counts = part.layers["counts"].copy()
        part = ad.AnnData(
            X=counts.copy(),
            obs=pd.DataFrame(
                {
                    "batch": part.obs["batch"].astype(str).to_numpy(),
                    "cell_type": pd.Categorical(cell_type[cells].to_numpy(), categories=[g for g, _ in GATES]),
                    "label_source": "protein markers",
                },
                index=part.obs_names,
            ),
            var=pd.DataFrame(index=part.var_names),
            layers={"counts": counts},
            obsm={PROTEIN_KEY: proteins.loc[cells].astype(np.int64)},
        )
        sc.pp.normalize_total(part, target_sum=1e4)
        sc.pp.log1p(part)
        part.uns = {
            "source": "ECCITE-seq PBMC control (Mimitou et al. 2019) via CiteFuse; see scripts/make_demo_citeseq.py"
        }
        part.write_h5ad(out_dir / f"{name}.h5ad", compression="gzip")
        types = part.obs["cell_type"].value_counts(dropna=False).to_dict()
        print(f"{name}: {part.n_obs} cells x {part.n_vars} genes + {proteins.shape[1]} proteins; types {types}")


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else root.parent / "shared/data/citefuse_eccite_pbmc500.h5ad"
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else root / "data/demo"
    main(src, out)

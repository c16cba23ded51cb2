"""Derive the small demo split shipped in ``data/demo/`` from ``../shared/data``.

The source is the CellBench lung cell-line dataset (see ``../shared/data/README.md``).
Split (the README's suggestion): reference = CEL-seq2 plates ``celseq2_5cl_p1`` and
``celseq2_5cl_p2``; lab A = ``dropseq_3cl`` (Drop-seq, the strongest batch effect);
lab B = ``celseq2_3cl``; lab C = ``celseq2_5cl_p3``.

Genes: the 2,000 most variable genes of the reference (scanpy ``seurat_v3`` on raw counts,
per reference batch) plus the next 500, so that every lab file carries genes the reference
model does not use, as a real lab file would. Each file stores raw counts in
``layers['counts']`` and log1p-normalized values in ``X``, the layout of the scvi-tools tutorials.

Usage: ``python scripts/make_demo_data.py [SOURCE.h5ad] [OUT_DIR]``
"""

from __future__ import annotations

import sys
from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc

SPLIT = {
    "reference": ["celseq2_5cl_p1", "celseq2_5cl_p2"],
    "lab_a": ["dropseq_3cl"],
    "lab_b": ["celseq2_3cl"],
    "lab_c": ["celseq2_5cl_p3"],
}
N_GENES = 2500


def main(source: Path, out_dir: Path) -> None:
    adata = ad.read_h5ad(source)
    ref = adata[adata.obs["batch"].isin(SPLIT["reference"])].copy()
    sc.pp.highly_variable_genes(ref, flavor="seurat_v3", n_top_genes=N_GENES, batch_key="batch", subset=False)
    order = np.argsort(ref.var["highly_variable_rank"].fillna(np.inf).to_numpy())
    genes = ref.var_names[order[:N_GENES]]
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, batches in SPLIT.items():
        part = adata[adata.obs["batch"].isin(batches), genes].copy()
        part.obs = part.obs[["cell_type", "batch", "tech"]].copy()
        part.var = part.var[["ensembl_id"]].copy()
        part.layers["counts"] = part.X.copy()
        sc.pp.normalize_total(part, target_sum=1e4)
        sc.pp.log1p(part)
        part.uns = {"source": "CellBench lung cell lines (Tian et al. 2019), see data/demo/README.md"}
        part.write_h5ad(out_dir / f"{name}.h5ad", compression="gzip")
        print(f"{name}: {part.n_obs} cells x {part.n_vars} genes, batches {batches}")


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else root.parent / "shared/data/cellbench_lung_celllines.h5ad"
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else root / "data/demo"
    main(src, out)

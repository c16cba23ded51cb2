"""Summarize the demo's outputs: per-lab accuracy against the shipped ground truth, and where files are."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anndata as ad
from sklearn.metrics import accuracy_score, f1_score


def main(out: Path) -> None:
    print(f"\n== demo results under {out}/")
    print(f"{'lab':<7}{'cells':>7}{'accuracy':>10}{'macro-F1':>10}{'low-conf':>10}{'epochs':>8}{'adapter B':>11}")
    for lab_dir in sorted(p for p in out.iterdir() if (p / "annotated.h5ad").is_file()):
        adata = ad.read_h5ad(lab_dir / "annotated.h5ad")
        truth, pred = adata.obs["cell_type"].astype(str), adata.obs["predicted_cell_type"].astype(str)
        info = adata.uns["fedarches"]
        print(
            f"{lab_dir.name:<7}{adata.n_obs:>7}{accuracy_score(truth, pred):>10.3f}"
            f"{f1_score(truth, pred, average='macro'):>10.3f}{int(adata.obs['is_low_confidence'].sum()):>10}"
            f"{info['params']['n_epochs_trained']:>8}{info['adapter_bytes']:>11}"
        )
    print("(accuracy uses obs['cell_type'], the genotype ground truth shipped with the demo data)\n")
    for lab_dir in sorted(p for p in out.iterdir() if (p / "annotated.h5ad").is_file()):
        stats = json.loads((lab_dir / "label_statistics.json").read_text())
        released = ", ".join(f"{t['cell_type']}={t['n_cells']}" for t in stats["types"])
        print(f"{lab_dir.name}: label statistics it would send (k={stats['min_count']}): {released}")
        print(f"  annotated: {lab_dir / 'annotated.h5ad'}  plots: {lab_dir / 'plots'}/")
    print(f"reference bundle: {out / 'reference-bundle'}  (public key: {out / 'keys' / 'bundle-signing.pub'})")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-output"))

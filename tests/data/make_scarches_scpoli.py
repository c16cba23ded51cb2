"""Regenerate tests/data/scarches_scpoli/: a tiny scPoli model saved by the scArches package itself.

Run with the environment of ``make scarches-env`` (it imports scArches, never fedarches)::

    .venv-scarches/bin/python tests/data/make_scarches_scpoli.py

The demo reference's 200 genes with the most counts, 4 epochs (2 before prototypes): a model that
only needs to exist. Beside scArches' ``model.save()`` files it writes ``latent.npy``, the latent
means scArches gives the same cells, which the import must reproduce.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import torch
from scarches.models.scpoli import scPoli

HERE = Path(__file__).resolve().parent
OUT = HERE / "scarches_scpoli"


def main() -> None:
    """Train, save, and write the latent means."""
    torch.manual_seed(0)
    np.random.seed(0)
    adata = ad.read_h5ad(HERE.parents[1] / "data" / "demo" / "reference.h5ad")
    adata.X = adata.layers["counts"]  # X holds log-normalized values; scPoli's NB loss wants raw counts
    del adata.layers["counts"]
    totals = np.asarray(adata.X.sum(axis=0)).ravel()
    adata = adata[:, np.argsort(-totals)[:200]].copy()
    adata.X = adata.X.toarray().astype(np.float32)
    model = scPoli(adata=adata, condition_keys="batch", cell_type_keys="cell_type", embedding_dims=5, recon_loss="nb")
    model.train(n_epochs=4, pretraining_epochs=2, eta=5, seed=0)
    model.save(str(OUT / "model"), overwrite=True)
    np.save(OUT / "latent.npy", np.asarray(model.get_latent(adata, mean=True), dtype=np.float32))


if __name__ == "__main__":
    main()

"""Regenerate tests/data/scarches_trvae/ and scarches_expimap/: tiny models saved by scArches itself.

Run with the environment of ``make scarches-env`` (it imports scArches, never fedarches)::

    .venv-scarches/bin/python tests/data/make_scarches_trvae_expimap.py

trVAE: the demo reference's 200 genes with the most counts, 4 epochs. expiMap: 300 PBMC cells
(the first 150 of batches ``3pv1`` and ``3pv2``), the 300 genes with the most counts among them
that lie in a GO set of the demo GMT, the first 40 sets holding more than 5 of those genes as the
mask (genes in none of them dropped), 4 epochs. Models that only need to exist. Beside scArches'
``model.save()`` files each folder holds ``latent.npy``, the latent means scArches gives the
cells, which the import must reproduce, and ``obs.csv`` (obs name, batch, cell type) to rebuild
those cells in the same order; expiMap's folder also holds ``terms.txt``, the mask's terms in order.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import torch
from scarches.models import EXPIMAP, TRVAE

HERE = Path(__file__).resolve().parent
DEMO = HERE.parents[1] / "data" / "demo"
N_TERMS = 40
MIN_GENES = 5


def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


def _write_obs(adata: ad.AnnData, out: Path) -> None:
    obs = adata.obs[["batch", "cell_type"]].astype(str)
    obs.to_csv(out / "obs.csv", index_label="obs_name")


def make_trvae() -> None:
    """Train trVAE on the demo reference, save it, and write the latent means."""
    out = HERE / "scarches_trvae"
    _seed()
    adata = ad.read_h5ad(DEMO / "reference.h5ad")
    adata.X = adata.layers["counts"]  # X holds log-normalized values; trVAE's NB loss wants raw counts
    del adata.layers["counts"]
    totals = np.asarray(adata.X.sum(axis=0)).ravel()
    adata = adata[:, np.argsort(-totals)[:200]].copy()
    adata.X = adata.X.toarray().astype(np.float32)
    model = TRVAE(adata=adata, condition_key="batch", hidden_layer_sizes=[32, 32], latent_dim=10, recon_loss="nb")
    model.train(n_epochs=4, alpha_epoch_anneal=4, seed=0)
    model.save(str(out / "model"), overwrite=True)
    latent = model.get_latent(adata.X, adata.obs["batch"].to_numpy(), mean=True)
    np.save(out / "latent.npy", np.asarray(latent, dtype=np.float32))
    _write_obs(adata, out)


def _read_gmt(path: Path) -> list[tuple[str, set[str]]]:
    sets = []
    for line in path.read_text().splitlines():
        parts = line.rstrip("\n").split("\t")
        if len(parts) > 2:
            sets.append((parts[0], {g.upper() for g in parts[2:] if g}))
    return sets


def make_expimap() -> None:
    """Train expiMap on 300 PBMC cells, save it, and write the latent means and terms."""
    out = HERE / "scarches_expimap"
    _seed()
    adata = ad.read_h5ad(DEMO / "pbmc_3chem.h5ad")
    batch = adata.obs["batch"].astype(str).to_numpy()
    keep = np.zeros(adata.n_obs, dtype=bool)
    for name in ("3pv1", "3pv2"):
        keep[np.flatnonzero(batch == name)[:150]] = True
    adata = adata[keep].copy()
    adata.X = adata.layers["counts"].toarray().astype(np.float32)
    del adata.layers["counts"]

    gene_sets = _read_gmt(DEMO / "go_bp_2023_pbmc.gmt")
    annotated = set().union(*(genes for _, genes in gene_sets))
    upper = np.array([g.upper() for g in adata.var_names])
    totals = adata.X.sum(axis=0)
    order = [i for i in np.argsort(-totals, kind="stable") if upper[i] in annotated][:300]
    chosen = upper[order]
    terms, columns = [], []
    for name, genes in gene_sets:
        member = np.isin(chosen, list(genes))
        if member.sum() > MIN_GENES:
            terms.append(name)
            columns.append(member)
        if len(terms) == N_TERMS:
            break
    mask = np.stack(columns, axis=1).astype(np.int32)  # genes x terms
    in_any = mask.any(axis=1)
    adata = adata[:, np.asarray(order)[in_any]].copy()
    adata.varm["I"] = mask[in_any]
    adata.uns["terms"] = terms

    model = EXPIMAP(adata=adata, condition_key="batch", hidden_layer_sizes=[32, 32], recon_loss="nb")
    model.train(n_epochs=4, alpha=0.7, alpha_kl=0.5, alpha_epoch_anneal=4, seed=0)
    model.save(str(out / "model"), overwrite=True)
    latent = model.get_latent(adata.X, adata.obs["batch"].to_numpy(), mean=True, only_active=False)
    np.save(out / "latent.npy", np.asarray(latent, dtype=np.float32))
    (out / "terms.txt").write_text("".join(f"{t}\n" for t in terms))
    _write_obs(adata, out)


def main() -> None:
    """Write both fixtures."""
    make_trvae()
    make_expimap()


if __name__ == "__main__":
    main()

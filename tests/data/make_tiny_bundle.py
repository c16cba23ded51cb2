"""Make ``tests/data/tiny_bundle/``: a small real SCANVI bundle, so that tests needing only a bundle train none.

The demo reference (data/demo/reference.h5ad, 319 CellBench cells, 5 lung-cancer lines) on its
300 most variable genes, 4 latent dimensions, one hidden layer, 5 + 1 epochs with one torch thread.
It is signed with a key made here; ``tiny_bundle.pub`` verifies it. Run again when the bundle
format changes (tests then say the bundle does not open):

    .venv/bin/python tests/data/make_tiny_bundle.py
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import anndata as ad

from fedarches.server import ReferenceOptions, build_reference
from fedarches.shared import crypto, write_bundle

HERE = Path(__file__).resolve().parent
OPTIONS = ReferenceOptions(
    n_latent=4, n_layers=1, n_top_genes=300, max_epochs=5, scanvi_max_epochs=1, progress_bar=False, threads=1
)


def main() -> None:
    reference = ad.read_h5ad(HERE.parents[1] / "data" / "demo" / "reference.h5ad")
    contents = build_reference(reference, batch_key="batch", labels_key="cell_type", options=OPTIONS)
    with tempfile.TemporaryDirectory() as tmp:  # the private key is thrown away: nothing else is ever signed with it
        private, public = crypto.generate_signing_keys(Path(tmp))
        shutil.rmtree(HERE / "tiny_bundle", ignore_errors=True)
        write_bundle(HERE / "tiny_bundle", contents, crypto.load_private_key(private))
        shutil.copyfile(public, HERE / "tiny_bundle.pub")


if __name__ == "__main__":
    main()

"""Shared fixtures: the shipped demo data, signing keys, and one real reference bundle per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedarches.shared import crypto
from fedarches.shared.bundle import BundleContents, ReferenceBundle, write_bundle

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    return DEMO


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(private, public) key paths."""
    return crypto.generate_signing_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def toy_contents() -> BundleContents:
    """Bundle contents with a fake model file: enough to test signing and verification."""
    rng = np.random.default_rng(0)
    return BundleContents(
        model_pt=b"not a real model" * 100,
        model_class="SCANVI",
        setup_args={"batch_key": "batch", "labels_key": "cell_type", "layer": None, "unlabeled_category": "Unknown"},
        batch_categories=["b1", "b2"],
        label_categories=["T", "B"],
        gene_ids=["ENSG00000000001", "ENSG00000000002", "ENSG00000000003"],
        gene_symbols=["AAA", "BBB", "CCC"],
        embedding={
            "latent": rng.normal(size=(5, 2)).astype(np.float32),
            "umap": rng.normal(size=(5, 2)).astype(np.float32),
            "labels": np.array([0, 1, 0, 1, -1], dtype=np.int16),
        },
    )


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path]) -> ReferenceBundle:
    """A real SCANVI reference trained on the demo reference (few epochs)."""
    import anndata as ad

    from fedarches.server.reference import ReferenceOptions, build_reference

    adata = ad.read_h5ad(DEMO / "reference.h5ad")
    contents = build_reference(
        adata,
        batch_key="batch",
        labels_key="cell_type",
        options=ReferenceOptions(max_epochs=150, scanvi_max_epochs=10, progress_bar=False),
    )
    path = write_bundle(tmp_path_factory.mktemp("bundle") / "ref", contents, crypto.load_private_key(keys[0]))
    return ReferenceBundle.open(path, keys[1])


@pytest.fixture(scope="session")
def files_bundle(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path], resign) -> ReferenceBundle:
    """A small real SCANVI bundle kept in tests/data (``make_tiny_bundle.py``), signed with ``keys``: trains nothing.

    For tests that need a bundle's files and signature, or a model to run surgery on, but not a
    well-trained reference.
    """
    stored = ReferenceBundle.open(DATA / "tiny_bundle", DATA / "tiny_bundle.pub")
    return ReferenceBundle.open(resign(stored, tmp_path_factory.mktemp("files") / "ref", keys[0]), keys[1])


@pytest.fixture(scope="session")
def lab_a(demo_dir: Path):
    import anndata as ad

    return ad.read_h5ad(demo_dir / "lab_a.h5ad")


@pytest.fixture(scope="session")
def resign():
    """``resign(bundle, out_dir, private_key_path)``: the same bundle signed by another coordinator's key."""

    def _resign(bundle: ReferenceBundle, out_dir: Path, private_key: Path) -> Path:
        contents = BundleContents(
            model_pt=bundle.model_bytes(),
            model_class=bundle.model_class,
            setup_args=bundle.setup_args,
            batch_categories=bundle.batch_categories,
            label_categories=bundle.label_categories,
            gene_ids=bundle.genes["gene_id"].tolist(),
            gene_symbols=bundle.genes["gene_symbol"].tolist(),
            embedding=bundle.embedding,
            summary=None if bundle.reference_summary is None else bundle.reference_summary.to_bytes(),
        )
        return write_bundle(out_dir, contents, crypto.load_private_key(private_key))

    return _resign

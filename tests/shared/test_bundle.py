from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from fedarches.shared import crypto
from fedarches.shared.bundle import OldBundleFormatWarning, ReferenceBundle, write_bundle
from fedarches.shared.errors import BundleError, BundleIntegrityError, CryptoError


@pytest.fixture
def bundle_dir(tmp_path: Path, toy_contents, keys) -> Path:
    return write_bundle(tmp_path / "bundle", toy_contents, crypto.load_private_key(keys[0]))


def test_round_trip(bundle_dir: Path, toy_contents, keys) -> None:
    bundle = ReferenceBundle.open(bundle_dir, keys[1])
    assert bundle.model_bytes() == toy_contents.model_pt
    assert bundle.var_names == toy_contents.gene_ids
    assert bundle.genes["gene_symbol"].tolist() == toy_contents.gene_symbols
    assert bundle.label_categories == ["T", "B"]
    np.testing.assert_array_equal(bundle.embedding["labels"], toy_contents.embedding["labels"])
    manifest = bundle.manifest
    assert manifest["format"] == "fedarches.reference-bundle"
    assert manifest["format_version"] == 1
    assert {"fedarches", "scvi-tools", "torch"} <= set(manifest["versions"])
    assert set(manifest["files"]) == {"model/model.pt", "setup.json", "genes.tsv", "embedding.npz"}
    assert len(bundle.bundle_id) == 16


def test_tampered_weights_refused(bundle_dir: Path, keys) -> None:
    model = bundle_dir / "model" / "model.pt"
    data = bytearray(model.read_bytes())
    data[10] ^= 1
    model.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match="does not match the sha256"):
        ReferenceBundle.open(bundle_dir, keys[1])


def test_tampered_manifest_refused(bundle_dir: Path, keys) -> None:
    manifest_path = bundle_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["model/model.pt"]["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(BundleIntegrityError, match="signature does not verify"):
        ReferenceBundle.open(bundle_dir, keys[1])


def test_unsigned_refused(bundle_dir: Path, keys) -> None:
    (bundle_dir / "manifest.sig").unlink()
    with pytest.raises(BundleIntegrityError, match="unsigned"):
        ReferenceBundle.open(bundle_dir, keys[1])


def test_other_key_refused(bundle_dir: Path, tmp_path: Path) -> None:
    _, other_public = crypto.generate_signing_keys(tmp_path / "other")
    with pytest.raises(BundleIntegrityError, match="signature"):
        ReferenceBundle.open(bundle_dir, other_public)


def test_unlisted_and_missing_files_refused(bundle_dir: Path, keys) -> None:
    (bundle_dir / "model" / "extra.pt").write_bytes(b"payload")
    with pytest.raises(BundleIntegrityError, match=r"does not list: model/extra\.pt"):
        ReferenceBundle.open(bundle_dir, keys[1])
    (bundle_dir / "model" / "extra.pt").unlink()
    (bundle_dir / "genes.tsv").unlink()
    with pytest.raises(BundleIntegrityError, match=r"missing genes\.tsv"):
        ReferenceBundle.open(bundle_dir, keys[1])


def test_not_a_bundle(tmp_path: Path, keys) -> None:
    with pytest.raises(BundleError, match="not a directory"):
        ReferenceBundle.open(tmp_path / "nope", keys[1])
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        ReferenceBundle.open(tmp_path / "empty", keys[1])


def _resign(bundle_dir: Path, keys, **changes: object) -> None:
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest.update(changes)
    data = json.dumps(manifest).encode()
    (bundle_dir / "manifest.json").write_bytes(data)
    (bundle_dir / "manifest.sig").write_text(crypto.sign(crypto.load_private_key(keys[0]), data))


def test_format_versions(bundle_dir: Path, keys) -> None:
    _resign(bundle_dir, keys, format_version=99)
    with pytest.raises(BundleError, match="newer than this fedarches reads"):
        ReferenceBundle.open(bundle_dir, keys[1])
    _resign(bundle_dir, keys, format_version=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ReferenceBundle.open(bundle_dir, keys[1])
    assert any(issubclass(w.category, OldBundleFormatWarning) for w in caught)


def test_refuses_overwrite(bundle_dir: Path, toy_contents, keys) -> None:
    with pytest.raises(BundleError, match="already exists"):
        write_bundle(bundle_dir, toy_contents, crypto.load_private_key(keys[0]))


def test_keygen_modes_and_bad_keys(tmp_path: Path) -> None:
    private, public = crypto.generate_signing_keys(tmp_path)
    assert private.stat().st_mode & 0o777 == 0o600
    assert crypto.load_public_key(public)
    with pytest.raises(CryptoError, match="not a PEM public key"):
        crypto.load_public_key(private)
    with pytest.raises(CryptoError, match=r"does not exist"):
        crypto.load_private_key(tmp_path / "missing.key")

"""A signed bundle from a compromised coordinator may mislead a lab; it must never run code, read outside
the bundle, or exhaust memory. Every hostile manifest here is re-signed with the trusted key, so the
signature verifies and the reader's other checks are what refuse it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pathlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedarches.client.lab import LabDir
from fedarches.shared import crypto, protocol
from fedarches.shared.bundle import ReferenceBundle, check_file_names, write_bundle
from fedarches.shared.errors import (
    BundleError,
    BundleIntegrityError,
    BundlePathError,
    BundleSchemaError,
    BundleSizeError,
    FedarchesError,
    UnsafeModelError,
)
from fedarches.shared.weights import load_model_dict, sanitized_model_bytes

GiB = 1024**3


@pytest.fixture
def bundle_dir(tmp_path: Path, toy_contents, keys) -> Path:
    return write_bundle(tmp_path / "bundle", toy_contents, crypto.load_private_key(keys[0]))


def _manifest(bundle_dir: Path) -> dict[str, Any]:
    return json.loads((bundle_dir / "manifest.json").read_bytes())


def _sign(bundle_dir: Path, keys, manifest: dict[str, Any] | bytes) -> None:
    """Write ``manifest`` and a valid signature of it by the trusted key."""
    data = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    (bundle_dir / "manifest.json").write_bytes(data)
    (bundle_dir / "manifest.sig").write_text(crypto.sign(crypto.load_private_key(keys[0]), data))


def _entry(data: bytes) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _replace_file(bundle_dir: Path, keys, name: str, data: bytes) -> None:
    """Put ``data`` in the bundle as ``name`` and list it, correctly hashed, in a re-signed manifest."""
    (bundle_dir / name).parent.mkdir(parents=True, exist_ok=True)
    (bundle_dir / name).write_bytes(data)
    manifest = _manifest(bundle_dir)
    manifest["files"][name] = _entry(data)
    _sign(bundle_dir, keys, manifest)


def _open(bundle_dir: Path, keys, **kwargs: Any) -> ReferenceBundle:
    return ReferenceBundle.open(bundle_dir, keys[1], **kwargs)


# --- 1. the manifest and setup.json follow a schema ------------------------------------------------


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda m: m.pop(key)


def _set(*path_and_value: Any) -> Callable[[dict[str, Any]], None]:
    *path, value = path_and_value

    def change(m: dict[str, Any]) -> None:
        for key in path[:-1]:
            m = m[key]
        m[path[-1]] = value

    return change


MANIFEST_CHANGES = {
    "unknown top-level key": (_set("extra", 1), r"extra: Extra inputs are not permitted"),
    "missing versions": (_drop("versions"), r"versions: Field required"),
    "missing files": (_drop("files"), r"files: Field required"),
    "files is a list": (_set("files", ["setup.json"]), r"files: Input should be a valid dictionary"),
    "entry with an unknown key": (_set("files", "genes.tsv", "mode", 0o777), r"files\.genes\.tsv\.mode: Extra"),
    "entry size as a string": (_set("files", "genes.tsv", "bytes", "12"), r"files\.genes\.tsv\.bytes: Input"),
    "entry size as a bool": (_set("files", "genes.tsv", "bytes", True), r"files\.genes\.tsv\.bytes: Input"),
    "negative size": (_set("files", "genes.tsv", "bytes", -1), r"files\.genes\.tsv\.bytes: Input should be greater"),
    "sha256 not hex": (_set("files", "genes.tsv", "sha256", "z" * 64), r"files\.genes\.tsv\.sha256: String should"),
    "format_version a string": (_set("format_version", "1"), r"format_version '1', not an integer"),
    "format_version a bool": (_set("format_version", True), r"format_version True, not an integer"),
    "versions not strings": (_set("versions", {"torch": 2}), r"versions\.torch: Input should be a valid string"),
    "setup.json not listed": (lambda m: m["files"].pop("setup.json"), r"does not list setup\.json"),
}


@pytest.mark.parametrize("change,message", MANIFEST_CHANGES.values(), ids=MANIFEST_CHANGES.keys())
def test_signed_manifest_off_schema_is_refused(bundle_dir: Path, keys, change, message: str) -> None:
    manifest = _manifest(bundle_dir)
    change(manifest)
    if "setup.json" not in manifest.get("files", {"setup.json": 0}):
        (bundle_dir / "setup.json").unlink()
    _sign(bundle_dir, keys, manifest)
    with pytest.raises(BundleSchemaError, match=message) as caught:
        _open(bundle_dir, keys)
    assert caught.value.exit_code == 23
    assert "rebuild" in caught.value.hint


RAW_MANIFESTS = {
    "not UTF-8": (b'\xff\xfe{"format": 1}', r"is not UTF-8 text \(byte 0 is b'\\xff'\)"),
    "UTF-16": ('{"format": "x"}'.encode("utf-16"), r"is not UTF-8 text"),
    "not JSON": (b"format = 'fedarches'", r"is not valid JSON"),
    "a JSON list": (b'["fedarches.reference-bundle"]', r"must be a JSON object, found a list"),
    "repeated key": (b'{"format": "fedarches.reference-bundle", "format": "x"}', r"repeats the key 'format'"),
    "NaN": (b'{"format": NaN}', r"holds NaN, which is not JSON"),
    "nested 100,000 deep": (b"[" * 100_000 + b"]" * 100_000, r"nested too deeply"),
    "empty": (b"", r"is not valid JSON"),
}


@pytest.mark.parametrize("data,message", RAW_MANIFESTS.values(), ids=RAW_MANIFESTS.keys())
def test_signed_manifest_that_is_not_json_is_refused(bundle_dir: Path, keys, data: bytes, message: str) -> None:
    _sign(bundle_dir, keys, data)
    with pytest.raises(BundleSchemaError, match=message):
        _open(bundle_dir, keys)


def test_signature_that_is_not_text_is_refused(bundle_dir: Path, keys) -> None:
    (bundle_dir / "manifest.sig").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(BundleIntegrityError, match=r"manifest\.sig is not a base64 signature"):
        _open(bundle_dir, keys)


def _setup(bundle_dir: Path) -> dict[str, Any]:
    return json.loads((bundle_dir / "setup.json").read_bytes())


SETUP_CHANGES = {
    "unknown model class": (_set("model_class", "EvilModel"), r"model_class 'EvilModel' is not one fedarches maps"),
    "model class not a string": (_set("model_class", 1), r"model_class: Input should be a valid string"),
    "backend of another class": (_set("backend", "scvi"), r"backend 'scvi' does not match model_class 'SCANVI'"),
    "protein named twice": (_set("protein_names", ["CD3", "CD3"]), r"protein_names repeats \['CD3'\]"),
    "unknown setup arg": (_set("setup_args", "exec", "rm -rf /"), r"setup_args\.exec: Extra inputs"),
    "batch_key missing": (lambda s: s["setup_args"].pop("batch_key"), r"setup_args\.batch_key: Field required"),
    "batch_key a number": (_set("setup_args", "batch_key", 3), r"setup_args\.batch_key: Input should be"),
    "a category not a string": (_set("batch_categories", ["b1", 2]), r"batch_categories\.1: Input should be"),
    "repeated categories": (_set("label_categories", ["T", "T"]), r"label_categories repeats \['T'\]"),
    "unknown key": (_set("run_me", True), r"run_me: Extra inputs are not permitted"),
    "lineage not a list": (_set("lineage", "x"), r"lineage: Input should be a valid list"),
}


@pytest.mark.parametrize("change,message", SETUP_CHANGES.values(), ids=SETUP_CHANGES.keys())
def test_signed_setup_off_schema_is_refused(bundle_dir: Path, keys, change, message: str) -> None:
    setup = _setup(bundle_dir)
    change(setup)
    _replace_file(bundle_dir, keys, "setup.json", json.dumps(setup).encode())
    with pytest.raises(BundleSchemaError, match=message):
        _open(bundle_dir, keys)


@pytest.mark.parametrize(
    "data,message",
    [
        (b"[1, 2]", r"setup\.json in .* must be a JSON object"),
        (b"\x80\x04\x95", r"setup\.json in .* is not UTF-8 text"),
        (b"{'model_class': 'SCANVI'}", r"setup\.json in .* is not valid JSON"),
    ],
)
def test_setup_that_is_not_a_json_object_is_refused(bundle_dir: Path, keys, data: bytes, message: str) -> None:
    _replace_file(bundle_dir, keys, "setup.json", data)
    with pytest.raises(BundleSchemaError, match=message):
        _open(bundle_dir, keys)


def test_write_bundle_refuses_what_labs_would_refuse(tmp_path: Path, toy_contents, keys) -> None:
    bad = dataclasses.replace(toy_contents, model_class="EvilModel")
    with pytest.raises(BundleSchemaError, match="model_class"):
        write_bundle(tmp_path / "b", bad, crypto.load_private_key(keys[0]))
    assert not (tmp_path / "b").exists()


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "name,data,message",
    [
        ("genes.tsv", b"id\tsymbol\nA\tB\n", r"genes\.tsv .* has columns \['id', 'symbol'\]"),
        ("genes.tsv", b"gene_id\tgene_symbol\n", r"genes\.tsv .* lists no genes"),
        ("genes.tsv", b"gene_id\tgene_symbol\nA\tx\nA\ty\n", r"genes\.tsv .* repeats gene_id 'A'"),
        ("genes.tsv", b"", r"genes\.tsv .* is not a UTF-8 table"),
        ("embedding.npz", b"PK\x03\x04 not a zip", r"embedding\.npz .* is not a readable \.npz"),
        (
            "embedding.npz",
            _npz(latent=np.array([{"a": 1}], dtype=object), umap=np.zeros((1, 2)), labels=np.zeros(1, int)),
            r"embedding\.npz .* is not a readable \.npz of plain arrays",  # a pickled object array
        ),
        (
            "embedding.npz",
            _npz(latent=np.zeros((2, 2)), umap=np.zeros((2, 2)), labels=np.array([0, 7])),
            r"embedding\.npz .* labels that are not codes of the 2 label categories",
        ),
        ("embedding.npz", _npz(latent=np.zeros((2, 2))), r"embedding\.npz .* holds \['latent'\]"),
        ("reference_summary.npz", _npz(means=np.zeros(2)), r"reference_summary\.npz .* is not a reference summary"),
    ],
)
def test_data_files_are_checked_when_opened(bundle_dir: Path, keys, name: str, data: bytes, message: str) -> None:
    _replace_file(bundle_dir, keys, name, data)
    with pytest.raises(BundleSchemaError, match=message):
        _open(bundle_dir, keys)


# --- 2. names stay inside the bundle; no link is followed -------------------------------------------


HOSTILE_NAMES = {
    "parent": ("../outside.txt", "escapes the bundle directory"),
    "deep parent": ("model/../../outside.txt", "escapes the bundle directory"),
    "absolute": ("/etc/hostname", "escapes the bundle directory"),
    "drive": ("C:/outside.txt", "escapes the bundle directory"),
    "double slash": ("model//model.pt", "is not normalized"),
    "dot": ("./genes.tsv", "is not normalized"),
    "trailing slash": ("model/", "is not normalized"),
    "backslash": ("model\\model.pt", "contains a backslash"),
    "NUL": ("genes.tsv\x00.txt", "contains a NUL character"),
    "empty": ("", "is empty"),
    "hidden": (".bashrc", "is not letters, digits"),
    "space": ("genes .tsv", "is not letters, digits"),
    "manifest": ("manifest.json", "names the signed manifest itself"),
    "signature": ("manifest.sig", "names the signed manifest itself"),
    "too deep": ("a/b/c/d/e.txt", "is nested deeper than 4 levels"),
}


@pytest.mark.parametrize("name,message", HOSTILE_NAMES.values(), ids=HOSTILE_NAMES.keys())
def test_listed_names_must_stay_inside_the_bundle(tmp_path: Path, bundle_dir: Path, keys, name, message) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"a file next to the bundle")
    manifest = _manifest(bundle_dir)
    manifest["files"][name] = _entry(outside.read_bytes())
    _sign(bundle_dir, keys, manifest)
    with pytest.raises(BundlePathError, match=message) as caught:
        _open(bundle_dir, keys)
    assert caught.value.exit_code == 24


def test_file_names_that_clash_on_disk_are_refused() -> None:
    with pytest.raises(BundlePathError, match="differ only in case"):
        check_file_names(["genes.tsv", "GENES.tsv"])
    with pytest.raises(BundlePathError, match="is also a directory of another file"):
        check_file_names(["model", "model/model.pt"])
    with pytest.raises(BundlePathError, match="is a int, not a string"):
        check_file_names([3])
    assert check_file_names(["manifest.json", "model/model.pt"], allow_manifest=True) == [
        "manifest.json",
        "model/model.pt",
    ]


def test_a_listed_file_that_is_a_link_is_refused(tmp_path: Path, bundle_dir: Path, keys) -> None:
    outside = tmp_path / "elsewhere.tsv"
    outside.write_bytes((bundle_dir / "genes.tsv").read_bytes())  # same bytes: the hash would pass
    (bundle_dir / "genes.tsv").unlink()
    (bundle_dir / "genes.tsv").symlink_to(outside)
    with pytest.raises(BundlePathError, match=r"genes\.tsv' in .* is a symbolic link"):
        _open(bundle_dir, keys)


def test_a_linked_directory_is_refused(tmp_path: Path, bundle_dir: Path, keys) -> None:
    (bundle_dir / "model").rename(tmp_path / "real-model")
    (bundle_dir / "model").symlink_to(tmp_path / "real-model", target_is_directory=True)
    with pytest.raises(BundlePathError, match=r"'model' in .* is a symbolic link"):
        _open(bundle_dir, keys)


def test_an_unlisted_link_out_of_the_bundle_is_refused_not_followed(bundle_dir: Path, keys) -> None:
    (bundle_dir / "root").symlink_to("/", target_is_directory=True)
    start = time.perf_counter()
    with pytest.raises(BundlePathError, match=r"'root' in .* is a symbolic link"):
        _open(bundle_dir, keys)
    assert time.perf_counter() - start < 5


def test_special_files_are_refused(bundle_dir: Path, keys) -> None:
    os.mkfifo(bundle_dir / "model" / "pipe")
    with pytest.raises(BundlePathError, match=r"'model/pipe' in .* is a FIFO"):
        _open(bundle_dir, keys)


def test_a_listed_fifo_is_refused_without_waiting_for_a_writer(bundle_dir: Path, keys) -> None:
    data = (bundle_dir / "genes.tsv").read_bytes()
    (bundle_dir / "genes.tsv").unlink()
    os.mkfifo(bundle_dir / "genes.tsv")
    with pytest.raises(BundlePathError, match=r"is a FIFO"):
        _open(bundle_dir, keys)
    (bundle_dir / "genes.tsv").unlink()
    (bundle_dir / "genes.tsv").write_bytes(data)
    assert _open(bundle_dir, keys).var_names  # the same bundle, intact again, opens


# --- 3. sizes are checked before reading ------------------------------------------------------------


def _sparse(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        fh.truncate(size)  # no disk used; reading it would take seconds and, kept, 3 GiB of memory


def test_huge_file_listed_with_its_true_size_is_refused_unread(bundle_dir: Path, keys) -> None:
    _sparse(bundle_dir / "model" / "model.pt", 3 * GiB)
    manifest = _manifest(bundle_dir)
    manifest["files"]["model/model.pt"] = {"sha256": "0" * 64, "bytes": 3 * GiB}
    _sign(bundle_dir, keys, manifest)
    start = time.perf_counter()
    with pytest.raises(BundleSizeError, match=r"model/model\.pt in .* is 3221225472 bytes by its manifest, over the"):
        _open(bundle_dir, keys)
    assert time.perf_counter() - start < 1.0


def test_huge_file_listed_with_a_small_size_is_refused_unread(bundle_dir: Path, keys) -> None:
    _sparse(bundle_dir / "model" / "model.pt", 3 * GiB)  # the manifest still says 1600 bytes
    start = time.perf_counter()
    with pytest.raises(BundleSizeError, match=r"is 3221225472 bytes, but its signed manifest says 1600"):
        _open(bundle_dir, keys)
    assert time.perf_counter() - start < 1.0


def test_huge_manifest_is_refused_unread(bundle_dir: Path, keys) -> None:
    _sparse(bundle_dir / "manifest.json", 3 * GiB)
    start = time.perf_counter()
    with pytest.raises(BundleSizeError, match=r"manifest\.json in .* is 3221225472 bytes, over the limit"):
        _open(bundle_dir, keys)
    assert time.perf_counter() - start < 1.0


def test_a_file_one_byte_longer_than_listed_is_refused(bundle_dir: Path, keys) -> None:
    with open(bundle_dir / "genes.tsv", "ab") as fh:
        fh.write(b"\n")
    with pytest.raises(BundleSizeError, match=r"genes\.tsv in .* is \d+ bytes, but its signed manifest says"):
        _open(bundle_dir, keys)


def test_size_limits_can_be_lowered(bundle_dir: Path, keys) -> None:
    total = sum(entry["bytes"] for entry in _manifest(bundle_dir)["files"].values())
    with pytest.raises(BundleSizeError, match=rf"holds {total} bytes by its manifest, over the limit of 1000 per"):
        _open(bundle_dir, keys, max_bytes=1000)
    with pytest.raises(BundleSizeError, match=r"over the limit of 100 per file"):
        _open(bundle_dir, keys, max_file_bytes=100)
    assert _open(bundle_dir, keys, max_bytes=total, max_file_bytes=total).size_bytes > total


def test_too_many_entries_are_refused(bundle_dir: Path, keys) -> None:
    for i in range(100):
        (bundle_dir / f"junk{i}").mkdir()
    with pytest.raises(BundleSizeError, match="holds more than 64 files and directories"):
        _open(bundle_dir, keys)


# --- 4. weights are never unpickled with code execution ---------------------------------------------


class _Touch:
    """Unpickling this creates ``marker``: what a malicious model.pt would do with a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _torch_bytes(obj: object) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _payload(kind: type, marker: Path) -> bytes:
    """A model.pt shaped like scvi-tools' (tensors and all), with one object that runs code when unpickled."""
    import torch

    return _torch_bytes(
        {
            "model_state_dict": {"z_encoder.mean.weight": torch.zeros(2, 2)},
            "var_names": np.array(["ENSG00000000001"], dtype=object),
            "attr_dict": {"registry_": {"model_name": "SCANVI"}, "history_": kind(marker)},
        }
    )


@pytest.mark.parametrize("kind", [_Touch, _System])
def test_the_payload_is_live(tmp_path: Path, kind: type) -> None:
    """Control: torch.load(weights_only=False), as scvi-tools and fedarches used to load, runs the payload."""
    import torch

    marker = tmp_path / "ran"
    torch.load(io.BytesIO(_payload(kind, marker)), weights_only=False)
    assert marker.exists()


@pytest.fixture(params=[_Touch, _System], ids=["Path.touch", "os.system"])
def hostile_bundle(request, tmp_path: Path, toy_contents, keys) -> tuple[ReferenceBundle, Path]:
    marker = tmp_path / "code-ran"
    contents = dataclasses.replace(toy_contents, model_pt=_payload(request.param, marker))
    path = write_bundle(tmp_path / "hostile", contents, crypto.load_private_key(keys[0]))
    return ReferenceBundle.open(path, keys[1]), marker  # signed by the trusted key: opens


def test_reference_state_never_runs_the_model_pickle(hostile_bundle) -> None:
    bundle, marker = hostile_bundle
    with pytest.raises(UnsafeModelError, match=r"model/model\.pt in .* holds objects a weights file never needs"):
        bundle.reference_state()
    assert not marker.exists()


def test_write_model_dir_never_hands_scvi_tools_the_pickle(hostile_bundle, tmp_path: Path) -> None:
    bundle, marker = hostile_bundle
    with pytest.raises(UnsafeModelError, match="could run code") as caught:
        bundle.write_model_dir(tmp_path / "scvi-model")
    assert caught.value.exit_code == 26
    assert not (tmp_path / "scvi-model" / "model.pt").exists()
    assert not marker.exists()


def test_mapping_refuses_the_bundle_before_scvi_tools_loads_it(hostile_bundle) -> None:
    import anndata as ad
    import pandas as pd

    from fedarches.client.mapping import map_query

    bundle, marker = hostile_bundle
    rng = np.random.default_rng(0)
    query = ad.AnnData(
        X=rng.poisson(5, size=(30, 3)).astype(np.float32),
        obs=pd.DataFrame(index=[f"c{i}" for i in range(30)]),
        var=pd.DataFrame(index=bundle.var_names),
    )
    with pytest.raises(UnsafeModelError, match="holds objects a weights file never needs"):
        map_query(query, bundle)
    assert not marker.exists()


def test_merge_refuses_the_bundle(hostile_bundle, tmp_path: Path, keys) -> None:
    from fedarches.server.merge import merge_adapters
    from fedarches.shared.adapters import Adapter

    bundle, marker = hostile_bundle
    adapter = Adapter(bundle_id=bundle.bundle_id, batch_categories=("lab/x",), tensors={})
    with pytest.raises(UnsafeModelError, match="holds objects a weights file never needs"):
        merge_adapters(bundle, [("lab", adapter)], tmp_path / "merged", keys[0])
    assert not marker.exists()
    assert not (tmp_path / "merged").exists()


def test_importing_a_downloaded_model_never_runs_it(tmp_path: Path) -> None:
    from fedarches.server.reference import import_reference

    marker = tmp_path / "code-ran"
    (tmp_path / "downloaded").mkdir()
    (tmp_path / "downloaded" / "model.pt").write_bytes(_payload(_System, marker))
    with pytest.raises(UnsafeModelError, match=r"downloaded/model\.pt holds objects") as caught:
        import_reference(tmp_path / "downloaded")
    assert "model.save()" in caught.value.hint
    assert not marker.exists()


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: b"not a real model" * 100, r"is not a torch model file \(torch\.save writes a zip archive"),
        (lambda: b"", r"is not a torch model file"),
        (lambda: __import__("pickle").dumps({"model_state_dict": {}}), r"is not a torch model file"),
        (lambda: _torch_bytes([1, 2, 3]), r"holds list, not a scvi-tools model dict"),
        (lambda: _torch_bytes({"model_state_dict": {}}), r"not a scvi-tools model dict with keys"),
        (
            lambda: _torch_bytes(
                {"model_state_dict": {}, "var_names": np.array(["g"]), "attr_dict": {"registry_": {}}}
            ),
            r"has a registry_ without setup_args or model_name",
        ),
        (lambda: _torch_bytes(_Bomb()), r"cannot be read as a torch model file \(TypeError"),
        (lambda: _torch_bytes(_ArrayBomb()), r"holds objects .* \(array reconstruction of"),
        (lambda: _torch_bytes(_EvilDefault()), r"holds objects .* \(it names getattr\)"),
    ],
    ids=[
        "junk",
        "empty",
        "plain pickle",
        "a list",
        "keys missing",
        "no registry",
        "bytes bomb",
        "array bomb",
        "defaultdict factory",
    ],
)
def test_what_is_not_a_model_dict_is_refused(make: Callable[[], bytes], message: str) -> None:
    with pytest.raises(UnsafeModelError, match=message):
        load_model_dict(make())


class _Bomb:
    def __reduce__(self):
        return (bytes, (2**40,))  # 1 TiB of zeros if allowed


class _ArrayBomb:
    def __reduce__(self):
        return (np._core.multiarray._reconstruct, (np.ndarray, (2**40,), b"b"))


class _EvilDefault:
    def __reduce__(self):
        import collections

        return (collections.defaultdict, (pathlib.Path.touch,))


@pytest.mark.slow
def test_real_scvi_tools_models_round_trip(tmp_path: Path) -> None:
    """What scvi-tools 1.4 saves for SCVI and SCANVI loads through the allow-list, and re-saved, loads in scvi-tools."""
    import scvi
    import torch

    scvi.settings.seed = 0
    adata = scvi.data.synthetic_iid(batch_size=25, n_genes=20, n_batches=2, n_labels=3)
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch", labels_key="labels")
    vae = scvi.model.SCVI(adata, n_latent=2, n_hidden=8, use_layer_norm="both", use_batch_norm="none")
    vae.train(max_epochs=1, enable_progress_bar=False, accelerator="cpu")
    scanvi = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category="label_0")
    scanvi.train(max_epochs=1, enable_progress_bar=False, accelerator="cpu")
    for model in (vae, scanvi):
        name = type(model).__name__
        model.save(tmp_path / name, save_anndata=False)
        data = (tmp_path / name / "model.pt").read_bytes()
        trusted = torch.load(io.BytesIO(data), weights_only=False)  # written just now by this test
        loaded = load_model_dict(data)
        assert loaded.keys() == trusted.keys()
        for key, tensor in trusted["model_state_dict"].items():
            if isinstance(tensor, torch.Tensor):
                assert torch.equal(loaded["model_state_dict"][key], tensor)
        np.testing.assert_array_equal(loaded["var_names"], trusted["var_names"])
        history = loaded["attr_dict"]["history_"]["elbo_train"]
        assert history.equals(trusted["attr_dict"]["history_"]["elbo_train"])
        registries = loaded["attr_dict"]["registry_"]["field_registries"]
        assert type(registries) is type(trusted["attr_dict"]["registry_"]["field_registries"])  # defaultdict
        (tmp_path / f"{name}-safe").mkdir()
        (tmp_path / f"{name}-safe" / "model.pt").write_bytes(sanitized_model_bytes(data))
        again = type(model).load(str(tmp_path / f"{name}-safe"), adata=adata)
        np.testing.assert_allclose(
            again.get_latent_representation(adata, give_mean=True),
            model.get_latent_representation(adata, give_mean=True),
            rtol=1e-5,
        )


# --- 5. the bundle as received over the network -----------------------------------------------------


def _record(files: dict[str, bytes]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.frombuffer(data, dtype=np.uint8)) for name, data in files.items()})


def _bundle_files(bundle_dir: Path) -> dict[str, bytes]:
    return {p.relative_to(bundle_dir).as_posix(): p.read_bytes() for p in sorted(bundle_dir.rglob("*")) if p.is_file()}


def test_record_round_trip(bundle_dir: Path, keys) -> None:
    files = _bundle_files(bundle_dir)
    sent = ReferenceBundle.open(bundle_dir, keys[1]).verified_files()
    assert sent == files  # the verified bytes are the bundle's files, manifest and signature included
    assert protocol.BundleTransfer.from_record(protocol.BundleTransfer(sent).to_record()).files == files


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "model//model.pt", "a\\b", ".ssh", "model/../../x"])
def test_record_names_follow_the_bundle_rules(name: str) -> None:
    with pytest.raises(BundlePathError, match="bundle file name"):
        protocol.BundleTransfer.from_record(_record({"manifest.json": b"{}", name: b"x"}))


def test_record_arrays_must_be_bytes_and_within_the_limit() -> None:
    with pytest.raises(BundleIntegrityError, match=r"arrived as a float32 array"):
        protocol.BundleTransfer.from_record(ArrayRecord({"genes.tsv": Array(np.zeros(3, np.float32))}))
    with pytest.raises(BundleIntegrityError, match=r"arrived as a uint8 array of shape \(2, 2\)"):
        protocol.BundleTransfer.from_record(ArrayRecord({"genes.tsv": Array(np.zeros((2, 2), np.uint8))}))
    with pytest.raises(BundleSizeError, match="over the limit"):
        big = _record({"genes.tsv": b"x" * (2 * 1024**2)})
        protocol.BundleTransfer.from_record(big, max_bytes=1)  # + manifest allowance
    with pytest.raises(BundleSizeError, match="holds 100 files"):
        protocol.BundleTransfer.from_record(_record({f"f{i}": b"" for i in range(100)}))


@pytest.fixture
def lab(tmp_path: Path, keys) -> LabDir:
    root = tmp_path / "lab"
    root.mkdir()
    (root / crypto.PUBLIC_KEY_NAME).write_bytes(Path(keys[1]).read_bytes())
    return LabDir(root, "lab", "")


def test_store_bundle_keeps_a_good_bundle(lab: LabDir, bundle_dir: Path, keys) -> None:
    bundle_id = _open(bundle_dir, keys).bundle_id
    stored = lab.store_bundle(bundle_id, _bundle_files(bundle_dir))
    assert stored.bundle_id == bundle_id
    assert stored.path == lab.bundles_dir / bundle_id


@pytest.mark.parametrize(
    "extra,error,message",
    [
        ({"../../escaped": b"x"}, BundlePathError, "escapes the bundle directory"),
        ({"/tmp/escaped": b"x"}, BundlePathError, "escapes the bundle directory"),
        ({"model": b"x"}, BundlePathError, "is also a directory of another file"),
        ({"Genes.tsv": b"x"}, BundlePathError, "differ only in case"),
        ({"notes": "text, not bytes"}, BundleIntegrityError, "not file names and bytes"),
        ({"evil.py": b"x"}, BundleIntegrityError, r"does not list: evil\.py"),
    ],
)
def test_store_bundle_refuses_before_writing_outside(
    lab: LabDir, bundle_dir: Path, keys, extra: dict[str, Any], error: type, message: str
) -> None:
    bundle_id = _open(bundle_dir, keys).bundle_id
    with pytest.raises(error, match=message):
        lab.store_bundle(bundle_id, {**_bundle_files(bundle_dir), **extra})
    assert not (lab.root / "escaped").exists()
    assert not (lab.bundles_dir / "escaped").exists()
    assert not (lab.bundles_dir / bundle_id).exists()


@pytest.mark.parametrize("bundle_id", [123, None, "../../etc", "0" * 17])
def test_store_bundle_refuses_a_bad_id(lab: LabDir, bundle_dir: Path, bundle_id: Any) -> None:
    with pytest.raises(BundleIntegrityError, match="is not a bundle id"):
        lab.store_bundle(bundle_id, _bundle_files(bundle_dir))


def test_store_bundle_raises_only_fedarches_errors_when_it_cannot_write(lab: LabDir, bundle_dir: Path, keys) -> None:
    lab.bundles_dir.parent.mkdir(exist_ok=True)
    lab.bundles_dir.write_bytes(b"a file where the bundles directory goes")
    with pytest.raises(BundleError, match=r"cannot store bundle .* under"):
        lab.store_bundle(_open(bundle_dir, keys).bundle_id, _bundle_files(bundle_dir))


def test_every_refusal_is_a_fedarches_error() -> None:
    for cls in (BundleSchemaError, BundlePathError, BundleSizeError, UnsafeModelError):
        assert issubclass(cls, FedarchesError)
        assert 23 <= cls.exit_code <= 27

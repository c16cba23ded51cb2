"""The signed reference bundle: what the coordinator publishes and every lab maps against.

A bundle is a directory::

    manifest.json   format, format_version, versions, signing key id, sha256 + size of every file
    manifest.sig    Ed25519 signature (base64) over the exact bytes of manifest.json
    model/model.pt  the scvi-tools model, in scvi-tools' own save layout (``Model.load`` reads it)
    setup.json      model class, setup_anndata arguments, batch and label categories
    genes.tsv       gene_id and gene_symbol of every model input, in model order
    embedding.npz   reference latent, reference 2-D UMAP and label codes (no pickles)
    reference_summary.npz  optional: per-type latent Gaussians, distance quantiles and threshold,
                    classifier temperature (see fedarches.shared.quality)

Opening a bundle (:meth:`ReferenceBundle.open`) verifies, before anything is deserialized:

1. the signature of ``manifest.json`` against a key the lab trusts (both files small, regular and
   not links);
2. the manifest against its schema (strict types, required keys, no unknown key) and every file
   name in it (:func:`check_file_names`: relative, normalized, inside the bundle);
3. that the directory holds exactly the listed files, all regular files (a link, a FIFO or a
   device anywhere in the bundle is refused, and no link is followed);
4. each file's size, from ``stat`` and against the manifest, before a byte of it is read; a file
   over :data:`MAX_BUNDLE_FILE_BYTES` or a bundle over :data:`MAX_BUNDLE_BYTES` is refused unread;
5. each file's sha256, read in chunks in the same pass that keeps its bytes: what was verified is
   what is used, however the files change afterwards.

Then ``setup.json``, ``genes.tsv``, ``embedding.npz`` and ``reference_summary.npz`` are parsed and
checked (schema, shapes, no pickles). ``model.pt`` is a torch pickle: it is only ever unpickled by
:mod:`fedarches.shared.weights`, which refuses anything but tensors, arrays and plain values, and
what scvi-tools loads is a copy re-saved from that (:meth:`ReferenceBundle.write_model_dir`). A
bundle signed by a compromised coordinator may mislead a lab; it cannot run code on its machine.

Placing a query on the reference's 2-D embedding without refitting: the bundle carries the
reference cells' latent coordinates and their UMAP coordinates. A query cell is placed at the
distance-weighted mean of the UMAP positions of its nearest reference neighbours in latent space
(:mod:`fedarches.shared.embedding`). This needs no pickled UMAP object (a pickle would execute
code on load), is deterministic, and the same neighbours serve kNN label transfer for scVI-only
references and per-cell mapping scores.
"""

from __future__ import annotations

import io
import json
import os
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedarches.shared import crypto
from fedarches.shared._constants import (
    BUNDLE_FORMAT,
    BUNDLE_FORMAT_VERSION,
    BUNDLE_KEYS,
    MAX_BUNDLE_BYTES,
    MAX_BUNDLE_FILE_BYTES,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
)
from fedarches.shared._io import atomic_directory
from fedarches.shared.backends import MODEL_CLASSES
from fedarches.shared.bundle_files import (
    check_file_name,
    check_file_names,
    check_sizes,
    open_root,
    present_files,
    read_small,
    read_verified,
    shown_names,
)
from fedarches.shared.bundle_schema import (
    OldBundleFormatWarning,
    parse_embedding,
    parse_genes,
    parse_manifest,
    parse_setup,
    parse_summary,
)
from fedarches.shared.errors import BundleError, BundleIntegrityError
from fedarches.shared.weights import load_model_dict, sanitized_model_bytes

__all__ = [
    "BundleContents",
    "OldBundleFormatWarning",
    "ReferenceBundle",
    "check_file_name",
    "check_file_names",
    "write_bundle",
]


@dataclass(frozen=True)
class BundleContents:
    """Everything a bundle holds, before signing. Built by the coordinator."""

    model_pt: bytes
    model_class: str
    setup_args: dict[str, Any]
    batch_categories: list[str]
    label_categories: list[str]
    gene_ids: list[str]
    gene_symbols: list[str] | None = None
    embedding: dict[str, np.ndarray] | None = None
    description: dict[str, Any] = field(default_factory=dict)
    summary: bytes | None = None  # a ReferenceSummary's bytes (fedarches.shared.quality)


def write_bundle(
    out_dir: Path,
    contents: BundleContents,
    signing_key: crypto.Ed25519PrivateKey,
    *,
    overwrite: bool = False,
) -> Path:
    """Write and sign a bundle directory atomically; return its path."""
    files: dict[str, bytes] = {
        BUNDLE_KEYS.MODEL: contents.model_pt,
        BUNDLE_KEYS.SETUP: _json_bytes(
            {
                "model_class": contents.model_class,
                "backend": MODEL_CLASSES.get(contents.model_class),
                "setup_args": contents.setup_args,
                "batch_categories": contents.batch_categories,
                "label_categories": contents.label_categories,
                **contents.description,
            }
        ),
        BUNDLE_KEYS.GENES: _genes_tsv(contents.gene_ids, contents.gene_symbols),
    }
    if contents.embedding is not None:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **contents.embedding)
        files[BUNDLE_KEYS.EMBEDDING] = buffer.getvalue()
    if contents.summary is not None:
        files[BUNDLE_KEYS.SUMMARY] = contents.summary
    parse_setup(files[BUNDLE_KEYS.SETUP], f"the {BUNDLE_KEYS.SETUP} to write")  # never sign what labs refuse
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
        "signing_key_id": crypto.key_id(signing_key.public_key()),
        "files": {
            name: {"sha256": crypto.sha256_bytes(data), "bytes": len(data)} for name, data in sorted(files.items())
        },
    }
    manifest_bytes = _json_bytes(manifest)
    try:
        with atomic_directory(Path(out_dir), overwrite=overwrite) as tmp:
            for name, data in files.items():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / name).write_bytes(data)
            (tmp / BUNDLE_KEYS.MANIFEST).write_bytes(manifest_bytes)
            (tmp / BUNDLE_KEYS.SIGNATURE).write_text(crypto.sign(signing_key, manifest_bytes) + "\n")
    except FileExistsError as err:
        msg = f"{out_dir} already exists"
        raise BundleError(msg, hint="choose another --out directory, or pass --overwrite") from err
    return Path(out_dir)


class ReferenceBundle:
    """A verified reference bundle. Construct it with :meth:`open`."""

    def __init__(
        self,
        path: Path,
        manifest_bytes: bytes,
        manifest: dict[str, Any],
        files: dict[str, bytes],
        setup: dict[str, Any],
        signature: bytes = b"",
    ) -> None:
        self.path = path
        self._manifest_bytes = manifest_bytes
        self._signature = signature
        self._files = files
        self.manifest = manifest
        self.setup = setup
        self.genes = parse_genes(files[BUNDLE_KEYS.GENES])
        self.embedding = parse_embedding(files.get(BUNDLE_KEYS.EMBEDDING), len(self.label_categories))
        self.reference_summary = parse_summary(files.get(BUNDLE_KEYS.SUMMARY))

    @classmethod
    def open(
        cls,
        path: Path | str,
        trusted_key: Path | str | crypto.Ed25519PublicKey,
        *,
        max_bytes: int = MAX_BUNDLE_BYTES,
        max_file_bytes: int = MAX_BUNDLE_FILE_BYTES,
    ) -> ReferenceBundle:
        """Verify and open the bundle at ``path``.

        Parameters
        ----------
        path
            The bundle directory.
        trusted_key
            The coordinator's bundle-signing public key (a PEM file or a loaded key).
        max_bytes
            Refuse a bundle whose files hold more bytes in all (checked before reading them).
        max_file_bytes
            Refuse a bundle with a file larger than this.

        Raises
        ------
        BundleIntegrityError
            Unsigned, bad signature, a file whose hash differs, a missing or unlisted file; its
            subclasses :class:`BundlePathError` (a name that leaves the bundle, a link, not a regular
            file) and :class:`BundleSizeError` (a size that differs from the manifest or is over a limit).
        BundleSchemaError
            The signed manifest, ``setup.json``, ``genes.tsv`` or an ``.npz`` file is malformed.
        BundleError
            Not a bundle, unreadable, or a format this version cannot read.
        """
        path = Path(path)
        key = (
            trusted_key
            if isinstance(trusted_key, crypto.Ed25519PublicKey)
            else crypto.load_public_key(Path(trusted_key))
        )
        root = open_root(path)
        try:
            manifest_bytes = read_small(root, path, BUNDLE_KEYS.MANIFEST, MAX_MANIFEST_BYTES)
            signature = read_small(root, path, BUNDLE_KEYS.SIGNATURE, MAX_SIGNATURE_BYTES)
            if manifest_bytes is None:
                msg = f"{path} has no {BUNDLE_KEYS.MANIFEST}: not a fedarches reference bundle"
                raise BundleError(msg, hint="pass the bundle directory that fedarches' reference builder wrote")
            if signature is None:
                msg = f"{path} is unsigned (no {BUNDLE_KEYS.SIGNATURE}); unsigned bundles are refused"
                raise BundleIntegrityError(msg)
            try:
                signature_text = signature.decode("ascii").strip()
            except UnicodeDecodeError:
                msg = f"{path}/{BUNDLE_KEYS.SIGNATURE} is not a base64 signature"
                raise BundleIntegrityError(msg) from None
            crypto.verify(key, manifest_bytes, signature_text)
            manifest, listed = parse_manifest(manifest_bytes, path)
            check_sizes(listed, path, max_bytes=max_bytes, max_file_bytes=max_file_bytes)
            present = present_files(path)
            unlisted = sorted(set(present) - set(listed))
            if unlisted:
                msg = f"{path} holds files its signed manifest does not list: {shown_names(unlisted)}"
                raise BundleIntegrityError(msg)
            missing = sorted(set(listed) - set(present))
            if missing:
                msg = f"{path} is missing {shown_names(missing)}, which its manifest lists"
                raise BundleIntegrityError(msg)
            files = {name: read_verified(root, path, name, entry) for name, entry in listed.items()}
        finally:
            os.close(root)
        setup = parse_setup(files[BUNDLE_KEYS.SETUP], f"{BUNDLE_KEYS.SETUP} in {path}")
        return cls(path, manifest_bytes, manifest, files, setup, signature)

    @property
    def bundle_id(self) -> str:
        """Content address of the bundle: sha256 of its signed manifest, 16 hex digits."""
        return crypto.sha256_bytes(self._manifest_bytes)[:16]

    @property
    def model_class(self) -> str:
        """scvi-tools' class of the model, as its registry names it; :mod:`fedarches.shared.backends` maps it."""
        return str(self.setup["model_class"])

    @property
    def protein_names(self) -> list[str]:
        """Proteins the model takes and imputes, in model order (empty for RNA-only models)."""
        return list(self.setup.get("protein_names") or [])

    @property
    def setup_args(self) -> dict[str, Any]:
        """The ``setup_anndata`` arguments the reference was registered with."""
        return dict(self.setup["setup_args"])

    @property
    def label_categories(self) -> list[str]:
        """Cell types the reference knows, in model order (the unlabeled category excluded)."""
        return list(self.setup["label_categories"])

    @property
    def batch_categories(self) -> list[str]:
        """Batches of the model, reference batches first."""
        return list(self.setup["batch_categories"])

    @property
    def var_names(self) -> list[str]:
        """Gene identifiers of the model's inputs, in model order."""
        return self.genes["gene_id"].tolist()

    @property
    def size_bytes(self) -> int:
        """Total size of the bundle's files."""
        return len(self._manifest_bytes) + sum(len(d) for d in self._files.values())

    def verified_files(self) -> dict[str, bytes]:
        """Every file of the bundle as verified, manifest and signature included: what is sent to a lab.

        Sending these bytes, not the files on disk, means a file changed after verification is never sent.
        """
        return {BUNDLE_KEYS.MANIFEST: self._manifest_bytes, BUNDLE_KEYS.SIGNATURE: self._signature, **self._files}

    def model_bytes(self) -> bytes:
        """The verified bytes of ``model/model.pt`` (a torch pickle: load it with :mod:`~fedarches.shared.weights`)."""
        return self._files[BUNDLE_KEYS.MODEL]

    def write_model_dir(self, directory: Path) -> Path:
        """Write a safe copy of the verified model to ``directory/model.pt`` for scvi-tools to load.

        scvi-tools loads models from a path, and unpickles them with ``weights_only=False``. The
        file written here is re-saved from what :func:`~fedarches.shared.weights.load_model_dict`
        loaded, so it names only allow-listed globals, and it is made from the verified bytes, so a
        file swapped in the bundle after verification is never read.

        Raises
        ------
        UnsafeModelError
            ``model.pt`` holds objects a weights file never needs; nothing is written.
        """
        data = sanitized_model_bytes(self.model_bytes(), source=f"{BUNDLE_KEYS.MODEL} in {self.path}")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "model.pt").write_bytes(data)
        return directory

    def reference_state(self) -> dict[str, np.ndarray]:
        """The reference module's tensors as numpy arrays (reads verified bytes only, never runs code from them)."""
        import torch

        saved = load_model_dict(self.model_bytes(), source=f"{BUNDLE_KEYS.MODEL} in {self.path}")
        return {
            name: tensor.detach().cpu().numpy()
            for name, tensor in saved["model_state_dict"].items()
            if isinstance(tensor, torch.Tensor)
        }

    def summary(self) -> dict[str, Any]:
        """A JSON-safe description for logs, reports and ``uns['fedarches']``."""
        return {
            "bundle_id": self.bundle_id,
            "model_class": self.model_class,
            "backend": MODEL_CLASSES[self.model_class],
            "n_genes": len(self.var_names),
            "protein_names": self.protein_names,
            "label_categories": self.label_categories,
            "reference_batches": self.batch_categories,
            "format_version": self.manifest["format_version"],
            "created": self.manifest["created"],
            "versions": self.manifest["versions"],
            "size_bytes": self.size_bytes,
        }


def _json_bytes(obj: object) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode()


def _json_default(obj: object) -> object:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    msg = f"{type(obj).__name__} is not JSON serializable"
    raise TypeError(msg)


def _genes_tsv(gene_ids: list[str], gene_symbols: list[str] | None) -> bytes:
    symbols = gene_symbols if gene_symbols is not None else [""] * len(gene_ids)
    frame = pd.DataFrame({"gene_id": gene_ids, "gene_symbol": symbols})
    return frame.to_csv(sep="\t", index=False).encode()


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("fedarches", "scvi-tools", "torch", "anndata"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "unknown"
    return versions

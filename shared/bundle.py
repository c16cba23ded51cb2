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

Opening a bundle verifies the signature against a key the lab trusts, then the hash of every
file, and refuses unlisted files, all before anything is deserialized. ``model.pt`` is a torch
pickle, so it is only ever read from the verified bytes held in memory.

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
import platform
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedarches.shared import crypto
from fedarches.shared._constants import BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION, BUNDLE_KEYS
from fedarches.shared._io import atomic_directory
from fedarches.shared.errors import BundleError, BundleIntegrityError
from fedarches.shared.quality import ReferenceSummary


class OldBundleFormatWarning(UserWarning):
    """The bundle uses an older format_version; it is read, but may lack newer fields."""


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

    def __init__(self, path: Path, manifest_bytes: bytes, files: dict[str, bytes]) -> None:
        self.path = path
        self._manifest_bytes = manifest_bytes
        self._files = files
        self.manifest: dict[str, Any] = json.loads(manifest_bytes)
        self.setup: dict[str, Any] = json.loads(files[BUNDLE_KEYS.SETUP])

    @classmethod
    def open(cls, path: Path | str, trusted_key: Path | str | crypto.Ed25519PublicKey) -> ReferenceBundle:
        """Verify and open the bundle at ``path``.

        Parameters
        ----------
        path
            The bundle directory.
        trusted_key
            The coordinator's bundle-signing public key (a PEM file or a loaded key).

        Raises
        ------
        BundleIntegrityError
            Unsigned, bad signature, a file whose hash differs, a missing or unlisted file.
        BundleError
            Not a bundle, or a format this version cannot read.
        """
        path = Path(path)
        key = (
            trusted_key
            if isinstance(trusted_key, crypto.Ed25519PublicKey)
            else crypto.load_public_key(Path(trusted_key))
        )
        if not path.is_dir():
            msg = f"{path} is not a directory; a reference bundle is a directory with a manifest.json"
            raise BundleError(msg, hint="pass the directory written by `fedarches-server build-reference`")
        manifest_path, signature_path = path / BUNDLE_KEYS.MANIFEST, path / BUNDLE_KEYS.SIGNATURE
        if not manifest_path.is_file():
            msg = f"{path} has no {BUNDLE_KEYS.MANIFEST}: not a fedarches reference bundle"
            raise BundleError(msg, hint="pass the directory written by `fedarches-server build-reference`")
        if not signature_path.is_file():
            msg = f"{path} is unsigned (no {BUNDLE_KEYS.SIGNATURE}); unsigned bundles are refused"
            raise BundleIntegrityError(msg)
        manifest_bytes = manifest_path.read_bytes()
        crypto.verify(key, manifest_bytes, signature_path.read_text().strip())
        manifest = json.loads(manifest_bytes)
        _check_format(manifest)
        listed: Mapping[str, Mapping[str, Any]] = manifest["files"]
        present = {
            p.relative_to(path).as_posix()
            for p in path.rglob("*")
            if p.is_file() and p.name not in (BUNDLE_KEYS.MANIFEST, BUNDLE_KEYS.SIGNATURE)
        }
        unlisted = sorted(present - set(listed))
        if unlisted:
            msg = f"{path} holds files its signed manifest does not list: {', '.join(unlisted)}"
            raise BundleIntegrityError(msg)
        files: dict[str, bytes] = {}
        for name, entry in listed.items():
            file_path = path / name
            if not file_path.is_file():
                msg = f"{path} is missing {name}, which its manifest lists"
                raise BundleIntegrityError(msg)
            data = file_path.read_bytes()
            if crypto.sha256_bytes(data) != entry["sha256"]:
                msg = f"{name} in {path} does not match the sha256 in the signed manifest (altered or corrupted)"
                raise BundleIntegrityError(msg)
            files[name] = data
        return cls(path, manifest_bytes, files)

    @property
    def bundle_id(self) -> str:
        """Content address of the bundle: sha256 of its signed manifest, 16 hex digits."""
        return crypto.sha256_bytes(self._manifest_bytes)[:16]

    @property
    def model_class(self) -> str:
        """``"SCANVI"`` or ``"SCVI"``."""
        return str(self.setup["model_class"])

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

    @cached_property
    def genes(self) -> pd.DataFrame:
        """``gene_id`` and ``gene_symbol`` (may be empty strings) for each model input."""
        return pd.read_csv(io.BytesIO(self._files[BUNDLE_KEYS.GENES]), sep="\t", dtype=str, keep_default_na=False)

    @property
    def var_names(self) -> list[str]:
        """Gene identifiers of the model's inputs, in model order."""
        return self.genes["gene_id"].tolist()

    @cached_property
    def embedding(self) -> dict[str, np.ndarray] | None:
        """Reference ``latent``, ``umap`` and ``labels`` arrays, or None when the bundle has none."""
        data = self._files.get(BUNDLE_KEYS.EMBEDDING)
        if data is None:
            return None
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}

    @cached_property
    def reference_summary(self) -> ReferenceSummary | None:
        """Calibration and latent-space summary for mapping scores, or None in bundles built without one."""
        data = self._files.get(BUNDLE_KEYS.SUMMARY)
        return None if data is None else ReferenceSummary.from_bytes(data)

    @property
    def size_bytes(self) -> int:
        """Total size of the bundle's files."""
        return len(self._manifest_bytes) + sum(len(d) for d in self._files.values())

    def model_bytes(self) -> bytes:
        """The verified bytes of ``model/model.pt``."""
        return self._files[BUNDLE_KEYS.MODEL]

    def write_model_dir(self, directory: Path) -> Path:
        """Write the verified model file to ``directory/model.pt`` for scvi-tools to load.

        scvi-tools loads models from a path; copying the verified bytes to a private directory
        means a file swapped in the bundle after verification is never read.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "model.pt").write_bytes(self.model_bytes())
        return directory

    def reference_state(self) -> dict[str, np.ndarray]:
        """The reference module's tensors as numpy arrays (reads verified bytes only)."""
        import torch

        saved = torch.load(io.BytesIO(self.model_bytes()), map_location="cpu", weights_only=False)
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
            "n_genes": len(self.var_names),
            "label_categories": self.label_categories,
            "reference_batches": self.batch_categories,
            "format_version": self.manifest["format_version"],
            "created": self.manifest["created"],
            "versions": self.manifest["versions"],
            "size_bytes": self.size_bytes,
        }


def _check_format(manifest: Mapping[str, Any]) -> None:
    if manifest.get("format") != BUNDLE_FORMAT:
        msg = f"manifest format is {manifest.get('format')!r}, expected {BUNDLE_FORMAT!r}"
        raise BundleError(msg)
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > BUNDLE_FORMAT_VERSION:
        msg = f"bundle format_version {version!r} is newer than this fedarches reads ({BUNDLE_FORMAT_VERSION})"
        raise BundleError(msg, hint="upgrade fedarches to the coordinator's version")
    if version < BUNDLE_FORMAT_VERSION:
        warnings.warn(
            f"bundle format_version {version} is older than {BUNDLE_FORMAT_VERSION}; reading it anyway",
            OldBundleFormatWarning,
            stacklevel=3,
        )


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

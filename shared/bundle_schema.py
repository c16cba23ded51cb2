"""What a bundle's files must hold, and the parsers that check it.

The signed manifest and ``setup.json`` follow strict schemas, the gene table has fixed columns,
and the ``.npz`` arrays are plain arrays (no pickles) of bounded size. Every parser raises
:class:`~fedarches.shared.errors.BundleSchemaError` (or a :class:`~fedarches.shared.errors.BundleError`
for a format this version cannot read), naming the file and the first problems.
"""

from __future__ import annotations

import csv
import io
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from fedarches.shared._constants import BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION, BUNDLE_KEYS, MAX_BUNDLE_FILE_BYTES
from fedarches.shared._json import strict_loads
from fedarches.shared.backends import MODEL_CLASSES
from fedarches.shared.bundle_files import check_file_names, show
from fedarches.shared.errors import BundleError, BundleSchemaError, BundleSizeError, FedarchesError
from fedarches.shared.quality import ReferenceSummary

REQUIRED_FILES = (BUNDLE_KEYS.MODEL, BUNDLE_KEYS.SETUP, BUNDLE_KEYS.GENES)


class OldBundleFormatWarning(UserWarning):
    """The bundle uses an older format_version; it is read, but may lack newer fields."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


_Hex16 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
_Text = Annotated[str, StringConstraints(max_length=1000)]
_Category = Annotated[str, StringConstraints(min_length=1, max_length=1000)]


class FileEntry(_Strict):
    """One file the manifest lists: its SHA-256 and its size in bytes."""

    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    size: int = Field(alias="bytes", ge=0)


class _Manifest(_Strict):
    format: str  # equal to BUNDLE_FORMAT: checked first, by _check_format
    format_version: int
    created: _Text
    versions: dict[_Text, _Text]
    signing_key_id: _Hex16
    files: dict[str, FileEntry]


class _SetupArgs(_Strict):
    """``setup_anndata`` arguments of the backends' scvi-tools models (as the model's registry saves them)."""

    batch_key: _Text | None
    labels_key: _Text | None = None
    layer: _Text | None = None
    unlabeled_category: _Text | int | float | None = None
    size_factor_key: _Text | None = None
    categorical_covariate_keys: list[_Text] | None = None
    continuous_covariate_keys: list[_Text] | None = None
    use_minified: bool | None = None
    protein_expression_obsm_key: _Text | None = None  # totalVI, totalANVI
    protein_names_uns_key: _Text | None = None
    panel_key: _Text | None = None


class _NewCellType(_Strict):
    labs: list[_Text]
    cells: float = Field(ge=0)


class _Lineage(_Strict):
    parent_bundle: _Hex16
    round_id: _Text
    labs: dict[_Text, list[_Category]]
    new_cell_types: dict[_Category, _NewCellType] = {}  # learned from labs' prototypes (scPoli)


class _Setup(_Strict):
    model_class: _Text
    backend: _Text | None = None  # the backend's name; absent in bundles written before backends
    protein_names: list[_Category] | None = None  # the model's proteins, in model order (totalVI)
    setup_args: _SetupArgs
    batch_categories: list[_Category]
    label_categories: list[_Category]
    n_latent: int | None = Field(None, ge=1)
    unlabeled_category: _Text | int | float | None = None
    scvi_tools_version: _Text | None = None
    lineage: list[_Lineage] = []

    @model_validator(mode="after")
    def _known_backend(self) -> _Setup:
        if self.model_class not in MODEL_CLASSES:
            supported = ", ".join(MODEL_CLASSES)
            msg = f"model_class {self.model_class[:40]!r} is not one fedarches maps against ({supported})"
            raise ValueError(msg)
        if self.backend is not None and self.backend != MODEL_CLASSES[self.model_class]:
            msg = f"backend {self.backend[:40]!r} does not match model_class {self.model_class!r}"
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _unique(self) -> _Setup:
        named = (
            ("batch_categories", self.batch_categories),
            ("label_categories", self.label_categories),
            ("protein_names", self.protein_names or []),
        )
        for what, values in named:
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                msg = f"{what} repeats {repeated[:5]}"
                raise ValueError(msg)
        return self


def parse_manifest(data: bytes, path: Path) -> tuple[dict[str, Any], dict[str, FileEntry]]:
    """The signed manifest, checked against its schema and the file-name rules; the listed files."""
    what = f"the signed {BUNDLE_KEYS.MANIFEST} of {path}"
    raw = _parse_json_object(data, what)
    _check_format(raw, what)
    manifest = _validate(_Manifest, raw, what)
    check_file_names(manifest.files)
    absent = [name for name in REQUIRED_FILES if name not in manifest.files]
    if absent:
        msg = f"{what} does not list {', '.join(absent)}, which every bundle holds"
        raise BundleSchemaError(msg)
    return raw, dict(manifest.files)


def parse_setup(data: bytes, what: str) -> dict[str, Any]:
    """The bundle's ``setup.json``, checked against its schema."""
    raw = _parse_json_object(data, what)
    _validate(_Setup, raw, what)
    return raw


def _parse_json_object(data: bytes, what: str) -> dict[str, Any]:
    """Strict JSON (:func:`~fedarches.shared._json.strict_loads`) with an object at the top."""
    try:
        value = strict_loads(data, what, max_chars=len(data) + 1)
    except ValueError as err:
        raise BundleSchemaError(str(err)) from None
    if not isinstance(value, dict):
        msg = f"{what} must be a JSON object, found a {type(value).__name__}"
        raise BundleSchemaError(msg)
    return value


def _validate(model: type[BaseModel], raw: dict[str, Any], what: str) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        problems = [f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in err.errors()[:5]]
        more = f" (and {err.error_count() - 5} more)" if err.error_count() > 5 else ""
        msg = f"{what} does not follow the bundle format: {'; '.join(p[:200] for p in problems)}{more}"
        raise BundleSchemaError(msg) from None


def parse_genes(data: bytes) -> pd.DataFrame:
    """The bundle's gene table: columns ``gene_id`` and ``gene_symbol``, unique non-empty ids."""
    what = f"{BUNDLE_KEYS.GENES} of the bundle"
    try:
        frame = pd.read_csv(io.BytesIO(data), sep="\t", dtype=str, keep_default_na=False, encoding="utf-8")
    except (ValueError, csv.Error) as err:
        msg = f"{what} is not a UTF-8 table of gene_id and gene_symbol ({str(err)[:200]})"
        raise BundleSchemaError(msg) from None
    problem = None
    if list(frame.columns) != ["gene_id", "gene_symbol"]:
        problem = f"has columns {[str(c)[:40] for c in frame.columns[:5]]}, expected ['gene_id', 'gene_symbol']"
    elif frame.empty:
        problem = "lists no genes"
    elif (frame["gene_id"] == "").any():
        problem = "has an empty gene_id"
    elif frame["gene_id"].duplicated().any():
        problem = f"repeats gene_id {frame['gene_id'][frame['gene_id'].duplicated()].iloc[0][:40]!r}"
    if problem is not None:
        msg = f"{what} {problem}"
        raise BundleSchemaError(msg)
    return frame


def _read_npz(data: bytes, what: str) -> dict[str, np.ndarray]:
    """Arrays of an ``.npz`` (no pickles); refused if its members claim more than a bundle file may hold."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            claimed = sum(info.file_size for info in archive.infolist())
        if claimed > MAX_BUNDLE_FILE_BYTES:
            msg = f"{what} unpacks to {claimed} bytes, over the limit of {MAX_BUNDLE_FILE_BYTES}"
            raise BundleSizeError(msg)
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except FedarchesError:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zipfile.LargeZipFile) as err:
        msg = f"{what} is not a readable .npz of plain arrays ({type(err).__name__}: {str(err)[:200]})"
        raise BundleSchemaError(msg) from None


def parse_embedding(data: bytes | None, n_labels: int) -> dict[str, np.ndarray] | None:
    """Reference ``latent`` (cells x latent), ``umap`` (cells x 2) and ``labels`` (codes, -1 unlabelled)."""
    if data is None:
        return None
    what = f"{BUNDLE_KEYS.EMBEDDING} of the bundle"
    arrays = _read_npz(data, what)
    problem = None
    if set(arrays) != {"latent", "umap", "labels"}:
        problem = f"holds {sorted(arrays)[:5]}, expected ['labels', 'latent', 'umap']"
    else:
        latent, umap, labels = arrays["latent"], arrays["umap"], arrays["labels"]
        n = labels.shape[0] if labels.ndim == 1 else -1
        if not (latent.ndim == 2 and np.issubdtype(latent.dtype, np.floating) and latent.shape[0] == n):
            problem = f"has a latent of {latent.shape} {latent.dtype}; expected float, one row per label"
        elif not (umap.ndim == 2 and umap.shape[1] == 2 and np.issubdtype(umap.dtype, np.floating) and len(umap) == n):
            problem = f"has a umap of {umap.shape} {umap.dtype}; expected float, one row of 2 per label"
        elif not np.issubdtype(labels.dtype, np.integer) or (n and (labels.min() < -1 or labels.max() >= n_labels)):
            problem = f"has labels that are not codes of the {n_labels} label categories (or -1)"
        elif not (np.isfinite(latent).all() and np.isfinite(umap).all()):
            problem = "has values that are not finite"
    if problem is not None:
        msg = f"{what} {problem}"
        raise BundleSchemaError(msg)
    return arrays


def parse_summary(data: bytes | None) -> ReferenceSummary | None:
    """The bundle's reference summary (None when the bundle has none)."""
    if data is None:
        return None
    what = f"{BUNDLE_KEYS.SUMMARY} of the bundle"
    _read_npz(data, what)  # size and format first
    try:
        return ReferenceSummary.from_bytes(data)
    except (ValueError, TypeError, KeyError, AttributeError, OSError, EOFError, RecursionError) as err:
        msg = f"{what} is not a reference summary ({type(err).__name__}: {str(err)[:200]})"
        raise BundleSchemaError(msg) from None


def _check_format(manifest: Mapping[str, Any], what: str) -> None:
    """Format and version first, so a newer bundle says "upgrade", not "unknown key"."""
    if manifest.get("format") != BUNDLE_FORMAT:
        msg = f"manifest format is {show(manifest.get('format'))}, expected {BUNDLE_FORMAT!r}"
        raise BundleError(msg)
    version = manifest.get("format_version")
    if type(version) is not int:
        msg = f"{what} has format_version {show(version)}, not an integer"
        raise BundleSchemaError(msg)
    if version > BUNDLE_FORMAT_VERSION:
        msg = f"bundle format_version {version!r} is newer than this fedarches reads ({BUNDLE_FORMAT_VERSION})"
        raise BundleError(msg, hint="upgrade fedarches to the coordinator's version")
    if version < BUNDLE_FORMAT_VERSION:
        warnings.warn(
            f"bundle format_version {version} is older than {BUNDLE_FORMAT_VERSION}; reading it anyway",
            OldBundleFormatWarning,
            stacklevel=4,  # ReferenceBundle.open's caller
        )

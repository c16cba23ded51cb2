"""Reading a user's single-cell files: ``.h5ad`` (AnnData) or ``.h5mu`` (MuData), and their RNA.

A lab's query and a maintainer's reference may each be either kind. A MuData holds the RNA as
modality ``rna`` and, for CITE-seq, the proteins as ``prot`` (scvi-tools' MuData layout); its
annotations go on its top level. Nothing here imports torch or scvi-tools.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from fedarches.shared.errors import QueryDataError
from fedarches.shared.paths import require_file

if TYPE_CHECKING:
    from collections.abc import Iterator

    from anndata import AnnData
    from mudata import MuData

QUERY_SUFFIXES = (".h5ad", ".h5mu")
"""File kinds a lab's query may be: AnnData (``.h5ad``) or MuData (``.h5mu``, modalities ``rna`` and ``prot``)."""
_WRITERS = {".h5ad": "adata.write_h5ad('query.h5ad')", ".h5mu": "mdata.write_h5mu('query.h5mu')"}


def query_suffix(path: Path | str) -> str:
    """The kind of a query file by its name: ``".h5ad"`` or ``".h5mu"`` (lower case); refuse any other.

    Reads nothing, so commands call it first, before any path is opened.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in QUERY_SUFFIXES:
        msg = f"{path} is neither .h5ad (AnnData) nor .h5mu (MuData): cannot tell how to read it"
        raise QueryDataError(
            msg,
            hint="save an AnnData with adata.write_h5ad('query.h5ad') or a MuData (modalities 'rna', 'prot') with "
            "mdata.write_h5mu('query.h5mu'); a file that already is one of them only needs that suffix",
        )
    return suffix


def read_query(path: Path | str, *, what: str = "query file") -> AnnData | MuData:
    """Read an ``.h5ad`` (AnnData) or ``.h5mu`` (MuData) file, turning any read failure into one clear error."""
    path = require_file(path, what=what, hint="pass the path to your .h5ad or .h5mu file")
    suffix = query_suffix(path)
    try:
        if suffix == ".h5mu":
            import mudata as md

            with quiet_mudata():
                return md.read_h5mu(path)
        import anndata as ad

        return ad.read_h5ad(path)
    except Exception as err:  # noqa: BLE001 - h5py/anndata/mudata raise many types for broken files
        kind = "MuData" if suffix == ".h5mu" else "AnnData"
        msg = f"cannot read {path} as {suffix} ({type(err).__name__}): the file is truncated, corrupted or not {kind}"
        hint = (
            f"check the file is complete (compare its size or checksum with the original) and was written by "
            f"{'mudata' if suffix == '.h5mu' else 'anndata'}"
        )
        other = _other_kind(path, suffix)
        if other is not None:
            msg = f"cannot read {path} as {suffix}: it holds {'a MuData' if other == '.h5mu' else 'an AnnData'}"
            hint = f"name the file with the {other} suffix (it was saved with {_WRITERS[other]})"
        raise QueryDataError(msg, hint=hint) from None


@contextlib.contextmanager
def quiet_mudata() -> Iterator[None]:
    """Silence mudata 0.3's notice of its 0.4 defaults, which it repeats on every read and write of a MuData."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"From 0\.4 \.update\(\)", category=FutureWarning)
        yield


def _other_kind(path: Path, suffix: str) -> str | None:
    """The suffix of the other kind when ``path`` is an intact HDF5 file of that kind, else None."""
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            encoding = str(fh.attrs.get("encoding-type", "")).lower()
    except Exception:  # noqa: BLE001 - not HDF5, truncated: the plain message stands
        return None
    other = {"mudata": ".h5mu", "anndata": ".h5ad"}.get(encoding)
    return other if other != suffix else None


def rna_modality(data: AnnData | MuData) -> AnnData:
    """The RNA of a query: ``data.mod['rna']`` of a MuData, ``data`` itself of an AnnData.

    Annotations go on the MuData's top level, one row per cell, so the ``rna`` modality must hold
    exactly the MuData's cells, in its order; :class:`QueryDataError` if it is absent or does not.
    """
    from mudata import MuData

    if not isinstance(data, MuData):
        return data
    if "rna" not in data.mod:
        msg = f"the MuData has no 'rna' modality (it has {sorted(data.mod)}): fedarches maps cells by their RNA"
        raise QueryDataError(
            msg,
            hint="store the RNA counts as modality 'rna' (and proteins, if any, as 'prot', the scvi-tools layout): "
            "mudata.MuData({'rna': rna, 'prot': prot}).write_h5mu('query.h5mu')",
        )
    rna = data.mod["rna"]
    if not rna.obs_names.equals(data.obs_names):
        missing = int((~data.obs_names.isin(rna.obs_names)).sum())
        found = f"lacks {missing} of its {data.n_obs} cells" if missing else "holds its cells in another order"
        msg = f"the MuData's 'rna' modality {found}; every cell is annotated from its RNA"
        raise QueryDataError(
            msg,
            hint="keep only cells with RNA, with 'rna' as the first modality: "
            "mudata.MuData({'rna': rna, 'prot': prot[rna.obs_names]}), then save the file again",
        )
    return rna


def query_obs(data: AnnData | MuData) -> pd.DataFrame:
    """Per-cell table of a query: ``obs`` of an AnnData; of a MuData, its ``obs`` plus the ``rna`` columns it lacks.

    Columns a lab named in its own files (a donor column for its privacy policy) are found in either place.
    """
    rna = rna_modality(data)
    if rna is data:
        return data.obs
    extra = [c for c in rna.obs.columns if c not in data.obs.columns]
    return data.obs.join(rna.obs[extra]) if extra else data.obs


def query_rna(data: AnnData | MuData, *keys: str | None) -> AnnData:
    """The RNA of ``data`` (:func:`rna_modality`); of a MuData, with the top-level ``obs`` columns ``keys`` it lacks.

    A MuData's batch or label column may be in its own ``obs`` rather than its ``rna`` modality's.
    """
    rna = rna_modality(data)
    lifted = [k for k in keys if k is not None and k not in rna.obs and k in data.obs]
    if rna is data or not lifted:
        return rna
    import anndata as ad

    obs = rna.obs.copy()
    for key in lifted:
        obs[key] = data.obs[key].to_numpy()  # rna_modality checked: the same cells, in the same order
    return ad.AnnData(X=rna.X, obs=obs, var=rna.var, layers=dict(rna.layers), obsm=dict(rna.obsm))  # shares matrices

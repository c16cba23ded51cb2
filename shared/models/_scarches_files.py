"""Models saved by the scArches package (``model.save()``), read without running pickled code.

scArches writes three files: ``model_params.pt`` (the state dict, read with ``torch.load(weights_only=True)``),
``var_names.csv`` (one gene per line) and ``attr.pkl``, a pickle of the model's public attributes
(hyperparameters, conditions, for scPoli cell types and prototypes, but also ``obs_metadata_``, a
DataFrame of the reference cells, which is never kept). ``attr.pkl`` is read by an unpickler that
builds only plain containers, numpy arrays and tensors (their storage read back with
``weights_only=True``); any other class it names becomes an inert placeholder, so reading it cannot
run code. Each model family's module checks the attributes and renames the tensors.
"""

from __future__ import annotations

import importlib
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedarches.shared.errors import UserInputError

if TYPE_CHECKING:
    from anndata import AnnData

SCARCHES_FILES = ("attr.pkl", "model_params.pt", "var_names.csv")
MAX_ATTR_BYTES = 256 * 1024 * 1024
HINT = "pass a directory written by the scArches package's model.save() (attr.pkl, model_params.pt, var_names.csv)"

# What attr.pkl may build: plain containers, numpy arrays, torch tensors.
_ALLOWED = {
    ("builtins", "range"),
    ("builtins", "slice"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("torch._utils", "_rebuild_tensor_v2"),
}


def is_scarches_save(directory: Path | str) -> bool:
    """True when ``directory`` holds scArches' ``model.save()`` files."""
    return all((Path(directory) / name).is_file() for name in SCARCHES_FILES)


class _Inert:
    """Stands for any object outside the allow-list: built from the pickle, never run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _storage_from_bytes(data: bytes) -> Any:
    import torch

    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _storage_from_bytes
        if (module, name) in _ALLOWED:
            return getattr(importlib.import_module(module), name)
        return _Inert

    def persistent_load(self, pid: Any) -> Any:
        msg = "attr.pkl refers to persistent objects"
        raise pickle.UnpicklingError(msg)


def read_attributes(path: Path) -> dict[str, Any]:
    """``attr.pkl`` as a dict, built by the allow-list unpickler (see the module's docstring)."""
    data = path.read_bytes()
    if len(data) > MAX_ATTR_BYTES:
        msg = f"{path} is {len(data):,} bytes, more than a model's attributes ever are"
        raise UserInputError(msg, hint=HINT)
    try:
        attributes = _SafeUnpickler(io.BytesIO(data)).load()
    except Exception as err:  # noqa: BLE001 - a broken pickle is one refusal, whatever it raises
        msg = f"{path} is not a readable scArches attribute file ({type(err).__name__})"
        raise UserInputError(msg, hint=HINT) from None
    if not isinstance(attributes, dict):
        msg = f"{path} holds a {type(attributes).__name__}, not scArches' attribute dict"
        raise UserInputError(msg, hint=HINT)
    return attributes


@dataclass(frozen=True)
class ScArchesSave:
    """The three files of an scArches save, read safely: attributes, tensors, genes."""

    directory: Path
    attributes: dict[str, Any]
    state: dict[str, Any]  # scArches' tensor names -> torch tensors
    genes: list[str]

    def value(self, key: str, family: str) -> Any:
        """An attribute the ``family``'s model always saves; UserInputError naming the family when it is absent."""
        if key not in self.attributes:
            msg = f"{self.directory} lacks {family}'s attribute {key!r}: not an scArches {family} model"
            raise UserInputError(msg, hint=HINT)
        return self.attributes[key]


def read_scarches_save(directory: Path | str) -> ScArchesSave:
    """Read an scArches ``model.save()`` directory without running pickled code."""
    import torch

    directory = Path(directory)
    attributes = read_attributes(directory / "attr.pkl")
    try:
        state = torch.load(directory / "model_params.pt", weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - not a tensor file: one refusal
        msg = f"{directory / 'model_params.pt'} is not a state dict torch can read safely ({type(err).__name__})"
        raise UserInputError(msg, hint=HINT) from None
    if not isinstance(state, dict):
        msg = f"{directory / 'model_params.pt'} holds a {type(state).__name__}, not a state dict"
        raise UserInputError(msg, hint=HINT)
    genes = [line.strip() for line in (directory / "var_names.csv").read_text().splitlines() if line.strip()]
    return ScArchesSave(directory, attributes, dict(state), genes)


def family_of(save: ScArchesSave) -> str:
    """Which scArches model a save holds, from the attributes only its class saves."""
    attributes = save.attributes
    if "inject_condition_" in attributes and "cell_type_keys_" in attributes:
        return "scPoli"
    if "mask_" in attributes:
        return "expiMap"
    if "mmd_on_" in attributes or "use_mmd_" in attributes:
        return "trVAE"
    if "z_dim_" in attributes and "x_dim_" in attributes:
        return "scGen"
    return "unknown"


def rename(state: dict[str, Any], renames: dict[str, str], directory: Path, family: str) -> dict[str, Any]:
    """``state`` under fedarches' names; UserInputError when its tensors are not exactly ``renames``' keys."""
    unknown = sorted(set(state) - set(renames))
    missing = sorted(set(renames) - set(state))
    if unknown or missing:
        msg = f"{directory}'s state dict does not match {family}'s layout (extra {unknown[:3]}, missing {missing[:3]})"
        raise UserInputError(msg, hint=HINT)
    return {renames[name]: tensor for name, tensor in state.items()}


def rename_by_patterns(
    state: dict[str, Any], patterns: list[tuple[str, Any]], directory: Path, family: str
) -> dict[str, Any]:
    """``state`` under fedarches' names: each key's first full-matching pattern gives its new name.

    ``patterns``: (regular expression, replacement string or function of the match); a key no
    pattern matches is refused by name (a layout fedarches cannot hold).
    """
    import re

    compiled = [(re.compile(pattern), replacement) for pattern, replacement in patterns]
    renamed, unknown = {}, []
    for name, tensor in state.items():
        for pattern, replacement in compiled:
            match = pattern.fullmatch(name)
            if match:
                renamed[replacement(match) if callable(replacement) else match.expand(replacement)] = tensor
                break
        else:
            unknown.append(name)
    if unknown:
        msg = f"{directory}'s state dict has tensors fedarches' {family} does not hold: {sorted(unknown)[:3]}"
        raise UserInputError(msg, hint=f"retrain with scArches' {family} defaults (layer norm, recon_loss='nb')")
    return renamed


def registered_anndata(
    genes: list[str],
    condition_key: str,
    conditions: list[str],
    labels_key: str,
    cell_types: list[str] | None,
    adata: AnnData | None,
    unlabeled: str = "Unknown",
) -> AnnData:
    """The AnnData a converted model is set up on: the reference cells, or one empty cell per condition.

    Conditions become a categorical in the saved model's order (its one-hot columns); labels outside
    ``cell_types`` (all labels, when ``cell_types`` is None: taken from ``adata``) become ``unlabeled``.
    """
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    if adata is None:
        n = len(conditions)
        adata = ad.AnnData(
            X=sp.csr_matrix((n, len(genes)), dtype=np.float32),
            obs=pd.DataFrame(
                {condition_key: conditions, labels_key: unlabeled}, index=[f"condition{i}" for i in range(n)]
            ),
            var=pd.DataFrame(index=genes),
        )
    else:
        missing = [g for g in genes if g not in adata.var_names]
        columns = [c for c in (condition_key, labels_key) if c not in adata.obs]
        if missing or columns:
            msg = f"the reference data lacks {len(missing)} of the model's genes and obs columns {columns}"
            raise UserInputError(msg, hint="pass the AnnData the scArches model was trained on")
        adata = adata[:, genes].copy()
    obs = adata.obs
    obs[condition_key] = pd.Categorical(obs[condition_key].astype(str), categories=conditions)
    if obs[condition_key].isna().any():
        msg = f"the reference data has conditions ({condition_key}) the model was not trained on"
        raise UserInputError(msg, hint="pass the AnnData the scArches model was trained on")
    labels = obs[labels_key].astype(object).where(obs[labels_key].notna(), unlabeled).astype(str)
    known = sorted(set(labels) - {unlabeled}) if cell_types is None else cell_types
    labels = labels.where(labels.isin(known), unlabeled)
    # scPoli always registers its unlabeled category; the other models only when a cell has no type
    extra = [unlabeled] if cell_types is not None or (labels == unlabeled).any() else []
    obs[labels_key] = pd.Categorical(labels, categories=[*known, *extra])
    return adata

"""Read scvi-tools model files without ever running code from them.

A ``model.pt`` written by scvi-tools' ``model.save()`` is a torch pickle of a dict with three
keys: ``model_state_dict`` (tensors), ``var_names`` (an array) and ``attr_dict`` (the model's
attributes: registry, init parameters, training history as pandas DataFrames). Unpickling runs
whatever functions the pickle names, so a crafted file executes code on load; scvi-tools itself
loads with ``torch.load(weights_only=False)``.

fedarches never does. :func:`load_model_dict` unpickles with torch's restricted unpickler
(``weights_only=True``), which accepts tensors and plain containers, plus the short allow-list
below of what scvi-tools 1.4's saved dict holds besides (numpy arrays and dtypes, the pandas
DataFrames of ``history_``, one ``defaultdict``). Every entry only rebuilds data; none reads files,
imports modules or calls anything given to it. Anything else, a file that is not a torch file
included, raises :class:`~fedarches.shared.errors.UnsafeModelError`.

:func:`sanitized_model_bytes` re-saves what was loaded, so the file that scvi-tools later unpickles
(``load_query_data``, ``Model.load``) names only allow-listed globals, whatever the original held.
"""

from __future__ import annotations

import collections
import io
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fedarches.shared.errors import UnsafeModelError

MODEL_KEYS = ("model_state_dict", "var_names", "attr_dict")  # scvi-tools' SAVE_KEYS
_DEFAULT_FACTORIES = (dict, list)
_ZIP_MAGIC = b"PK\x03\x04"
_ARRAY_DTYPES = (
    "BoolDType",
    "Int8DType",
    "Int16DType",
    "Int32DType",
    "Int64DType",
    "UInt8DType",
    "UInt16DType",
    "UInt32DType",
    "UInt64DType",
    "Float16DType",
    "Float32DType",
    "Float64DType",
    "ObjectDType",
    "StrDType",
    "BytesDType",
)


def load_model_dict(data: bytes, *, source: str = "model.pt", hint: str | None = None) -> dict[str, Any]:
    """Unpickle a scvi-tools ``model.pt`` with torch's restricted unpickler; never run code from it.

    Parameters
    ----------
    data
        The file's bytes.
    source
        What to call the file in error messages.
    hint
        The error's hint, when the default (a bundle's model) does not fit.

    Returns
    -------
    The saved dict: ``model_state_dict`` (tensors), ``var_names`` and ``attr_dict``.

    Raises
    ------
    UnsafeModelError
        The file names a function or class outside the allow-list, is not a torch file, or does
        not hold a scvi-tools model dict.
    """
    import pickle

    import torch

    if not data.startswith(_ZIP_MAGIC):
        msg = f"{source} is not a torch model file (torch.save writes a zip archive; this starts with {data[:8]!r})"
        raise UnsafeModelError(msg, hint=hint)
    made: list[tuple[dict[Any, Any], Callable[[], Any] | None]] = []
    try:
        with torch.serialization.safe_globals(_allowed_globals(made)):
            saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        msg = (
            f"{source} holds objects a weights file never needs, so it is refused unread "
            f"({_first_line(err)}); loading it could run code on this machine"
        )
        raise UnsafeModelError(msg, hint=hint) from None
    except Exception as err:  # noqa: BLE001 - crafted bytes can make the unpickler raise anything
        msg = f"{source} cannot be read as a torch model file ({type(err).__name__}: {_first_line(err)})"
        raise UnsafeModelError(msg, hint=hint) from None
    _restore_defaultdicts(saved, made)
    _check_model_dict(saved, source, hint)
    return saved


def sanitized_model_bytes(data: bytes, *, source: str = "model.pt", hint: str | None = None) -> bytes:
    """``model.pt`` bytes re-saved from what :func:`load_model_dict` loaded: only allow-listed globals remain."""
    return model_dict_bytes(load_model_dict(data, source=source, hint=hint))


def model_dict_bytes(saved: Mapping[str, Any]) -> bytes:
    """``torch.save`` bytes of a model dict (what scvi-tools' ``model.save()`` writes to ``model.pt``)."""
    import torch

    buffer = io.BytesIO()
    torch.save(dict(saved), buffer)
    return buffer.getvalue()


def _allowed_globals(made: list[tuple[dict[Any, Any], Callable[[], Any] | None]]) -> list[Any]:
    """What torch's restricted unpickler may build besides tensors: numpy arrays, pandas frames, defaultdict.

    ``collections.defaultdict`` and numpy's ``_reconstruct`` are replaced by checked stand-ins: the
    unpickler fills only plain dicts (so a defaultdict is rebuilt afterwards, see
    :func:`_restore_defaultdicts`), and ``_reconstruct`` must get the empty shape that
    ``ndarray.__reduce__`` always gives (the array's data comes with its state, sized by it).
    """
    import pandas as pd
    from pandas._libs.internals import _unpickle_block
    from pandas.core.indexes.base import _new_Index
    from pandas.core.internals.managers import BlockManager

    def defaultdict_(default_factory: Any = None) -> dict[Any, Any]:
        if default_factory is not None and default_factory not in _DEFAULT_FACTORIES:
            msg = f"defaultdict of {default_factory!r}"
            raise pickle_error(msg)
        plain: dict[Any, Any] = {}
        made.append((plain, default_factory))
        return plain

    def reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        if subtype is not np.ndarray or tuple(shape) != (0,):
            msg = f"array reconstruction of {subtype!r} with shape {shape!r}"
            raise pickle_error(msg)
        return np._core.multiarray._reconstruct(subtype, shape, dtype)  # type: ignore[attr-defined,no-any-return]

    def empty_bytes() -> bytes:  # protocol 2 pickles b"" as bytes(); any other bytes as _codecs.encode
        return b""

    def pickle_error(msg: str) -> Exception:
        import pickle

        return pickle.UnpicklingError(msg)

    return [
        np.ndarray,
        np.dtype,
        *(getattr(np.dtypes, name) for name in _ARRAY_DTYPES),
        (reconstruct, "numpy._core.multiarray._reconstruct"),
        (reconstruct, "numpy.core.multiarray._reconstruct"),  # written by numpy < 2
        (np._core.multiarray.scalar, "numpy._core.multiarray.scalar"),  # type: ignore[attr-defined]
        (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),  # type: ignore[attr-defined]
        pd.DataFrame,
        pd.Index,
        pd.RangeIndex,
        _new_Index,
        BlockManager,
        _unpickle_block,
        slice,
        dict,
        (defaultdict_, "collections.defaultdict"),
        (empty_bytes, "builtins.bytes"),
    ]


def _restore_defaultdicts(obj: Any, made: list[tuple[dict[Any, Any], Callable[[], Any] | None]]) -> None:
    """Put back, in place, the defaultdicts that the unpickler could only fill as plain dicts."""
    if not made:
        return
    factories = {id(plain): factory for plain, factory in made}
    seen: set[int] = set()
    stack = [obj]
    while stack:
        container = stack.pop()
        if id(container) in seen:
            continue
        seen.add(id(container))
        if isinstance(container, dict):
            items: Any = list(container.items())
        elif isinstance(container, list):
            items = list(enumerate(container))
        else:
            continue
        for key, value in items:
            if isinstance(value, dict) and id(value) in factories:
                container[key] = collections.defaultdict(factories[id(value)], value)
            if isinstance(value, (dict, list)):
                stack.append(container[key])


def _check_model_dict(saved: Any, source: str, hint: str | None) -> None:
    import torch

    problem = None
    if not isinstance(saved, dict) or not set(MODEL_KEYS) <= set(saved):
        found = sorted(map(str, saved))[:10] if isinstance(saved, dict) else type(saved).__name__
        problem = f"holds {found}, not a scvi-tools model dict with keys {list(MODEL_KEYS)}"
    elif not isinstance(saved["model_state_dict"], Mapping) or not all(
        isinstance(k, str) and isinstance(v, (torch.Tensor, dict))  # scvi-tools adds an empty pyro_param_store
        for k, v in saved["model_state_dict"].items()
    ):
        problem = "has a model_state_dict that is not a mapping of names to tensors"
    elif not isinstance(saved["var_names"], np.ndarray) or saved["var_names"].ndim != 1:
        problem = "has var_names that are not a 1-D array"
    elif not isinstance(saved["attr_dict"], dict) or not isinstance(saved["attr_dict"].get("registry_"), dict):
        problem = "has an attr_dict without a registry_"
    else:
        registry = saved["attr_dict"]["registry_"]
        fields = registry.get("field_registries")
        batch = fields.get("batch") if isinstance(fields, dict) else None
        state = batch.get("state_registry") if isinstance(batch, dict) else None
        if not isinstance(registry.get("setup_args"), dict) or not isinstance(registry.get("model_name"), str):
            problem = "has a registry_ without setup_args or model_name"
        elif not (isinstance(state, dict) and isinstance(state.get("categorical_mapping"), np.ndarray)):
            problem = "has a registry_ without the batch field's categorical_mapping"
    if problem is not None:
        msg = f"{source} {problem}"
        raise UnsafeModelError(msg, hint=hint)


def _first_line(err: BaseException) -> str:
    """What the restricted unpickler refused, without torch's advice to allow-list it or to load unsafely."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    name = re.search(r"GLOBAL (\S+)", text)
    if name:
        return f"it names {name.group(1)}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:200]

"""A package's Python API loaded on first use, so that importing the package imports neither torch nor scvi-tools."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_api(package: str, api: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package`` whose public ``name`` lives in submodule ``api[name]``."""

    def __getattr__(name: str) -> Any:
        if name in api:
            return getattr(importlib.import_module(f"{package}.{api[name]}"), name)
        msg = f"module {package!r} has no attribute {name!r}"
        raise AttributeError(msg)

    def __dir__() -> list[str]:
        return sorted(api)

    return __getattr__, __dir__

"""What the coordinator and the labs both use: bundles, adapters, label statistics, crypto."""

from __future__ import annotations

from importlib import metadata

from fedarches.shared.adapters import Adapter, apply_adapters, check_reference_unchanged, extract_adapter
from fedarches.shared.bundle import BundleContents, ReferenceBundle, write_bundle
from fedarches.shared.errors import FedarchesError
from fedarches.shared.labels import LabelStatistics, compute_label_statistics

try:
    __version__ = metadata.version("fedarches")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "Adapter",
    "BundleContents",
    "FedarchesError",
    "LabelStatistics",
    "ReferenceBundle",
    "__version__",
    "apply_adapters",
    "check_reference_unchanged",
    "compute_label_statistics",
    "extract_adapter",
    "write_bundle",
]

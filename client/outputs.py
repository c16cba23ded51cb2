"""Write what a mapping produced, at the lab: annotated .h5ad, plots, adapter, label statistics.

Shared by ``fedarches-client map`` and the federated ClientApp, so that both leave the same files.
Every file is written atomically, and the ``.h5ad`` last: its presence marks a finished mapping.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedarches.shared._io import atomic_write_bytes, write_atomically

if TYPE_CHECKING:
    from anndata import AnnData

    from fedarches.client.mapping import MappingResult
    from fedarches.shared.bundle import ReferenceBundle


@dataclass(frozen=True)
class MappingOutputs:
    """Where the files go; ``None`` skips that file."""

    annotated: Path
    plots_dir: Path | None = None
    adapter: Path | None = None
    label_statistics: Path | None = None

    @classmethod
    def in_directory(cls, out_dir: Path) -> MappingOutputs:
        """The federated layout: ``annotated.h5ad``, ``plots/``, ``adapter.npz``, ``label_statistics.json``."""
        out_dir = Path(out_dir)
        return cls(
            out_dir / "annotated.h5ad", out_dir / "plots", out_dir / "adapter.npz", out_dir / "label_statistics.json"
        )


def write_mapping_outputs(
    adata: AnnData,
    result: MappingResult,
    bundle: ReferenceBundle,
    outputs: MappingOutputs,
    *,
    confidence_threshold: float,
) -> list[Path]:
    """Write every requested output; return the plot paths."""
    from fedarches.client.plots import plot_mapping

    plots = (
        plot_mapping(adata, bundle, outputs.plots_dir, confidence_threshold=confidence_threshold)
        if outputs.plots_dir is not None
        else []
    )
    if outputs.adapter is not None:
        result.adapter.save(outputs.adapter)
    if outputs.label_statistics is not None:
        payload = json.dumps(result.label_statistics.to_dict(), indent=2).encode()
        atomic_write_bytes(outputs.label_statistics, payload)
    write_atomically(outputs.annotated, lambda tmp: adata.write_h5ad(tmp, compression="gzip"))
    return plots

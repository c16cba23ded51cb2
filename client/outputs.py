"""Write what a mapping produced, at the lab: annotated .h5ad, plots, adapter, label statistics.

Shared by ``fedarches-client map`` and the federated ClientApp, so that both leave the same files.
Every file is staged beside its final path and all are moved into place together, the ``.h5ad``
last (its presence marks a finished mapping); a failure leaves none of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedarches.shared._io import staged_outputs
from fedarches.shared.errors import OutputWriteError
from fedarches.shared.paths import check_outputs

if TYPE_CHECKING:
    from anndata import AnnData

    from fedarches.client.mapping import MappingResult
    from fedarches.shared.bundle import ReferenceBundle


ROUND_FILE_NAME = "round.json"


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

    def check(self, inputs: list[Path | None], *, directory_option: str | None = None) -> None:
        """Refuse, before any work, outputs that would replace an input, clash, or cannot be written.

        ``directory_option`` names the option of the federated layout (``join --out DIR``); without
        it each output is named by its ``map`` option.
        """
        if directory_option is None:
            files = {"--out": self.annotated, "--adapter-out": self.adapter, "--stats-out": self.label_statistics}
            check_outputs(inputs, files, {"--plots-dir": self.plots_dir})
            return
        from fedarches.client.release import COUNTS_FILE_NAME

        out_dir = self.annotated.parent
        extra = (out_dir / ROUND_FILE_NAME, out_dir / COUNTS_FILE_NAME)  # kept beside them by the ClientApp
        files = {
            f"{directory_option} ({path.name})": path
            for path in (self.annotated, self.adapter, self.label_statistics, *extra)
            if path is not None
        }
        check_outputs(inputs, files, {directory_option: out_dir, f"{directory_option} (plots/)": self.plots_dir})


def write_mapping_outputs(
    adata: AnnData,
    result: MappingResult,
    bundle: ReferenceBundle,
    outputs: MappingOutputs,
    *,
    confidence_threshold: float,
    extra: dict[Path, bytes] | None = None,
) -> list[Path]:
    """Write every requested output together (all or none, the ``.h5ad`` last); return the plot paths.

    ``extra`` adds small files (path: bytes) to the same commit. A failure while writing (disk full,
    a directory made read-only meanwhile) raises :class:`OutputWriteError` and leaves no output.
    """
    from fedarches.client.plots import plot_mapping

    try:
        with staged_outputs() as staged:
            plots = []
            if outputs.plots_dir is not None:
                staging = staged.directory(outputs.plots_dir)
                plotted = plot_mapping(adata, bundle, staging, confidence_threshold=confidence_threshold)
                plots = [outputs.plots_dir / p.name for p in plotted]
            if outputs.adapter is not None:
                staged.file(outputs.adapter).write_bytes(result.adapter.to_bytes())
            if outputs.label_statistics is not None:
                payload = json.dumps(result.label_statistics.to_dict(), indent=2).encode()
                staged.file(outputs.label_statistics).write_bytes(payload)
            for path, data in (extra or {}).items():
                staged.file(path).write_bytes(data)
            adata.write_h5ad(staged.file(outputs.annotated), compression="gzip")
    except OSError as err:
        msg = f"writing the outputs failed ({err.strerror or err}); nothing was written"
        raise OutputWriteError(msg) from err
    return plots

"""Write what a mapping produced, at the lab: annotated .h5ad or .h5mu, plots, adapter, label statistics.

Shared by ``fedarches-client map`` and the federated ClientApp, so that both leave the same files.
The annotated file keeps the query's kind: an AnnData is written as ``.h5ad``, a MuData (CITE-seq,
modalities ``rna`` and ``prot``) as ``.h5mu``. Every file is staged beside its final path and all
are moved into place together, the annotated file last (its presence marks a finished mapping); a
failure leaves none of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedarches.shared._io import staged_outputs
from fedarches.shared.errors import OutputPathError, OutputWriteError
from fedarches.shared.paths import check_outputs

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

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
    def in_directory(cls, out_dir: Path, *, suffix: str = ".h5ad") -> MappingOutputs:
        """The federated layout: ``annotated.h5ad``, ``plots/``, ``adapter.npz``, ``label_statistics.json``.

        ``suffix`` is the query's (:func:`~fedarches.client.query.query_suffix`): ``annotated.h5mu`` for a MuData.
        """
        out_dir = Path(out_dir)
        annotated = out_dir / f"annotated{suffix}"
        return cls(annotated, out_dir / "plots", out_dir / "adapter.npz", out_dir / "label_statistics.json")

    def check_kind(self, query: Path, *, option: str = "--out") -> None:
        """Refuse, before anything is read, an annotated file whose suffix is not the query's (``.h5ad``/``.h5mu``).

        Raises :class:`~fedarches.shared.errors.QueryDataError` for a query that is neither kind.
        """
        from fedarches.shared.datafiles import query_suffix

        check_annotated_suffix(query_suffix(query), self.annotated, option=option)

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


def check_annotated_suffix(suffix: str, annotated: Path, *, option: str = "--out") -> None:
    """Refuse an annotated file name that does not end in ``suffix``, the query's kind (:class:`OutputPathError`)."""
    annotated = Path(annotated)
    if annotated.suffix.lower() != suffix:
        kind = "a MuData" if suffix == ".h5mu" else "an AnnData"
        msg = f"{option} {annotated} must end in {suffix}: the query is {kind}, and the annotated file keeps its kind"
        raise OutputPathError(
            msg, hint=f"give {option} a path ending in {suffix}, e.g. {annotated.with_suffix(suffix)}"
        )


def annotated_suffix(data: AnnData | MuData) -> str:
    """``".h5mu"`` for a MuData, ``".h5ad"`` for an AnnData."""
    from mudata import MuData

    return ".h5mu" if isinstance(data, MuData) else ".h5ad"


def write_annotated(data: AnnData | MuData, path: Path) -> None:
    """Write an AnnData as ``.h5ad`` or a MuData as ``.h5mu`` (gzip), as anndata and mudata do."""
    if annotated_suffix(data) == ".h5mu":
        import mudata as md

        from fedarches.shared.datafiles import quiet_mudata

        with quiet_mudata():
            md.write_h5mu(path, data, compression="gzip")
    else:
        data.write_h5ad(path, compression="gzip")


def write_mapping_outputs(
    adata: AnnData | MuData,
    result: MappingResult,
    bundle: ReferenceBundle,
    outputs: MappingOutputs,
    *,
    confidence_threshold: float,
    extra: dict[Path, bytes] | None = None,
) -> list[Path]:
    """Write every requested output together (all or none, the annotated file last); return the plot paths.

    ``adata`` is the annotated AnnData (written as ``.h5ad``) or MuData (``.h5mu``); ``outputs.annotated``
    must have that suffix (:class:`OutputPathError` before anything is written). ``extra`` adds small
    files (path: bytes) to the same commit. A failure while writing (disk full, a directory made
    read-only meanwhile) raises :class:`OutputWriteError` and leaves no output.
    """
    from fedarches.client.plots import plot_mapping

    check_annotated_suffix(annotated_suffix(adata), outputs.annotated)
    try:
        with staged_outputs() as staged:
            plots = []
            if outputs.plots_dir is not None:
                staging = staged.directory(outputs.plots_dir)
                plotted = plot_mapping(
                    adata, bundle, staging, confidence_threshold=confidence_threshold, keys=result.keys
                )
                plots = [outputs.plots_dir / p.name for p in plotted]
            if outputs.adapter is not None:
                staged.file(outputs.adapter).write_bytes(result.adapter.to_bytes())
            if outputs.label_statistics is not None:
                payload = json.dumps(result.label_statistics.to_dict(), indent=2).encode()
                staged.file(outputs.label_statistics).write_bytes(payload)
            for path, data in (extra or {}).items():
                staged.file(path).write_bytes(data)
            write_annotated(adata, staged.file(outputs.annotated))
    except OSError as err:
        msg = f"writing the outputs failed ({err.strerror or err}); nothing was written"
        raise OutputWriteError(msg) from err
    return plots

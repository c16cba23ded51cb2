"""A lab's file in, annotated files out: :func:`map_file`, what ``fedarches-client map`` and a round's ClientApp run.

It checks every path before anything is read, verifies the bundle, reads the ``.h5ad`` or
``.h5mu``, maps it with :func:`~fedarches.client.mapping.map_query`, and writes the annotated file,
plots, adapter and statistics together (all or none).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedarches.client.mapping import DEFAULT_CONFIDENCE_THRESHOLD, MappingResult, map_query
from fedarches.client.query import MIN_GENE_FRACTION
from fedarches.shared.labels import DEFAULT_MIN_COUNT

if TYPE_CHECKING:
    from fedarches.client.options import MappingOptions
    from fedarches.client.outputs import MappingOutputs
    from fedarches.shared.bundle import ReferenceBundle

__all__ = ["MappedFile", "map_file"]
log = logging.getLogger("fedarches.client")


@dataclass(frozen=True)
class MappedFile:
    """What :func:`map_file` did: the annotated data (kept in memory), the mapping's result, the plots written."""

    adata: Any
    result: MappingResult
    bundle: ReferenceBundle
    plots: list[Path]


def map_file(
    query: Path | str,
    bundle: ReferenceBundle | Path | str,
    outputs: MappingOutputs,
    *,
    trust: Path | str | None = None,
    batch_key: str | None = None,
    layer: str | None = None,
    lab_name: str = "query",
    options: MappingOptions | None = None,
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
    min_count: int = DEFAULT_MIN_COUNT,
    min_gene_fraction: float = MIN_GENE_FRACTION,
    extra: dict[Path, bytes] | None = None,
    directory_option: str | None = None,
) -> MappedFile:
    """Map the file ``query`` onto ``bundle`` and write ``outputs``; nothing is written unless all of it is.

    Parameters
    ----------
    query
        The lab's ``.h5ad`` or ``.h5mu``; it is only read.
    bundle
        An opened bundle, or its directory (then verified with ``trust``, the coordinator's key).
    outputs
        Where the annotated file (same kind as ``query``), plots, adapter and statistics go.
    batch_key, layer, lab_name, options, confidence_threshold, min_count, min_gene_fraction
        As for :func:`~fedarches.client.mapping.map_query`.
    extra
        Small files (path: bytes) written in the same commit.
    directory_option
        The option that named the output directory (``--out`` of ``join``), for error messages.

    Raises
    ------
    FedarchesError
        Outputs that would replace an input or cannot be written, a bundle that does not verify,
        a query that cannot be mapped; each before any long work where it can be known then.
    """
    from fedarches.client.outputs import write_mapping_outputs
    from fedarches.shared.bundle import ReferenceBundle
    from fedarches.shared.datafiles import read_query, rna_modality

    query = Path(query)
    inputs = [query] if isinstance(bundle, ReferenceBundle) else [query, Path(bundle)]
    inputs += [Path(trust)] if trust is not None else []
    outputs.check(inputs, directory_option=directory_option)  # before anything is read, let alone trained
    outputs.check_kind(query, option=directory_option or "--out")  # .h5ad in, .h5ad out; .h5mu in, .h5mu out
    if not isinstance(bundle, ReferenceBundle):
        bundle = ReferenceBundle.open(bundle, trust)
        log.info(
            "bundle %s verified (%s, %d genes, %d cell types)",
            bundle.bundle_id,
            bundle.model_class,
            len(bundle.var_names),
            len(bundle.label_categories),
        )
    adata = read_query(query)
    others = "".join(
        f" (+ modality {n}: {m.n_vars} features)" for n, m in getattr(adata, "mod", {}).items() if n != "rna"
    )
    log.info("query %s: %d cells x %d genes%s", query, adata.n_obs, rna_modality(adata).n_vars, others)
    result = map_query(
        adata,
        bundle,
        batch_key=batch_key,
        layer=layer,
        lab_name=lab_name,
        options=options,
        confidence_threshold=confidence_threshold,
        min_count=min_count,
        min_gene_fraction=min_gene_fraction,
    )
    plots = write_mapping_outputs(
        adata, result, bundle, outputs, confidence_threshold=confidence_threshold, extra=extra
    )
    overlap = result.gene_overlap
    log.info(
        "genes: %d/%d reference genes present (%.0f%%, matched %s to %s)",
        overlap["n_present"],
        overlap["n_reference_genes"],
        100 * overlap["fraction"],
        overlap["query_source"],
        overlap["reference_column"],
    )
    return MappedFile(adata, result, bundle, plots)

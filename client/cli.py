"""``fedarches-client``: the lab's command line. A thin layer over :mod:`fedarches.client.mapping`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedarches.shared._cli import CountsLayer, Debug, Quiet, console, handle_errors, setup_logging

app = typer.Typer(
    name="fedarches-client",
    help="Map a lab's single-cell data onto a fedarches reference bundle, locally.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
log = logging.getLogger("fedarches.client")


@app.callback()
def _main() -> None:
    """Lab-side tools of fedarches."""


@app.command("map")
def map_command(
    query: Annotated[Path, typer.Argument(help="Query .h5ad with raw counts (layers['counts'] or integer X).")],
    reference: Annotated[Path, typer.Option("--reference", "-r", help="Reference bundle directory.")],
    trust: Annotated[Path, typer.Option("--trust", help="The coordinator's bundle-signing public key (PEM).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Annotated .h5ad to write.")],
    batch_key: Annotated[
        str | None, typer.Option(help="obs column with the query's batches (default: one batch).")
    ] = None,
    layer: CountsLayer = None,
    lab_name: Annotated[str, typer.Option(help="Name of this lab's batches in the model.")] = "query",
    max_epochs: Annotated[
        int, typer.Option(min=1, help="Maximum surgery epochs (early stopping may end sooner).")
    ] = 100,
    batch_size: Annotated[int, typer.Option(min=2, help="Minibatch size.")] = 128,
    early_stopping: Annotated[bool, typer.Option(help="Stop when the validation ELBO stops improving.")] = True,
    seed: Annotated[int, typer.Option(help="Random seed (scvi.settings.seed).")] = 0,
    threads: Annotated[int | None, typer.Option(min=1, help="torch threads (default: torch's choice).")] = None,
    confidence_threshold: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Flag cells below this confidence.")
    ] = 0.5,
    min_count: Annotated[int, typer.Option(min=1, help="Suppress label counts below this (k).")] = 11,
    min_gene_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Refuse queries with fewer reference genes.")
    ] = 0.5,
    plots_dir: Annotated[Path | None, typer.Option(help="Write PNG plots here (default: beside --out).")] = None,
    adapter_out: Annotated[Path | None, typer.Option(help="Also save the adapter (.npz).")] = None,
    stats_out: Annotated[Path | None, typer.Option(help="Also save the label statistics (.json).")] = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Map QUERY onto a reference bundle with scArches surgery and write an annotated .h5ad."""
    setup_logging(quiet=quiet, debug=debug)
    with handle_errors(debug=debug):
        from fedarches.client.mapping import MappingOptions, map_query
        from fedarches.client.plots import plot_mapping
        from fedarches.client.query import read_query
        from fedarches.shared._io import atomic_write_bytes, write_atomically
        from fedarches.shared.bundle import ReferenceBundle

        bundle = ReferenceBundle.open(reference, trust)
        log.info(
            "bundle %s verified (%s, %d genes, %d cell types)",
            bundle.bundle_id,
            bundle.model_class,
            len(bundle.var_names),
            len(bundle.label_categories),
        )
        adata = read_query(query)
        log.info("query %s: %d cells x %d genes", query, adata.n_obs, adata.n_vars)
        options = MappingOptions(
            max_epochs=max_epochs,
            batch_size=batch_size,
            early_stopping=early_stopping,
            seed=seed,
            threads=threads,
            progress_bar=not quiet,
        )
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
        plots = plot_mapping(
            adata, bundle, plots_dir or out.parent / f"{out.stem}_plots", confidence_threshold=confidence_threshold
        )
        if adapter_out is not None:
            result.adapter.save(adapter_out)
        if stats_out is not None:
            atomic_write_bytes(stats_out, json.dumps(result.label_statistics.to_dict(), indent=2).encode())
        write_atomically(out, lambda tmp: adata.write_h5ad(tmp, compression="gzip"))  # last: it marks success
        overlap = result.gene_overlap
        log.info(
            "genes: %d/%d reference genes present (%.0f%%, matched %s to %s)",
            overlap["n_present"],
            overlap["n_reference_genes"],
            100 * overlap["fraction"],
            overlap["query_source"],
            overlap["reference_column"],
        )
        print_summary(adata, confidence_threshold=confidence_threshold)
        console.print(
            f"wrote [bold]{out}[/bold] ({result.n_epochs} epochs, {result.timings['total_s']:.1f} s); "
            f"plots: {', '.join(str(p) for p in plots)}"
        )
        console.print(
            f"adapter: {len(result.adapter.tensors)} tensors, {result.adapter.nbytes} bytes"
            + (f" -> {adapter_out}" if adapter_out else "")
        )


def print_summary(adata: object, *, confidence_threshold: float) -> None:
    """Print a table of predicted cell types to stdout."""
    from fedarches.shared._constants import ADATA_KEYS

    obs = adata.obs  # type: ignore[attr-defined]
    table = Table(title=f"predicted cell types ({len(obs)} cells)")
    for column in ("cell type", "cells", "share", "mean confidence", f"low confidence (< {confidence_threshold})"):
        table.add_column(column, justify="left" if column == "cell type" else "right")
    grouped = obs.groupby(ADATA_KEYS.PREDICTION, observed=True)
    for cell_type, group in grouped:
        table.add_row(
            str(cell_type),
            str(len(group)),
            f"{len(group) / len(obs):.1%}",
            f"{group[ADATA_KEYS.CONFIDENCE].mean():.3f}",
            str(int(group[ADATA_KEYS.LOW_CONFIDENCE].sum())),
        )
    Console().print(table)

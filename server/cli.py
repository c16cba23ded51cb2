"""``fedarches-server``: the atlas maintainers' command line."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from fedarches.shared._cli import CountsLayer, Debug, Quiet, console, handle_errors, setup_logging

app = typer.Typer(
    name="fedarches-server",
    help="Build and sign fedarches reference bundles (the coordinator's side).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
log = logging.getLogger("fedarches.server")

SigningKey = Annotated[Path, typer.Option("--signing-key", help="Ed25519 private key from `keygen`.")]
Out = Annotated[Path, typer.Option("--out", "-o", help="Bundle directory to write.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]


@app.callback()
def _main() -> None:
    """Coordinator-side tools of fedarches."""


@app.command()
def keygen(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for bundle-signing.key and bundle-signing.pub.")],
    overwrite: Overwrite = False,
    debug: Debug = False,
) -> None:
    """Create an Ed25519 key pair for signing reference bundles."""
    with handle_errors(debug=debug):
        from fedarches.shared.crypto import generate_signing_keys

        private, public = generate_signing_keys(out, overwrite=overwrite)
        console.print(
            f"private key: {private} (mode 0600, keep it on the coordinator)\n"
            f"public key:  {public} (give it to every lab)"
        )


@app.command("build-reference")
def build_reference_command(
    reference: Annotated[Path, typer.Argument(help="Reference atlas .h5ad with raw counts.")],
    batch_key: Annotated[str, typer.Option(help="obs column with the reference's batches.")],
    labels_key: Annotated[str, typer.Option(help="obs column with cell types (NaN = unlabeled).")],
    signing_key: SigningKey,
    out: Out,
    layer: CountsLayer = None,
    gene_symbols_key: Annotated[
        str | None, typer.Option(help="var column with gene symbols, stored beside the IDs.")
    ] = None,
    n_top_genes: Annotated[int, typer.Option(min=0, help="Highly variable genes to keep (0 = all).")] = 2000,
    n_latent: Annotated[int, typer.Option(min=2, help="Latent dimensions.")] = 10,
    max_epochs: Annotated[int | None, typer.Option(min=1, help="scVI epochs (default: scvi-tools' heuristic).")] = None,
    scanvi_max_epochs: Annotated[int, typer.Option(min=1, help="scANVI epochs.")] = 20,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Train scVI then scANVI on REFERENCE and write a signed reference bundle."""
    setup_logging(quiet=quiet, debug=debug)
    with handle_errors(debug=debug):
        from fedarches.client.query import read_query
        from fedarches.server.reference import ReferenceOptions, build_reference
        from fedarches.shared.bundle import ReferenceBundle, write_bundle
        from fedarches.shared.crypto import load_private_key

        key = load_private_key(signing_key)
        adata = read_query(reference)
        options = ReferenceOptions(
            n_latent=n_latent,
            n_top_genes=n_top_genes or None,
            max_epochs=max_epochs,
            scanvi_max_epochs=scanvi_max_epochs,
            seed=seed,
            progress_bar=not quiet,
        )
        contents = build_reference(
            adata,
            batch_key=batch_key,
            labels_key=labels_key,
            layer=layer,
            gene_symbols_key=gene_symbols_key,
            options=options,
        )
        write_bundle(out, contents, key, overwrite=overwrite)
        _report(ReferenceBundle.open(out, key.public_key()))


@app.command("import-reference")
def import_reference_command(
    model_dir: Annotated[Path, typer.Argument(help="Directory written by scvi-tools' model.save() (SCANVI or SCVI).")],
    signing_key: SigningKey,
    out: Out,
    reference_data: Annotated[
        Path | None, typer.Option(help="The reference .h5ad, to compute the reference embedding.")
    ] = None,
    gene_symbols_key: Annotated[str | None, typer.Option(help="var column with gene symbols.")] = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Wrap an existing scvi-tools model into a signed reference bundle, offline."""
    setup_logging(quiet=quiet, debug=debug)
    with handle_errors(debug=debug):
        from fedarches.client.query import read_query
        from fedarches.server.reference import import_reference
        from fedarches.shared.bundle import ReferenceBundle, write_bundle
        from fedarches.shared.crypto import load_private_key

        key = load_private_key(signing_key)
        adata = read_query(reference_data) if reference_data is not None else None
        contents = import_reference(model_dir, reference_adata=adata, gene_symbols_key=gene_symbols_key)
        if contents.embedding is None:
            log.warning("no reference data given: the bundle has no reference embedding, so labs get no X_ref_umap")
        write_bundle(out, contents, key, overwrite=overwrite)
        _report(ReferenceBundle.open(out, key.public_key()))


def _report(bundle: object) -> None:
    summary = bundle.summary()  # type: ignore[attr-defined]
    console.print(
        f"bundle [bold]{bundle.path}[/bold] id {summary['bundle_id']}: {summary['model_class']}, "  # type: ignore[attr-defined]
        f"{summary['n_genes']} genes, cell types {', '.join(summary['label_categories'])}, "
        f"{summary['size_bytes'] / 1e6:.1f} MB, signed"
    )

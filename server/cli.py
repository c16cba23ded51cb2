"""``fedarches-server``: the atlas maintainers' command line."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from fedarches.shared._cli import CountsLayer, Debug, Quiet, console, handle_errors, setup_logging
from fedarches.shared.backends import BACKENDS

app = typer.Typer(
    name="fedarches-server",
    help="The coordinator: reference bundles, the SuperLink, labs and mapping rounds.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ModelName = enum.Enum("ModelName", {name: name for name in BACKENDS}, type=str)  # type: ignore[misc]
DEFAULT_MODEL = ModelName("scanvi")
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
    reference: Annotated[
        Path, typer.Argument(help="Reference atlas .h5ad or .h5mu (modalities 'rna', 'prot') with raw counts.")
    ],
    batch_key: Annotated[str, typer.Option(help="obs column with the reference's batches.")],
    labels_key: Annotated[str, typer.Option(help="obs column with cell types (NaN = unlabeled).")],
    signing_key: SigningKey,
    out: Out,
    layer: CountsLayer = None,
    gene_symbols_key: Annotated[
        str | None, typer.Option(help="var column with gene symbols, stored beside the IDs.")
    ] = None,
    model: Annotated[
        ModelName, typer.Option(help="Model family (backend); see `fedarches-server backends`.")
    ] = DEFAULT_MODEL,
    n_top_genes: Annotated[int, typer.Option(min=0, help="Highly variable genes to keep (0 = all).")] = 2000,
    n_latent: Annotated[int, typer.Option(min=2, help="Latent dimensions.")] = 10,
    max_epochs: Annotated[
        int | None, typer.Option(min=1, help="Epochs of the unsupervised model (default: scvi-tools' heuristic).")
    ] = None,
    scanvi_max_epochs: Annotated[int, typer.Option(min=1, help="Classifier epochs (scANVI, totalANVI).")] = 20,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    threads: Annotated[
        int | None, typer.Option(min=1, help="torch threads (default: torch's choice; 1 when jobs share the cores).")
    ] = None,
    gene_programs: Annotated[
        Path | None,
        typer.Option(
            help="GMT file of gene programs (--model expimap): one latent dimension per gene set with more than "
            "12 of the reference's genes. Without it, expimap reads varm['I'] and uns['terms']."
        ),
    ] = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Train a reference model (scANVI by default) on REFERENCE and write a signed reference bundle."""
    setup_logging(quiet=quiet, debug=debug)
    with handle_errors(debug=debug):
        from fedarches.server import ReferenceOptions, build_bundle

        options = ReferenceOptions(
            model=model.value,
            n_latent=n_latent,
            n_top_genes=n_top_genes or None,
            max_epochs=max_epochs,
            scanvi_max_epochs=scanvi_max_epochs,
            seed=seed,
            progress_bar=not quiet,
            threads=threads,
            gene_programs=gene_programs,
        )
        bundle = build_bundle(
            reference,
            signing_key,
            out,
            batch_key=batch_key,
            labels_key=labels_key,
            layer=layer,
            gene_symbols_key=gene_symbols_key,
            options=options,
            overwrite=overwrite,
        )
        _report(bundle)


@app.command("import-reference")
def import_reference_command(
    model_dir: Annotated[
        Path,
        typer.Argument(
            help="Directory written by scvi-tools' model.save() (any class `backends` lists), "
            "or by the scArches package's scPoli, trVAE or expiMap model.save() (read without running its pickle)."
        ),
    ],
    signing_key: SigningKey,
    out: Out,
    reference_data: Annotated[
        Path | None, typer.Option(help="The reference .h5ad or .h5mu, to compute the reference embedding.")
    ] = None,
    labels_key: Annotated[
        str | None,
        typer.Option(
            help="obs column of --reference-data with cell types, for models that store none (totalVI, trVAE, expiMap)."
        ),
    ] = None,
    gene_symbols_key: Annotated[str | None, typer.Option(help="var column with gene symbols.")] = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Wrap an existing scvi-tools (or scArches scPoli, trVAE, expiMap) model into a signed reference bundle."""
    setup_logging(quiet=quiet, debug=debug)
    with handle_errors(debug=debug):
        from fedarches.server import import_bundle

        bundle = import_bundle(
            model_dir,
            signing_key,
            out,
            reference_data=reference_data,
            labels_key=labels_key,
            gene_symbols_key=gene_symbols_key,
            overwrite=overwrite,
        )
        _report(bundle)


def _report(bundle: object) -> None:
    summary = bundle.summary()  # type: ignore[attr-defined]
    console.print(
        f"bundle [bold]{bundle.path}[/bold] id {summary['bundle_id']}: {summary['model_class']} "  # type: ignore[attr-defined]
        f"(--model {summary['backend']}), {summary['n_genes']} genes"
        + (f", {len(summary['protein_names'])} proteins" if summary["protein_names"] else "")
        + f", cell types {', '.join(summary['label_categories'])}, "
        f"{summary['size_bytes'] / 1e6:.1f} MB, signed"
    )


@app.command("backends")
def backends_command() -> None:
    """List the model families a reference can use, with what each needs and predicts."""
    from rich.table import Table

    table = Table("--model", "model class", "latent key", "cell types", "inputs")
    for name, backend in BACKENDS.items():
        programs = " + gene programs (--gene-programs)" if backend.needs_gene_programs else ""
        table.add_row(
            name,
            f"{backend.module_path}.{backend.model_class}",
            backend.latent_key,
            backend.cell_type_call,
            " + ".join(backend.modalities) + programs,
        )
    console.print(table)


CoordDir = Annotated[Path, typer.Option("--dir", "-d", help="Coordinator directory (from `init`).")]


@app.command()
def init(
    directory: CoordDir,
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="Host name or IP labs dial; repeat for several (default: 127.0.0.1, localhost)."),
    ] = None,
    port: Annotated[int, typer.Option(help="SuperLink port (Fleet, Control and Runtime APIs).")] = 8000,
    bind: Annotated[str, typer.Option(help="Address the SuperLink listens on (0.0.0.0 for all interfaces).")] = (
        "127.0.0.1"
    ),
    overwrite: Overwrite = False,
    debug: Debug = False,
) -> None:
    """Create a coordinator directory: CA, SuperLink TLS certificate, bundle-signing key, configuration."""
    with handle_errors(debug=debug):
        from fedarches.server.coordinator import init_coordinator

        coord = init_coordinator(directory, hosts=host, port=port, bind_host=bind, overwrite=overwrite)
        console.print(
            f"coordinator directory [bold]{coord.root}[/bold]\n"
            f"  CA certificate   {coord.ca_cert} (labs receive it)\n"
            f"  SuperLink TLS    {coord.server_cert} for {', '.join(host or ['127.0.0.1', 'localhost'])}\n"
            f"  signing key      {coord.signing_key} (stays here)\n"
            f"next: `fedarches-server serve --dir {directory}` and `fedarches-server add-lab NAME --dir {directory}`"
        )


@app.command("add-lab")
def add_lab_command(
    name: Annotated[str, typer.Argument(help="Lab name (lower case, digits, - and _); prefixes its batch names.")],
    directory: CoordDir,
    public_key: Annotated[
        Path | None,
        typer.Option(help="The lab's supernode.pub (from `fedarches-client keygen`); else a key pair is made here."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Export directory (default: COORD_DIR/exports/NAME).")
    ] = (None),
    overwrite: Overwrite = False,
    debug: Debug = False,
) -> None:
    """Register a lab for node authentication and export what it needs to join."""
    with handle_errors(debug=debug):
        from fedarches.server import superlink
        from fedarches.server.coordinator import CoordinatorDir, add_lab

        coord = CoordinatorDir.open(directory)
        export = add_lab(coord, name, public_key=public_key, export_dir=out, overwrite=overwrite)
        if superlink.is_listening(coord.host, coord.port):
            node_id = superlink.register_lab(coord, name)
            registered = f"registered with the running SuperLink as node {node_id}"
        else:
            registered = "will be registered when `fedarches-server serve` starts"
        key_note = (
            "its own key (the private key never left the lab)"
            if public_key
            else "a key made here: send the export over a trusted channel, it holds supernode.key"
        )
        console.print(
            f"lab [bold]{name}[/bold] {registered}, with {key_note}\n"
            f"export: [bold]{export}[/bold] (lab.toml, ca.crt, bundle-signing.pub"
            f"{'' if public_key else ', supernode.key, supernode.pub'})\n"
            f"the lab runs: fedarches-client join --lab-dir {export} --data QUERY.h5ad --out OUT_DIR"
        )


@app.command()
def serve(directory: CoordDir, quiet: Quiet = False, debug: Debug = False) -> None:
    """Run the SuperLink (TLS, node authentication, persistent state) in the foreground until stopped."""
    setup_logging(quiet=quiet, debug=debug)
    with handle_errors(debug=debug):
        from fedarches.server.coordinator import CoordinatorDir
        from fedarches.server.service import serve as run_service
        from fedarches.shared._process import StopSignals, parent_from_env

        coord = CoordinatorDir.open(directory)

        def ready(seconds: float) -> None:
            console.print(
                f"SuperLink ready on {coord.local_address} in {seconds:.1f} s (TLS on, node authentication on); "
                f"log: {coord.logs_dir / 'superlink.log'}; Ctrl-C stops it"
            )

        # SIGTERM, SIGINT, SIGHUP: stop the SuperLink, its SuperExec and any ServerApp; exit 128 + signal
        with StopSignals("fedarches-server serve", parent_pid=parent_from_env(), adopt=True, echo=_line):
            code = run_service(coord, on_ready=ready)
        console.print("SuperLink stopped")
        raise typer.Exit(code)


@app.command("run-round")
def run_round_command(
    directory: CoordDir,
    bundle: Annotated[Path, typer.Option("--bundle", "-b", help="Signed reference bundle to map against.")],
    min_labs: Annotated[int | None, typer.Option(min=1, help="Fewest accepted labs to merge an atlas.")] = None,
    timeout: Annotated[float | None, typer.Option(min=1, help="Seconds to wait for labs' replies.")] = None,
    wait_for_labs: Annotated[
        float | None, typer.Option(min=0, help="Seconds to wait for registered labs to come online.")
    ] = None,
    max_epochs: Annotated[
        int | None, typer.Option(min=1, help="Surgery epochs at each lab (default: automatic).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of every lab's surgery.")] = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Run one mapping round through Flower (`flwr run`): labs map locally; adapters merge into a new atlas.

    SIGTERM, SIGINT (Ctrl-C) or SIGHUP cancels the round at the SuperLink and exits with 128 + signal.
    """
    setup_logging(quiet=quiet, debug=debug)
    with handle_errors(debug=debug):
        from fedarches.server.coordinator import CoordinatorDir
        from fedarches.server.service import SubmittedRound, cancel_round, follow_round, start_round
        from fedarches.shared._process import StopSignals, parent_from_env
        from fedarches.shared.errors import FederationError

        coord = CoordinatorDir.open(directory)
        submitted: SubmittedRound | None = None

        def cancel() -> str:
            return "no round had been submitted" if submitted is None else cancel_round(coord, submitted)

        stop = StopSignals(
            "fedarches-server run-round", on_stop=cancel, parent_pid=parent_from_env(), adopt=True, echo=_line
        )
        with stop:
            with stop.deferred():  # a signal while `flwr run` submits takes effect once the run id is known
                submitted = start_round(
                    coord,
                    bundle,
                    min_labs=min_labs,
                    timeout=timeout,
                    wait_for_labs=wait_for_labs,
                    max_epochs=max_epochs,
                    seed=seed,
                )
            console.print(f"round {submitted.round_id} submitted as Flower run {submitted.run_id}")
            echo = None if quiet else (lambda line: console.print(f"  [dim]{line}[/dim]", highlight=False))
            report = follow_round(coord, submitted, echo=echo)
        print_round_summary(report, submitted.round_dir)
        if report["status"] != "completed":
            raise FederationError(report["message"], hint=f"see {submitted.round_dir / 'report.html'}")


def _line(text: str) -> None:
    """One line on stderr, printed as is."""
    console.print(text, highlight=False, markup=False)


def print_round_summary(report: dict, round_dir: Path) -> None:
    """A table of labs and where the outputs are."""
    from rich.table import Table

    table = Table(title=f"round {report['round_id']}: {report['status']}")
    for column in ("lab", "status", "bytes to lab", "bytes from lab", "epochs", "ledger entry", "reason"):
        table.add_column(column, justify="left" if column in ("lab", "status", "reason") else "right")
    for lab in report["labs"]:
        table.add_row(
            lab["name"],
            lab["status"],
            str(lab["bytes_to_lab"]),
            str(lab["bytes_from_lab"]),
            "" if lab["n_epochs"] is None else str(lab["n_epochs"]),
            "" if lab.get("ledger_seq") is None else f"{lab['ledger_seq']} ({str(lab.get('ledger_head'))[:12]})",
            lab["reason"],
        )
    console.print(table)
    atlas = report["atlas"]
    if atlas:
        console.print(f"updated atlas: [bold]{atlas['path']}[/bold] (bundle {atlas['bundle_id']})")
    console.print(f"report: [bold]{round_dir / 'report.html'}[/bold] and report.json")

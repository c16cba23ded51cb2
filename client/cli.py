"""``fedarches-client``: the lab's command line. A thin layer over :mod:`fedarches.client.mapping`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedarches.client.flower_supernode import DEFAULT_POLL_S
from fedarches.client.options import MAX_SURGERY_EPOCHS, SURGERY_STEPS, MappingOptions
from fedarches.shared._cli import CountsLayer, Debug, Quiet, console, handle_errors, setup_logging
from fedarches.shared._constants import ADATA_KEYS, AnnDataKeys
from fedarches.shared.labels import DEFAULT_MIN_COUNT

app = typer.Typer(
    name="fedarches-client",
    help="Map a lab's single-cell data onto a fedarches reference bundle, locally.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
log = logging.getLogger("fedarches.client")
_DEFAULTS = MappingOptions()


@app.callback()
def _main() -> None:
    """Lab-side tools of fedarches."""


@app.command("map")
def map_command(
    query: Annotated[
        Path,
        typer.Argument(
            help="Query .h5ad or .h5mu (MuData: modality 'rna', optional 'prot') with raw counts "
            "(layers['counts'] or integer X)."
        ),
    ],
    reference: Annotated[Path, typer.Option("--reference", "-r", help="Reference bundle directory.")],
    trust: Annotated[Path, typer.Option("--trust", help="The coordinator's bundle-signing public key (PEM).")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Annotated file to write: .h5ad for an .h5ad query, .h5mu for .h5mu.")
    ],
    batch_key: Annotated[
        str | None, typer.Option(help="obs column with the query's batches (default: one batch).")
    ] = None,
    layer: CountsLayer = None,
    lab_name: Annotated[str, typer.Option(help="Name of this lab's batches in the model.")] = "query",
    max_epochs: Annotated[
        int | None,
        typer.Option(
            min=1,
            help=f"Surgery epochs (default: {MAX_SURGERY_EPOCHS}, capped near {SURGERY_STEPS:,} steps for big data).",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=2, help="Minibatch size.")] = _DEFAULTS.batch_size,
    learning_rate: Annotated[
        float, typer.Option(min=1e-6, help="Surgery learning rate (scvi-tools' tutorial: 1e-3).")
    ] = _DEFAULTS.learning_rate,
    early_stopping: Annotated[bool, typer.Option(help="Stop when the validation ELBO stops improving.")] = False,
    seed: Annotated[int, typer.Option(help="Random seed (scvi.settings.seed).")] = 0,
    threads: Annotated[int | None, typer.Option(min=1, help="torch threads (default: torch's choice).")] = None,
    confidence_threshold: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Flag cells below this confidence.")
    ] = 0.5,
    min_count: Annotated[int, typer.Option(min=1, help="Suppress label counts below this (k).")] = DEFAULT_MIN_COUNT,
    min_gene_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Refuse queries with fewer reference genes.")
    ] = 0.5,
    plots_dir: Annotated[Path | None, typer.Option(help="Write PNG plots here (default: beside --out).")] = None,
    adapter_out: Annotated[Path | None, typer.Option(help="Also save the adapter (.npz).")] = None,
    stats_out: Annotated[Path | None, typer.Option(help="Also save the label statistics (.json).")] = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Map QUERY onto a reference bundle with scArches surgery and write an annotated .h5ad or .h5mu."""
    setup_logging(quiet=quiet, debug=debug)
    with handle_errors(debug=debug):
        from fedarches.client import MappingOutputs, map_file

        outputs = MappingOutputs(
            annotated=out,
            plots_dir=plots_dir or out.parent / f"{out.stem}_plots",
            adapter=adapter_out,
            label_statistics=stats_out,
        )
        options = MappingOptions(
            max_epochs=max_epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            early_stopping=early_stopping,
            seed=seed,
            threads=threads,
            progress_bar=not quiet,
        )
        done = map_file(
            query,
            reference,
            outputs,
            trust=trust,
            batch_key=batch_key,
            layer=layer,
            lab_name=lab_name,
            options=options,
            confidence_threshold=confidence_threshold,
            min_count=min_count,
            min_gene_fraction=min_gene_fraction,
        )
        result = done.result
        print_summary(done.adata, confidence_threshold=confidence_threshold, keys=result.keys)
        console.print(
            f"wrote [bold]{out}[/bold] ({result.n_epochs} epochs, {result.timings['total_s']:.1f} s); "
            f"plots: {', '.join(str(p) for p in done.plots)}"
        )
        console.print(
            f"adapter: {len(result.adapter.tensors)} tensors, {result.adapter.nbytes} bytes"
            + (f" -> {adapter_out}" if adapter_out else "")
        )


def print_summary(adata: object, *, confidence_threshold: float, keys: AnnDataKeys = ADATA_KEYS) -> None:
    """Print a table of predicted cell types to stdout (``keys``: where the mapping wrote)."""
    obs = adata.obs  # type: ignore[attr-defined]
    table = Table(title=f"predicted cell types ({len(obs)} cells)")
    has_unknown = keys.UNKNOWN in obs
    columns = ["cell type", "cells", "share", "mean confidence", f"low confidence (< {confidence_threshold})"]
    for column in columns + (["Unknown (not in the atlas)"] if has_unknown else []):
        table.add_column(column, justify="left" if column == "cell type" else "right")
    grouped = obs.groupby(keys.PREDICTION, observed=True)
    for cell_type, group in grouped:
        row = [
            str(cell_type),
            str(len(group)),
            f"{len(group) / len(obs):.1%}",
            f"{group[keys.CONFIDENCE].mean():.3f}",
            str(int(group[keys.LOW_CONFIDENCE].sum())),
        ]
        if has_unknown:
            row.append(str(int(group[keys.UNKNOWN].sum())))
        table.add_row(*row)
    Console().print(table)


LabDirOption = Annotated[Path, typer.Option("--lab-dir", help="The lab directory from `fedarches-server add-lab`.")]
BatchKey = Annotated[str | None, typer.Option(help="obs column with the query's batches (default: one batch).")]


@app.command()
def keygen(
    lab_dir: Annotated[Path, typer.Option("--lab-dir", help="Directory for supernode.key and supernode.pub.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing key.")] = False,
    debug: Debug = False,
) -> None:
    """Create this lab's node-authentication key pair; send only supernode.pub to the maintainers."""
    with handle_errors(debug=debug):
        from fedarches.client.lab import keygen as make_keys

        public = make_keys(lab_dir, overwrite=overwrite)
        console.print(
            f"private key: {public.with_suffix('.key')} (mode 0600, never leaves this lab)\n"
            f"public key:  {public} -> send it to the atlas maintainers for "
            "`fedarches-server add-lab NAME --public-key supernode.pub`"
        )


@app.command()
def join(
    lab_dir: LabDirOption,
    data: Annotated[Path, typer.Option("--data", help="The lab's query .h5ad or .h5mu (raw counts). It never leaves.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Directory for the annotated .h5ad (.h5mu), plots, adapter.")
    ],
    superlink: Annotated[
        str | None, typer.Option("--superlink", help="SuperLink HOST:PORT (default: the address in lab.toml).")
    ] = None,
    batch_key: BatchKey = None,
    layer: CountsLayer = None,
    threads: Annotated[int | None, typer.Option(min=1, help="torch threads for surgery.")] = None,
    port: Annotated[int, typer.Option(help="Local port of the SuperNode's ClientApp API (0: any free port).")] = 0,
    egress_copy: Annotated[
        bool, typer.Option("--egress-copy", help="Keep an exact copy of every message sent, under LAB_DIR/egress/.")
    ] = False,
    extra_mods: Annotated[str, typer.Option(help="The lab's own client mods, module:attribute, comma-separated.")] = "",
    worker: Annotated[
        bool,
        typer.Option(
            help="Keep a warm local worker (scvi-tools imported, bundle verified once) that maps for each round; "
            "--no-worker maps in a fresh process per round."
        ),
    ] = True,
    poll_interval: Annotated[
        float,
        typer.Option(
            min=0.05,
            max=3.0,
            help="Seconds between the idle SuperNode's requests for a message (Flower's own: 3).",
        ),
    ] = DEFAULT_POLL_S,
    labels_key: Annotated[
        str | None,
        typer.Option(
            help="obs column with cell-type labels: with an scPoli atlas and prototypes.release in the policy, "
            "the lab contributes prototypes of the types the atlas lacks."
        ),
    ] = None,
    debug: Debug = False,
) -> None:
    """Run this lab's SuperNode: map DATA locally whenever the coordinator starts a round.

    Beside the SuperNode runs the lab's warm worker: a local process, reachable only by this user
    through LAB_DIR/worker/, that has imported scvi-tools and verified the bundle before a round asks.
    """
    setup_logging(debug=debug)
    with handle_errors(debug=debug):
        from fedarches.client import prepare_join, run_supernode

        checked = prepare_join(
            lab_dir,
            data,
            out,
            superlink=superlink,
            batch_key=batch_key,
            layer=layer,
            threads=threads,
            port=port,
            egress_copy=egress_copy,
            extra_mods=extra_mods,
            worker=worker,
            poll_interval=poll_interval,
            labels_key=labels_key,
        )
        settings, lab = checked.settings, checked.settings.lab
        console.print(
            f"lab [bold]{lab.name}[/bold]: {data} ({checked.n_cells} cells) stays here; results go to {out}; "
            f"joining {settings.superlink} (TLS, node authentication); every message sent is logged in {lab.egress_dir}"
        )
        for what, how in checked.policy_summary.items():
            console.print(f"  {what}: {how}")
        from functools import partial

        from fedarches.shared._process import StopSignals, parent_from_env

        # SIGTERM, SIGINT, SIGHUP: stop the SuperNode, its SuperExec and any ClientApp; exit 128 + signal
        line = partial(console.print, highlight=False, markup=False)
        stop = StopSignals(f"fedarches-client join ({lab.name})", parent_pid=parent_from_env(), adopt=True, echo=line)
        with stop:
            code = run_supernode(settings)
        raise typer.Exit(code)


@app.command()
def preview(
    lab_dir: LabDirOption,
    bundle: Annotated[Path, typer.Option("--bundle", "-b", help="Reference bundle directory.")],
    data: Annotated[Path, typer.Option("--data", help="The lab's query .h5ad or .h5mu.")],
    batch_key: BatchKey = None,
    layer: CountsLayer = None,
    max_epochs: Annotated[int | None, typer.Option(min=1, help="Surgery epochs (default: automatic).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    threads: Annotated[int | None, typer.Option(min=1, help="torch threads.")] = None,
    labels_key: Annotated[
        str | None, typer.Option(help="obs column with the lab's cell-type labels, as given to join.")
    ] = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Map DATA locally and print exactly what a round would send. Contacts nobody, writes nothing.

    What is released follows LAB_DIR/policy.toml, its k included, exactly as in a round.
    """
    setup_logging(quiet=quiet, debug=debug)
    with handle_errors(debug=debug):
        from fedarches.client import preview as make_preview

        shown = make_preview(
            lab_dir,
            bundle,
            data,
            batch_key=batch_key,
            layer=layer,
            max_epochs=max_epochs,
            seed=seed,
            threads=threads,
            progress_bar=not quiet,
            labels_key=labels_key,
        )
        print_policy(shown.policy, Path(lab_dir))
        print_egress(shown.description, n_cells=shown.n_cells)
        if shown.policy.dp.enabled and shown.reply.lab.composition == "plain":
            Console().print("noise above was drawn for this preview only; a round draws its own and records it")


policy_app = typer.Typer(help="The lab's privacy policy (LAB_DIR/policy.toml).", no_args_is_help=True)
app.add_typer(policy_app, name="policy")


@policy_app.command("show")
def policy_show(
    lab_dir: Annotated[Path | None, typer.Option("--lab-dir", help="Lab directory (omit with --defaults).")] = None,
    defaults: Annotated[bool, typer.Option("--defaults", help="Show the built-in defaults only.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the effective policy as JSON.")] = False,
    debug: Debug = False,
) -> None:
    """Print the effective policy: every key, its value, and whether it comes from policy.toml."""
    with handle_errors(debug=debug):
        from fedarches.shared.errors import ConfigError
        from fedarches.shared.policy import PrivacyPolicy

        if defaults:
            policy, root = PrivacyPolicy(), None
        elif lab_dir is None:
            msg = "give --lab-dir, or --defaults for the built-in policy"
            raise ConfigError(msg, hint="fedarches-client policy show --lab-dir LAB_DIR")
        else:
            root = Path(lab_dir)
            if not root.is_dir():
                msg = f"lab directory {root} does not exist"
                raise ConfigError(msg, hint="use the directory `fedarches-server add-lab` exported")
            policy = PrivacyPolicy.load(root)
        if as_json:
            typer.echo(json.dumps(policy.model_dump(), indent=2))
            return
        print_policy(policy, root)


@policy_app.command("init")
def policy_init(
    lab_dir: Annotated[Path, typer.Option("--lab-dir", help="Lab directory.")],
    debug: Debug = False,
) -> None:
    """Write LAB_DIR/policy.toml with every key at its default, documented, for the lab to edit."""
    with handle_errors(debug=debug):
        from fedarches.shared._io import atomic_write_bytes
        from fedarches.shared.errors import ConfigError
        from fedarches.shared.policy import POLICY_FILE_NAME, default_policy_toml

        target = Path(lab_dir) / POLICY_FILE_NAME
        if target.exists():
            msg = f"{target} exists"
            raise ConfigError(msg, hint="edit it, or move it away to start again from the defaults")
        atomic_write_bytes(target, default_policy_toml().encode())
        console.print(f"wrote {target}; `fedarches-client policy show --lab-dir {lab_dir}` prints the effect")


def print_policy(policy: object, lab_root: Path | None) -> None:
    """The effective policy as a table (key, value, source) and its guarantees in words."""
    from fedarches.shared.policy import POLICY_FILE_NAME, PrivacyPolicy

    assert isinstance(policy, PrivacyPolicy)
    overrides = policy.overrides()
    path = None if lab_root is None else lab_root / POLICY_FILE_NAME
    source = str(path) if path is not None and path.is_file() else "built-in defaults"
    table = Table(title=f"privacy policy ({source})")
    for column in ("key", "value", "source"):
        table.add_column(column)
    for section, values in policy.model_dump().items():
        for key, value in values.items():
            name = f"{section}.{key}"
            shown = repr(value) if isinstance(value, str) else str(value)
            table.add_row(name, shown, "policy.toml" if name in overrides else "default")
    out = Console()
    out.print(table)
    for what, how in policy.summary().items():
        out.print(f"[bold]{what}[/bold]: {how}")


@app.command()
def ledger(
    lab_dir: LabDirOption,
    as_json: Annotated[bool, typer.Option("--json", help="Every entry as JSON, payload included.")] = False,
    verify: Annotated[
        bool, typer.Option("--verify", help="Check the hash chain (and every --report); exit 34 if it was altered.")
    ] = False,
    report: Annotated[
        list[Path] | None,
        typer.Option(
            "--report",
            help="A coordinator's report.json (or a ledger receipt) whose anchor the ledger must still hold; "
            "implies --verify; repeatable.",
        ),
    ] = None,
    receipt: Annotated[
        Path | None,
        typer.Option("--receipt", help="Write a receipt of the newest entry (JSON) here, to keep outside the lab."),
    ] = None,
    debug: Debug = False,
) -> None:
    """Show every release this lab made: what, when, to whom, and the privacy budget it spent."""
    with handle_errors(debug=debug):
        from fedarches.client import ledger as ledger_mod
        from fedarches.shared.errors import ConfigError, LedgerAnchorError
        from fedarches.shared.policy import PrivacyPolicy

        root = Path(lab_dir)
        if not root.is_dir():
            msg = f"lab directory {root} does not exist"
            raise ConfigError(msg, hint="use the directory `fedarches-server add-lab` exported")
        lab = ledger_mod.lab_name_of(root)
        anchors = [ledger_mod.read_anchor(path, lab=lab) for path in report or []]
        if verify or anchors:
            book = ledger_mod.verify_lab_ledger(root, anchors)
        else:
            book = ledger_mod.open_lab_ledger(root)
        if book is None:
            console.print(f"no releases yet: {root / ledger_mod.LEDGER_FILE_NAME} does not exist")
            if receipt is not None:
                msg = "this lab's ledger holds no entry yet: there is nothing to anchor"
                raise LedgerAnchorError(msg, hint="a receipt can be written after the lab's first release")
            return
        entries = book.entries()
        if as_json:
            typer.echo(json.dumps([e.to_dict(with_payload=True) for e in entries], indent=2))
        else:
            print_ledger(entries)
            policy = PrivacyPolicy.load(root)
            eps, delta = book.spent()
            console.print(
                f"spent ε={eps:.4g} δ={delta:.3g} of the budget ε={policy.dp.budget_epsilon:g} "
                f"δ={policy.dp.budget_delta:g} ({len(entries)} releases)"
            )
        if verify or anchors:
            console.print(f"hash chain intact over {len(entries)} entries")
            for anchor in anchors:
                console.print(f"entry {anchor.seq} matches the anchor in {anchor.source}")
        if receipt is not None:
            written = ledger_mod.write_receipt(receipt, book.receipt(lab))
            seq, head = book.head()
            console.print(f"receipt for entry {seq} ({head[:12]}...) written to {written}; keep it outside the lab")


def print_ledger(entries: list) -> None:
    """One row per release (time, kind, round, mechanism, ε, δ, bytes, sha256), then where they went."""
    table = Table(title="releases (append-only ledger)")
    for column in ("#", "time (UTC)", "kind", "round", "mechanism", "ε", "δ", "bytes", "sha256"):
        table.add_column(column, justify="right" if column in ("#", "ε", "δ", "bytes") else "left", no_wrap=True)
    for e in entries:
        table.add_row(
            str(e.seq),
            e.time.replace("+00:00", "").replace("T", " "),
            e.kind,
            e.round_id,
            e.mechanism,
            f"{e.epsilon:.3g}" if e.spends_budget else "-",
            f"{e.delta:.2g}" if e.spends_budget else "-",
            str(len(e.payload)),
            e.sha256[:10],
        )
    out = Console(width=max(Console().width, 120))
    out.print(table)
    for coordinator in dict.fromkeys(e.coordinator for e in entries):
        runs = sorted({e.run_id for e in entries if e.coordinator == coordinator})
        out.print(f"to coordinator {coordinator}: Flower run(s) {', '.join(runs)}")


def print_egress(description: dict, *, n_cells: int) -> None:
    """Tables of every record a reply would carry: tensors with shapes and bytes, then every value."""
    out = Console()
    tensors = Table(title="tensors that would leave this lab")
    for column in ("record", "tensor", "shape", "dtype", "bytes"):
        tensors.add_column(column, justify="right" if column == "bytes" else "left")
    values = Table(title="values that would leave this lab")
    for column in ("record", "key", "value"):
        values.add_column(column)
    total = 0
    per_cell = []
    for record, info in description.items():
        if info["kind"] == "array":
            for name, array in info["arrays"].items():
                tensors.add_row(record, name, "x".join(map(str, array["shape"])), array["dtype"], str(array["bytes"]))
                total += array["bytes"]
                if n_cells in array["shape"]:
                    per_cell.append(f"{record}/{name}")
        elif record == "fedarches.label-stats":
            stats = json.loads(info["values"]["json"])
            values.add_row(record, "min_count (k)", str(stats["min_count"]))
            if stats.get("privacy"):
                spend = stats["privacy"]
                noise = f"{spend['mechanism']} noise, ε={spend['epsilon']:.3g} δ={spend['delta']:.2g}"
                values.add_row(record, "privacy", f"{noise}, unit {spend['unit']}")
            for t in stats["types"]:
                detail = ", ".join(f"{k}={v}" for k, v in t.items() if k != "cell_type")
                values.add_row(record, t["cell_type"], detail)
        else:
            for key, value in info["values"].items():
                if key == "slices":
                    for name, where in json.loads(value).items():
                        values.add_row(record, f"slice {name}", f"axis {where['axis']}, offset {where['offset']}")
                    continue
                shown = f"{value:.3f}" if isinstance(value, float) else str(value)
                values.add_row(record, key, shown if len(shown) < 200 else shown[:200] + "...")
    out.print(tensors)
    out.print(values)
    out.print(f"{total} bytes of tensors in all")
    if per_cell:
        out.print(f"[yellow]arrays with a dimension equal to the number of cells ({n_cells}): {per_cell}[/yellow]")
    else:
        out.print(f"no array has a dimension equal to the number of cells ({n_cells})")

"""The command line of the benchmarks: ``python -m fedarches.bench COMMAND [OPTIONS]``.

One argparse parser for every command (argparse, because some options take several values, as
``--noise-multipliers 0.03 0.1``). A command imports its module only when it runs, so ``--help`` and the
report commands need nothing heavy. The scripts the Makefile and the documents name (``scripts/bench.py``,
``scripts/eval_membership.py``, ...) are :func:`script` calls: the same options, under the script's name.

Commands (the Makefile target; the script):

* ``suite``: PBMC, then CellBench; docs/benchmarks*.md (make bench; scripts/bench.py). ``pbmc``, ``cellbench``:
  one of the two (``suite --no-cellbench``, ``suite --no-pbmc``).
* ``doc``: the benchmark documents again, from a results.json (scripts/bench_doc.py).
* ``backends``: every model backend beside plain scvi-tools (make bench-backends; scripts/bench_backends.py).
* ``unknown``: unseen-type detection and calibration on CellBench (make bench-unknown; scripts/bench_unknown.py).
* ``unknown-research build|eval``: issue 15's candidate Unknown calls (scripts/research_unknown.py).
* ``membership``: membership inference on released adapters (make privacy-eval; scripts/eval_membership.py).
* ``privacy-utility``: composition error against ε (make privacy-eval; scripts/eval_privacy_utility.py).
* ``privacy-doc``: docs/privacy.md from the evaluations' JSON (make privacy-eval; scripts/privacy_doc.py).
* ``compare``: fedarches against plain scvi-tools surgery (make compare; scripts/compare_scvi.py).
* ``latency``: a federated round's phases and CPU against central surgery (also part of ``suite``).
* ``build-threads``: ``build-reference`` on PBMC alone and beside another build, by ``--threads``.

``worker SUITE STEP SPEC.json RESULT.json`` (not listed in the help) runs one measured step in a fresh process
for :func:`fedarches.bench.runner.run_method`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedarches.bench.paths import DEMO, DOCS, OUTPUT, MissingDataError

PROG = "python -m fedarches.bench"


class UsageError(Exception):
    """Options that parse but cannot be used together; reported like a parsing error (exit status 2)."""


@dataclass(frozen=True)
class Command:
    """One command: its help, its arguments, and what it runs with the parsed options and how it was invoked."""

    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, str], None]
    listed: bool = True


# --- `make bench` ---------------------------------------------------------------------------------
def _suite_arguments(parser: argparse.ArgumentParser, *, parts: bool = True) -> None:
    flag = argparse.BooleanOptionalAction
    parser.add_argument("--out", type=Path, default=OUTPUT / "bench", help="Working directory for the run.")
    parser.add_argument(
        "--quick",
        action=flag,
        default=False,
        help="Smoke run: the first split of each PBMC section on a few cells with short training; CellBench at "
        "one depth, two settings, 1k cells, 2 labs. Its document goes to OUT/docs, not docs/.",
    )
    parser.add_argument("--doc", action=flag, default=True, help="Regenerate docs/benchmarks.md from this run.")
    parser.add_argument(
        "--resume", action=flag, default=False, help="Keep what OUT/results.json already holds; run the rest."
    )
    if parts:
        parser.add_argument("--pbmc", action=flag, default=True, help="Run the PBMC benchmark (the main one).")
        parser.add_argument("--cellbench", action=flag, default=True, help="Run the CellBench benchmark (cell lines).")


def _run_suite(args: argparse.Namespace, pbmc: bool | None = None, cellbench: bool | None = None) -> None:
    from fedarches.bench import suite

    suite.run(
        args.out,
        quick=args.quick,
        doc=args.doc,
        resume=args.resume,
        pbmc=args.pbmc if pbmc is None else pbmc,
        cellbench=args.cellbench if cellbench is None else cellbench,
    )


def _scpoli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=OUTPUT / "scpoli", help="Working directory for the run.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Seeds of the PBMC part.")
    parser.add_argument("--quick", action="store_true", help="3 epochs everywhere, no document: a smoke run.")


def _run_scpoli(args: argparse.Namespace, invoked: str) -> None:
    from fedarches.bench.scpoli import run

    run(args.out, seeds=tuple(args.seeds), quick=args.quick, invoked=invoked)


def _trvae_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=OUTPUT / "trvae", help="Working directory for the run.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="Seeds.")
    parser.add_argument("--quick", action="store_true", help="3 epochs everywhere, no document: a smoke run.")


def _run_trvae(args: argparse.Namespace, invoked: str) -> None:
    from fedarches.bench.trvae import run

    run(args.out, seeds=tuple(args.seeds), quick=args.quick, invoked=invoked)


def _run_expimap(args: argparse.Namespace, invoked: str) -> None:
    from fedarches.bench.expimap import run

    run(args.out, seeds=tuple(args.seeds), quick=args.quick, invoked=invoked)


def _expimap_arguments(parser: argparse.ArgumentParser) -> None:
    _trvae_arguments(parser)
    parser.set_defaults(out=OUTPUT / "expimap")


def _run_scgen(args: argparse.Namespace, invoked: str) -> None:
    from fedarches.bench.scgen import run

    run(args.out, seeds=tuple(args.seeds), quick=args.quick, invoked=invoked)


def _scgen_arguments(parser: argparse.ArgumentParser) -> None:
    _trvae_arguments(parser)
    parser.set_defaults(out=OUTPUT / "scgen", seeds=[0, 1, 2])


def _latency_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=OUTPUT / "latency", help="Working directory for the run.")
    parser.add_argument(
        "--doc", action=argparse.BooleanOptionalAction, default=True, help="Write docs/benchmarks_latency.md."
    )


def _run_latency(args: argparse.Namespace, _: str) -> None:
    from fedarches.bench.latency import latency

    latency(args.out, doc=args.doc)


def _build_threads_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=OUTPUT / "build-threads", help="Working directory for the run.")


def _run_build_threads(args: argparse.Namespace, _: str) -> None:
    from fedarches.bench.build_threads import build_threads

    build_threads(args.out)


def _doc_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "results",
        nargs="?",
        type=Path,
        default=OUTPUT / "bench" / "results.json",
        help="results.json of a `make bench` run (default: bench-output/bench/results.json).",
    )


def _run_doc(args: argparse.Namespace, _: str) -> None:
    from fedarches.bench.report_suite import regenerate

    if not args.results.is_file():
        msg = f"{args.results} not found: run the benchmark first (make bench)"
        raise UsageError(msg)
    regenerate(args.results)


# --- other benchmarks -----------------------------------------------------------------------------
def _backends_arguments(parser: argparse.ArgumentParser) -> None:
    flag = argparse.BooleanOptionalAction
    parser.add_argument("--out", type=Path, default=OUTPUT / "backends", help="Working directory for the run.")
    parser.add_argument("--quick", action=flag, default=False, help="Smoke run: a few hundred cells, 5 epochs.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process.")
    parser.add_argument(
        "--doc", action=flag, default=True, help="Regenerate docs/benchmarks_backends.md from this run."
    )
    parser.add_argument(
        "--resume", action=flag, default=False, help="Keep the backends OUT/results.json already holds; run the rest."
    )


def _run_backends(args: argparse.Namespace, _: str) -> None:
    from fedarches.bench import backends

    backends.run(args.out, quick=args.quick, threads=args.threads, doc=args.doc, resume=args.resume)


def _unknown_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("held_out", nargs="*", help="Cell lines to hold out in turn (default: every line).")


def _run_unknown(args: argparse.Namespace, _: str) -> None:
    from fedarches.bench import unknown

    unknown.run(args.held_out or None)


def _research_arguments(parser: argparse.ArgumentParser) -> None:
    from fedarches.bench.datasets import RESEARCH_SPLITS

    sub = parser.add_subparsers(dest="stage", required=True)
    formatter = argparse.ArgumentDefaultsHelpFormatter
    b = sub.add_parser("build", help="build references, map labs, cache results", formatter_class=formatter)
    b.add_argument("--datasets", nargs="+", default=["symphony"], choices=sorted(RESEARCH_SPLITS))
    b.add_argument("--only", nargs="+", help="split names to build")
    b.add_argument("--force", action="store_true", help="rebuild cached splits")
    e = sub.add_parser("eval", help="score every method from the caches", formatter_class=formatter)
    e.add_argument("--methods", nargs="+", help="methods for the per-split table (default: before, shipped + best 5)")


def _run_research(args: argparse.Namespace, _: str) -> None:
    from fedarches.bench import unknown_research

    if args.stage == "build":
        unknown_research.build(args.datasets, args.only, args.force)
    else:
        unknown_research.evaluate(args.methods)


def _run_compare(_args: argparse.Namespace, _: str) -> None:
    from fedarches.bench import compare

    compare.run()


# --- privacy --------------------------------------------------------------------------------------
MEMBERSHIP_NOISE = [0.03, 0.1, 0.3, 0.5, 1.0, 2.0, 4.0]


def _membership_arguments(parser: argparse.ArgumentParser) -> None:
    from fedarches.bench.datasets import DEMO_PBMC as pbmc_file
    from fedarches.bench.datasets import DEMO_PBMC_POOL_BATCH as pbmc_batch
    from fedarches.server.settings import ROUND_DEFAULTS

    parser.add_argument("--pool", default="lab_c", help="demo lab whose cells form the pool (default lab_c)")
    parser.add_argument("--data-dir", type=Path, default=DEMO, help="folder with reference.h5ad and the lab files")
    parser.add_argument("--n-models", type=int, default=16, help="models trained, each on half the pool (default 16)")
    parser.add_argument(
        "--max-epochs", type=int, default=int(ROUND_DEFAULTS["max-epochs"]), help="surgery epochs (federation default)"
    )
    parser.add_argument(
        "--noise-multipliers",
        type=float,
        nargs="+",
        default=list(MEMBERSHIP_NOISE),
        help="noise multipliers σ (noise sd σ·C) besides 'as trained' and 'clip only'",
    )
    parser.add_argument("--mc-draws", type=int, default=16, help="Monte-Carlo passes averaged per cell loss")
    parser.add_argument("--seed", type=int, default=int(ROUND_DEFAULTS["seed"]), help="base seed (splits, training)")
    parser.add_argument(
        "--pbmc",
        action="store_true",
        help=f"PBMC instead: pool = the {pbmc_batch} lab of data/demo/{pbmc_file} (430 cells), reference = its "
        "other chemistries; writes privacy_membership_pbmc.json/.png",
    )
    parser.add_argument("--out-dir", type=Path, default=DOCS, help="where the JSON and PNG go")


def _run_membership(args: argparse.Namespace, command: str) -> None:
    if args.n_models < 4:
        msg = "--n-models must be at least 4 (leave-one-out fits need IN and OUT shadows)"
        raise UsageError(msg)
    if any(s <= 0 for s in args.noise_multipliers):
        msg = "--noise-multipliers must be positive"
        raise UsageError(msg)
    from fedarches.bench import membership

    membership.run(args, command)


def _utility_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--draws", type=int, default=300)


def _run_utility(args: argparse.Namespace, _: str) -> None:
    from fedarches.bench import privacy_utility

    privacy_utility.run(args.draws)


def _run_privacy_doc(_args: argparse.Namespace, _: str) -> None:
    from fedarches.bench import report_privacy

    report_privacy.write_doc()


# --- steps in fresh processes ---------------------------------------------------------------------
def _worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", choices=("methods", "backends", "simulation"))
    parser.add_argument("step", help="the suite's step: a method, build or map, round")
    parser.add_argument("spec", type=Path)
    parser.add_argument("result", type=Path)


def _run_worker(args: argparse.Namespace, _: str) -> None:
    if args.suite == "methods":
        from fedarches.bench.methods import run_worker
    elif args.suite == "backends":
        from fedarches.bench.backends import run_worker
    else:
        from fedarches.bench.simulation import run

        run(args.spec, args.result)
        return
    run_worker(args.step, args.spec, args.result)


def _no_arguments(_parser: argparse.ArgumentParser) -> None:
    return None


COMMANDS: dict[str, Command] = {
    "suite": Command("`make bench`: PBMC, then CellBench; regenerates docs/benchmarks*.md", _suite_arguments,
                     lambda args, _: _run_suite(args)),
    "pbmc": Command("the PBMC benchmark alone (suite --no-cellbench)",
                    lambda p: _suite_arguments(p, parts=False),
                    lambda args, _: _run_suite(args, pbmc=True, cellbench=False)),
    "cellbench": Command("the CellBench benchmark alone (suite --no-pbmc)",
                         lambda p: _suite_arguments(p, parts=False),
                         lambda args, _: _run_suite(args, pbmc=False, cellbench=True)),
    "doc": Command("docs/benchmarks.md and docs/benchmarks_cellbench.md again, from a results.json",
                   _doc_arguments, _run_doc),
    "backends": Command("`make bench-backends`: every model backend beside plain scvi-tools",
                        _backends_arguments, _run_backends),
    "unknown": Command("`make bench-unknown`: unseen-type detection and calibration on CellBench",
                       _unknown_arguments, _run_unknown),
    "unknown-research": Command("issue 15's research: candidate Unknown calls on PBMC splits (build, then eval)",
                                _research_arguments, _run_research),
    "membership": Command("membership inference against released adapters (LiRA); `make privacy-eval`",
                          _membership_arguments, _run_membership),
    "privacy-utility": Command("composition error of private label statistics against ε; `make privacy-eval`",
                               _utility_arguments, _run_utility),
    "privacy-doc": Command("docs/privacy.md from the privacy evaluations' JSON", _no_arguments, _run_privacy_doc),
    "compare": Command("`make compare`: fedarches against plain scvi-tools scArches surgery",
                       _no_arguments, _run_compare),
    "latency": Command("a federated round's phases and CPU against central surgery; docs/benchmarks_latency.md",
                       _latency_arguments, _run_latency),
    "scpoli": Command("the scPoli backend on PBMC beside scArches' own, and new cell types; docs/benchmarks_scpoli.md",
                      _scpoli_arguments, _run_scpoli),
    "trvae": Command("the trVAE backend on PBMC beside scArches' own; docs/benchmarks_trvae.md",
                     _trvae_arguments, _run_trvae),
    "expimap": Command("the expiMap backend on PBMC beside scArches' own; docs/benchmarks_expimap.md",
                       _expimap_arguments, _run_expimap),
    "scgen": Command("the scGen backend on PBMC beside scArches' own; docs/benchmarks_scgen.md",
                     _scgen_arguments, _run_scgen),
    "build-threads": Command("build-reference on PBMC alone and beside another build, by --threads",
                             _build_threads_arguments, _run_build_threads),
    "worker": Command("one measured step in a fresh process", _worker_arguments, _run_worker, listed=False),
}  # fmt: skip


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The parser of every command."""
    parser = argparse.ArgumentParser(prog=prog, description="Benchmarks and evaluations of fedarches.")
    formatter = argparse.ArgumentDefaultsHelpFormatter
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        extra = {"help": command.help} if command.listed else {}
        command.arguments(sub.add_parser(name, description=command.help, formatter_class=formatter, **extra))
    return parser


def _call(parser: argparse.ArgumentParser, command: Command, args: argparse.Namespace, invoked: str) -> None:
    try:
        command.run(args, invoked)
    except (UsageError, MissingDataError) as err:
        parser.error(str(err))


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` (default: the process's arguments) and run the command."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    invoked = " ".join([Path(sys.executable).name, "-m fedarches.bench", *argv])
    _call(parser, COMMANDS[args.command], args, invoked)


def script(command: str, argv: list[str] | None = None) -> None:
    """Run ``command`` as the script ``scripts/<name>`` runs it: its options alone, under the script's name."""
    argv = sys.argv[1:] if argv is None else argv
    prog = f"scripts/{Path(sys.argv[0]).name}"
    parser = argparse.ArgumentParser(
        prog=prog, description=COMMANDS[command].help, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    COMMANDS[command].arguments(parser)
    args = parser.parse_args(argv)
    _call(parser, COMMANDS[command], args, " ".join([Path(sys.executable).name, prog, *argv]))

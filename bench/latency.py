"""What a federated round costs beyond the labs' own work, phase by phase (``python -m fedarches.bench latency``).

On the CellBench split as sequenced (the reference and the three labs of :mod:`fedarches.bench.suite`), in one
run on one machine:

1. the reference is built once with ``fedarches-server build-reference`` (every default);
2. the anchor: centralized scvi-tools surgery of the three labs (:mod:`fedarches.bench.methods`, 2 threads, one
   process: it imports scvi-tools once and maps the labs one after another);
3. two federated rounds per lab set-up, each set-up on a fresh loopback federation (TLS, node authentication,
   one torch thread per lab) whose coordinators all hold the same signing key, so that the same signed bundle
   is used throughout: the labs' first round (the bundle travels) and the next (the labs hold it, the
   coordinator has its surgery probe; what every later round against this reference costs):

   * ``shipped``: ``fedarches-client join`` as shipped (warm worker, idle SuperNode polling every 0.25 s, SuperExec
     every 0.1 s), the privacy default (composition only inside a SecAgg+ sum);
   * ``shipped, no secure sum``: the same, labs' policy ``composition = "plain"``;
   * ``before issue 17 (lab side)``: ``join --no-worker --poll-interval 3`` with Flower's SuperExec polling (1 s),
     the privacy default: each message a cold ClientApp that imports scvi-tools and verifies the bundle, as before.
     The coordinator's side (its polling, the overlapped probe) is the shipped one.

Per round it reports the wall time of ``run-round``, the round's phases (``report.json``), each SecAgg+ exchange,
each lab's handler time (message in the ClientApp or worker to reply: bundle, mapping, outputs, release) and its
CPU seconds: all of the lab's processes (``join``, worker, SuperNode, SuperExec, ClientApps; ``/proc``) over the
round, and of that the mapping's training and prediction (``cpu_s``); the rest is "outside mapping".
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import anndata as ad

from fedarches.bench.bundles import build_bundle_cli
from fedarches.bench.datasets import CELLBENCH, LABS, split_facts, write_split
from fedarches.bench.paths import DOCS
from fedarches.bench.runner import THREADS, log, run_method
from fedarches.testing.loopback import LoopbackFederation

SETUPS: dict[str, dict[str, Any]] = {
    "shipped": {"join_args": (), "env": {}, "policy": None},
    "shipped, no secure sum": {"join_args": (), "env": {}, "policy": '[release]\ncomposition = "plain"\n'},
    "before issue 17 (lab side)": {
        "join_args": ("--no-worker", "--poll-interval", "3"),
        "env": {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "1.0"},
        "policy": None,
    },
}
TARGETS = {"ratio": 1.10, "flower_s": 5.0, "flower_secure_sum_s": 12.0, "outside_cpu_share": 1 / 3}
ROUNDS = ("first round", "next round")  # the bundle travels in the first; labs hold it in the next
SECAGG_STAGES = ("setup", "share keys", "collect masked vectors", "unmask")


def two_rounds(
    workdir: Path, labs: dict[str, Path], bundle_dir: Path, key_from: LoopbackFederation | None, setup: dict
) -> dict[str, dict[str, Any]]:
    """Start a federation with ``setup``'s join options, environment and policy; run :data:`ROUNDS`; measure each."""
    fed = LoopbackFederation(workdir, threads=1, env=dict(setup["env"]), join_args=tuple(setup["join_args"]))
    if key_from is not None:  # the same signing key, so the same signed bundle verifies at these labs
        shutil.copy2(key_from.coord.signing_key, fed.coord.signing_key)
        shutil.copy2(key_from.coord.signing_public_key, fed.coord.signing_public_key)
    with fed:
        fed.start_coordinator()
        for lab, path in labs.items():
            fed.add_lab(lab, path)
            if setup["policy"]:
                (fed.labs[lab].export_dir / "policy.toml").write_text(setup["policy"])
        for lab in labs:
            fed.join(lab, wait=False)
        fed.wait_online(list(labs))
        fed.wait_workers(list(labs), timeout=180)
        rounds = {}
        for which in ROUNDS:
            time.sleep(2)  # let start-up (or the last round) settle before the CPU clock starts
            before = {lab: fed.lab_cpu_s(lab) for lab in labs}
            report = fed.run_round(bundle_dir, "--min-labs", str(len(labs)))
            after = {lab: fed.lab_cpu_s(lab) for lab in labs}
            rounds[which] = _measured(report, before, after)
    return rounds


def _measured(report: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """One round's figures from its report and the labs' CPU clocks around it."""
    runs = {}
    for entry in report["labs"]:
        name, timings = entry["name"], entry.get("timings") or {}
        used = None if before[name] is None or after[name] is None else after[name] - before[name]
        runs[name] = {
            "status": entry["status"],
            "timings": timings,
            "lab_cpu_s": used,
            "outside_mapping_cpu_s": None if used is None else used - float(timings.get("cpu_s", 0.0)),
        }
    return {
        "status": report["status"],
        "round_wall_s": report["_cli"]["wall_s"],
        "phases_s": report["phases_s"],
        "secure_sum_stages_s": report.get("secure_sum_stages_s", []),
        "runs": runs,
    }


def latency(out: Path, *, doc: bool = True) -> dict[str, Any]:
    """Run the latency benchmark into ``out`` (``results.json``); write docs/benchmarks_latency.md with ``doc``."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    started = time.monotonic()
    paths = write_split(ad.read_h5ad(CELLBENCH), None, out / "data")
    labs = {lab: paths[lab] for lab in LABS}
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "split": split_facts(paths), "rounds": {}}

    keys = LoopbackFederation(out / "keys")  # a coordinator directory only: its signing key signs the bundle
    bundle_dir = out / "reference-bundle"
    log("build-reference (every default)")
    results["reference_build_s"] = build_bundle_cli(paths["reference"], keys.coord.signing_key, bundle_dir)
    common = {"bundle": str(bundle_dir), "trust": str(keys.coord.signing_public_key),
              "labs": {k: str(v) for k, v in labs.items()}, "reference": str(paths["reference"])}  # fmt: skip
    log("centralized scvi-tools surgery (the anchor)")
    results["central"] = run_method("scvi_surgery", common, out / "central")
    for i, (name, setup) in enumerate(SETUPS.items()):
        log(f"federated round: {name}")
        for which, run in two_rounds(out / f"federation-{i}", labs, bundle_dir, keys, setup).items():
            results["rounds"][f"{name}: {which}"] = run
    results["threads"] = THREADS
    results["total_s"] = time.monotonic() - started
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    if doc:
        write_doc(results, DOCS / "benchmarks_latency.md")
    return results


# --- the document ----------------------------------------------------------------------------------
def flower_cost(run: dict[str, Any]) -> float:
    """Round wall time minus the slowest lab's handler time (its mapping as the lab does it)."""
    return run["round_wall_s"] - max(r["timings"].get("handler_s", 0.0) for r in run["runs"].values())


def phase_rows(run: dict[str, Any]) -> list[tuple[str, float, str]]:
    """The round's phases on its critical path, in order, with what each is."""
    phases, runs = run["phases_s"], run["runs"].values()
    slowest = max(runs, key=lambda r: r["timings"].get("handler_s", 0.0))["timings"]
    handler = slowest.get("handler_s", 0.0)
    stages = run["secure_sum_stages_s"]
    inside = sum(v for k, v in phases.items() if k != "surgery_probe_s")
    rows = [
        ("submit: `run-round` checks, `flwr run`, ServerApp start, report", run["round_wall_s"] - inside,
         "Flower and the coordinator"),
        ("wait for labs online", phases.get("wait_for_labs_s", 0.0), "Flower"),
        ("map exchange: slowest lab's handler", handler, "the lab's own work (mapping, outputs, release)"),
        ("  of which training and prediction", slowest.get("train_s", 0.0) + slowest.get("predict_s", 0.0), "lab"),
        ("map exchange: the rest", phases.get("train_s", 0.0) - handler,
         "Flower: SuperNode poll, bundle transfer, app install, ClientApp start, reply"),
    ]  # fmt: skip
    rows += [(f"secure sum: {SECAGG_STAGES[i] if i < 4 else i}", s, "Flower (a ClientApp per lab)")
             for i, s in enumerate(stages)]  # fmt: skip
    probe = phases.get("surgery_probe_s", 0.0)
    rows += [("merge", phases.get("merge_s", 0.0), "coordinator"),
             ("surgery probe (overlaps the map exchange)", probe, "coordinator")]  # fmt: skip
    return rows


def write_doc(results: dict[str, Any], path: Path) -> None:
    """docs/benchmarks_latency.md from ``results``."""
    central = results["central"]["wall_s"]
    rounds = results["rounds"]
    lines = [
        "# Round latency: a federated round against the same labs mapped centrally",
        "",
        f"`python -m fedarches.bench latency` ({results['date']}; the CellBench split as sequenced, "
        f"{_cells(results)}). Everything runs on one "
        "2-core machine: the coordinator, the three labs (one torch thread each) and the anchor (2 threads). "
        "See `fedarches/bench/latency.py` for what each set-up is.",
        "",
        f"Anchor: centralized scvi-tools surgery of the three labs, **{central:.1f} s** (one process; "
        "it imports scvi-tools once). Reference built in "
        f"{results['reference_build_s']:.1f} s.",
        "",
        "| set-up | round wall | round / central | Flower's cost | slowest lab's handler | "
        "per-lab CPU outside mapping (mean) | status |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, run in rounds.items():
        handler = max(r["timings"].get("handler_s", 0.0) for r in run["runs"].values())
        lines.append(
            f"| {name} | {run['round_wall_s']:.1f} s | {run['round_wall_s'] / central:.2f} | "
            f"{flower_cost(run):.1f} s | {handler:.1f} s | {_s(_mean_outside(run))} | {run['status']} |"
        )
    lines += ["", "## Targets", "", "| target | round | measured | verdict |", "|---|---|---|---|"]
    for which in ROUNDS:
        lines += _target_rows(rounds, which, central)
    lines += ["", READING]
    for name, run in rounds.items():
        lines += ["", f"## Phases: {name}", "", "| phase | seconds | whose |", "|---|---|---|"]
        lines += [f"| {what} | {seconds:.1f} | {whose} |" for what, seconds, whose in phase_rows(run)]
        lines += ["", "| lab | handler | mapping (map_query) | training | CPU, all lab processes | of which mapping | "
                  "outside mapping |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for lab, r in run["runs"].items():
            t = r["timings"]
            seconds = [t.get(k) for k in ("handler_s", "total_s", "train_s")]
            lines.append(
                f"| {lab} | {' | '.join(_s(v) for v in seconds)} | {_s(r['lab_cpu_s'])} | {_s(t.get('cpu_s'))} "
                f"| {_s(r['outside_mapping_cpu_s'])} |"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


READING = """**Reading the tables.** *Flower's cost* is the round's wall time minus the slowest lab's handler time (the
lab's own work: bundle verification, mapping, writing the outputs, the release). *CPU outside mapping* is everything
the lab's processes spent during the round except the training and prediction of its mapping. On this machine the
three labs and the coordinator share two cores, so the labs' mapping, one torch thread each, is itself slower than
the anchor's. What is left once the lab's work is warm is Flower's shape: each message still starts a fresh
`flwr-clientapp` process per lab (about 1.1 CPU-seconds of Python start and imports, 1.0 of them Flower's own,
`flwr.supernode.cli` loading the SuperNode's web stack), and the privacy default's SecAgg+ sum is four such exchanges
in a row, each waiting for every lab. Flower 1.41 offers neither a long-lived ClientApp nor SecAgg+ in fewer
exchanges; `fedarches.server.secure_sum` uses Flower's own workflow, not a copy of it."""


def _target_rows(rounds: dict[str, Any], which: str, central: float) -> list[str]:
    """The targets table's rows for the rounds of kind ``which``."""
    lines: list[str] = []
    shipped, plain = rounds.get(f"shipped: {which}"), rounds.get(f"shipped, no secure sum: {which}")
    before = rounds.get(f"before issue 17 (lab side): {which}")
    if shipped:
        ratio = shipped["round_wall_s"] / central
        lines.append(f"| round / central <= {TARGETS['ratio']:.2f}, privacy default | {which} | {ratio:.2f} | "
                     f"{_verdict(ratio <= TARGETS['ratio'])} |")  # fmt: skip
        cost = flower_cost(shipped)
        lines.append(f"| Flower's cost <= {TARGETS['flower_secure_sum_s']:.0f} s with the secure sum | {which} | "
                     f"{cost:.1f} s | {_verdict(cost <= TARGETS['flower_secure_sum_s'])} |")  # fmt: skip
    if plain:
        cost = flower_cost(plain)
        lines.append(f"| Flower's cost <= {TARGETS['flower_s']:.0f} s without the secure sum | {which} | "
                     f"{cost:.1f} s | {_verdict(cost <= TARGETS['flower_s'])} |")  # fmt: skip
    if shipped and before:
        now, then = _mean_outside(shipped), _mean_outside(before)
        if now is not None and then:
            share = now / then
            lines.append(f"| per-lab CPU outside mapping <= 1/3 of before | {which} | {now:.1f} s / {then:.1f} s = "
                         f"{share:.2f} | {_verdict(share <= TARGETS['outside_cpu_share'])} |")  # fmt: skip
    return lines


def _cells(results: dict[str, Any]) -> str:
    n = results["split"]["n_cells"]
    return ", ".join(f"{k} {v} cells" for k, v in n.items())


def _mean_outside(run: dict[str, Any]) -> float | None:
    values = [r["outside_mapping_cpu_s"] for r in run["runs"].values() if r["outside_mapping_cpu_s"] is not None]
    return sum(values) / len(values) if values else None


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"

"""`make bench`: fedarches against centralized scvi-tools surgery, de novo scANVI, PCA baselines and CellTypist.

Everything is measured in one run on real cells in ../shared/data; ``docs/benchmarks.md`` plus its plots are
regenerated from the run's ``results.json`` (:mod:`fedarches.bench.report_suite`, which also keeps the results
beside the document as ``docs/benchmarks_results.json``; a ``--quick`` run writes its document to ``OUT/docs``
instead). Two benchmarks, in order:

**PBMC (real tissue, the main benchmark).** Per split, in fresh processes: fedarches' default mapping
(``map_query``), centralized scvi-tools surgery, de novo scVI + scANVI, kNN and logistic regression on PCA,
CellTypist (trained on the reference, plain and with majority voting); where the split says so, a federated
round on loopback too. Splits (:func:`fedarches.bench.datasets.pbmc_splits`):

* chemistry: ``symphony_pbmc_3chem``, reference = two 10x chemistries, lab = the third (3 splits, with rounds);
* held-out type: the same, with one of B, NK, Mono_CD16, T_CD8 left out of the reference (12 splits);
* fine T subsets: ``zheng_sorted_pbmc3500``, reference = a seeded random half of each sorted type, lab = the rest;
* donors: ``kang_ctrl_5donors``, reference = a seeded random 20 % of each donor's cells of each type, five labs
  = each donor's other cells, one round with the five labs.

**CellBench (cell lines, the second benchmark)**, on ``cellbench_lung_celllines.h5ad`` (``--no-pbmc`` runs it alone):

1. Accuracy (three depths of the same real cells: as sequenced, and binomially thinned to about 2,000 and
   500 UMIs per cell). Reference = CEL-seq2 5-line plates p1 + p2 without H838 (the held-out type);
   lab_a = dropseq_3cl, lab_b = celseq2_3cl, lab_c = celseq2_5cl_p3 (holds 64 H838 cells). Per depth:
   (a) a federated round on loopback: `fedarches-server serve`, three `fedarches-client join`, one
       `fedarches-server run-round` with every default (privacy policy included), 1 torch thread per lab;
   (b) centralized scvi-tools surgery (its scArches tutorial settings), 2 threads, one process;
   (c) de novo scVI + scANVI on reference and all queries, 2 threads; (d) PCA + kNN / logistic regression;
   (e) CellTypist; (f) the surgery settings sweep: fedarches' mapping under each candidate setting.
2. Query size: 1k, 10k and 100k cells resampled from the three labs' 2,000-UMI cells (with replacement,
   each copy thinned again by a factor drawn from U(0.5, 1)), mapped by one lab process with 2 threads;
   scvi-tools' tutorial surgery beside it up to 10k.
3. Number of labs: 2, 4 and 8 SuperNodes on loopback, each lab 250 resampled cells, one round each; then
   8, 16 and 32 labs in Flower's simulation engine (:mod:`fedarches.bench.simulation`, Ray actors on 2 CPUs).
4. Integration metrics (scib-metrics, CPU jax) of each method's query latent, when it is installed.

    python -m fedarches.bench suite [--out bench-output/bench] [--quick] [--resume] [--no-pbmc | --no-cellbench]
                                                                             (make bench: scripts/bench.py)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np

from fedarches.bench.bundles import build_bundle_cli
from fedarches.bench.datasets import (
    CELLBENCH,
    LABS,
    Split,
    cell_types,
    pbmc_splits,
    split_facts,
    write_pbmc_split,
    write_split,
)
from fedarches.bench.federated import federated
from fedarches.bench.paths import DOCS, SHARED_DATA, MissingDataError
from fedarches.bench.runner import THREADS, log, run_method, start_run, worker_command
from fedarches.client.options import SURGERY_STEPS
from fedarches.shared.evaluation import resample_cells

DEPTHS: dict[str, float | None] = {"as sequenced": None, "2,000 UMI": 2000.0, "500 UMI": 500.0}
SCALING_DEPTH = "2,000 UMI"
QUERY_SIZES = (1_000, 10_000, 100_000)
SCVI_SIZES = (1_000, 10_000)  # the tutorial's 100 epochs at 100k cells would take hours on 2 cores
LAB_COUNTS = (2, 4, 8)
SIMULATED_LAB_COUNTS = (8, 16, 32)
CELLS_PER_SCALED_LAB = 250
# Candidate surgery settings (MappingOptions fields) for the speed sweep; "default" is MappingOptions().
SWEEP = {
    f"default: tutorial, capped at ~{SURGERY_STEPS:,} steps": {},
    "tutorial: 100 epochs, lr 1e-3": {"max_epochs": 100, "learning_rate": 1e-3},
    "early stopping, lr 1e-3": {"max_epochs": 100, "learning_rate": 1e-3, "early_stopping": True},
    "~100 steps, lr 1e-2": {"surgery_steps": 100, "learning_rate": 1e-2},
    "~40 steps, lr 1e-2": {"surgery_steps": 40, "learning_rate": 1e-2},
    "~100 steps, lr 1e-3": {"surgery_steps": 100},
    "~100 steps, batch 512, lr 1e-2": {"surgery_steps": 100, "batch_size": 512, "learning_rate": 1e-2},
}
BASELINE_SETTING = "tutorial: 100 epochs, lr 1e-3"

CENTRAL_METHODS = {  # fedarches.bench.methods method: what the log calls it
    "scvi_surgery": "centralized scvi-tools surgery",
    "de_novo": "de novo scANVI",
    "baseline": "PCA baselines",
    "celltypist": "CellTypist",
}
QUICK_EPOCHS = 10
QUICK_BUILD_ARGS = ("--max-epochs", "20", "--scanvi-max-epochs", "5")
QUICK_ROUND_ARGS = ("--max-epochs", str(QUICK_EPOCHS))
QUICK_SPECS = {
    "fedarches": {"options": {"max_epochs": QUICK_EPOCHS}},
    "scvi_surgery": {"max_epochs": QUICK_EPOCHS},
    "de_novo": {"max_epochs": QUICK_EPOCHS, "scanvi_epochs": 2},
}


# --- the benchmark --------------------------------------------------------------------------------
def compare_methods(
    entry: dict[str, Any],
    common: dict[str, Any],
    workdir: Path,
    tag: str,
    extra: dict[str, dict] | None = None,
    methods: dict[str, str] = CENTRAL_METHODS,
) -> None:
    """Each of ``methods`` (:data:`CENTRAL_METHODS`) on one split, in a fresh process each, into ``entry``."""
    for method, what in methods.items():
        log(f"[{tag}] {what}")
        entry[method] = run_method(method, {**common, **(extra or {}).get(method, {})}, workdir / method)


def surgery_sweep(sweep: dict[str, dict], common: dict[str, Any], workdir: Path, tag: str) -> dict[str, Any]:
    """The fedarches mapping under each surgery setting of ``sweep`` (MappingOptions fields), a fresh process each."""
    runs: dict[str, Any] = {}
    for setting, options in sweep.items():
        log(f"[{tag}] surgery setting {setting!r}")
        runs[setting] = run_method("fedarches", {**common, "options": options}, workdir / f"sweep-{len(runs)}")
    return runs


def accuracy_section(
    data: ad.AnnData, out: Path, depths: dict[str, float | None], sweep: dict[str, dict], results: dict, save: Any
) -> dict:
    """Fill ``results`` depth by depth (skipping depths it already holds), calling ``save`` after each."""
    for name, depth in depths.items():
        if name in results:
            continue
        vdir = out / "accuracy" / name.replace(",", "").replace(" ", "-")
        paths = write_split(data, depth, vdir / "data")
        labs = {lab: paths[lab] for lab in LABS}
        entry: dict[str, Any] = {"depth": depth, **split_facts(paths)}
        log(f"[{name}] federated round (3 labs on loopback)")
        entry["federated"] = federated(paths["reference"], vdir / "federation", labs, vdir / "federated-latents.npz")
        common = {"bundle": entry["federated"]["bundle_dir"], "trust": entry["federated"]["trust"],
                  "labs": {k: str(v) for k, v in labs.items()}, "reference": str(paths["reference"])}  # fmt: skip
        compare_methods(entry, common, vdir, name)
        entry["sweep"] = surgery_sweep(sweep, common, vdir, name)
        results[name] = entry
        save()
    return results


def pbmc_split(
    split: Split,
    data: ad.AnnData,
    sdir: Path,
    tag: str,
    *,
    quick: bool,
    sweep: dict[str, dict] | None = None,
    threads: int = THREADS,
    methods: dict[str, str] = CENTRAL_METHODS,
) -> dict[str, Any]:
    """Every method on one PBMC split, in a fresh ``sdir``.

    Also a federated round where ``split.federated``, and the surgery settings ``sweep`` if given. ``threads``:
    torch threads of each step (the round's labs have one each); ``methods``: the central methods to run.
    """
    tick = time.monotonic()
    shutil.rmtree(sdir, ignore_errors=True)  # what an interrupted run left of this split
    paths = write_pbmc_split(split, data, sdir / "data", quick=quick)
    labs = {lab: paths[lab] for lab in split.labs}
    entry: dict[str, Any] = {
        "data": split.data,
        "held_out": split.held_out,
        "lab_batches": dict(split.labs),
        "reference_batches": sorted(set(ad.read_h5ad(paths["reference"], backed="r").obs["batch"].astype(str))),
        "reference_types": cell_types(paths["reference"]),
        "lab_types": {lab: cell_types(path) for lab, path in labs.items()},
        **split_facts(paths),
    }
    build_args = QUICK_BUILD_ARGS if quick else ()
    if split.federated:
        log(f"[{tag}] federated round ({len(labs)} lab{'s' * (len(labs) > 1)} on loopback)")
        entry["federated"] = federated(
            paths["reference"], sdir / "federation", labs, build_args=build_args,
            round_args=QUICK_ROUND_ARGS if quick else (), threads=threads,
        )  # fmt: skip
        bundle_dir, trust = entry["federated"]["bundle_dir"], entry["federated"]["trust"]
        entry["reference_build_s"] = entry["federated"]["reference_build_s"]
    else:
        from fedarches.shared.crypto import generate_signing_keys

        log(f"[{tag}] reference bundle")
        signing_key, public_key = generate_signing_keys(sdir / "keys", overwrite=True)
        bundle_dir, trust = sdir / "reference-bundle", public_key
        entry["reference_build_s"] = build_bundle_cli(
            paths["reference"], signing_key, bundle_dir, build_args, threads=threads
        )
    common = {"bundle": str(bundle_dir), "trust": str(trust), "labs": {k: str(v) for k, v in labs.items()},
              "reference": str(paths["reference"]), "threads": threads}  # fmt: skip
    log(f"[{tag}] fedarches mapping (map_query, every default)")
    entry["fedarches"] = run_method("fedarches", {**common, **QUICK_SPECS["fedarches"]} if quick else common,
                                    sdir / "fedarches")  # fmt: skip
    compare_methods(entry, common, sdir, tag, QUICK_SPECS if quick else None, methods)
    if sweep:
        entry["sweep"] = surgery_sweep(sweep, common, sdir, tag)
    entry["split_s"] = time.monotonic() - tick
    return entry


def pbmc_section(out: Path, results: dict[str, Any], save: Any, *, quick: bool) -> dict[str, Any]:
    """Fill ``results[section][split]`` for every PBMC split it does not hold yet, calling ``save`` after each."""
    data: dict[str, ad.AnnData] = {}
    for section, splits in pbmc_splits(quick).items():
        done = results.setdefault(section, {})
        for name, split in splits.items():
            if name in done:
                continue
            if split.data not in data:
                data[split.data] = ad.read_h5ad(SHARED_DATA / split.data)
            sdir = out / "pbmc" / section / name.replace(",", "").replace("'", "").replace(" ", "-")
            sweep = (dict(list(SWEEP.items())[:2]) if quick else SWEEP) if section == "chemistry" else None
            done[name] = pbmc_split(split, data[split.data], sdir, f"{section}: {name}", quick=quick, sweep=sweep)
            save()
    return results


def query_size_section(depth_entry_dir: Path, bundle: str, trust: str, out: Path, sizes: tuple[int, ...]) -> dict:
    """Queries of each size resampled from the labs' cells, mapped by fedarches (and scvi-tools up to 10k)."""
    pool = ad.concat([ad.read_h5ad(depth_entry_dir / f"{lab}.h5ad") for lab in LABS], index_unique="-")
    results: dict[str, Any] = {}
    for n in sizes:
        path = out / "query-size" / f"query-{n}.h5ad"
        path.parent.mkdir(parents=True, exist_ok=True)
        resample_cells(pool, n, np.random.default_rng(n)).write_h5ad(path)  # not kept in this process
        spec = {"bundle": bundle, "trust": trust, "labs": {f"q{n}": str(path)}}
        log(f"[query size {n:,}] fedarches default mapping")
        entry = {"query_h5ad_bytes": path.stat().st_size}
        entry["fedarches"] = run_method("fedarches", spec, out / "query-size" / f"fed-{n}")
        if n in SCVI_SIZES:
            log(f"[query size {n:,}] scvi-tools tutorial surgery")
            entry["scvi_surgery"] = run_method("scvi_surgery", spec, out / "query-size" / f"scvi-{n}")
        results[str(n)] = entry
        path.unlink()
    return results


def lab_count_section(split_dir: Path, out: Path, counts: tuple[int, ...]) -> dict:
    """One round on loopback per number of labs, each lab :data:`CELLS_PER_SCALED_LAB` resampled cells."""
    pool = ad.concat([ad.read_h5ad(split_dir / f"{lab}.h5ad") for lab in LABS], index_unique="-")
    results: dict[str, Any] = {}
    for n_labs in counts:
        wdir = out / "lab-count" / f"labs-{n_labs}"
        labs = {}
        for i in range(n_labs):
            labs[f"lab{i:02d}"] = wdir / "data" / f"lab{i:02d}.h5ad"
            labs[f"lab{i:02d}"].parent.mkdir(parents=True, exist_ok=True)
            resample_cells(pool, CELLS_PER_SCALED_LAB, np.random.default_rng(1000 + i)).write_h5ad(labs[f"lab{i:02d}"])
        log(f"[{n_labs} labs] federated round")
        entry = federated(split_dir / "reference.h5ad", wdir / "federation", labs)
        results[str(n_labs)] = entry
    return results


def simulation_section(split_dir: Path, bundle: str, trust: str, out: Path, counts: tuple[int, ...]) -> dict:
    """Rounds of 8 to 32 labs in Flower's simulation engine (:mod:`fedarches.bench.simulation`), Ray on 2 CPUs."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return {"skipped": "Flower's simulation engine needs flwr[simulation] (pip install '.[bench]')"}
    from fedarches.shared.crypto import generate_signing_keys

    pool = ad.concat([ad.read_h5ad(split_dir / f"{lab}.h5ad") for lab in LABS], index_unique="-")
    wdir = out / "simulation"
    signing_key, _ = generate_signing_keys(wdir / "keys")
    labs = []
    for i in range(max(counts)):
        labs.append(wdir / "data" / f"lab{i:03d}.h5ad")
        labs[-1].parent.mkdir(parents=True, exist_ok=True)
        resample_cells(pool, CELLS_PER_SCALED_LAB, np.random.default_rng(1000 + i)).write_h5ad(labs[-1])
    results: dict[str, Any] = {}
    for n_labs in counts:
        log(f"[{n_labs} labs] Flower simulation engine")
        run_dir = wdir / f"labs-{n_labs}"
        run_dir.mkdir(parents=True, exist_ok=True)
        spec = {"labs": [str(p) for p in labs[:n_labs]], "bundle": bundle, "trust": trust, "cpus": THREADS,
                "signing_key": str(signing_key), "workdir": str(run_dir)}  # fmt: skip
        (run_dir / "spec.json").write_text(json.dumps(spec, indent=1))
        tick = time.monotonic()
        done = subprocess.run(
            worker_command("simulation", "round", str(run_dir / "spec.json"), str(run_dir / "result.json")),
            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "RAY_DEDUP_LOGS": "0"},
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        (run_dir / "log.txt").write_text(done.stdout + done.stderr)
        if done.returncode != 0 or not (run_dir / "result.json").is_file():
            results[str(n_labs)] = {"failed": f"exit {done.returncode}; see {run_dir / 'log.txt'}"}
            continue
        results[str(n_labs)] = {**json.loads((run_dir / "result.json").read_text()), "wall_s": time.monotonic() - tick}
    return results


def integration_section(results: dict[str, Any], out: Path) -> dict[str, Any]:
    """scib-metrics over each method's query latent (labs as batches, true types as labels)."""
    try:
        import scib_metrics  # noqa: F401
    except ImportError:
        return {"skipped": "scib-metrics is not installed (pip install '.[bench]')"}
    spec = {"variants": {}}
    for name in results:
        vdir = out / "accuracy" / name.replace(",", "").replace(" ", "-")
        spec["variants"][name] = {
            "labs": {lab: str(vdir / "data" / f"{lab}.h5ad") for lab in LABS},
            "latents": {
                "fedarches (federated)": str(vdir / "federated-latents.npz"),
                "scvi-tools surgery": str(vdir / "scvi_surgery" / "result-latents.npz"),
                "de novo scANVI": str(vdir / "de_novo" / "result-latents.npz"),
                "PCA baseline": str(vdir / "baseline" / "result-latents.npz"),
            },
        }
    log("integration metrics (scib-metrics)")
    return run_method("integration", spec, out / "integration")


def cellbench_section(out: Path, results: dict[str, Any], save: Any, *, quick: bool) -> None:
    """The CellBench benchmark (cell lines): accuracy by depth, query size, number of labs, integration."""
    data = ad.read_h5ad(CELLBENCH)
    depths = dict(list(DEPTHS.items())[:1]) if quick else DEPTHS
    sweep = dict(list(SWEEP.items())[:2]) if quick else SWEEP
    accuracy_section(data, out, depths, sweep, results.setdefault("accuracy", {}), save)
    scaling_name = SCALING_DEPTH if SCALING_DEPTH in depths else next(iter(depths))
    scaling_entry = results["accuracy"][scaling_name]
    split_dir = out / "accuracy" / scaling_name.replace(",", "").replace(" ", "-") / "data"
    bundle_dir, trust = scaling_entry["federated"]["bundle_dir"], scaling_entry["federated"]["trust"]
    if "query_size" not in results:
        results["query_size"] = query_size_section(
            split_dir, bundle_dir, trust, out, QUERY_SIZES[:1] if quick else QUERY_SIZES
        )
        save()
    if "lab_count" not in results:
        results["lab_count"] = lab_count_section(split_dir, out, LAB_COUNTS[:1] if quick else LAB_COUNTS)
        save()
    if "simulation" not in results:
        counts = SIMULATED_LAB_COUNTS[:1] if quick else SIMULATED_LAB_COUNTS
        results["simulation"] = simulation_section(split_dir, bundle_dir, trust, out, counts)
        save()
    if "latency" not in results and not quick:  # a round's phases, side by side with the central anchor
        from fedarches.bench.latency import latency

        results["latency"] = latency(out / "latency", doc=True)
        save()
    if "variants" not in results.get("integration", {}):
        try:
            results["integration"] = integration_section(results["accuracy"], out)
        except RuntimeError as err:  # optional metrics: report the failure in the doc rather than lose the run
            results["integration"] = {"skipped": f"scib-metrics failed: {str(err).splitlines()[0]}"}
        save()


def run(
    out: Path, *, quick: bool = False, doc: bool = True, resume: bool = False, pbmc: bool = True, cellbench: bool = True
) -> dict[str, Any]:
    """The whole benchmark into ``out``; then its tables printed and, with ``doc``, its documents written.

    ``quick``: a smoke run (its document goes to ``OUT/docs``); ``resume``: keep what ``OUT/results.json``
    holds; ``pbmc``, ``cellbench``: which benchmarks to run. Returns the results.
    """
    from fedarches.bench.report_suite import print_tables, write_doc

    needed = [SHARED_DATA / s.data for splits in pbmc_splits().values() for s in splits.values()] if pbmc else []
    missing = sorted({str(p) for p in [*needed, *([CELLBENCH] if cellbench else [])] if not p.is_file()})
    if missing:
        msg = f"{', '.join(missing)} not found: the benchmark reads the data beside the project"
        raise MissingDataError(msg)
    out = out.resolve()
    results_path = out / "results.json"
    results, started = start_run(out, resume=resume, quick=quick, threads=THREADS)

    def save() -> None:  # after every step, so a failure late in the run keeps what was measured
        results["total_s"] = time.monotonic() - started
        results_path.write_text(json.dumps(results, indent=1))

    if pbmc:
        pbmc_section(out, results.setdefault("pbmc", {}), save, quick=quick)
    if cellbench:
        cellbench_section(out, results, save, quick=quick)
    save()
    log(f"results: {results_path} ({results['total_s'] / 60:.1f} min)")
    print_tables(results)
    if doc:
        write_doc(results, out / "docs" if results["quick"] else DOCS)
    return results

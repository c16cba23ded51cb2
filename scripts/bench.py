"""`make bench`: fedarches against centralized scvi-tools surgery, de novo scANVI, PCA baselines and CellTypist.

Everything is measured in one run on real cells in ../shared/data, and ``docs/benchmarks.md`` plus its plots
are regenerated from ``results.json`` (``scripts/bench_doc.py``; a ``--quick`` run writes its document to
``OUT/docs`` instead). Two benchmarks, in order:

**PBMC (real tissue, the main benchmark).** Per split, in fresh processes: fedarches' default mapping
(``map_query``), centralized scvi-tools surgery, de novo scVI + scANVI, kNN and logistic regression on PCA,
CellTypist (trained on the reference, plain and with majority voting); where the split says so, a federated
round on loopback too. Splits (:func:`pbmc_splits`):

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
   8, 16 and 32 labs in Flower's simulation engine (``scripts/bench_simulation.py``, Ray actors on 2 CPUs).
4. Integration metrics (scib-metrics, CPU jax) of each method's query latent, when it is installed.

    .venv/bin/python scripts/bench.py [--out bench-output/bench] [--quick] [--resume] [--no-pbmc | --no-cellbench]
                                                                                        (make bench)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anndata as ad
import numpy as np
import typer

from fedarches.shared._process import own_executable
from fedarches.shared.bundle import ReferenceBundle
from fedarches.shared.evaluation import resample_cells, thin_to_depth
from fedarches.testing.loopback import LoopbackFederation

sys.path.insert(0, str(Path(__file__).parent))
from bench_methods import fedarches_calls, scores

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT.parent / "shared" / "data"
DATA = DATA_DIR / "cellbench_lung_celllines.h5ad"
METHODS_SCRIPT = Path(__file__).with_name("bench_methods.py")
REFERENCE_BATCHES = ("celseq2_5cl_p1", "celseq2_5cl_p2")
LABS = {"lab_a": "dropseq_3cl", "lab_b": "celseq2_3cl", "lab_c": "celseq2_5cl_p3"}
HELD_OUT = "H838"
DEPTHS: dict[str, float | None] = {"as sequenced": None, "2,000 UMI": 2000.0, "500 UMI": 500.0}
SCALING_DEPTH = "2,000 UMI"
QUERY_SIZES = (1_000, 10_000, 100_000)
SCVI_SIZES = (1_000, 10_000)  # the tutorial's 100 epochs at 100k cells would take hours on 2 cores
LAB_COUNTS = (2, 4, 8)
SIMULATED_LAB_COUNTS = (8, 16, 32)
CELLS_PER_SCALED_LAB = 250
THREADS = 2
SEED = 0
# Candidate surgery settings (MappingOptions fields) for the speed sweep; "default" is MappingOptions().
SWEEP = {
    "default: tutorial, capped at ~1,500 steps": {},
    "tutorial: 100 epochs, lr 1e-3": {"max_epochs": 100, "learning_rate": 1e-3},
    "early stopping, lr 1e-3": {"max_epochs": 100, "learning_rate": 1e-3, "early_stopping": True},
    "~100 steps, lr 1e-2": {"surgery_steps": 100, "learning_rate": 1e-2},
    "~40 steps, lr 1e-2": {"surgery_steps": 40, "learning_rate": 1e-2},
    "~100 steps, lr 1e-3": {"surgery_steps": 100},
    "~100 steps, batch 512, lr 1e-2": {"surgery_steps": 100, "batch_size": 512, "learning_rate": 1e-2},
}
BASELINE_SETTING = "tutorial: 100 epochs, lr 1e-3"

# --- PBMC -----------------------------------------------------------------------------------------
SYMPHONY, ZHENG, KANG = "symphony_pbmc_3chem.h5ad", "zheng_sorted_pbmc3500.h5ad", "kang_ctrl_5donors.h5ad"
CHEMISTRIES = {"3pv1": "10x 3' v1", "3pv2": "10x 3' v2", "5p": "10x 5'"}
HELD_OUT_TYPES = ("B", "NK", "Mono_CD16", "T_CD8")
HELD_OUT_LABS = ("5p",)  # the 5' lab, the odd technology out; every chemistry: scripts/research_unknown.py
DONORS = ("1015", "1016", "1244", "1256", "1488")
ZHENG_REFERENCE_SHARE, KANG_REFERENCE_SHARE = 0.5, 0.2
PBMC_SECTIONS = {
    "chemistry": "Leave one chemistry out",
    "held_out_type": "Leave one chemistry out, one type held out of the reference",
    "fine_t": "Fine T-cell subsets",
    "donors": "Five donors as five labs",
}
CENTRAL_METHODS = {  # bench_methods method: what the log calls it
    "scvi_surgery": "centralized scvi-tools surgery",
    "de_novo": "de novo scANVI",
    "baseline": "PCA baselines",
    "celltypist": "CellTypist",
}
# --quick: a tiny subsample of every PBMC split, short training
QUICK_REFERENCE_CELLS, QUICK_LAB_CELLS = 200, 80  # labs above 50 cells, or CellTypist skips majority voting
QUICK_EPOCHS = 10
QUICK_BUILD_ARGS = ("--max-epochs", "20", "--scanvi-max-epochs", "5")
QUICK_ROUND_ARGS = ("--max-epochs", str(QUICK_EPOCHS))
QUICK_SPECS = {
    "fedarches": {"options": {"max_epochs": QUICK_EPOCHS}},
    "scvi_surgery": {"max_epochs": QUICK_EPOCHS},
    "de_novo": {"max_epochs": QUICK_EPOCHS, "scanvi_epochs": 2},
}


@dataclass(frozen=True)
class Split:
    """A reference and its labs from one file of ../shared/data.

    The reference is the cells of ``reference_batches``, or (``reference_share``) a seeded random share of the
    cells of every batch and type; each lab is the cells of its batch not in the reference; ``held_out`` is
    left out of the reference. ``federated``: also run a round on loopback with these labs.
    """

    data: str
    labs: dict[str, str]  # lab name: its batch
    reference_batches: tuple[str, ...] = ()
    reference_share: float = 0.0
    held_out: str | None = None
    federated: bool = False

    def select(self, obs: Any, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Masks over ``obs``: the reference's cells and each lab's."""
        batch = obs["batch"].astype(str).to_numpy()
        types = obs["cell_type"].astype(str).to_numpy()
        if self.reference_share:
            reference = np.zeros(len(batch), dtype=bool)
            for b, t in sorted(set(zip(batch, types, strict=True))):
                rows = np.flatnonzero((batch == b) & (types == t))
                reference[rng.choice(rows, round(self.reference_share * rows.size), replace=False)] = True
        else:
            reference = np.isin(batch, self.reference_batches)
        labs = {lab: (batch == b) & ~reference for lab, b in self.labs.items()}
        if self.held_out is not None:
            reference &= types != self.held_out
        return reference, labs


def pbmc_splits(quick: bool = False) -> dict[str, dict[str, Split]]:
    """Every PBMC split by section (``--quick``: the first of each section)."""

    def chemistry(lab: str, held_out: str | None = None) -> Split:
        others = tuple(c for c in CHEMISTRIES if c != lab)
        return Split(SYMPHONY, {f"lab_{lab}": lab}, reference_batches=others, held_out=held_out,
                     federated=held_out is None)  # fmt: skip

    sections = {
        "chemistry": {f"lab {c}": chemistry(c) for c in CHEMISTRIES},
        "held_out_type": {f"{t} held out, lab {c}": chemistry(c, t) for t in HELD_OUT_TYPES for c in HELD_OUT_LABS},
        "fine_t": {"random half": Split(ZHENG, {"lab": "zheng2017_sorted"}, reference_share=ZHENG_REFERENCE_SHARE)},
        "donors": {
            "five donors": Split(
                KANG, {f"donor_{d}": d for d in DONORS}, reference_share=KANG_REFERENCE_SHARE, federated=True
            )
        },
    }
    if quick:
        return {section: dict(list(splits.items())[:1]) for section, splits in sections.items()}
    return sections


app = typer.Typer(add_completion=False)


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def start_run(out: Path, *, resume: bool, **fields: Any) -> tuple[dict[str, Any], float]:
    """The run's results so far (``--resume``: what ``OUT/results.json`` holds) and its monotonic start.

    Without ``resume`` (or without a results file) ``out`` is emptied and the results start with the
    date, the CPU count and ``fields``; with it, the start is moved back by the time already spent.
    """
    results_path = out / "results.json"
    started = time.monotonic()
    if resume and results_path.is_file():
        results = json.loads(results_path.read_text())
        log(f"resuming {results_path}: {', '.join(results)}")
        return results, started - results.get("total_s", 0.0)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(), **fields}, started


# --- data -----------------------------------------------------------------------------------------
def write_parts(data: ad.AnnData, masks: dict[str, np.ndarray], out: Path) -> dict[str, Path]:
    """One .h5ad per part (``reference`` and each lab) of ``data``'s cells; their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for part, mask in masks.items():
        paths[part] = out / f"{part}.h5ad"
        data[np.asarray(mask)].copy().write_h5ad(paths[part])
    return paths


def write_split(data: ad.AnnData, depth: float | None, out: Path) -> dict[str, Path]:
    """Reference (without the held-out type) and one .h5ad per lab, thinned to ``depth`` UMIs per cell."""
    data = data.copy()
    if depth is not None:
        data.X = thin_to_depth(data.X, depth, np.random.default_rng(SEED))
    in_reference = data.obs["batch"].isin(REFERENCE_BATCHES) & (data.obs["cell_type"] != HELD_OUT)
    labs = {lab: (data.obs["batch"] == batch).to_numpy() for lab, batch in LABS.items()}
    return write_parts(data, {"reference": in_reference.to_numpy(), **labs}, out)


def at_most(mask: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``mask`` with at most ``n`` of its cells kept, drawn at random."""
    rows = np.flatnonzero(mask)
    if rows.size <= n:
        return mask
    out = np.zeros_like(mask)
    out[rng.choice(rows, n, replace=False)] = True
    return out


def write_pbmc_split(split: Split, data: ad.AnnData, out: Path, *, quick: bool) -> dict[str, Path]:
    """The split's reference and labs as .h5ad files (``quick``: a few cells of each, seeded)."""
    rng = np.random.default_rng(SEED)
    reference, labs = split.select(data.obs, rng)
    if quick:
        reference = at_most(reference, QUICK_REFERENCE_CELLS, rng)
        labs = {lab: at_most(mask, QUICK_LAB_CELLS, rng) for lab, mask in labs.items()}
    return write_parts(data, {"reference": reference, **labs}, out)


def depth_and_size(path: Path) -> tuple[float, int]:
    """Median UMIs per cell and number of cells of one split file (read once)."""
    x = ad.read_h5ad(path).X
    return float(np.median(np.asarray(x.sum(axis=1)).ravel())), int(x.shape[0])


def split_facts(paths: dict[str, Path]) -> dict[str, Any]:
    """Median UMIs per cell, cells and file size of each part of a split."""
    facts = {k: depth_and_size(p) for k, p in paths.items()}
    return {
        "median_umis": {k: umis for k, (umis, _) in facts.items()},
        "n_cells": {k: n for k, (_, n) in facts.items()},
        "raw_h5ad_bytes": {k: p.stat().st_size for k, p in paths.items()},
    }


def cell_types(path: Path) -> dict[str, int]:
    """Cells of each type in one split file."""
    obs = ad.read_h5ad(path, backed="r").obs
    return {str(k): int(v) for k, v in obs["cell_type"].astype(str).value_counts().sort_index().items()}


# --- running things -------------------------------------------------------------------------------
def run_method(method: str, spec: dict[str, Any], workdir: Path, script: Path = METHODS_SCRIPT) -> dict[str, Any]:
    """One method of ``script`` in a fresh process; returns its result with ``wall_s`` (spawn to exit)."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec = {"threads": THREADS, "seed": SEED, "workdir": str(workdir / "tmp"), **spec}
    spec_path, result_path = workdir / "spec.json", workdir / "result.json"
    spec_path.write_text(json.dumps(spec, indent=1, default=str))
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "PYTHONWARNINGS": "ignore"}
    tick = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(script), method, str(spec_path), str(result_path)],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    wall = time.monotonic() - tick
    (workdir / "log.txt").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        msg = f"{method} failed ({done.returncode}); see {workdir / 'log.txt'}:\n{done.stderr[-3000:]}"
        raise RuntimeError(msg)
    result = json.loads(result_path.read_text())
    result["wall_s"] = wall
    shutil.rmtree(workdir / "tmp", ignore_errors=True)
    return result


def build_bundle(reference: Path, signing_key: Path, out: Path, extra: tuple[str, ...] = ()) -> float:
    """``fedarches-server build-reference`` (every default, ``extra`` options after them); its wall time."""
    tick = time.monotonic()
    subprocess.run(
        [own_executable("fedarches-server"), "build-reference", str(reference), "--batch-key", "batch",
         "--labels-key", "cell_type", "--signing-key", str(signing_key), "--out", str(out), "--quiet", *extra],
        check=True, env={**os.environ, "OMP_NUM_THREADS": str(THREADS)},
    )  # fmt: skip
    return time.monotonic() - tick


def lab_outcome(fed: LoopbackFederation, lab: str, report_lab: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """A lab's own view of its round: its cells' calls from annotated.h5ad, and what went over the wire."""
    adata = ad.read_h5ad(fed.labs[lab].out_dir / "annotated.h5ad")
    uns = adata.uns["fedarches"]
    cells = fedarches_calls(adata)
    run = {
        "status": report_lab["status"],
        "bytes_to_lab": report_lab["bytes_to_lab"],
        "bytes_from_lab": report_lab["bytes_from_lab"],
        "reply_s": report_lab.get("reply_s"),
        "n_epochs": int(uns["params"]["n_epochs_trained"]),
        "adapter_bytes": int(uns["adapter_bytes"]),
        "timings": dict(uns["timings"]),
        "peak_rss_bytes": int(uns.get("peak_rss_bytes", 0)),
    }
    return cells, run, adata.obsm["X_scANVI"]


def federated(
    reference: Path,
    workdir: Path,
    labs: dict[str, Path],
    latents_out: Path | None = None,
    build_args: tuple[str, ...] = (),
    round_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Build the bundle with a fresh coordinator's key, start everything, run one round, stop everything."""
    with LoopbackFederation(workdir, threads=1) as fed:
        bundle_dir = workdir / "reference-bundle"
        build_s = build_bundle(reference, fed.coord.signing_key, bundle_dir, build_args)
        startup = {"superlink_s": fed.start_coordinator()}
        for lab, path in labs.items():
            fed.add_lab(lab, path)
        for lab in labs:
            fed.join(lab, wait=False)
        tick = time.monotonic()
        fed.wait_online(list(labs))
        startup["supernodes_online_s"] = time.monotonic() - tick
        report = fed.run_round(bundle_dir, "--min-labs", str(len(labs)), *round_args)
        outcomes = {entry["name"]: lab_outcome(fed, entry["name"], entry) for entry in report["labs"]}
    bundle = ReferenceBundle.open(bundle_dir, fed.coord.signing_public_key)
    if latents_out is not None:
        np.savez(latents_out, **{lab: o[2] for lab, o in outcomes.items()})
    return {
        "bundle_dir": str(bundle_dir),
        "trust": str(fed.coord.signing_public_key),
        "bundle_bytes": bundle.size_bytes,
        "reference_build_s": build_s,
        "startup": startup,
        "round_wall_s": report["_cli"]["wall_s"],
        "phases_s": report["phases_s"],
        "status": report["status"],
        **scores({lab: o[0] for lab, o in outcomes.items()}, bundle.label_categories),
        "runs": {lab: o[1] for lab, o in outcomes.items()},
    }


# --- the benchmark --------------------------------------------------------------------------------
def compare_methods(
    entry: dict[str, Any], common: dict[str, Any], workdir: Path, tag: str, extra: dict[str, dict] | None = None
) -> None:
    """Each of :data:`CENTRAL_METHODS` on one split, in a fresh process each, into ``entry``."""
    for method, what in CENTRAL_METHODS.items():
        log(f"[{tag}] {what}")
        entry[method] = run_method(method, {**common, **(extra or {}).get(method, {})}, workdir / method)


def surgery_sweep(sweep: dict[str, dict], common: dict[str, Any], workdir: Path, tag: str) -> dict[str, Any]:
    """fedarches' mapping under each surgery setting of ``sweep`` (MappingOptions fields), a fresh process each."""
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
    split: Split, data: ad.AnnData, sdir: Path, tag: str, *, quick: bool, sweep: dict[str, dict] | None = None
) -> dict[str, Any]:
    """Every method on one PBMC split (and a federated round where ``split.federated``; the surgery settings
    ``sweep``, if given), in a fresh ``sdir``."""
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
            round_args=QUICK_ROUND_ARGS if quick else (),
        )  # fmt: skip
        bundle_dir, trust = entry["federated"]["bundle_dir"], entry["federated"]["trust"]
        entry["reference_build_s"] = entry["federated"]["reference_build_s"]
    else:
        from fedarches.shared.crypto import generate_signing_keys

        log(f"[{tag}] reference bundle")
        signing_key, public_key = generate_signing_keys(sdir / "keys", overwrite=True)
        bundle_dir, trust = sdir / "reference-bundle", public_key
        entry["reference_build_s"] = build_bundle(paths["reference"], signing_key, bundle_dir, build_args)
    common = {"bundle": str(bundle_dir), "trust": str(trust), "labs": {k: str(v) for k, v in labs.items()},
              "reference": str(paths["reference"])}  # fmt: skip
    log(f"[{tag}] fedarches mapping (map_query, every default)")
    entry["fedarches"] = run_method("fedarches", {**common, **QUICK_SPECS["fedarches"]} if quick else common,
                                    sdir / "fedarches")  # fmt: skip
    compare_methods(entry, common, sdir, tag, QUICK_SPECS if quick else None)
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
                data[split.data] = ad.read_h5ad(DATA_DIR / split.data)
            sdir = out / "pbmc" / section / name.replace(",", "").replace("'", "").replace(" ", "-")
            sweep = (dict(list(SWEEP.items())[:2]) if quick else SWEEP) if section == "chemistry" else None
            done[name] = pbmc_split(split, data[split.data], sdir, f"{section}: {name}", quick=quick, sweep=sweep)
            save()
    return results


def query_size_section(depth_entry_dir: Path, bundle: str, trust: str, out: Path, sizes: tuple[int, ...]) -> dict:
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
    """Rounds of 8 to 32 labs in Flower's simulation engine (scripts/bench_simulation.py), Ray actors on 2 CPUs."""
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
            [sys.executable, str(Path(__file__).with_name("bench_simulation.py")), str(run_dir / "spec.json"),
             str(run_dir / "result.json")],
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
    data = ad.read_h5ad(DATA)
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
    if "variants" not in results.get("integration", {}):
        try:
            results["integration"] = integration_section(results["accuracy"], out)
        except RuntimeError as err:  # optional metrics: report the failure in the doc rather than lose the run
            results["integration"] = {"skipped": f"scib-metrics failed: {str(err).splitlines()[0]}"}
        save()


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="Working directory for the run.")] = ROOT / "bench-output" / "bench",
    quick: Annotated[
        bool,
        typer.Option(
            help="Smoke run: the first split of each PBMC section on a few cells with short training; CellBench at "
            "one depth, two settings, 1k cells, 2 labs. Its document goes to OUT/docs, not docs/."
        ),
    ] = False,
    doc: Annotated[bool, typer.Option(help="Regenerate docs/benchmarks.md from this run.")] = True,
    resume: Annotated[bool, typer.Option(help="Keep what OUT/results.json already holds; run the rest.")] = False,
    pbmc: Annotated[bool, typer.Option(help="Run the PBMC benchmark (the main one).")] = True,
    cellbench: Annotated[bool, typer.Option(help="Run the CellBench benchmark (cell lines).")] = True,
) -> None:
    needed = [DATA_DIR / s.data for splits in pbmc_splits().values() for s in splits.values()] if pbmc else []
    missing = sorted({str(p) for p in [*needed, *([DATA] if cellbench else [])] if not p.is_file()})
    if missing:
        raise typer.BadParameter(f"{', '.join(missing)} not found: the benchmark reads the data beside the project")
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
    from bench_doc import print_tables, write_doc

    print_tables(results)
    if doc:
        write_doc(results, out / "docs" if results["quick"] else ROOT / "docs")


if __name__ == "__main__":
    app()

"""Make tests/bench/data/bench_results_pbmc_quick.json: a real `make bench` results file, small enough to make here.

The smallest real piece of the benchmark, on the shipped demo data: the quick (``--quick``) PBMC split "B held
out, lab 5p" (reference = 10x 3' v1 + 3' v2 without B cells, lab = 10x 5'; at most 200 reference and 80 lab
cells, seeded) of ``data/demo/pbmc_3chem.h5ad``, which holds the same 1,200 cells as
``../shared/data/symphony_pbmc_3chem.h5ad``. It runs :func:`fedarches.bench.suite.pbmc_split` as `make bench
--quick` does: the reference bundle built by ``fedarches-server build-reference``, then fedarches' mapping,
plain scvi-tools surgery, de novo scANVI and the PCA baselines, each in a fresh process, every step with one torch
thread. CellTypist is left out (the `bench` extra is not installed where this is run). About a minute on 2 cores.

    .venv/bin/python tests/bench/make_results_fixture.py

The file is what the run measured, plus a ``provenance`` entry saying how it was made.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import anndata as ad

from fedarches.bench.datasets import DEMO_PBMC, pbmc_splits
from fedarches.bench.paths import DEMO, ROOT
from fedarches.bench.runner import start_run
from fedarches.bench.suite import CENTRAL_METHODS, pbmc_split

OUT = Path(__file__).with_name("data") / "bench_results_pbmc_quick.json"
SECTION, NAME = "held_out_type", "B held out, lab 5p"
THREADS = 1
METHODS = {k: v for k, v in CENTRAL_METHODS.items() if k != "celltypist"}


def main() -> None:
    tick = time.monotonic()
    split = dataclasses.replace(pbmc_splits(quick=True)[SECTION][NAME], data=f"data/demo/{DEMO_PBMC}")
    data = ad.read_h5ad(DEMO / DEMO_PBMC)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench"
        results, started = start_run(out, resume=False, quick=True, threads=THREADS)
        entry = pbmc_split(split, data, out / "split", f"{SECTION}: {NAME}", quick=True, threads=THREADS,
                           methods=METHODS)  # fmt: skip
    results["pbmc"] = {SECTION: {NAME: entry}}
    results["total_s"] = time.monotonic() - started
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=False)
    results["provenance"] = {
        "made_by": "tests/bench/make_results_fixture.py (see its docstring)",
        "what": f"a real quick run of one `make bench` PBMC split ({SECTION}: {NAME}) on data/demo/{DEMO_PBMC}, "
        "the cells of symphony_pbmc_3chem.h5ad; fedarches.bench.suite.pbmc_split with quick=True",
        "methods_run": ["fedarches", *METHODS],
        "not_run": {"celltypist": "the `bench` extra (celltypist) was not installed"},
        "torch_threads_per_step": THREADS,
        "wall_s": round(time.monotonic() - tick, 1),
        "versions": {p: version(p) for p in ("torch", "scvi-tools", "anndata", "scikit-learn")},
        "git_head": commit.stdout.strip(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {OUT} ({results['provenance']['wall_s']} s)")


if __name__ == "__main__":
    main()

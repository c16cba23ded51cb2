"""`fedarches-server build-reference` on real PBMC data, alone and beside another torch job, by --threads.

``python -m fedarches.bench build-threads [--out OUT]`` (needs ``../shared/data/symphony_pbmc_3chem.h5ad``).

The reference is the Symphony PBMC file's 10x 3' v1 and 3' v2 cells (the 5' cells are the lab in the
benchmarks). Each build runs with every default but ``--threads``; "beside another job" starts a second,
identical build at the same moment. A build still running after ``LIMIT_S`` is stopped and reported as such.
Prints one line per set-up and writes ``OUT/build_threads.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import anndata as ad

from fedarches.bench.paths import SHARED_DATA
from fedarches.server.coordinator import CoordinatorDir, init_coordinator
from fedarches.shared._process import own_executable

LIMIT_S = 300.0
SETUPS = {  # name: (threads of each build, number of builds at once)
    "alone, torch's default threads": (None, 1),
    "alone, --threads 1": (1, 1),
    "beside another build, both torch's default threads": (None, 2),
    "beside another build, both --threads 1": (1, 2),
}


def build_command(reference: Path, key: Path, out: Path, threads: int | None) -> list[str]:
    """The ``build-reference`` command line with every default but ``--threads``."""
    command = [own_executable("fedarches-server"), "build-reference", str(reference), "--batch-key", "batch",
               "--labels-key", "cell_type", "--signing-key", str(key), "--out", str(out), "--quiet"]  # fmt: skip
    return command + (["--threads", str(threads)] if threads else [])


def run_together(commands: list[list[str]]) -> list[float | None]:
    """Start every command at once; each one's wall time, None when it passed ``LIMIT_S``."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    tick = time.monotonic()
    processes = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for c in commands]
    walls: list[float | None] = [None] * len(processes)
    while any(w is None for w in walls) and time.monotonic() - tick < LIMIT_S:
        for i, p in enumerate(processes):
            if walls[i] is None and p.poll() is not None:
                if p.returncode != 0:
                    msg = f"{' '.join(commands[i])} failed with {p.returncode}"
                    raise SystemExit(msg)
                walls[i] = time.monotonic() - tick
        time.sleep(0.2)
    for p in processes:
        if p.poll() is None:
            p.kill()
            p.wait()
    return walls


def build_threads(out: Path) -> dict:
    """Measure every set-up of :data:`SETUPS` in ``out``; return the figures."""
    out.mkdir(parents=True, exist_ok=True)
    data = ad.read_h5ad(SHARED_DATA / "symphony_pbmc_3chem.h5ad")
    reference = out / "reference.h5ad"
    data[data.obs["batch"].astype(str) != "5p"].copy().write_h5ad(reference)
    key = (
        init_coordinator(out / "coord") if not (out / "coord").exists() else CoordinatorDir.open(out / "coord")
    ).signing_key
    results = {"cells": int((data.obs["batch"].astype(str) != "5p").sum()), "cpus": os.cpu_count(), "setups": {}}
    for name, (threads, n) in SETUPS.items():
        walls = run_together([build_command(reference, key, out / f"bundle-{i}", threads) for i in range(n)])
        shown = ", ".join(f"{w:.1f} s" if w is not None else f"> {LIMIT_S:.0f} s (stopped)" for w in walls)
        print(f"{name}: {shown}", flush=True)
        results["setups"][name] = walls
        for i in range(n):
            subprocess.run(["rm", "-rf", str(out / f"bundle-{i}")], check=False)
    (out / "build_threads.json").write_text(json.dumps(results, indent=1))
    print(f"{results['cells']} reference cells, {results['cpus']} CPUs; {out / 'build_threads.json'}")
    return results

"""Running a benchmark: its log, its results file, and each measured step in a fresh process.

A step runs as ``python -m fedarches.bench worker SUITE STEP SPEC.json RESULT.json`` (:func:`worker_command`), so
its wall time and peak RSS are its own; :func:`run_method` writes the spec, runs the step and reads its result.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

THREADS = 2  # torch threads of a measured step unless its spec says otherwise (`make bench`: both cores)
SEED = 0


def log(text: str) -> None:
    """Print ``text`` with the time of day."""
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


def worker_command(suite: str, *args: str) -> list[str]:
    """The command line that runs one step of ``suite`` (``methods``, ``backends``, ``simulation``) afresh."""
    return [sys.executable, "-m", "fedarches.bench", "worker", suite, *args]


def run_method(method: str, spec: dict[str, Any], workdir: Path, suite: str = "methods") -> dict[str, Any]:
    """One step ``method`` of ``suite`` in a fresh process; returns its result with ``wall_s`` (spawn to exit)."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec = {"threads": THREADS, "seed": SEED, "workdir": str(workdir / "tmp"), **spec}
    spec_path, result_path = workdir / "spec.json", workdir / "result.json"
    spec_path.write_text(json.dumps(spec, indent=1, default=str))
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "PYTHONWARNINGS": "ignore"}
    tick = time.monotonic()
    done = subprocess.run(
        worker_command(suite, method, str(spec_path), str(result_path)),
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

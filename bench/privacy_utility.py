"""Utility of private label statistics: error of the consortium composition against ε.

Five labs, one per batch of the CellBench lung cell-line data (``../shared/data``), each holding
its cell-line counts (the labels its mapping predicts: accuracy is 0.996 to 1.000 on these labs,
see docs/benchmarks.md). For each ε and each way a lab can release composition, the real release
code runs many times (OpenDP noise, then k=11 suppression for per-lab releases), and the
coordinator's consortium composition is compared with the true one:

- ``secure-sum``: each lab adds Laplace noise (its own ε) to its count vector inside SecAgg+;
  the coordinator sees the noisy sum, nothing is suppressed per lab;
- ``plain``: each lab releases noised counts, those below k suppressed (secondary suppression
  applies to exact counts only, see fedarches.shared.labels); the coordinator sums the released
  counts (a suppressed count adds nothing).

Error: total variation distance between the released and the true composition (proportions),
and the mean absolute error of the consortium count per type. Also, without noise, what
suppression alone costs (``plain`` at ε = ∞).

:mod:`fedarches.bench.report_privacy` renders docs/privacy.md from the JSON.

    python -m fedarches.bench privacy-utility [--draws 300]     (make privacy-eval: scripts/eval_privacy_utility.py)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np

from fedarches.bench.datasets import CELLBENCH
from fedarches.bench.metrics import tv_distance
from fedarches.bench.paths import DOCS, MissingDataError
from fedarches.shared import dp
from fedarches.shared._io import atomic_write_bytes, write_atomically
from fedarches.shared.labels import LabelCounts, suppress
from fedarches.shared.policy import DPPolicy

EPSILONS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
K = 11


def lab_counts() -> tuple[list[str], dict[str, np.ndarray]]:
    """The cell types and each lab's (batch's) count vector: cells per type, then low-confidence cells per type."""
    if not CELLBENCH.is_file():
        msg = f"{CELLBENCH} not found: the evaluation reads the data beside the project"
        raise MissingDataError(msg)
    obs = ad.read_h5ad(CELLBENCH, backed="r").obs
    table = obs.groupby(["batch", "cell_type"], observed=True).size().unstack(fill_value=0)
    types = [str(t) for t in table.columns]
    # the count vector a lab releases: cells per type, then low-confidence cells per type (none here)
    return types, {str(b): np.r_[table.loc[b].to_numpy(), np.zeros(len(types), int)] for b in table.index}


def consortium(types: list[str], vectors: dict[str, np.ndarray], mode: str, measurement: Any) -> np.ndarray:
    """The consortium cell counts per type the coordinator ends up with, for one draw."""
    n = len(types)
    total = np.zeros(n)
    for vector in vectors.values():
        noisy = vector if measurement is None else np.asarray(measurement([int(v) for v in vector]))
        if mode == "secure-sum":
            total += noisy[:n]
        else:
            stats = suppress(LabelCounts.from_vector(types, noisy), min_count=K, secondary=measurement is None)
            total += [t.n_cells or 0 for t in stats.types]
    return np.maximum(total, 0)


def evaluate(draws: int) -> dict:
    """Every mode and ε, ``draws`` releases each; the table printed, the results returned."""
    start = time.perf_counter()
    types, vectors = lab_counts()
    truth = sum(v[: len(types)] for v in vectors.values())
    rows = []
    for mode in ("secure-sum", "plain"):
        for epsilon in (*EPSILONS, None):
            measurement = None if epsilon is None else dp.count_measurement(DPPolicy(epsilon=epsilon))[0]
            n = 1 if measurement is None else draws
            results = [consortium(types, vectors, mode, measurement) for _ in range(n)]
            tv = np.array([tv_distance(r, truth) for r in results])
            mae = np.array([np.abs(r - truth).mean() for r in results])
            rows.append(
                {
                    "mode": mode,
                    "epsilon": epsilon,
                    "tv_mean": float(tv.mean()),
                    "tv_p95": float(np.quantile(tv, 0.95)),
                    "count_mae": float(mae.mean()),
                    "draws": n,
                }
            )
    result = {
        "data": str(CELLBENCH.name),
        "labs": {lab: int(v[: len(types)].sum()) for lab, v in vectors.items()},
        "types": types,
        "truth": [int(v) for v in truth],
        "k": K,
        "mechanism": "discrete Laplace (OpenDP), unit = one cell, L1 sensitivity 2",
        "rows": rows,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    print(f"{'mode':<11} {'ε':>6} {'TV mean':>8} {'TV p95':>8} {'count MAE':>10}")
    for r in rows:
        eps = "none" if r["epsilon"] is None else f"{r['epsilon']:g}"
        print(f"{r['mode']:<11} {eps:>6} {r['tv_mean']:>8.4f} {r['tv_p95']:>8.4f} {r['count_mae']:>10.2f}")
    print(f"wall time {result['wall_s']} s ({draws} draws per point)")
    return result


def plot(result: dict, path: Path) -> None:
    """Composition error against ε, to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for mode, colour in (("secure-sum", "#1565c0"), ("plain", "#c62828")):
        rows = [r for r in result["rows"] if r["mode"] == mode and r["epsilon"] is not None]
        eps = [r["epsilon"] for r in rows]
        ax.plot(eps, [r["tv_mean"] for r in rows], "o-", color=colour, label=f"{mode}: mean")
        ax.fill_between(eps, 0, [r["tv_p95"] for r in rows], color=colour, alpha=0.12, label=f"{mode}: 95th pct")
        (no_noise,) = [r for r in result["rows"] if r["mode"] == mode and r["epsilon"] is None]
        ax.axhline(no_noise["tv_mean"], color=colour, ls=":", lw=1, label=f"{mode}: no noise")
    ax.set_xscale("log")
    ax.set_xlabel("ε per release (each lab)")
    ax.set_ylabel("total variation distance to the true composition")
    labs = ", ".join(f"{n}" for n in result["labs"].values())
    ax.set_title(f"Consortium composition error vs ε (5 labs: {labs} cells; k={result['k']})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=130))
    plt.close(fig)


def run(draws: int = 300, docs: Path = DOCS) -> dict[str, Any]:
    """:func:`evaluate`, then ``privacy_utility.json`` and ``.png`` written to ``docs``."""
    out = evaluate(draws)
    docs.mkdir(exist_ok=True)
    atomic_write_bytes(docs / "privacy_utility.json", (json.dumps(out, indent=2) + "\n").encode())
    plot(out, docs / "privacy_utility.png")
    print(f"wrote {docs / 'privacy_utility.json'} and privacy_utility.png")
    return out

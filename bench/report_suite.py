"""docs/benchmarks.md (PBMC), docs/benchmarks_cellbench.md and their plots, from a `make bench` results.json.

No hand-typed numbers. :func:`write_doc` also keeps the results it rendered beside the documents
(``benchmarks_results.json``), so that the numbers of a document can always be traced and re-rendered.

    python -m fedarches.bench doc [bench-output/bench/results.json]      (scripts/bench_doc.py)

A quick (smoke) run's document goes to ``docs/`` beside its results.json, never to the project's docs/.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedarches.bench.datasets import (
    CHEMISTRIES,
    HELD_OUT,
    HELD_OUT_TYPES,
    KANG_REFERENCE_SHARE,
    LABS,
    PBMC_SECTIONS,
    QUICK_LAB_CELLS,
    QUICK_REFERENCE_CELLS,
    REFERENCE_BATCHES,
    ZHENG_REFERENCE_SHARE,
)
from fedarches.bench.paths import DOCS
from fedarches.bench.suite import BASELINE_SETTING, CELLS_PER_SCALED_LAB
from fedarches.shared._cli import text_table
from fedarches.shared._io import atomic_write_bytes

RESULTS_NAME = "benchmarks_results.json"  # the results a document was rendered from, beside it
MIB = 1024**2
TARGETS = {
    "ratio": 1.10,
    "accuracy_points": 0.5,
    "10k_s": 60.0,
    "100k_s": 600.0,
    "rss_100k": 4 * 1024**3,
    "adapter": 16 * 1024,
}
TIE = 0.10
METHODS = (
    "fedarches (federated)",
    "scvi-tools surgery (central)",
    "de novo scANVI (ceiling)",
    "kNN on PCA",
    "logistic regression on PCA",
)
CELLTYPIST, CELLTYPIST_VOTING = "CellTypist", "CellTypist + majority voting"
FED_ROUND, FED_MAPPING = "fedarches (federated round)", "fedarches mapping"
# issue 15's targets for fedarches on every PBMC split
PBMC_TARGETS = {"unseen_unknown": 0.80, "known_unknown": 0.05, "unseen_auroc": 0.90, "ece": 0.05}


# --- reading results ------------------------------------------------------------------------------
def central_views(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The methods run on the pooled cells of a split: metrics (``labs``/``overall``), wall time, peak RSS.

    CellTypist's plain row leaves out the time its majority voting took (``voting_s``).
    """
    baseline = entry["baseline"]
    views = {
        METHODS[1]: entry["scvi_surgery"],
        METHODS[2]: entry["de_novo"],
        METHODS[3]: {**baseline["classifiers"]["knn"], **_cost(baseline)},
        METHODS[4]: {**baseline["classifiers"]["logreg"], **_cost(baseline)},
    }
    if "celltypist" in entry:  # results from before CellTypist was benchmarked have none
        typist = entry["celltypist"]
        plain = {"wall_s": typist["wall_s"] - typist["voting_s"], "peak_rss_bytes": typist["peak_rss_bytes"]}
        views[CELLTYPIST] = {**typist["classifiers"]["plain"], **plain}
        views[CELLTYPIST_VOTING] = {**typist["classifiers"]["majority_voting"], **_cost(typist)}
    return views


def method_views(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each method's metrics (``labs``/``overall``) with its wall time, peak RSS and bytes moved."""
    lab_bytes = sum(v for k, v in entry["raw_h5ad_bytes"].items() if k != "reference")
    fed = entry["federated"]
    runs = fed["runs"].values()
    central = {"moved": lab_bytes, "moved_note": "labs' raw .h5ad"}
    return {
        METHODS[0]: {
            **fed,
            "wall_s": fed["round_wall_s"],
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
            "moved": sum(r["bytes_to_lab"] + r["bytes_from_lab"] for r in runs),
            "moved_note": "Flower payloads, both ways",
        },
        **{method: {**view, **central} for method, view in central_views(entry).items()},
    }


def pbmc_views(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each method's metrics on one PBMC split, with wall time and peak RSS (the round's: its largest lab)."""
    views = {}
    if "federated" in entry:
        fed = entry["federated"]
        rss = max(r["peak_rss_bytes"] for r in fed["runs"].values())
        views[FED_ROUND] = {**fed, "wall_s": fed["round_wall_s"], "peak_rss_bytes": rss}
    return {**views, FED_MAPPING: entry["fedarches"], **central_views(entry)}


def _cost(result: dict[str, Any]) -> dict[str, Any]:
    return {"wall_s": result["wall_s"], "peak_rss_bytes": result["peak_rss_bytes"]}


def sweep_rows(sweeps: dict[str, dict[str, Any]]) -> tuple[list[str], dict[str, dict[str, Any]], str | None]:
    """The surgery sweep's table and pick.

    Per setting and column (a depth or a split): accuracy, its gap to the tutorial setting, known-type cells
    called Unknown, summed training time; and the pick. ``sweeps`` maps each column to its sweep (setting: run).

    The pick: among settings within 0.5 points of the tutorial setting and calling at most 5 % of known-type cells
    Unknown in every column, those whose training time (summed over labs and columns) is within :data:`TIE` of the
    fastest count as equally fast (equal epochs give equal work; on a shared 2-core VM the same work varies by about
    that much), and the most accurate of them (mean over columns) wins.
    """
    columns = list(sweeps)
    table: dict[str, dict[str, Any]] = {}
    for column, sweep in sweeps.items():
        anchor = sweep.get(BASELINE_SETTING, {}).get("overall", {}).get("accuracy")
        for setting, run in sweep.items():
            row = table.setdefault(setting, {"depths": {}, "time_s": 0.0})
            acc = run["overall"]["accuracy"]
            map_s = sum(r["timings"]["train_s"] for r in run["runs"].values())
            row["depths"][column] = {
                "accuracy": acc,
                "gap": None if anchor is None else 100 * (acc - anchor),
                "false_unknown": run["overall"].get("known_unknown"),
                "map_s": map_s,
                "epochs": [r["n_epochs"] for r in run["runs"].values()],
            }
            row["time_s"] += map_s

    def eligible(d: dict[str, Any]) -> bool:
        fu = d["false_unknown"]
        return d["gap"] is not None and d["gap"] >= -TARGETS["accuracy_points"] and (fu is None or fu <= 0.05)

    ok = [s for s, row in table.items() if all(eligible(d) for d in row["depths"].values())]
    if not ok:
        return columns, table, None
    fastest = min(table[s]["time_s"] for s in ok)
    tied = [s for s in ok if table[s]["time_s"] <= (1 + TIE) * fastest]
    pick = max(tied, key=lambda s: sum(d["accuracy"] for d in table[s]["depths"].values()))
    return columns, table, pick


def cellbench_sweeps(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each CellBench depth's surgery sweep."""
    return {depth: entry["sweep"] for depth, entry in results.get("accuracy", {}).items() if "sweep" in entry}


def pbmc_sweeps(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each leave-one-chemistry-out PBMC split's surgery sweep."""
    chemistry = results.get("pbmc", {}).get("chemistry", {})
    return {name: entry["sweep"] for name, entry in chemistry.items() if "sweep" in entry}


# --- formatting -----------------------------------------------------------------------------------
def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: ``-`` for None, floats to ``digits`` decimals."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def mib(value: float) -> str:
    """Bytes in MiB, no decimals."""
    return f"{value / MIB:,.0f}"


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; cells through :func:`fmt`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    """``met`` or a bold ``missed``."""
    return "met" if ok else "**missed**"


def targets(results: dict[str, Any]) -> tuple[list[list[Any]], list[str]]:
    """Rows of the targets table and the sentences explaining each miss."""
    rows, notes, slow = [], [], []
    for depth, entry in results["accuracy"].items():
        fed, cen = entry["federated"], entry["scvi_surgery"]
        ratio = fed["round_wall_s"] / cen["wall_s"]
        phases = fed["phases_s"]
        rows.append(
            [
                f"federated / central wall time, {depth}",
                f"<= {TARGETS['ratio']:.2f}",
                f"{ratio:.2f} ({fed['round_wall_s']:.1f} s / {cen['wall_s']:.1f} s)",
                verdict(ratio <= TARGETS["ratio"]),
            ]
        )
        if ratio > TARGETS["ratio"]:
            train = max(r["timings"]["train_s"] for r in fed["runs"].values())
            mapping = max(r["timings"]["total_s"] for r in fed["runs"].values())
            slow.append(
                f"{depth}: x{ratio:.2f} ({ratio / TARGETS['ratio'] - 1:.0%} over); phases "
                + ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in phases.items() if v >= 0.5)
                + f"; surgery training at most {train:.1f} s per lab, `map_query` at most {mapping:.1f} s"
            )
        gap = 100 * (fed["overall"]["accuracy"] - cen["overall"]["accuracy"])
        rows.append(
            [
                f"accuracy, federated - central, {depth}",
                f">= -{TARGETS['accuracy_points']} points",
                f"{gap:+.2f} points ({fed['overall']['accuracy']:.4f} vs {cen['overall']['accuracy']:.4f})",
                verdict(gap >= -TARGETS["accuracy_points"]),
            ]
        )
        if gap < -TARGETS["accuracy_points"]:
            notes.append(f"*{depth}*: federated accuracy is {-gap:.2f} points below central scvi-tools surgery.")
    if slow:
        notes.append(
            "Federated / central wall time, missed at every depth: " + "; ".join(slow) + ". The labs' surgery is a "
            "small part of the round. The rest is Flower's cost, measured phase by phase in "
            "[benchmarks_latency.md](benchmarks_latency.md) (`python -m fedarches.bench latency`, part of this run): "
            "each message still starts a fresh ClientApp process per lab, and the secure sum (the privacy default) "
            "adds four message exchanges. Since issue 17 the labs map in a warm worker (scvi-tools imported and the "
            "bundle verified once) and the SuperNode, SuperExec and coordinator poll every 0.1-0.25 s. "
            "The three labs share 2 cores with one thread each; the central run has both and imports scvi-tools "
            "once. The central run also moves every lab's raw cells, which the round never does."
        )
    sizes = results["query_size"]
    for n, limit in (("10000", TARGETS["10k_s"]), ("100000", TARGETS["100k_s"])):
        if n in sizes:
            run = sizes[n]["fedarches"]
            rows.append(
                [
                    f"{int(n):,} query cells mapped (one process, 2 cores)",
                    f"<= {limit:.0f} s",
                    f"{run['wall_s']:.1f} s end to end ({run['mapping_s']:.1f} s read + map)",
                    verdict(run["wall_s"] <= limit),
                ]
            )
            if run["wall_s"] > limit:
                timings = next(iter(run["runs"].values()))["timings"]
                notes.append(
                    f"{int(n):,} cells took {run['wall_s']:.1f} s, {run['wall_s'] - limit:.1f} s over the target: "
                    + ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in timings.items())
                    + "; the rest is Python start-up, imports and reading the .h5ad "
                    f"({run['runs'][next(iter(run['runs']))]['read_s']:.1f} s)."
                )
    if "100000" in sizes:
        rss = sizes["100000"]["fedarches"]["peak_rss_bytes"]
        rows.append(["peak RSS at 100k cells", "<= 4,096 MiB", f"{mib(rss)} MiB", verdict(rss <= TARGETS["rss_100k"])])
        if rss > TARGETS["rss_100k"]:
            notes.append(f"Peak RSS at 100k cells is {mib(rss - TARGETS['rss_100k'])} MiB over 4 GiB.")
    adapters = [r["adapter_bytes"] for e in results["accuracy"].values() for r in e["federated"]["runs"].values()]
    rows.append(
        [
            "adapter per lab batch",
            "<= 16,384 bytes",
            f"{max(adapters):,} bytes (largest)",
            verdict(max(adapters) <= TARGETS["adapter"]),
        ]
    )
    return rows, notes


def observations(results: dict[str, Any]) -> list[str]:
    """What the accuracy tables say, in sentences built from the numbers."""
    depths = list(results["accuracy"])
    views = {d: method_views(results["accuracy"][d]) for d in depths}

    def series(method: str, key: str = "accuracy") -> str:
        return " / ".join(f"{views[d][method]['overall'][key]:.3f}" for d in depths)

    fed, cen, novo, knn, logreg = METHODS
    typist = f", CellTypist {series(CELLTYPIST)}" if CELLTYPIST in views[depths[0]] else ""
    out = [
        f"Accuracy at {' / '.join(depths)}: fedarches {series(fed)}, scvi-tools surgery {series(cen)}, de novo "
        f"scANVI {series(novo)}, kNN {series(knn)}, logistic regression {series(logreg)}{typist}.",
    ]
    tutorial = [
        results["accuracy"][d]["sweep"].get(BASELINE_SETTING, {}).get("overall", {}).get("accuracy") for d in depths
    ]
    if None not in tutorial:
        out.append(
            "fedarches' default trains at a 10x higher learning rate than the scvi-tools tutorial (the sweep below); "
            "fedarches' own mapping with the tutorial's setting scores "
            + " / ".join(f"{a:.3f}" for a in tutorial)
            + f" against plain scvi-tools' {series(cen)}: the gain is the setting, not a different model."
        )
    if all(views[d][novo]["overall"]["accuracy"] < views[d][cen]["overall"]["accuracy"] for d in depths):
        out.append(
            "De novo scANVI on everything was not a ceiling here: it is below surgery at every depth, most at low "
            "depth. It mixes the labs far more (scib batch correction below) at the cost of separating the lines. "
            "A likely reason: 237 labeled reference cells against 702 unlabeled query cells, with scvi-tools' "
            "default epochs and 20 scANVI epochs; it was not tuned."
        )
    lr_better = [d for d in depths if views[d][logreg]["overall"]["accuracy"] >= views[d][fed]["overall"]["accuracy"]]
    if lr_better:
        out.append(
            f"Logistic regression on the reference's PCA is as accurate or more at {', '.join(lr_better)} "
            f"(H838 AUROC {series(logreg, 'unseen_auroc')} against fedarches' {series(fed, 'unseen_auroc')}): five "
            "cell lines separate in 50 principal components even at 500 UMIs. What it lacks is a shared latent "
            "space, an updated atlas and any way to run without moving the cells; as a benchmark this data is easy."
        )
    return out


def accuracy_tables(results: dict[str, Any]) -> str:
    """Per CellBench depth: every method's accuracy, calibration and cost; per lab; F1 per type."""
    parts = []
    for depth, entry in results["accuracy"].items():
        views = method_views(entry)
        umis = entry["median_umis"]
        parts.append(
            f"#### {depth}\n\nMedian UMIs per cell: reference {umis['reference']:,.0f}; "
            + ", ".join(f"{lab} {umis[lab]:,.0f}" for lab in entry["federated"]["labs"])
            + f". Cells: reference {entry['n_cells']['reference']}, "
            + ", ".join(f"{lab} {entry['n_cells'][lab]}" for lab in entry["federated"]["labs"])
            + ".\n\n"
            + md_table(
                ["method", "accuracy", "macro-F1", "ECE", "H838 AUROC", "wall s", "peak RSS MiB", "bytes moved"],
                [
                    [
                        m,
                        v["overall"]["accuracy"],
                        v["overall"]["macro_f1"],
                        v["overall"]["ece"],
                        v["overall"]["unseen_auroc"],
                        f"{v['wall_s']:.1f}",
                        mib(v["peak_rss_bytes"]),
                        f"{v['moved']:,} ({v['moved_note']})",
                    ]
                    for m, v in views.items()
                ],
            )
        )
        labs = list(entry["federated"]["labs"])
        parts.append(
            "\nPer lab (accuracy / macro-F1 / ECE):\n\n"
            + md_table(
                ["method", *labs],
                [
                    [
                        m,
                        *(
                            f"{v['labs'][lab]['accuracy']:.3f} / {v['labs'][lab]['macro_f1']:.3f} / "
                            f"{v['labs'][lab]['ece']:.3f}"
                            for lab in labs
                        ),
                    ]
                    for m, v in views.items()
                ],
            )
        )
        types = sorted(views[METHODS[1]]["overall"]["f1_per_type"])
        parts.append(
            "\nF1 per cell type (all labs):\n\n"
            + md_table(
                ["method", *types],
                [[m, *(v["overall"]["f1_per_type"].get(t) for t in types)] for m, v in views.items()],
            )
        )
    return "\n".join(parts)


def sweep_table(sweeps: dict[str, dict[str, Any]]) -> tuple[str, str | None]:
    """The surgery sweep as a markdown table (the pick in bold), and the pick."""
    depths, table, pick = sweep_rows(sweeps)
    header = ["setting", *(f"{d}: accuracy (gap) / known called Unknown" for d in depths), "training s (all)", "epochs"]
    rows = []
    for setting, row in table.items():
        cells = [
            f"{row['depths'][d]['accuracy']:.4f} ({fmt(row['depths'][d]['gap'], 2)}) / "
            f"{_pct(row['depths'][d]['false_unknown'])}"
            for d in depths
        ]
        epochs = sorted({e for d in row["depths"].values() for e in d["epochs"]})
        rows.append(
            [
                ("**" + setting + "**") if setting == pick else setting,
                *cells,
                f"{row['time_s']:.1f}",
                ", ".join(map(str, epochs)),
            ]
        )
    return md_table(header, rows), pick


def query_size_table(results: dict[str, Any]) -> str:
    """Mapping time, memory and accuracy by query size."""
    rows = []
    for n, entry in results["query_size"].items():
        fed = entry["fedarches"]
        run = next(iter(fed["runs"].values()))
        scvi = entry.get("scvi_surgery")
        rows.append(
            [
                f"{int(n):,}",
                run["n_epochs"],
                f"{run['timings']['train_s']:.1f}",
                f"{fed['mapping_s']:.1f}",
                f"{fed['wall_s']:.1f}",
                mib(fed["peak_rss_bytes"]),
                fed["overall"]["accuracy"],
                f"{scvi['wall_s']:.1f}" if scvi else "not run",
                mib(scvi["peak_rss_bytes"]) if scvi else "-",
                scvi["overall"]["accuracy"] if scvi else None,
            ]
        )
    return md_table(
        [
            "query cells",
            "epochs",
            "train s",
            "read + map s",
            "end to end s",
            "peak RSS MiB",
            "accuracy",
            "scvi-tools tutorial s",
            "its peak RSS MiB",
            "its accuracy",
        ],
        rows,
    )


def lab_count_table(results: dict[str, Any]) -> str:
    """Round time, phases and bytes by number of labs on loopback."""
    rows = []
    for n, entry in results["lab_count"].items():
        runs = list(entry["runs"].values())
        phases = entry["phases_s"]
        rows.append(
            [
                n,
                f"{entry['round_wall_s']:.1f}",
                f"{phases.get('train_s', 0):.1f}",
                f"{phases.get('secure_sum_s', 0):.1f}",
                f"{sum(r['timings']['total_s'] for r in runs) / len(runs):.1f}",
                f"{max(r['peak_rss_bytes'] for r in runs) / MIB:,.0f}",
                f"{sum(r['bytes_to_lab'] for r in runs) // len(runs):,} / "
                f"{sum(r['bytes_from_lab'] for r in runs) // len(runs):,}",
                entry["overall"]["accuracy"],
                entry["status"],
            ]
        )
    return md_table(
        [
            "labs",
            "round s",
            "mapping phase s",
            "secure sum s",
            "map_query s per lab (mean, import included)",
            "lab peak RSS MiB",
            "bytes to / from each lab",
            "accuracy",
            "status",
        ],
        rows,
    )


def simulation_table(results: dict[str, Any]) -> str:
    """Flower simulation engine runs by number of labs (or why none ran)."""
    simulation = results.get("simulation", {})
    if not simulation or "skipped" in simulation:
        return f"Not run: {simulation.get('skipped', 'no result')}."
    rows = []
    for n, entry in simulation.items():
        if "failed" in entry:
            rows.append([n, entry["failed"], "", "", "", "", ""])
            continue
        labs = entry["labs"]
        accuracy = sum(lab["accuracy"] * lab["n_cells"] for lab in labs) / sum(lab["n_cells"] for lab in labs)
        rows.append([n, f"{entry['wall_s']:.1f}", f"{entry['train_s']:.1f}", f"{entry['merge_s']:.2f}",
                     f"{sum(lab['map_s'] for lab in labs) / len(labs):.1f}", f"{accuracy:.4f}",
                     f"{len(labs)} merged, {len(entry.get('errors', []))} failed"])  # fmt: skip
    return md_table(["labs", "process s (Ray start included)", "all labs mapped s", "merge s",
                     "map_query s per lab (mean)", "accuracy", "adapters"], rows)  # fmt: skip


def integration_tables(results: dict[str, Any]) -> str:
    """scib-metrics per depth (or why none were computed)."""
    integration = results.get("integration", {})
    if "variants" not in integration:
        return f"Not computed: {integration.get('skipped', 'no result')}."
    parts = []
    for depth, table in integration["variants"].items():
        metrics = [k for k in next(iter(table.values())) if k != "Embedding"]
        parts.append(
            f"#### {depth}\n\n"
            + md_table(["method", *metrics], [[m, *(row[k] for k in metrics)] for m, row in table.items()])
        )
    return "\n\n".join(parts)


# --- plots ----------------------------------------------------------------------------------------
def plot(results: dict[str, Any], docs: Path) -> list[str]:
    """The CellBench plots (accuracy by depth; scaling) into ``docs``; their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    depths = list(results["accuracy"])
    views = {d: method_views(results["accuracy"][d]) for d in depths}
    methods = list(views[depths[0]])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        x = np.arange(len(depths)) + i * width
        for ax, key in zip(axes, ("accuracy", "macro_f1"), strict=True):
            ax.bar(x, [views[d][method]["overall"][key] for d in depths], width, label=method)
    for ax, title in zip(axes, ("accuracy (known types)", "macro-F1 (known types)"), strict=True):
        ax.set_xticks(np.arange(len(depths)) + 0.4 - width / 2, depths)
        ax.set_ylim(0.5, 1.005)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(methods), 4), fontsize=8)
    fig.suptitle("CellBench lung cell lines: 3 labs, H838 held out of the reference")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(docs / "benchmarks_accuracy.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    sizes = results["query_size"]
    n = [int(k) for k in sizes]
    axes[0].plot(n, [sizes[k]["fedarches"]["wall_s"] for k in sizes], "o-", label="fedarches default, end to end")
    axes[0].plot(n, [sizes[k]["fedarches"]["mapping_s"] for k in sizes], "o--", label="fedarches read + map")
    scvi = [(int(k), v["scvi_surgery"]["wall_s"]) for k, v in sizes.items() if "scvi_surgery" in v]
    if scvi:
        axes[0].plot(*zip(*scvi, strict=True), "s-", label="scvi-tools tutorial surgery")
    axes[0].axhline(60, color="grey", lw=0.8, ls=":")
    axes[0].axhline(600, color="grey", lw=0.8, ls=":")
    axes[0].set(xscale="log", yscale="log", xlabel="query cells", ylabel="seconds", title="mapping time (2 cores)")
    axes[0].legend(fontsize=8)
    axes[1].plot(n, [sizes[k]["fedarches"]["peak_rss_bytes"] / MIB for k in sizes], "o-", label="fedarches")
    if scvi:
        axes[1].plot(
            [int(k) for k, v in sizes.items() if "scvi_surgery" in v],
            [v["scvi_surgery"]["peak_rss_bytes"] / MIB for v in sizes.values() if "scvi_surgery" in v],
            "s-",
            label="scvi-tools tutorial",
        )
    axes[1].axhline(4096, color="grey", lw=0.8, ls=":")
    axes[1].set(xscale="log", xlabel="query cells", ylabel="MiB", title="peak RSS of the mapping process")
    axes[1].legend(fontsize=8)
    labs = results["lab_count"]
    k = [int(x) for x in labs]
    axes[2].plot(k, [labs[x]["round_wall_s"] for x in labs], "o-", label="round")
    axes[2].plot(k, [labs[x]["phases_s"].get("train_s", 0) for x in labs], "o--", label="mapping phase")
    axes[2].plot(k, [labs[x]["phases_s"].get("secure_sum_s", 0) for x in labs], "o:", label="secure sum")
    simulation = {k: v for k, v in results.get("simulation", {}).items() if isinstance(v, dict) and "train_s" in v}
    if simulation:
        axes[2].plot([int(x) for x in simulation], [v["train_s"] for v in simulation.values()], "s-",
                     label="simulation engine: all labs mapped")  # fmt: skip
        k = sorted({*k, *(int(x) for x in simulation)})
    axes[2].set(xlabel="labs (2 cores)", ylabel="seconds", title="round time vs number of labs")
    axes[2].set_xticks(k)
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(docs / "benchmarks_scaling.png", dpi=110)
    plt.close(fig)
    return ["benchmarks_accuracy.png", "benchmarks_scaling.png"]


# --- PBMC -----------------------------------------------------------------------------------------
def _mean(values: list[Any]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def pbmc_methods(splits: dict[str, Any]) -> list[str]:
    """The methods of a section, in table order (the round only where a split ran one)."""
    names: list[str] = []
    for entry in splits.values():
        names += [m for m in pbmc_views(entry) if m not in names]
    return [m for m in (FED_ROUND, FED_MAPPING, *METHODS[1:], CELLTYPIST, CELLTYPIST_VOTING) if m in names]


PAIRS = {
    "num": lambda a, b: f"{fmt(a)} / {fmt(b)}",
    "rate": lambda a, b: f"{fmt(a)} / {_pct(b)}",
    "cost": lambda a, b: f"{a:.1f} / {b:,.0f}",
}


def metric(view: dict[str, Any], key: str) -> Any:
    """One number of a method's view: its wall time, peak RSS in MiB, or an ``overall`` metric (None if absent)."""
    if key == "wall_s":
        return view["wall_s"]
    if key == "peak_rss_mib":
        return view["peak_rss_bytes"] / MIB
    return view["overall"].get(key)


def split_table(splits: dict[str, Any], keys: tuple[str, str], style: str = "num") -> str:
    """Rows: the section's splits (and their mean); columns: methods; cells: two metrics, ``a / b``."""
    methods = pbmc_methods(splits)
    views = {name: pbmc_views(entry) for name, entry in splits.items()}
    show = PAIRS[style]
    rows = [
        [name, *(show(*(metric(v[m], k) for k in keys)) if m in v else "-" for m in methods)]
        for name, v in views.items()
    ]
    if len(views) > 1:
        means = [show(*(_mean([metric(v[m], k) for v in views.values() if m in v]) for k in keys)) for m in methods]
        rows.append(["**mean**", *means])
    return md_table(["split", *methods], rows)


def per_type_f1(splits: dict[str, Any]) -> str:
    """Rows: methods; columns: cell types; F1 averaged over the section's splits that hold the type."""
    methods = pbmc_methods(splits)
    views = [pbmc_views(entry) for entry in splits.values()]
    types = sorted({t for v in views for t in v[FED_MAPPING]["overall"]["f1_per_type"]})
    rows = []
    for m in methods:
        f1s = [v[m]["overall"]["f1_per_type"] for v in views if m in v]
        rows.append([m, *(_mean([f.get(t) for f in f1s]) for t in types)])
    return md_table(["method", *types], rows)


def per_lab_table(entry: dict[str, Any]) -> str:
    """A split with several labs: each lab's accuracy / known-type cells called Unknown, per method."""
    views = pbmc_views(entry)
    labs = list(entry["lab_batches"])
    rows = [
        [m, *(f"{fmt(v['labs'][lab]['accuracy'])} / {_pct(v['labs'][lab].get('known_unknown'))}" for lab in labs)]
        for m, v in views.items()
    ]
    return md_table(["method", *labs], rows)


def pbmc_targets(pbmc: dict[str, Any]) -> tuple[list[list[Any]], list[str]]:
    """Issue 15's targets for fedarches' mapping on every PBMC split: worst split, verdict, the splits missed."""
    splits = {f"{section}: {name}": entry for section, named in pbmc.items() for name, entry in named.items()}
    views = {name: pbmc_views(entry) for name, entry in splits.items()}
    rows, notes = [], []

    def check(label: str, goal: str, values: dict[str, float], ok: Any, worst: Any, show: Any) -> None:
        if not values:
            return
        name = worst(values, key=values.get)
        missed = [n for n, v in values.items() if not ok(v)]
        rows.append([label, goal, f"{show(values[name])} ({name})", verdict(not missed)])
        if missed:
            notes.append(f"{label}: missed on {len(missed)} of {len(values)} splits ({', '.join(missed)}).")

    for anchor in (METHODS[1], METHODS[4]):
        for key, what in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
            gaps = {n: 100 * (v[FED_MAPPING]["overall"][key] - v[anchor]["overall"][key]) for n, v in views.items()}
            check(f"{what}, fedarches - {anchor}", ">= 0 points", gaps, lambda g: g >= 0, min, lambda g: f"{g:+.1f}")
    for key, label, goal, ok, worst, show in (
        ("known_unknown", "known-type cells called Unknown", "<= 5 %", lambda x: x <= PBMC_TARGETS["known_unknown"],
         max, _pct),
        ("unseen_unknown", "cells of a type the reference lacks, called Unknown", ">= 80 %",
         lambda x: x >= PBMC_TARGETS["unseen_unknown"], min, _pct),
        ("unseen_auroc", "AUROC of 1 - confidence for those cells", ">= 0.90",
         lambda x: x >= PBMC_TARGETS["unseen_auroc"], min, fmt),
        ("ece", "ECE on known types", "<= 0.05", lambda x: x <= PBMC_TARGETS["ece"], max, fmt),
    ):  # fmt: skip
        values = {n: v[FED_MAPPING]["overall"].get(key) for n, v in views.items()}
        check(label, goal, {n: x for n, x in values.items() if x is not None}, ok, worst, show)
    return rows, notes


def pbmc_section_text(section: str, splits: dict[str, Any]) -> str:
    """One PBMC section of the document: its splits' tables."""
    first = next(iter(splits.values()))
    sizes = "; ".join(
        f"{name}: reference {e['n_cells']['reference']:,} cells ({' + '.join(e['reference_batches'])}), "
        + ", ".join(f"{lab} {e['n_cells'][lab]:,}" for lab in e["lab_batches"])
        for name, e in splits.items()
    )
    parts = [
        f"### {PBMC_SECTIONS.get(section, section)} (`{first['data']}`)\n\nCells: {sizes}.",
        "Accuracy / macro-F1 (known types):\n\n" + split_table(splits, ("accuracy", "macro_f1")),
        "ECE / known-type cells called Unknown:\n\n" + split_table(splits, ("ece", "known_unknown"), "rate"),
    ]
    if any(e["held_out"] for e in splits.values()):
        parts.append(
            "Held-out type: AUROC of 1 - confidence / its cells called Unknown:\n\n"
            + split_table(splits, ("unseen_auroc", "unseen_unknown"), "rate")
        )
    parts.append("Wall s / peak RSS MiB:\n\n" + split_table(splits, ("wall_s", "peak_rss_mib"), "cost"))
    parts.append("F1 per cell type (mean over the splits):\n\n" + per_type_f1(splits))
    for name, entry in splits.items():
        if len(entry["lab_batches"]) > 1:
            parts.append(f"Per lab, {name} (accuracy / known-type cells called Unknown):\n\n" + per_lab_table(entry))
    return "\n\n".join(parts)


def render_pbmc(results: dict[str, Any]) -> str:
    """The PBMC document's body: data, methods, metrics, targets, every section."""
    pbmc = results["pbmc"]
    rows, notes = pbmc_targets(pbmc)
    quick = (
        f" **Quick smoke run:** the first split of each section only, at most {QUICK_REFERENCE_CELLS} reference "
        f"and {QUICK_LAB_CELLS} lab cells, reference and surgery training cut short: not a measurement."
        if results["quick"]
        else ""
    )
    return f"""## PBMC: real tissue (the main benchmark)

**Data** (`../shared/data`, provenance in its README).{quick} (1) `symphony_pbmc_3chem`: 1,200 PBMCs, nine
types, three 10x chemistries ({", ".join(f"{k} = {v}" for k, v in CHEMISTRIES.items())}); reference = two
chemistries, lab = the third. (2) The same, with one type ({", ".join(HELD_OUT_TYPES)}) in turn left out of the
reference: the lab then holds cells of a type the reference never saw. (3) `zheng_sorted_pbmc3500`: seven FACS-sorted
populations (naive, memory and regulatory CD4 T, naive CD8 T among them); reference = a seeded random
{ZHENG_REFERENCE_SHARE:.0%} of each type, lab = the rest. (4) `kang_ctrl_5donors`: reference = a seeded random
{KANG_REFERENCE_SHARE:.0%} of each donor's cells of each type (the donors are its batches), five labs = each donor's
other cells.

**Methods, same run, same machine, each in a fresh process.** *fedarches (federated round)*, where a split has one:
the round as in the CellBench benchmark ([benchmarks_cellbench.md](benchmarks_cellbench.md): loopback, TLS, the
default privacy policy, one torch thread per lab; wall = `run-round`). *fedarches mapping*: `map_query` with every default on the same bundle, the labs one after
another in one process with 2 threads (what a lab runs, without Flower). Both use a reference bundle built by
`fedarches-server build-reference` with every default. *scvi-tools surgery*, *de novo scANVI*, *kNN* and
*logistic regression on PCA* as in the CellBench benchmark. *CellTypist* (`celltypist` from PyPI): `celltypist.train`
on the reference's log1p counts per 10,000 (all genes) with its default classifier (logistic regression, C = 1, no
feature selection), `celltypist.annotate` per lab; no model is downloaded. CellTypist 1.7.1 asks scikit-learn for
`LogisticRegression(multi_class="ovr")`, which scikit-learn 1.8 removed (Teichlab/celltypist#164): the benchmark
gives it the model scikit-learn < 1.8 fitted for that (one binary logistic regression per type,
`fedarches.bench.methods.celltypist_ovr_logistic_regression`). *+ majority voting*: CellTypist's own refinement over a Leiden
over-clustering of the lab. Wall time: from process start to exit (imports included), the reference bundle's build
not included except in de novo scANVI and CellTypist, which train their own model; CellTypist's plain row leaves out
its voting. Peak RSS of the process (the round: its largest lab process).

**Metrics.** Accuracy, macro-F1, F1 per type and ECE (top-label, 15 bins) over cells of types the reference knows;
held-out AUROC scores 1 - confidence as the detector of the held-out type. Unknown: fedarches' own call
(`obs['is_unknown']`: mapping distance above the 99th percentile of the reference's leave-one-batch-out distances,
or calibrated confidence below 0.5; README, "Mapping quality"); a method without one calls Unknown the cells whose top probability is below 0.5 (for
CellTypist exactly its "prob match" unassigned cells at its default p_thres 0.5).

### Targets: fedarches mapping on every PBMC split

{md_table(["target", "goal", "worst split", ""], rows)}

{chr(10).join("- " + n for n in notes) if notes else "Every target met."}

![PBMC accuracy](benchmarks_pbmc.png)

{(chr(10) * 2).join(pbmc_section_text(section, splits) for section, splits in pbmc.items() if splits)}
{pbmc_sweep_text(results)}"""  # noqa: E501 (the document's own lines)


def pbmc_sweep_text(results: dict[str, Any]) -> str:
    """The PBMC surgery-settings section (empty without a sweep)."""
    sweeps = pbmc_sweeps(results)
    if not sweeps:
        return ""
    table, pick = sweep_table(sweeps)
    return f"""
### Surgery settings on PBMC: accuracy and the Unknown call

fedarches' `map_query` under each setting on the leave-one-chemistry-out splits (one process, 2 threads), with
accuracy's gap in points to the scvi-tools tutorial setting ({BASELINE_SETTING!r}) and the share of known-type cells
called Unknown. "~N steps": epochs = min(100, max(2, ceil(N / steps per epoch))). Bold: the fastest setting within
{TARGETS["accuracy_points"]} points of the tutorial setting that calls at most 5 % of known-type cells Unknown on every
split ({pick or "none"}); the default is `MappingOptions()`.

{table}
"""


def plot_pbmc(results: dict[str, Any], docs: Path) -> str:
    """Mean accuracy and macro-F1 of each method per PBMC section."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sections = {k: v for k, v in results["pbmc"].items() if v}
    methods = [m for m in (FED_ROUND, FED_MAPPING, *METHODS[1:], CELLTYPIST, CELLTYPIST_VOTING)
               if any(m in pbmc_methods(s) for s in sections.values())]  # fmt: skip
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.4))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        for ax, key in zip(axes, ("accuracy", "macro_f1"), strict=True):
            values = [
                _mean([pbmc_views(e)[method]["overall"][key] for e in s.values() if method in pbmc_views(e)]) or 0.0
                for s in sections.values()
            ]
            ax.bar(np.arange(len(sections)) + i * width, values, width, label=method)
    for ax, title in zip(axes, ("accuracy (known types), mean over splits", "macro-F1, mean over splits"), strict=True):
        ax.set_xticks(np.arange(len(sections)) + 0.4 - width / 2, [s.replace("_", " ") for s in sections])
        ax.set_ylim(0.0, 1.005)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    fig.suptitle("PBMC" + (" (quick smoke run: not a measurement)" if results["quick"] else ""))
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(docs / "benchmarks_pbmc.png", dpi=110)
    plt.close(fig)
    return "benchmarks_pbmc.png"


def print_pbmc(results: dict[str, Any]) -> None:
    """The PBMC targets and every split's table, for the terminal."""
    rows, _ = pbmc_targets(results["pbmc"])
    print("\nPBMC targets (fedarches mapping):\n" + text_table(["target", "goal", "worst split", ""], rows))
    for section, splits in results["pbmc"].items():
        for name, entry in splits.items():
            print(f"\n{section}: {name}")
            print(
                text_table(
                    ["method", "accuracy", "macro-F1", "ECE", "held-out AUROC", "held-out Unknown",
                     "known Unknown", "wall s", "peak RSS MiB"],
                    [[m, fmt(v["overall"]["accuracy"]), fmt(v["overall"]["macro_f1"]), fmt(v["overall"]["ece"]),
                      fmt(v["overall"]["unseen_auroc"]), _pct(v["overall"].get("unseen_unknown")),
                      _pct(v["overall"].get("known_unknown")), f"{v['wall_s']:.1f}", mib(v["peak_rss_bytes"])]
                     for m, v in pbmc_views(entry).items()],
                )
            )  # fmt: skip


# --- the document ---------------------------------------------------------------------------------
def header_notes(results: dict[str, Any]) -> str:
    """The run's notes (``results['notes']``), each a paragraph."""
    return "".join(f"\n\n**Note.** {n}" for n in results.get("notes", []))


def reruns(results: dict[str, Any]) -> str:
    """Sentences on sections re-run with ``--resume`` (``results['reruns']``)."""
    done = results.get("reruns", [])
    return "".join(f" Its {r['section']} section was re-run with `--resume`: {r['why']}." for r in done)


def render(results: dict[str, Any], part: str) -> str:
    """One document of the run: ``"pbmc"`` (docs/benchmarks.md) or ``"cellbench"`` (docs/benchmarks_cellbench.md)."""
    title, other = (
        ("Benchmarks: PBMC", "[benchmarks_cellbench.md](benchmarks_cellbench.md) (cell lines)")
        if part == "pbmc"
        else ("Benchmarks: CellBench cell lines", "[benchmarks.md](benchmarks.md) (PBMC, the main benchmark)")
    )
    head = f"""# {title}

Generated by `make bench` (`scripts/bench.py`, then `scripts/bench_doc.py`) from `bench-output/bench/results.json`,
kept beside this page as [{RESULTS_NAME}]({RESULTS_NAME}); do not edit by hand. Run {results["started"]}, {results["total_s"] / 60:.1f} min in all on {results["cpus"]} CPU
cores{" (**quick smoke run: partial, not a measurement**)" if results["quick"] else ""}.{reruns(results)} The other
benchmark of `make bench`: {other}. Unseen-type detection and calibration on CellBench have their own benchmark:
[benchmarks_unknown.md](benchmarks_unknown.md) (`make bench-unknown`); candidate Unknown calls on every PBMC split:
[research_unknown_pbmc.md](research_unknown_pbmc.md). A round's latency, phase by phase:
[benchmarks_latency.md](benchmarks_latency.md) (part of `make bench`, or `python -m fedarches.bench latency`).{header_notes(results)}
"""  # noqa: E501 (the document's own lines)
    return head + "\n" + (render_pbmc(results) if part == "pbmc" else render_cellbench(results))


def render_cellbench(results: dict[str, Any]) -> str:
    """The CellBench document's body: data, methods, targets, accuracy, sweep, scaling, integration."""
    target_rows, notes = targets(results)
    sweep, pick = sweep_table(cellbench_sweeps(results))
    first = next(iter(results["accuracy"].values()))
    fed = first["federated"]

    return f"""## CellBench lung cell lines (the second benchmark)

**Data.** CellBench lung cell lines, `../shared/data/cellbench_lung_celllines.h5ad` (1,021 real cells, demuxlet
genotype labels). Reference: {" + ".join(REFERENCE_BATCHES)} without {HELD_OUT}; labs:
{", ".join(f"{lab} = {batch}" for lab, batch in LABS.items())} (lab_c holds the 64 held-out {HELD_OUT} cells).
Harder variants of the same cells: every count binomially thinned (each UMI kept with probability
min(1, target / cell total)) to about 2,000 and 500 UMIs per cell, reference included; the cell lines are no longer
trivially separable at 500. Accuracy, macro-F1 and ECE (top-label, 15 bins) are over known-type cells;
H838 AUROC scores 1 - `prediction_confidence` as the detector of the held-out type.

**Methods, same run, same machine.** (a) fedarches: `fedarches-server serve`, three `fedarches-client join`
(TLS, node authentication, the default privacy policy: k-suppression, DP counts in a SecAgg+ secure sum), one
`fedarches-server run-round` with every default; each lab one torch thread. Wall time = `run-round` from start to
report. (b) scvi-tools surgery, centralized: plain scvi-tools on the same bundle (`SCANVI.load_query_data`,
`train(max_epochs=100, plan_kwargs={{"weight_decay": 0.0}}, check_val_every_n_epoch=10)`, as its scArches tutorial),
the three labs one after another in one process with 2 threads; wall time from process start (imports included)
to exit. (c) de novo scVI + scANVI on reference and all labs together (queries unlabeled, scvi-tools' default
epochs, 20 scANVI epochs), 2 threads. (d) log-normalized counts of the model's 2,000 genes, PCA (50) fitted on the
reference, kNN (k = 15) or logistic regression. (e) CellTypist, as in the PBMC benchmark
([benchmarks.md](benchmarks.md)). Peak RSS: of each
process (for (a), the largest lab mapping process).

### Targets

{md_table(["target", "goal", "measured", ""], target_rows)}

{chr(10).join("- " + n for n in notes) if notes else "Every target met."}

Bundle sent to each lab in the round: {fed["bundle_bytes"]:,} bytes (first round; later rounds send its id).
Start-up (not in the round time): SuperLink {fed["startup"]["superlink_s"]:.1f} s, three SuperNodes online after
{fed["startup"]["supernodes_online_s"]:.1f} s.

![accuracy](benchmarks_accuracy.png)

### Accuracy, calibration, cost

{chr(10).join("- " + o for o in observations(results))}

{accuracy_tables(results)}

### Surgery settings: the speed sweep

fedarches' `map_query` under each setting, one process, 2 threads, the three labs at each depth; accuracy over all
labs and its gap in points to the scvi-tools tutorial setting ({BASELINE_SETTING!r}) run by the same code.
"~N steps": epochs = min(100, max(2, ceil(N / steps per epoch))) (`fedarches.client.options.auto_max_epochs`).
Bold: the fastest setting within {TARGETS["accuracy_points"]} points of the tutorial setting at every depth
({pick or "none"}). Accuracy is not the only criterion: see the note at the top on the Unknown call.

{sweep}

### Scaling with query size

Queries resampled from the three labs' 2,000-UMI cells (with replacement; each copy thinned again by a factor drawn
from U(0.5, 1), so no two copies are equal), mapped by one process with 2 threads against the 2,000-UMI reference.
End to end = process start (imports) to result; scvi-tools' tutorial setting (100 epochs) was not run at 100k.

{query_size_table(results)}

### Scaling with the number of labs

Labs of {CELLS_PER_SCALED_LAB} resampled cells each, all SuperNodes on this one 2-core machine (one thread each), one
round each with every default.

{lab_count_table(results)}

More labs, in Flower's simulation engine (`fedarches.bench.simulation`: `flwr.simulation.run_simulation`, Ray
actors with one CPU each on the 2 cores). Each simulated lab opens the bundle, maps its {CELLS_PER_SCALED_LAB}
resampled cells with `map_query` (one thread) and replies with its adapter; the ServerApp merges them all with
`merge_adapters`. No TLS, SuperLink/SuperNode processes or privacy layer; Ray actors stay alive between labs, so
scvi-tools is imported once per actor, not once per message.

{simulation_table(results)}

![scaling](benchmarks_scaling.png)

### Integration metrics (scib-metrics)

scib-metrics {results.get("integration", {}).get("version", "")} on the query cells only (labs as batches, true
cell lines as labels; the baseline's PCA is the unintegrated embedding). Not min-max scaled.

{integration_tables(results)}
"""


def print_tables(results: dict[str, Any]) -> None:
    """The run's tables, for the terminal."""
    if results.get("pbmc"):
        print_pbmc(results)
    if results.get("accuracy"):
        print_cellbench(results)


def print_cellbench(results: dict[str, Any]) -> None:
    """The CellBench targets, accuracy tables and sweep pick, for the terminal."""
    rows, _ = targets(results)
    print("\n" + text_table(["target", "goal", "measured", ""], rows))
    for depth, entry in results["accuracy"].items():
        views = method_views(entry)
        print(f"\n{depth}:")
        print(
            text_table(
                ["method", "accuracy", "macro-F1", "ECE", "H838 AUROC", "wall s", "peak RSS MiB"],
                [
                    [
                        m,
                        fmt(v["overall"]["accuracy"]),
                        fmt(v["overall"]["macro_f1"]),
                        fmt(v["overall"]["ece"]),
                        fmt(v["overall"]["unseen_auroc"]),
                        f"{v['wall_s']:.1f}",
                        mib(v["peak_rss_bytes"]),
                    ]
                    for m, v in views.items()
                ],
            )
        )
    _, _, pick = sweep_rows(cellbench_sweeps(results))
    print(f"\nfastest surgery setting within {TARGETS['accuracy_points']} points of the tutorial: {pick}")


def write_doc(results: dict[str, Any], docs: Path) -> list[Path]:
    """docs/benchmarks.md (PBMC) and docs/benchmarks_cellbench.md with their plots, each where the run has it.

    The results themselves go beside them (:data:`RESULTS_NAME`). Returns the paths written.
    """
    docs.mkdir(parents=True, exist_ok=True)
    written = [docs / RESULTS_NAME]
    atomic_write_bytes(written[0], (json.dumps(results, indent=1) + "\n").encode())
    if results.get("pbmc"):
        written += [docs / "benchmarks.md", docs / plot_pbmc(results, docs)]
        written[1].write_text(render(results, "pbmc"))
    if results.get("accuracy"):
        images = [docs / name for name in plot(results, docs)]
        (docs / "benchmarks_cellbench.md").write_text(render(results, "cellbench"))
        written += [docs / "benchmarks_cellbench.md", *images]
    print(f"wrote {', '.join(str(p) for p in written)}")
    return written


def regenerate(source: Path) -> list[Path]:
    """Print the tables of the results at ``source`` and write their documents (a quick run's beside it)."""
    results = json.loads(source.read_text())
    print_tables(results)
    return write_doc(results, source.parent / "docs" if results["quick"] else DOCS)

"""The consortium report of a round: ``report.json``, ``report.html`` and ``composition.png``.

Composition is shown exactly as the labs sent it: released counts only, and suppressed counts as
"suppressed" (their value never reached the coordinator, so they cannot be shown or summed).
Labs whose policy releases composition only inside a secure sum appear in the consortium total
(SecAgg+), which is itself suppressed below k before it is shown.

Each lab's reply names its newest release-ledger entry (``ledger_seq``, ``ledger_head``); the
report keeps them per lab as anchors outside the lab, which ``fedarches-client ledger --report``
checks the lab's ledger against.
"""

from __future__ import annotations

import base64
import html
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedarches.server.round import RoundResult
from fedarches.shared._io import atomic_write_bytes, write_atomically
from fedarches.shared.labels import SUPPRESSED, LabelCounts, suppress

STATUS_COLOURS = {"accepted": "#2e7d32", "rejected": "#c62828", "failed": "#c62828", "dropped": "#ef6c00"}


def report_dict(result: RoundResult) -> dict[str, Any]:
    """The JSON-safe report."""
    settings = result.settings
    labs = [lab.to_dict() for lab in result.labs]
    return {
        "round_id": settings.round_id,
        "status": result.status,
        "message": result.message,
        "started": result.started,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "phases_s": {k: round(v, 2) for k, v in result.phases.items()},
        "secure_sum_stages_s": [round(v, 2) for v in getattr(result.consortium_counts, "stages_s", [])],
        "settings": {
            "min_labs": settings.min_labs,
            "timeout": settings.timeout,
            "max_epochs": settings.max_epochs or "auto",
            "seed": settings.seed,
            "confidence_threshold": settings.confidence_threshold,
            "min_count": settings.min_count,
            "max_adapter_bytes": settings.max_adapter_bytes,
        },
        "bundle": result.bundle.summary(),
        "atlas": None
        if result.atlas is None
        else {
            "bundle_id": result.atlas.bundle_id,
            "path": str(result.atlas.path),
            "batches": result.atlas.batch_categories,
            "size_bytes": result.atlas.size_bytes,
        },
        "labs": labs,
        "dropped": [lab["name"] for lab in labs if lab["status"] in ("dropped", "timed-out", "offline")],
        "rejected": [lab["name"] for lab in labs if lab["status"] in ("rejected", "failed")],
        "composition": composition_table(result),
        "confidence": confidence_summary(result),
        "consortium": consortium_summary(result),
    }


def consortium_summary(result: RoundResult) -> dict[str, Any] | None:
    """The secure sum's total (counts below k suppressed here too), who is in it, and what it means."""
    outcome = result.consortium_counts
    if outcome is None:
        return None
    names = {lab.node_id: lab.name for lab in result.labs}
    summary: dict[str, Any] = {
        "method": "SecAgg+ (Flower), each lab's vector masked; only the sum is unmasked",
        "labs": [names.get(n, str(n)) for n in outcome.contributors],
        "asked": [lab.name for lab in result.labs if lab.composition == "secure-sum"],
        "message": outcome.message,
        "noise": "Each lab adds the differential-privacy noise its own policy sets before masking",
        "cells": None,
        "low_confidence": None,
    }
    if outcome.total is not None:
        counts = LabelCounts.from_vector(result.consortium_categories, outcome.total)
        stats = suppress(counts, min_count=result.settings.min_count)
        summary["cells"] = {t.cell_type: SUPPRESSED if t.n_cells is None else t.n_cells for t in stats.types}
        summary["low_confidence"] = {
            t.cell_type: SUPPRESSED if t.n_low_confidence is None else t.n_low_confidence for t in stats.types
        }
    return summary


def confidence_summary(result: RoundResult) -> dict[str, dict[str, float | int | None]]:
    """Per accepted lab, over released types only: cells, mean confidence, low-confidence share.

    A low-confidence count below k is suppressed at the lab; the share then counts it as unknown
    (``low_confidence_share`` is None when no type released one).
    """
    summary: dict[str, dict[str, float | int | None]] = {}
    for lab in result.labs:
        if lab.label_statistics is None or lab.status != "accepted":
            continue
        released = [t for t in lab.label_statistics.types if t.n_cells is not None]
        cells = sum(t.n_cells for t in released)  # type: ignore[misc]
        low = [t for t in released if t.n_low_confidence is not None]
        with_mean = [t for t in released if t.mean_confidence is not None]  # withheld under DP
        mean_cells = sum(t.n_cells for t in with_mean)  # type: ignore[misc]
        summary[lab.name] = {
            "released_cells": cells,
            "mean_confidence": round(sum(t.n_cells * t.mean_confidence for t in with_mean) / mean_cells, 4)  # type: ignore[operator]
            if mean_cells
            else None,
            "low_confidence_share": round(sum(t.n_low_confidence for t in low) / cells, 4) if cells and low else None,  # type: ignore[misc]
        }
    return summary


def composition_table(result: RoundResult) -> dict[str, dict[str, int | str]]:
    """Lab → cell type → released count or ``"suppressed"``, for accepted labs."""
    table: dict[str, dict[str, int | str]] = {}
    for lab in result.labs:
        if lab.label_statistics is None or lab.status != "accepted":
            continue
        table[lab.name] = {
            t.cell_type: SUPPRESSED if t.n_cells is None else t.n_cells for t in lab.label_statistics.types
        }
    return table


def write_report(result: RoundResult, round_dir: Path) -> dict[str, Path]:
    """Write report.json, composition.png and report.html into ``round_dir``."""
    round_dir = Path(round_dir)
    data = report_dict(result)
    paths = {
        "json": round_dir / "report.json",
        "plot": round_dir / "composition.png",
        "html": round_dir / "report.html",
    }
    atomic_write_bytes(paths["json"], (json.dumps(data, indent=2) + "\n").encode())
    plot_composition(data, paths["plot"])
    atomic_write_bytes(paths["html"], render_html(data, paths["plot"]).encode())
    return paths


def plot_composition(data: dict[str, Any], path: Path) -> None:
    """Stacked bars of released predicted-type counts per lab; suppressed types listed under each bar."""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: the process's backend and figures are left alone

    composition: dict[str, dict[str, Any]] = dict(data["composition"])
    consortium = data.get("consortium")
    if consortium and consortium["cells"] is not None:
        composition[f"consortium (SecAgg+, {len(consortium['labs'])} labs)"] = consortium["cells"]
    types = list(data["bundle"]["label_categories"])
    extra = sorted({t for row in composition.values() for t in row} - set(types))
    types += extra
    labs = list(composition)
    fig = Figure(figsize=(max(6.5, 1.8 * len(labs) + 3), 4.8))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["tab20"]
    bottoms = [0] * len(labs)
    for i, cell_type in enumerate(types):
        heights = [row.get(cell_type) if isinstance(row.get(cell_type), int) else 0 for row in composition.values()]
        if not any(heights):
            continue
        ax.bar(labs, heights, bottom=bottoms, label=cell_type, color=cmap(i % 20), edgecolor="white", linewidth=0.5)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    for x, row in enumerate(composition.values()):
        hidden = [t for t, v in row.items() if v == SUPPRESSED]
        note = f"{len(hidden)} type{'s' if len(hidden) > 1 else ''} suppressed" if hidden else "none suppressed"
        ax.annotate(note, (x, 0), xytext=(0, -28), textcoords="offset points", ha="center", fontsize=8, color="#555")
    ax.set_ylabel("cells (released counts only)")
    ax.set_title(
        f"Predicted composition, round {data['round_id']}\n(counts < k={data['settings']['min_count']} suppressed)",
        fontsize=10,
    )
    if labs:
        ax.legend(title="predicted type", bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no lab accepted", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=120))


def render_html(data: dict[str, Any], plot_path: Path) -> str:
    """A self-contained HTML page (the plot is embedded)."""
    esc = html.escape
    image = base64.b64encode(Path(plot_path).read_bytes()).decode()
    rows = []
    for lab in data["labs"]:
        colour = STATUS_COLOURS.get(lab["status"], "#555")
        adapter = lab["adapter"]
        rows.append(
            "<tr>"
            f"<td>{esc(lab['name'])}</td>"
            f"<td style='color:{colour};font-weight:bold'>{esc(lab['status'])}</td>"
            f"<td>{esc(lab['reason'])}</td>"
            f"<td>{esc(_composition_mode(lab))}</td>"
            f"<td>{'yes' if lab['bundle_sent'] else 'no (held)'}</td>"
            f"<td class=n>{_bytes(lab['bytes_to_lab'])}</td>"
            f"<td class=n>{_bytes(lab['bytes_from_lab'])}</td>"
            f"<td class=n>{'' if adapter is None else _bytes(adapter['bytes'])}</td>"
            f"<td class=n>{'' if lab['n_epochs'] is None else lab['n_epochs']}</td>"
            f"<td class=n>{_seconds(lab['reply_s'])}</td>"
            f"<td class=n>{_ledger_seq(lab)}</td>"
            "</tr>"
        )
    stats_blocks = []
    for lab in data["labs"]:
        stats = lab["label_statistics"]
        if stats is None or lab["status"] != "accepted":
            continue
        body = "".join(
            f"<tr><td>{esc(t['cell_type'])}</td><td class=n>{_cell(t['n_cells'])}</td>"
            f"<td class=n>{_cell(t['mean_confidence'], '.3f')}</td><td class=n>{_cell(t['n_low_confidence'])}</td></tr>"
            for t in stats["types"]
        )
        conf = data["confidence"].get(lab["name"], {})
        share = conf.get("low_confidence_share")
        stats_blocks.append(
            f"<h3>{esc(lab['name'])}</h3><p>{conf.get('released_cells', 0)} cells in released types, mean confidence "
            f"{_cell(conf.get('mean_confidence'), '.3f')}, low-confidence share "
            f"{'below k (suppressed)' if share is None else f'{share:.1%}'}</p>"
            "<table><tr><th>predicted type</th><th>cells</th>"
            f"<th>mean confidence</th><th>low-confidence cells</th></tr>{body}</table>"
        )
    atlas = data["atlas"]
    atlas_line = (
        f"updated atlas <code>{esc(atlas['bundle_id'])}</code> at <code>{esc(atlas['path'])}</code> "
        f"({len(atlas['batches'])} batches, {_bytes(atlas['size_bytes'])})"
        if atlas
        else "no atlas written"
    )
    phases = ", ".join(f"{esc(k)} {v:.1f} s" for k, v in data["phases_s"].items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>fedarches round {esc(data["round_id"])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; color: #222 }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left }}
td.n {{ text-align: right; font-variant-numeric: tabular-nums }}
.sup {{ color: #888; font-style: italic }}
</style></head><body>
<h1>fedarches consortium report: round {esc(data["round_id"])}</h1>
<p><b>{esc(data["status"])}</b>: {esc(data["message"])}<br>
reference bundle <code>{esc(data["bundle"]["bundle_id"])}</code> ({esc(data["bundle"]["model_class"])},
{data["bundle"]["n_genes"]} genes{_proteins(data["bundle"])}, {_bytes(data["bundle"]["size_bytes"])}); {atlas_line}<br>
started {esc(data["started"])}, finished {esc(data["finished"])}; {phases}</p>
<h2>Labs</h2>
<table><tr><th>lab</th><th>status</th><th>reason</th><th>composition</th><th>bundle sent</th><th>bytes to lab</th>
<th>bytes from lab</th><th>adapter</th><th>epochs</th><th>reply after</th><th>ledger entry</th></tr>
{"".join(rows)}</table>
<p>Dropped: {esc(", ".join(data["dropped"]) or "none")}. Rejected: {esc(", ".join(data["rejected"]) or "none")}.</p>
<h2>Ledger anchors</h2>
{_anchors_html(data["labs"])}
<h2>Predicted composition</h2>
<p>As the labs sent it: counts below k={data["settings"]["min_count"]} were suppressed at the lab
and never reached the coordinator.</p>
<img alt="composition" src="data:image/png;base64,{image}" style="max-width:100%">
<h2>Consortium composition (secure sum)</h2>
{_consortium_html(data.get("consortium"))}
<h2>Label statistics per lab</h2>
{"".join(stats_blocks) or "<p>none</p>"}
</body></html>
"""


def ledger_anchor(lab: dict[str, Any]) -> tuple[int, str] | None:
    """A lab entry's ledger anchor ``(seq, head)`` from report.json, or None when its reply carried none."""
    seq, head = lab.get("ledger_seq"), lab.get("ledger_head")
    if isinstance(seq, bool) or not isinstance(seq, int) or not isinstance(head, str) or not head:
        return None
    return seq, head


def _ledger_seq(lab: dict[str, Any]) -> str:
    anchor = ledger_anchor(lab)
    return "" if anchor is None else str(anchor[0])


def _proteins(bundle: dict[str, Any]) -> str:
    """``", 14 proteins"`` for a CITE-seq model (bundles of older reports have no protein names)."""
    n = len(bundle.get("protein_names") or [])
    return f", {n} proteins" if n else ""


def _anchors_html(labs: list[dict[str, Any]]) -> str:
    esc = html.escape
    rows = [
        f"<tr><td>{esc(lab['name'])}</td><td class=n>{anchor[0]}</td><td><code>{esc(anchor[1])}</code></td></tr>"
        for lab in labs
        if (anchor := ledger_anchor(lab)) is not None
    ]
    if not rows:
        return "<p>No lab's reply named a ledger entry in this round.</p>"
    return (
        "<p>Each lab's newest release-ledger entry when it replied, kept here outside the lab. A lab checks that "
        "its ledger still holds it (no entry deleted or rewritten since) with "
        "<code>fedarches-client ledger --lab-dir LAB_DIR --report report.json</code>.</p>"
        "<table><tr><th>lab</th><th>ledger entry</th><th>entry hash (sha256)</th></tr>" + "".join(rows) + "</table>"
    )


def _composition_mode(lab: dict[str, Any]) -> str:
    mode = lab.get("composition") or ""
    if mode == "secure-sum":
        return "secure sum" + ("" if lab.get("in_secure_sum") else " (not in the total)")
    return {"plain": "per lab", "none": "not released"}.get(mode, "")


def _consortium_html(consortium: dict[str, Any] | None) -> str:
    esc = html.escape
    if consortium is None:
        return "<p>No lab chose the secure sum in this round.</p>"
    if consortium["cells"] is None:
        return f"<p>Not computed: {esc(consortium['message'])}. Asked: {esc(', '.join(consortium['asked']))}.</p>"
    low = consortium["low_confidence"]
    body = "".join(
        f"<tr><td>{esc(t)}</td><td class=n>{_cell(n)}</td><td class=n>{_cell(low[t])}</td></tr>"
        for t, n in consortium["cells"].items()
    )
    return (
        f"<p>Sum over {esc(', '.join(consortium['labs']))} by {esc(consortium['method'])}; the coordinator never held "
        f"one lab's counts. {esc(consortium['noise'])}; totals below k are suppressed here.</p>"
        f"<table><tr><th>predicted type</th><th>cells</th><th>low-confidence cells</th></tr>{body}</table>"
    )


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f} s"


def _cell(value: Any, spec: str = "d") -> str:
    if value == SUPPRESSED or value is None:
        return f"<span class=sup>{SUPPRESSED}</span>"
    return format(value, spec)


def _bytes(n: int | None) -> str:
    if not n:
        return "0 B"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"

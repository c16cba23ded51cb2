"""docs/benchmarks_backends.md from a `make bench-backends` results.json (:mod:`fedarches.bench.backends`).

No hand-typed numbers: :func:`tables` (the terminal) and :func:`write_doc` (the document) read every figure from
the results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedarches.bench.backends import (
    CASES,
    CLASSIFIER_EPOCHS,
    COMMAND,
    DOC,
    KEY_MARKERS,
    MAX_LAB_CELLS,
    MAX_REFERENCE_CELLS,
    NOT_RUN,
    PLAIN_PROTEIN_SAMPLES,
    QUICK_LAB_CELLS,
    QUICK_REFERENCE_CELLS,
    REFERENCE_EPOCHS,
    SEED,
)
from fedarches.bench.metrics import TRANSFORMS


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, fmt)


def main_rows(results: dict[str, Any]) -> list[list[str]]:
    """One row per backend (:data:`MAIN_HEADER`), or ``[backend, why it did not run]``."""
    rows = []
    for backend, entry in results["backends"].items():
        if "map" not in entry:
            rows.append([backend, entry.get("skipped") or f"FAILED: {entry.get('failed', '').splitlines()[0]}"])
            continue
        build, run = entry["build"], entry["map"]["rna_only"]
        rows.append(
            [
                backend,
                f"{build['n_reference']} / {build['n_lab']}",
                f"{build['build_s']:.0f} ({_num(build.get('build_cpu_s'), '.0f')})",
                f"{run['surgery_s']:.1f} / {run['plain_s']:.1f}",
                f"{_num(run.get('surgery_cpu_s'), '.1f')} / {_num(run.get('plain_cpu_s'), '.1f')}",
                f"{_mib(build['peak_rss_bytes'])} / {_mib(run['peak_rss_bytes'])}",
                f"{run['adapter_bytes_per_batch']:,}",
                _num(run["accuracy"]),
                _num(run["macro_f1"]),
                _pct(run["unknown_known"]),
                f"{run['max_abs_latent_diff']:.1e}",
                _pct(run["identical_predictions"]),
                f"{run['epochs'][0]}/{run['epochs'][1]}",
            ]
        )
    return rows


MAIN_HEADER = [
    "backend",
    "ref / lab cells",
    "build s (CPU s)",
    "surgery s (fed / scvi)",
    "surgery CPU s (fed / scvi)",
    "peak RSS MiB (build / map)",
    "adapter B/batch",
    "accuracy",
    "macro-F1",
    "Unknown (known types)",
    "max|dz| vs scvi",
    "same calls",
    "epochs f/s",
]


def protein_rows(results: dict[str, Any], transform: str, *, every_protein: bool) -> tuple[list[str], list[list[str]]]:
    """Pearson r (``transform``) of each protein backend, RNA-only and with proteins: median, key markers, each."""
    runs = {b: e["map"] for b, e in results["backends"].items() if "map" in e and "with_proteins" in e["map"]}
    if not runs:
        return [], []
    header = [f"protein ({transform})"] + [f"{b} {v}" for b in runs for v in ("RNA-only", "with proteins")]
    names = list(next(iter(runs.values()))["rna_only"]["protein_r"][transform])
    rows = [
        [name] + [_num(runs[b][v]["protein_r"][transform][name]) for b in runs for v in ("rna_only", "with_proteins")]
        for name in names
    ]
    summary = [["**median (all proteins)**"], *[[f"**{m}**"] for m in KEY_MARKERS if m in names]]
    for b in runs:
        for v in ("rna_only", "with_proteins"):
            r = runs[b][v]["protein_r"][transform]
            summary[0].append(_num(float(np.nanmedian([x for x in r.values() if x is not None]))))
            for row in summary[1:]:
                row.append(_num(r[row[0].strip("*")]))
    return header, summary + (rows if every_protein else [])


CONTRAST_HEADER = [
    "backend",
    "surgery s (fed / scvi)",
    "accuracy",
    "macro-F1",
    "max|dz| vs scvi",
    "same calls",
    "max abs log1p protein diff vs scvi (RNA-only / with)",
]


def tables(results: dict[str, Any]) -> str:
    """The results as plain-text tables, for the terminal."""
    from fedarches.shared._cli import text_table

    rows = main_rows(results)
    ran = [r for r in rows if len(r) == len(MAIN_HEADER)]
    text = text_table(MAIN_HEADER, ran)
    text += "".join(f"\n{r[0]}: {r[1]}" for r in rows if len(r) != len(MAIN_HEADER))
    for transform in TRANSFORMS:
        header, prows = protein_rows(results, transform, every_protein=transform == "log1p")
        if prows:
            text += f"\n\nPearson r, imputed vs measured protein ({transform}):\n"
            text += text_table(header, [[c.strip("*") for c in r] for r in prows])
    return text


def _md(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table (``|`` inside a cell escaped)."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *[line(r) for r in rows]]


def write_doc(results: dict[str, Any], doc: Path = DOC) -> None:
    """Write the document (default :data:`fedarches.bench.backends.DOC`) for ``results``."""
    backends = results["backends"]
    first = {c.data: next((e["build"] for b, e in backends.items() if "build" in e and CASES[b] == c), None)
             for c in CASES.values()}  # fmt: skip
    rows = main_rows(results)
    lines = [
        "# Benchmark: every model backend on real data, beside plain scvi-tools",
        "",
        f"Generated by `make bench-backends` (`scripts/bench_backends.py`); do not edit by hand. Run "
        f"{results['started']}, {results['total_s'] / 60:.1f} min on CPU, {results['threads']} torch thread(s) per "
        f"process{' (QUICK smoke run: not for quoting)' if results['quick'] else ''}.",
        "",
        "Per backend a coordinator process builds the reference (`build_reference`, seed 0, 2,000 seurat_v3 genes at "
        f"most, {REFERENCE_EPOCHS} epochs at most with early stopping, {CLASSIFIER_EPOCHS} classifier epochs) and "
        "signs the bundle; a lab process maps one held-out sample onto it with `map_query` (scArches surgery, "
        "defaults: learning rate 1e-3, 100 epochs at most) and again with plain scvi-tools on the same bundle's "
        "model: `load_query_data(freeze_batchnorm_decoder=True)`, `train` with the same settings and seed, "
        "`get_latent_representation`, `predict(soft=True)` (`fedarches.bench.methods.plain_surgery`, as "
        "`make compare`).",
        "",
        *_md(MAIN_HEADER, [r for r in rows if len(r) == len(MAIN_HEADER)]),
        "",
        *[f"- **{r[0]}**: {r[1]}" for r in rows if len(r) != len(MAIN_HEADER)],
        f"- **peakvi**: {NOT_RUN['peakvi']}.",
        "",
        "Columns: build s = wall seconds of `build_reference` + signing (training, embedding, reference summary), "
        "with the process's CPU seconds in brackets (above the wall time where libraries besides torch, which had "
        "one thread, ran threads of their own); surgery s = `map_query` end to end / plain scvi-tools (load, train, "
        "latent, predictions, imputed proteins); surgery CPU s = the same in CPU seconds (steadier than wall seconds "
        "when other jobs share the cores); peak RSS = high-water mark "
        "of the coordinator's process (reading the data included) / of the lab's process at the end of its "
        "mapping; adapter B/batch = bytes of the tensors that leave the lab per new batch; accuracy and macro-F1 "
        "over lab cells whose type the reference has; Unknown (known types) = share of those cells fedarches calls "
        "Unknown; max|dz| = largest absolute difference between fedarches' and plain scvi-tools' latent; same calls "
        "= share of cells with the same predicted type; epochs f/s = epochs trained by fedarches / plain scvi-tools.",
        "",
        "## Data",
        "",
    ]
    for data, build in first.items():
        case = next(c for c in CASES.values() if c.data == data)
        names = ", ".join(b for b in CASES if CASES[b] == case)
        if build is None:
            lines += [f"- {names}: {case.describe()}: not run.", ""]
            continue
        proteins = f" + {build['n_proteins']} proteins" if build["n_proteins"] else ""
        lines += [
            f"- **{names}**: {case.describe()}. {build['n_reference']} reference cells, {build['n_lab']} lab cells, "
            f"{build['n_genes']} genes{proteins}. "
            f"Reference types: {', '.join(f'{k} {v}' for k, v in build['reference_types'].items())}. Lab: "
            f"{', '.join(f'{k} {v}' for k, v in build['lab_types'].items())}.",
            "",
        ]
        ran = [b for b in CASES if CASES[b] == case and "map" in backends.get(b, {})]
        types = sorted({t for b in ran for t in backends[b]["map"]["rna_only"]["f1_per_type"]})
        f1_rows = [[t, *(_num(backends[b]["map"]["rna_only"]["f1_per_type"].get(t)) for b in ran)] for t in types]
        rare = [f"{t} ({n})" for t, n in build["lab_types"].items() if t in build["label_categories"] and n < 5]
        lines += [
            "F1 per type (lab cells; the main row's mapping)"
            + (f"; macro-F1 averages these, rare lab types included: {', '.join(rare)} cells" if rare else "")
            + ":",
            "",
            *_md(["type", *ran], f1_rows),
            "",
        ]
    caps = (QUICK_REFERENCE_CELLS, QUICK_LAB_CELLS) if results["quick"] else (MAX_REFERENCE_CELLS, MAX_LAB_CELLS)
    lines += [
        f"Subsampling: at most {caps[0]:,} reference and {caps[1]:,} lab cells (seed {SEED}); "
        + (
            "both data sets are smaller than that (1,200 and 500 cells), so every cell is used. "
            if not results["quick"]
            else "QUICK run: subsampled. "
        )
        + "symphony_pbmc_3chem: the authors' (Symphony) labels; only 1,767 genes ship with it. "
        "citefuse_eccite_pbmc500 has **no cell-type labels**: reference labels and the lab's truth both come from "
        "protein-marker gating (`scripts/make_demo_citeseq.py`, `gate_cell_types`, on arcsinh(ADT / 5) of all "
        "cells), so accuracy there is agreement with marker-gated labels, which the RNA-only lab never sees. "
        "Ungated cells are left out of the reference and count as unseen in the lab (not in accuracy). "
        "The demo's dropped protein (CD223, two counts in 500 cells) is dropped here too.",
        "",
        "scVI and totalVI have no classifier: fedarches calls types by weighted kNN on the bundle's reference "
        "embedding, and the plain scvi-tools row applies that same kNN to scvi-tools' own latent, so `same calls` "
        "measures the surgery, not two different classifiers.",
        "",
    ]
    header, prows = protein_rows(results, "log1p", every_protein=True)
    if prows:
        runs = {b: e["map"] for b, e in backends.items() if "map" in e and "with_proteins" in e["map"]}
        contrast = [
            [b, f"{runs[b]['with_proteins']['surgery_s']:.1f} / {runs[b]['with_proteins']['plain_s']:.1f}",
             _num(runs[b]["with_proteins"]["accuracy"]), _num(runs[b]["with_proteins"]["macro_f1"]),
             f"{runs[b]['with_proteins']['max_abs_latent_diff']:.1e}",
             _pct(runs[b]["with_proteins"]["identical_predictions"]),
             " / ".join(_num(runs[b][v].get("max_abs_log1p_protein_diff"), ".1e")
                        for v in ("rna_only", "with_proteins"))]
            for b in runs
        ]  # fmt: skip
        lines += [
            "## CITE-seq: protein imputation",
            "",
            "The lab's proteins are hidden for the main row (an RNA-only lab: every protein is imputed from RNA); "
            "the contrast maps the same cells with their measured proteins. Imputed = `obsm['denoised_protein']` "
            f"(fedarches); plain scvi-tools: `get_normalized_expression(n_samples={PLAIN_PROTEIN_SAMPLES}, "
            "return_mean=True, transform_batch=<reference batches>)`. Score: Pearson r per protein over the lab's "
            "cells between log1p(imputed) and **log1p(measured ADT counts)**, and, summarised, between the CLR "
            "transforms of both (centred log-ratio per cell across the proteins, Seurat's `margin=1`). log1p r also "
            "follows each cell's overall antibody capture, which the isotype controls (IgG1, IgG2a: no specific "
            "signal) show; CLR removes it. Key markers as this panel names them; CD3, CD14 and CD56 stain weakly in "
            "this panel (99th percentile of arcsinh(ADT / 5) about 2.2 to 2.7), so their measured values are mostly "
            "background.",
            "",
            "With proteins given (contrast run):",
            "",
            *_md(CONTRAST_HEADER, contrast),
            "",
            "Pearson r, CLR on both sides (summary):",
            "",
            *_md(*protein_rows(results, "clr", every_protein=False)),
            "",
            "Pearson r, log1p on both sides, every protein:",
            "",
            *_md(header, prows),
            "",
        ]
    lines += [f"Reproduce: `{COMMAND}`; `--quick` is a smoke run.", ""]
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(lines))

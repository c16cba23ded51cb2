"""`python -m fedarches.bench expimap`: the expiMap backend on PBMC beside the scArches package's expiMap.

``symphony_pbmc_3chem``: reference = 10x 3' v1 + v2, lab = 10x 5' (nine types). Gene programs: GO
Biological Process 2023 (``data/demo/go_bp_2023_pbmc.gmt``); genes: the reference's highly variable
genes that belong to a program, programs: those with more than 12 of them, the same mask for both
implementations, per seed:

* fedarches' ``expimap`` backend: ``build_reference`` and ``map_query`` (the tutorial's settings, up
  to 400 epochs with early stopping, kNN labels from the bundle's reference embedding);
* scArches 0.6.1's EXPIMAP (``bench/original/scarches_expimap.py`` in ``.venv-scarches``, its
  tutorial's settings, its own weighted kNN), when ``make scarches-env`` has run.

Reported: accuracy, macro-F1, scib's cell-type and batch ASW on the joint latent, active programs,
epochs, surgery seconds, adapter bytes, reference values surgery changed; and, for fedarches, the
program that most separates each cell type from the others. Writes docs/benchmarks_expimap.md.

    python -m fedarches.bench expimap [--out bench-output/expimap] [--seeds 0 1] [--quick]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedarches.bench.parity import write_results
from fedarches.bench.paths import DOCS, OUTPUT
from fedarches.bench.runner import log
from fedarches.bench.scpoli import (
    LAB_BATCH,
    ORIGINAL_PYTHON,
    PBMC,
    REFERENCE_BATCHES,
    _bundle,
    _cells,
    _frame_table,
    _integration,
    _load,
    _map,
    _reference_latent,
    _scores,
    run_original,
)

DOC = DOCS / "benchmarks_expimap.md"
ORIGINAL_RUNNER = Path(__file__).resolve().parent / "original" / "scarches_expimap.py"
GMT = Path(__file__).resolve().parents[1] / "data" / "demo" / "go_bp_2023_pbmc.gmt"
EPOCHS = 400  # the tutorial's, with early stopping


def run_seed(out: Path, seed: int, *, quick: bool) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """Both implementations on one seed; and fedarches' top program per cell type."""
    from fedarches.shared.gene_programs import read_gmt

    data = _load(PBMC)
    reference, lab = _cells(data, REFERENCE_BATCHES), _cells(data, (LAB_BATCH,))
    truth = lab.obs["cell_type"].to_numpy()
    epochs = 3 if quick else EPOCHS
    work = out / f"seed{seed}"
    tick = time.perf_counter()
    bundle = _bundle(reference, work, seed, epochs, model="expimap", gene_programs=GMT)
    build_s = time.perf_counter() - tick
    result, annotated = _map(lab, bundle, "lab", seed, epochs)
    joint = np.vstack([_reference_latent(bundle, reference), annotated.obsm["X_expiMap"]])
    labels = np.r_[reference.obs["cell_type"], truth]
    batches = np.r_[reference.obs["batch"], lab.obs["batch"]]
    predicted = annotated.obs["predicted_cell_type"].astype(str).to_numpy()
    rows = [{
        "method": "fedarches expiMap (backend)", "seed": seed, **_scores(truth, predicted),
        **_integration(joint, labels, batches), "active_programs": joint.shape[1], "build_s": build_s,
        "surgery_s": result.timings["train_s"], "epochs_query": result.n_epochs,
        "adapter_bytes": result.adapter.nbytes, "reference_values_changed": 0,
        "unknown_share": float(annotated.obs["is_unknown"].mean()),
    }]  # fmt: skip
    log(f"fedarches expiMap seed {seed}: {rows[-1]}")
    top = top_programs(annotated.obsm["expimap_programs"], truth)
    if ORIGINAL_PYTHON.exists():
        genes = list(bundle.var_names)
        mask, terms = read_gmt(GMT).mask(np.asarray(genes))
        (work / "genes.txt").write_text("\n".join(genes) + "\n")
        np.savez(work / "mask.npz", genes=np.asarray(genes), terms=np.asarray(terms), I=mask)
        extra = ["--mask", str(work / "mask.npz"), *(["--quick"] if quick else [])]
        run = run_original(ORIGINAL_RUNNER, work / "genes.txt", seed, work / "original", reference, lab, *extra)
        rows.append({
            "method": "scArches 0.6.1 EXPIMAP", "seed": seed, **run.row,
            "active_programs": int(np.asarray(run.latent["active_terms"]).sum()),
            "epochs_query": run.result["epochs_trained"]["query"],
        })  # fmt: skip
        log(f"scArches EXPIMAP seed {seed}: {rows[-1]}")
    return rows, top


def top_programs(activity: pd.DataFrame, cell_types: np.ndarray, n: int = 2) -> pd.DataFrame:
    """Per cell type, the ``n`` programs whose (signed) activity most exceeds the other cells', in pooled SDs."""
    rows = []
    values = activity.to_numpy()
    for cell_type in sorted(set(cell_types)):
        inside = cell_types == cell_type
        if inside.sum() < 5:  # too few cells to say
            continue
        spread = values.std(axis=0) + 1e-6
        effect = (values[inside].mean(axis=0) - values[~inside].mean(axis=0)) / spread
        for rank in np.argsort(-effect)[:n]:
            rows.append({"cell type": cell_type, "cells": int(inside.sum()), "program": activity.columns[rank],
                         "effect (SD)": round(float(effect[rank]), 2)})  # fmt: skip
    return pd.DataFrame(rows)


def run(out: Path = OUTPUT / "expimap", *, seeds: tuple[int, ...] = (0, 1), quick: bool = False, doc: bool = True,
        invoked: str = "python -m fedarches.bench expimap") -> list[dict[str, Any]]:  # fmt: skip
    """Every seed; results in ``out/results.json`` and, with ``doc``, docs/benchmarks_expimap.md."""
    out.mkdir(parents=True, exist_ok=True)
    rows, tops = [], []
    for seed in seeds:
        seed_rows, top = run_seed(out, seed, quick=quick)
        rows += seed_rows
        tops.append(top)
    write_results(
        out, rows, doc=DOC if doc and not quick else None, invoked=invoked,
        title="expiMap: fedarches' implementation on PBMC beside scArches' own",
        intro=[
            "Reference 10x 3' v1 + v2 (770 cells), lab 10x 5' (430 cells). Gene programs: GO Biological Process 2023",
            "(Enrichr's library as the blitzgsea 1.3.54 sdist ships it), restricted to the data's genes",
            "(`data/demo/go_bp_2023_pbmc.gmt`); genes: the reference's highly variable genes in a program; programs:",
            "those with more than 12 of them. The same genes and mask for both. Up to",
            f"{EPOCHS} epochs with early stopping for reference and surgery; kNN labels (15 neighbours).",
        ],
        numeric=["accuracy", "macro_f1", "label_asw", "batch_asw", "active_programs", "build_s", "surgery_s"],
        extra=[
            f"fedarches, seed {seeds[0]}: the programs whose activity (signed by `latent_directions`) most separates",
            "each of the lab's cell types from its other cells (effect = difference of means in the programs' SDs):",
            "",
            _frame_table(tops[0]),
            "",
        ],
    )  # fmt: skip
    return rows

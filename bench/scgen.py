"""`python -m fedarches.bench scgen`: the scGen backend on PBMC beside the scArches package's scGen.

``symphony_pbmc_3chem``: reference = 10x 3' v1 + v2, lab = 10x 5' (nine types), the genes of
fedarches' reference (1,000 HVGs) for both, per seed:

* fedarches' ``scgen`` backend: ``build_reference`` (50 epochs with early stopping, the reference's
  batches corrected per type), then ``map_query`` twice with no training: a lab without labels
  (types predicted by kNN, then corrected: its accuracy) and a lab with its own labels (scGen's use:
  its integration metrics);
* scArches 0.6.1's scGen (``bench/original/scarches_scgen.py`` in ``.venv-scarches``, its tutorial's
  settings): labels by its weighted kNN on the uncorrected query latent (accuracy), and
  ``map_query_data`` with the lab's labels (integration metrics), when ``make scarches-env`` has run.

Reported: accuracy, macro-F1, scib's cell-type and batch ASW on the joint corrected latent,
reference training and mapping seconds, adapter bytes. Writes docs/benchmarks_scgen.md.

    python -m fedarches.bench scgen [--out bench-output/scgen] [--seeds 0 1 2] [--quick]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

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
    _integration,
    _load,
    _map,
    _scores,
    run_original,
)

DOC = DOCS / "benchmarks_scgen.md"
ORIGINAL_RUNNER = Path(__file__).resolve().parent / "original" / "scarches_scgen.py"
EPOCHS = 50  # the tutorial's


def run_seed(out: Path, seed: int, *, quick: bool) -> list[dict[str, Any]]:
    """Both implementations on one seed."""
    data = _load(PBMC)
    reference, lab = _cells(data, REFERENCE_BATCHES), _cells(data, (LAB_BATCH,))
    truth = lab.obs["cell_type"].to_numpy()
    epochs = 3 if quick else EPOCHS
    work = out / f"seed{seed}"
    tick = time.perf_counter()
    bundle = _bundle(reference, work, seed, epochs, model="scgen")
    build_s = time.perf_counter() - tick
    unlabelled = lab.copy()
    del unlabelled.obs["cell_type"]
    result, predicted_lab = _map(unlabelled, bundle, "lab", seed, None)
    _, corrected_lab = _map(lab, bundle, "lab", seed, None)
    labelled = bundle.embedding["labels"] >= 0
    categories = np.asarray(bundle.label_categories, dtype=object)
    joint = np.vstack([bundle.embedding["latent"][labelled], corrected_lab.obsm["X_scGen"]])
    labels = np.r_[categories[bundle.embedding["labels"][labelled]], truth]
    batches = np.r_[reference.obs["batch"].to_numpy()[labelled], lab.obs["batch"]]  # the embedding keeps every cell
    predicted = predicted_lab.obs["predicted_cell_type"].astype(str).to_numpy()
    rows = [{
        "method": "fedarches scGen (backend)", "seed": seed, **_scores(truth, predicted),
        **_integration(joint, labels, batches), "build_s": build_s, "mapping_s": result.timings["total_s"],
        "adapter_bytes": result.adapter.nbytes, "reference_values_changed": 0,
        "unknown_share": float(predicted_lab.obs["is_unknown"].mean()),
    }]  # fmt: skip
    log(f"fedarches scGen seed {seed}: {rows[-1]}")
    if ORIGINAL_PYTHON.exists():
        (work / "genes.txt").write_text("\n".join(bundle.var_names) + "\n")
        extra = ["--quick"] if quick else []
        run = run_original(ORIGINAL_RUNNER, work / "genes.txt", seed, work / "original", reference, lab, *extra)
        rows.append({
            "method": "scArches 0.6.1 scGen", "seed": seed, **run.row,
            "mapping_s": run.result["wall_seconds"]["query_surgery"],
        })  # fmt: skip
        rows[-1].pop("surgery_s", None)
        log(f"scArches scGen seed {seed}: {rows[-1]}")
    return rows


def run(out: Path = OUTPUT / "scgen", *, seeds: tuple[int, ...] = (0, 1, 2), quick: bool = False, doc: bool = True,
        invoked: str = "python -m fedarches.bench scgen") -> list[dict[str, Any]]:  # fmt: skip
    """Every seed; results in ``out/results.json`` and, with ``doc``, docs/benchmarks_scgen.md."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [row for seed in seeds for row in run_seed(out, seed, quick=quick)]
    write_results(
        out, rows, doc=DOC if doc and not quick else None, invoked=invoked,
        title="scGen: fedarches' implementation on PBMC beside scArches' own",
        intro=[
            "Reference 10x 3' v1 + v2 (770 cells), lab 10x 5' (430 cells), the 1,000 HVGs of fedarches' reference;",
            f"up to {EPOCHS} epochs with early stopping for the reference, nothing trained for the lab.",
            "Accuracy and macro-F1: the lab's types predicted from the reference (kNN, 15 neighbours) with no",
            "labels of its own. ASWs: the joint corrected latent of reference and lab after scGen's correction",
            "with the lab's own labels (what scGen needs).",
        ],
        numeric=["accuracy", "macro_f1", "label_asw", "batch_asw", "build_s", "mapping_s"],
    )  # fmt: skip
    return rows

"""`make bench-unknown`: unseen-cell-type detection and calibration on real data.

For each CellBench cell line in turn, the reference (CEL-seq2 5-line plates p1 + p2 of
../shared/data/cellbench_lung_celllines.h5ad) is built without that line, and lab C
(celseq2_5cl_p3, all five lines) is mapped onto it. Per held-out line it reports, beside scANVI's
raw confidence: detection AUROC of (1 - raw confidence), of (1 - calibrated confidence) and of the
mapping distance; the share of unseen cells called Unknown and of known cells called Unknown;
expected calibration error on known types, raw and calibrated; the summary's size. Thresholds and
temperature come from the reference alone (fedarches.shared.quality); nothing is tuned on lab C.
:mod:`fedarches.bench.report_unknown` writes docs/benchmarks_unknown.md.

    python -m fedarches.bench unknown [HELD_OUT ...]        (make bench-unknown: scripts/bench_unknown.py)
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import anndata as ad
from sklearn.metrics import roc_auc_score

from fedarches.bench.bundles import make_bundle
from fedarches.bench.datasets import CELLBENCH, LABS, REFERENCE_BATCHES
from fedarches.bench.paths import MissingDataError
from fedarches.client.mapping import MappingOptions, map_query
from fedarches.server.reference import ReferenceOptions
from fedarches.shared.quality import expected_calibration_error

QUERY_BATCH = LABS["lab_c"]  # celseq2_5cl_p3
OTHER_LABS = {
    "dropseq_3cl": "Drop-seq",
    "celseq2_3cl": "CEL-seq2, separate experiment",
    "celseq2_5cl_p3": "CEL-seq2 plate p3",
}
THREADS = 2
REFERENCE_OPTIONS = ReferenceOptions(n_top_genes=2000, max_epochs=200, scanvi_max_epochs=20, progress_bar=False)


def run_one(data: ad.AnnData, held_out: str, work: Path) -> dict:
    """Reference without ``held_out``, lab C mapped onto it: detection, Unknown calls, calibration."""
    reference = data[data.obs["batch"].isin(REFERENCE_BATCHES) & (data.obs["cell_type"] != held_out)].copy()
    query = data[data.obs["batch"] == QUERY_BATCH].copy()
    bundle = make_bundle(reference, work, REFERENCE_OPTIONS)
    map_query(query, bundle, lab_name="lab_c", options=MappingOptions(seed=0, progress_bar=False))
    obs = query.obs
    unseen = (obs["cell_type"] == held_out).to_numpy()
    known = ~unseen
    truth = obs["cell_type"].astype(str).to_numpy()
    predicted = obs["predicted_cell_type"].astype(str).to_numpy()
    summary = bundle.reference_summary
    assert summary is not None
    correct = predicted[known] == truth[known]
    raw_confidence = obs["prediction_confidence_raw"].to_numpy()
    calibrated_confidence = obs["prediction_confidence"].to_numpy()
    unknown = obs["is_unknown"].to_numpy(dtype=bool)
    return {
        "held_out": held_out,
        "n_unseen": int(unseen.sum()),
        "n_known": int(known.sum()),
        "auroc_raw": roc_auc_score(unseen, 1 - obs["prediction_confidence_raw"].to_numpy()),
        "auroc_calibrated": roc_auc_score(unseen, 1 - obs["prediction_confidence"].to_numpy()),
        "auroc_distance": roc_auc_score(unseen, obs["mapping_distance"].to_numpy()),
        "unseen_unknown": float(unknown[unseen].mean()),
        "known_unknown": float(unknown[known].mean()),
        "unseen_low_raw": float((obs["prediction_confidence_raw"].to_numpy()[unseen] < 0.5).mean()),
        "ece_raw": expected_calibration_error(raw_confidence[known], correct),
        "ece_calibrated": expected_calibration_error(calibrated_confidence[known], correct),
        "accuracy_known": float((predicted[known] == truth[known]).mean()),
        "temperature": summary.temperature,
        "summary_bytes": summary.nbytes,
        "summary_shape": f"{summary.means.shape[0]} types x {summary.means.shape[1]} latent dimensions",
    }


def known_only(data: ad.AnnData, work: Path) -> list[dict]:
    """False Unknown calls when nothing is held out: each lab mapped onto the full reference."""
    reference = data[data.obs["batch"].isin(REFERENCE_BATCHES)].copy()
    bundle = make_bundle(reference, work, REFERENCE_OPTIONS)
    rows = []
    for batch, technology in OTHER_LABS.items():
        query = data[data.obs["batch"] == batch].copy()
        map_query(query, bundle, lab_name="lab", options=MappingOptions(seed=0, progress_bar=False))
        rows.append({"batch": batch, "technology": technology, "n_cells": query.n_obs,
                     "unknown": float(query.obs["is_unknown"].mean()),
                     "low_raw": float((query.obs["prediction_confidence_raw"] < 0.5).mean())})  # fmt: skip
    return rows


def run(held_out: list[str] | None = None) -> None:
    """Each line of ``held_out`` (default: every cell line) held out in turn, then the known-only labs; the doc."""
    import torch

    from fedarches.bench.report_unknown import DOC, write_doc

    if not CELLBENCH.is_file():
        msg = f"{CELLBENCH} not found: the benchmark reads the data beside the project"
        raise MissingDataError(msg)
    torch.set_num_threads(THREADS)
    data = ad.read_h5ad(CELLBENCH)
    lines = sorted(data.obs["cell_type"].astype(str).unique()) if not held_out else held_out
    start = time.monotonic()
    rows = []
    for line in lines:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(run_one(data, line, Path(tmp)))
        r = rows[-1]
        print(
            f"{line}: AUROC raw {r['auroc_raw']:.3f} calibrated {r['auroc_calibrated']:.3f} distance "
            f"{r['auroc_distance']:.3f}; Unknown: unseen {r['unseen_unknown']:.1%} known {r['known_unknown']:.1%}; "
            f"ECE {r['ece_raw']:.3f} -> {r['ece_calibrated']:.3f} (T {r['temperature']:.2f})",
            flush=True,
        )
    with tempfile.TemporaryDirectory() as tmp:
        known_rows = known_only(data, Path(tmp))
    for r in known_rows:
        print(f"{r['batch']} ({r['technology']}): {r['unknown']:.1%} called Unknown with every type in the reference")
    write_doc(rows, time.monotonic() - start, known_rows, threads=THREADS)
    print(f"wrote {DOC}")

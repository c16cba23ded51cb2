"""`make compare`: fedarches' query mapping against plain scvi-tools scArches surgery on real data.

What it measures, on the CellBench lung cell-line data (../shared/data/cellbench_lung_celllines.h5ad):

1. "all types": a SCANVI reference is built with ``fedarches.server.reference.build_reference`` on the
   CEL-seq2 5-line plates p1 + p2 and written as a signed bundle. Three labs (dropseq_3cl, celseq2_3cl,
   celseq2_5cl_p3) are mapped twice each: with ``fedarches.client.mapping.map_query`` and with plain
   scvi-tools (``SCANVI.load_query_data`` on the bundle's model directory, then ``train`` and ``predict``
   with the same settings map_query uses, and no fedarches code in the model steps:
   :func:`fedarches.bench.methods.plain_surgery`). The table reports accuracy and macro-F1 against the demuxlet
   ground truth for both, how often the two predictions agree, the largest absolute difference between the two
   latent representations, and wall times.
2. "held-out type": the reference is rebuilt without H838 cells and celseq2_5cl_p3 (64 H838 cells) is
   mapped with fedarches. The table reports how many of the novel H838 cells are flagged low-confidence,
   their mean confidence, what they were called, and accuracy on the other cells.

    python -m fedarches.bench compare          (make compare: scripts/compare_scvi.py)

It runs on CPU with 2 threads: about 20 minutes on a busy 2-core machine (two reference builds, six mappings).
Wall times are only comparable within one run on an otherwise idle machine.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score

from fedarches.bench.bundles import make_bundle
from fedarches.bench.datasets import CELLBENCH, HELD_OUT, LABS, REFERENCE_BATCHES
from fedarches.bench.methods import plain_query_adata, plain_surgery
from fedarches.bench.paths import MissingDataError
from fedarches.client.mapping import MappingOptions, map_query
from fedarches.server.reference import ReferenceOptions
from fedarches.shared._cli import text_table
from fedarches.shared._training import quiet_training
from fedarches.shared.bundle import ReferenceBundle

HELD_OUT_LAB = "lab_c"
REFERENCE_OPTIONS = ReferenceOptions(n_top_genes=2000, max_epochs=200, scanvi_max_epochs=20, seed=0, progress_bar=False)
MAPPING_OPTIONS = MappingOptions(seed=0, progress_bar=False)
THREADS = 2
COMMAND = "make compare   (or: .venv/bin/python scripts/compare_scvi.py)"


def map_plain(lab_adata: ad.AnnData, bundle: ReferenceBundle, lab: str, workdir: Path) -> dict[str, Any]:
    """The scArches surgery with scvi-tools only, mirroring map_query's settings."""
    import scvi

    start = time.perf_counter()
    model_dir = bundle.write_model_dir(workdir / f"plain-{lab}")
    query = plain_query_adata(lab_adata, bundle, lab)
    with quiet_training():
        model = plain_surgery(scvi.model.SCANVI, query, model_dir, MAPPING_OPTIONS)
        latent = model.get_latent_representation().astype(np.float32)
        soft = model.predict(soft=True)
    predicted = soft.idxmax(axis=1).astype(str).to_numpy()
    return {
        "predicted": predicted,
        "latent": latent,
        "seconds": time.perf_counter() - start,
        "epochs": len(model.history["elbo_train"]),
    }


def map_fedarches(lab_adata: ad.AnnData, bundle: ReferenceBundle, lab: str) -> tuple[ad.AnnData, Any, float]:
    """``map_query`` on a copy of the lab; the annotated copy, the result and the wall seconds."""
    query = lab_adata.copy()
    start = time.perf_counter()
    result = map_query(query, bundle, lab_name=lab, options=MAPPING_OPTIONS)
    return query, result, time.perf_counter() - start


def all_types(data: ad.AnnData, workdir: Path) -> str:
    """Scenario 1: every lab mapped by fedarches and by plain scvi-tools onto the full reference; its table."""
    reference = data[data.obs["batch"].isin(REFERENCE_BATCHES)].copy()
    tick = time.perf_counter()
    bundle = make_bundle(reference, workdir / "all", REFERENCE_OPTIONS)
    build_s = time.perf_counter() - tick
    rows = []
    for lab, batch in LABS.items():
        lab_adata = data[data.obs["batch"] == batch].copy()
        truth = lab_adata.obs["cell_type"].astype(str).to_numpy()
        fed, result, fed_s = map_fedarches(lab_adata, bundle, lab)
        fed_pred = fed.obs["predicted_cell_type"].astype(str).to_numpy()
        plain = map_plain(lab_adata, bundle, lab, workdir)
        rows.append(
            [
                f"{lab} ({batch})",
                lab_adata.n_obs,
                accuracy_score(truth, fed_pred),
                f1_score(truth, fed_pred, average="macro"),
                accuracy_score(truth, plain["predicted"]),
                f1_score(truth, plain["predicted"], average="macro"),
                float(np.mean(fed_pred == plain["predicted"])),
                f"{float(np.abs(fed.obsm[result.latent_key] - plain['latent']).max()):.2e}",
                f"{result.n_epochs}/{plain['epochs']}",
                f"{fed_s:.1f}",
                f"{plain['seconds']:.1f}",
            ]
        )
    header = [
        "lab",
        "cells",
        "fed acc",
        "fed F1",
        "scvi acc",
        "scvi F1",
        "agree",
        "max|dz|",
        "epochs f/s",
        "fed s",
        "scvi s",
    ]
    return (
        f"== scenario 'all types': reference {'+'.join(REFERENCE_BATCHES)} ({reference.n_obs} cells, "
        f"{len(bundle.var_names)} genes, labels {', '.join(bundle.label_categories)}), built in {build_s:.1f} s\n"
        + text_table(header, rows)
        + "\n(acc/F1 vs demuxlet truth; agree = share of cells where fedarches and plain scvi-tools predict the same"
        " label; max|dz| = max abs latent difference; epochs f/s = epochs trained by fedarches / plain scvi-tools)"
    )


def held_out_type(data: ad.AnnData, workdir: Path) -> str:
    """Scenario 2: lab C mapped onto a reference without H838; what became of the H838 cells."""
    in_reference = data.obs["batch"].isin(REFERENCE_BATCHES) & (data.obs["cell_type"] != HELD_OUT)
    reference = data[in_reference].copy()
    bundle = make_bundle(reference, workdir / "held-out", REFERENCE_OPTIONS)
    batch = LABS[HELD_OUT_LAB]
    lab_adata = data[data.obs["batch"] == batch].copy()
    fed, result, fed_s = map_fedarches(lab_adata, bundle, HELD_OUT_LAB)
    truth = fed.obs["cell_type"].astype(str).to_numpy()
    novel = truth == HELD_OUT
    obs = fed.obs
    pred = obs["predicted_cell_type"].astype(str).to_numpy()
    conf = obs["prediction_confidence"].to_numpy()
    low = obs["is_low_confidence"].to_numpy(dtype=bool)
    summary = [
        ["H838 cells", int(novel.sum()), "", ""],
        [
            "flagged low-confidence (conf < 0.5)",
            f"{int(low[novel].sum())}/{int(novel.sum())}",
            f"{low[novel].mean():.3f}",
            "",
        ],
        ["mean prediction_confidence", "", f"{conf[novel].mean():.3f}", f"{conf[~novel].mean():.3f}"],
        ["flagged low-confidence", f"{int(low[~novel].sum())}/{int((~novel).sum())}", "", f"{low[~novel].mean():.3f}"],
        ["accuracy on non-H838 cells", "", "", accuracy_score(truth[~novel], pred[~novel])],
        ["macro-F1 on non-H838 cells", "", "", f1_score(truth[~novel], pred[~novel], average="macro")],
    ]
    calls = pd.Series(pred[novel]).value_counts()
    call_rows = [
        [label, int(n), f"{conf[novel][pred[novel] == label].mean():.3f}", int(low[novel][pred[novel] == label].sum())]
        for label, n in calls.items()
    ]
    return (
        f"== scenario 'held-out type': reference without {HELD_OUT} ({reference.n_obs} cells, labels "
        f"{', '.join(bundle.label_categories)}); {HELD_OUT_LAB} ({batch}, {lab_adata.n_obs} cells) mapped with "
        f"fedarches in {fed_s:.1f} s, {result.n_epochs} epochs\n"
        + text_table(["measure", "count", "H838", "other cells"], summary)
        + f"\n\nwhat the {int(novel.sum())} {HELD_OUT} cells were predicted as:\n"
        + text_table(["predicted", "cells", "mean conf", "low-conf"], call_rows)
    )


def run() -> None:
    """Both scenarios; their tables printed."""
    import torch

    if not CELLBENCH.is_file():
        msg = f"{CELLBENCH} not found: the comparison reads the data beside the project"
        raise MissingDataError(msg)
    torch.set_num_threads(THREADS)
    data = ad.read_h5ad(CELLBENCH)
    print(f"data: {CELLBENCH} ({data.n_obs} cells x {data.n_vars} genes); torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        first = all_types(data, workdir)
        print("\n" + first, flush=True)
        second = held_out_type(data, workdir)
        print("\n" + second, flush=True)
    print(f"\nreproduce: {COMMAND}")

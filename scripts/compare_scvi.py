"""Benchmark fedarches' query mapping against plain scvi-tools scArches surgery on real data.

What it measures, on the CellBench lung cell-line data (../shared/data/cellbench_lung_celllines.h5ad):

1. "all types": a SCANVI reference is built with ``fedarches.server.reference.build_reference`` on the
   CEL-seq2 5-line plates p1 + p2 and written as a signed bundle. Three labs (dropseq_3cl, celseq2_3cl,
   celseq2_5cl_p3) are mapped twice each: with ``fedarches.client.mapping.map_query`` and with plain
   scvi-tools (``SCANVI.load_query_data`` on the bundle's model directory, then ``train`` and ``predict``
   with the same settings map_query uses, and no fedarches code in the model steps). The table reports
   accuracy and macro-F1 against the demuxlet ground truth for both, how often the two predictions agree,
   the largest absolute difference between the two latent representations, and wall times.
2. "held-out type": the reference is rebuilt without H838 cells and celseq2_5cl_p3 (64 H838 cells) is
   mapped with fedarches. The table reports how many of the novel H838 cells are flagged low-confidence,
   their mean confidence, what they were called, and accuracy on the other cells.

Run it from the repository root:

    .venv/bin/python scripts/compare_scvi.py

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
import scipy.sparse as sp
import torch
from sklearn.metrics import accuracy_score, f1_score

from fedarches.client.mapping import MappingOptions, map_query
from fedarches.client.options import auto_max_epochs
from fedarches.server.reference import ReferenceOptions, build_reference
from fedarches.shared._cli import text_table
from fedarches.shared._training import quiet_training
from fedarches.shared.bundle import ReferenceBundle, write_bundle
from fedarches.shared.crypto import generate_signing_keys, load_private_key

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cellbench_lung_celllines.h5ad"
REFERENCE_BATCHES = ("celseq2_5cl_p1", "celseq2_5cl_p2")
LABS = {"lab_a": "dropseq_3cl", "lab_b": "celseq2_3cl", "lab_c": "celseq2_5cl_p3"}
HELD_OUT = "H838"
HELD_OUT_LAB = "lab_c"
REFERENCE_OPTIONS = ReferenceOptions(n_top_genes=2000, max_epochs=200, scanvi_max_epochs=20, seed=0, progress_bar=False)
MAPPING_OPTIONS = MappingOptions(seed=0, progress_bar=False)
THREADS = 2
COMMAND = "make compare   (or: .venv/bin/python scripts/compare_scvi.py)"


def make_bundle(reference: ad.AnnData, workdir: Path, options: ReferenceOptions = REFERENCE_OPTIONS) -> ReferenceBundle:
    """Train a reference, sign it with fresh keys, and open the bundle as a lab would."""
    contents = build_reference(reference, batch_key="batch", labels_key="cell_type", options=options)
    private, public = generate_signing_keys(workdir / "keys")
    path = write_bundle(workdir / "bundle", contents, load_private_key(private))
    return ReferenceBundle.open(path, public)


def plain_query_adata(lab_adata: ad.AnnData, bundle: ReferenceBundle, lab: str) -> ad.AnnData:
    """The query as a plain scvi-tools user builds it: reference genes in model order, zero-filled."""
    genes = pd.Index(bundle.var_names)
    positions = lab_adata.var_names.get_indexer(genes)
    present = np.flatnonzero(positions >= 0)
    x = sp.csr_matrix(lab_adata.X, dtype=np.float32)
    columns = sp.lil_matrix((lab_adata.n_obs, len(genes)), dtype=np.float32)
    columns[:, present] = x[:, positions[present]]
    setup = bundle.setup_args
    obs = pd.DataFrame(index=lab_adata.obs_names.astype(str))
    obs[setup["batch_key"]] = pd.Categorical([lab] * lab_adata.n_obs)
    if setup.get("labels_key"):
        obs[setup["labels_key"]] = setup.get("unlabeled_category") or "Unknown"
    return ad.AnnData(X=columns.tocsr(), obs=obs, var=pd.DataFrame(index=genes))


def map_plain(lab_adata: ad.AnnData, bundle: ReferenceBundle, lab: str, workdir: Path) -> dict[str, Any]:
    """scArches surgery with scvi-tools only, mirroring map_query's settings."""
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


def plain_surgery(
    model_cls: Any,
    query: ad.AnnData,
    model_dir: Path,
    options: MappingOptions,
    train_kwargs: dict[str, Any] | None = None,
    **load_kwargs: Any,
) -> Any:
    """``model_cls.load_query_data`` (decoder batch-norm frozen) and ``train`` with map_query's settings.

    ``train_kwargs`` replaces the learning-rate and weight-decay arguments, for models that take them otherwise.
    """
    import scvi

    scvi.settings.seed = options.seed
    model = model_cls.load_query_data(query, str(model_dir), **{"freeze_batchnorm_decoder": True, **load_kwargs})
    max_epochs = options.max_epochs or auto_max_epochs(query.n_obs, options.batch_size, options.surgery_steps)
    model.train(
        max_epochs=max_epochs,
        batch_size=options.batch_size,
        **(train_kwargs or {"plan_kwargs": {"weight_decay": 0.0, "lr": options.learning_rate}}),
        early_stopping=options.early_stopping,
        early_stopping_patience=options.early_stopping_patience,
        check_val_every_n_epoch=1 if options.early_stopping else 10,
        enable_progress_bar=False,
    )
    return model


def map_fedarches(lab_adata: ad.AnnData, bundle: ReferenceBundle, lab: str) -> tuple[ad.AnnData, Any, float]:
    query = lab_adata.copy()
    start = time.perf_counter()
    result = map_query(query, bundle, lab_name=lab, options=MAPPING_OPTIONS)
    return query, result, time.perf_counter() - start


def all_types(data: ad.AnnData, workdir: Path) -> str:
    reference = data[data.obs["batch"].isin(REFERENCE_BATCHES)].copy()
    tick = time.perf_counter()
    bundle = make_bundle(reference, workdir / "all")
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
    in_reference = data.obs["batch"].isin(REFERENCE_BATCHES) & (data.obs["cell_type"] != HELD_OUT)
    reference = data[in_reference].copy()
    bundle = make_bundle(reference, workdir / "held-out")
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


def main() -> None:
    torch.set_num_threads(THREADS)
    data = ad.read_h5ad(DATA)
    print(f"data: {DATA} ({data.n_obs} cells x {data.n_vars} genes); torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        first = all_types(data, workdir)
        print("\n" + first, flush=True)
        second = held_out_type(data, workdir)
        print("\n" + second, flush=True)
    print(f"\nreproduce: {COMMAND}")


if __name__ == "__main__":
    main()

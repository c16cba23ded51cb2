"""Map a query onto a reference with the original scArches trVAE, as its surgery tutorial does.

A standalone baseline for fedarches: it never imports fedarches and runs under the separate
environment of ``make scarches-env`` (``.venv-scarches/bin/python``), which holds scArches 0.6.1
and the versions it supports. The trVAE settings are those of scArches' tutorial
``notebooks/trvae_surgery_pipeline.ipynb``: ``TRVAE(condition_key=..., conditions=<reference
batches>, hidden_layer_sizes=[128, 128])`` (every other setting at TRVAE's default), reference
``train(n_epochs=500, alpha_epoch_anneal=200, early_stopping_kwargs=...)``, query
``TRVAE.load_query_data(adata, reference_model)`` then ``train(n_epochs=500, alpha_epoch_anneal=200,
early_stopping_kwargs=..., weight_decay=0)``. Latents come from the query model's
``get_latent(x, c, mean=True)`` (the encoder means, not samples).

trVAE has no classifier: the query's cell types are predicted with scArches' own weighted kNN
(``scarches.utils.knn.weighted_knn_trainer`` / ``weighted_knn_transfer``, k = 15) from the reference
latent (reference labels) to the query latent; its uncertainty is ``1 - P(predicted label)``.

Writes ``result.json``, ``query_cells.csv`` and ``latent.npz`` in ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import os
import platform
import random
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch
    from anndata import AnnData

# The tutorial's early stopping, for the reference and the query model alike ("mode" stays "min").
EARLY_STOPPING_KWARGS: dict[str, Any] = {
    "early_stopping_metric": "val_unweighted_loss",
    "threshold": 0,
    "patience": 20,
    "reduce_lr": True,
    "lr_patience": 13,
    "lr_factor": 0.1,
}
HIDDEN_LAYER_SIZES = [128, 128]
ALPHA_EPOCH_ANNEAL = 200
FULL_EPOCHS = 500  # reference and query alike; early stopping usually ends them sooner
QUICK_EPOCHS = 3
KNN_NEIGHBORS = 15
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    Parameters
    ----------
    argv
        The arguments, ``sys.argv[1:]`` when ``None``.

    Returns
    -------
    argparse.Namespace
        The parsed options.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="h5ad whose X holds raw integer counts")
    parser.add_argument("--genes", required=True, type=Path, help="text file, one gene (var_name) a line")
    parser.add_argument("--batch-key", default="batch", help="obs column of the batches (trVAE condition)")
    parser.add_argument("--labels-key", default="cell_type", help="obs column of the cell-type labels")
    parser.add_argument("--reference-batches", required=True, help="comma-separated batches of the reference")
    parser.add_argument("--query-batches", required=True, help="comma-separated batches of the query")
    parser.add_argument("--hold-out", default="", help="comma-separated cell types dropped from the reference only")
    parser.add_argument("--seed", type=int, default=0, help="seed of numpy, torch and trVAE's trainer")
    parser.add_argument("--threads", type=int, default=1, help="torch (and BLAS) threads")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--quick", action="store_true", help="3 epochs each: a smoke run")
    parser.add_argument("--save-reference", type=Path, default=None, help="also save the reference model here")
    parser.add_argument(
        "--epochs", type=int, default=FULL_EPOCHS, help="most epochs of reference and query (early stopping stays on)"
    )
    return parser.parse_args(argv)


def _split_list(text: str) -> list[str]:
    """The non-empty items of a comma-separated list.

    Parameters
    ----------
    text
        Comma-separated names.

    Returns
    -------
    list[str]
        The names, stripped, in order.
    """
    return [item.strip() for item in text.split(",") if item.strip()]


def set_threads(threads: int) -> None:
    """Fix torch's thread counts (the BLAS ones come from the environment, set in `main`).

    Parameters
    ----------
    threads
        Threads for torch's intra-op and inter-op pools.
    """
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)


def seed_all(seed: int) -> None:
    """Seed Python, numpy and torch; trVAE's trainer gets the same seed as its ``seed`` argument.

    Called after the imports and the data loading, right before the model is built, so that
    nothing that consumes random numbers at import time shifts the streams.

    Parameters
    ----------
    seed
        The seed.
    """
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_data(args: argparse.Namespace) -> tuple[AnnData, AnnData, list[str]]:
    """Read the counts, keep the listed genes in their order and split reference and query by batch.

    Parameters
    ----------
    args
        The parsed options.

    Returns
    -------
    tuple[AnnData, AnnData, list[str]]
        The reference and the query (X dense float32 counts, as the tutorial's ``remove_sparsity``
        leaves them; obs holding only the batch and label columns as strings) and the genes.

    Raises
    ------
    SystemExit
        When a gene, a column or a batch is missing, or a split is empty.
    """
    import anndata as ad
    import numpy as np
    import pandas as pd
    from scipy import sparse

    genes = [line.strip() for line in args.genes.read_text().splitlines() if line.strip()]
    if len(set(genes)) != len(genes):
        msg = f"{args.genes}: duplicate genes"
        raise SystemExit(msg)
    adata = ad.read_h5ad(args.data)
    missing = [g for g in genes if g not in adata.var_names]
    if missing:
        msg = f"{len(missing)} of {len(genes)} genes are not in {args.data}: {missing[:10]}"
        raise SystemExit(msg)
    for key in (args.batch_key, args.labels_key):
        if key not in adata.obs:
            msg = f"obs column {key!r} is not in {args.data}"
            raise SystemExit(msg)
    adata = adata[:, genes]
    batches = adata.obs[args.batch_key].astype(str)
    reference_batches = _split_list(args.reference_batches)
    query_batches = _split_list(args.query_batches)
    unknown = sorted(set(reference_batches + query_batches) - set(batches))
    if unknown:
        msg = f"batches {unknown} are not in obs[{args.batch_key!r}] (found {sorted(set(batches))})"
        raise SystemExit(msg)
    if set(reference_batches) & set(query_batches):
        msg = "a batch is both reference and query"
        raise SystemExit(msg)

    def subset(mask: np.ndarray) -> AnnData:
        part = adata[mask]
        x = part.X.toarray() if sparse.issparse(part.X) else np.asarray(part.X)
        obs = pd.DataFrame(
            {
                args.batch_key: part.obs[args.batch_key].astype(str).to_numpy(dtype=object),
                args.labels_key: part.obs[args.labels_key].astype(str).to_numpy(dtype=object),
            },
            index=part.obs_names.copy(),
        )
        return ad.AnnData(X=x.astype(np.float32), obs=obs, var=pd.DataFrame(index=list(genes)))

    reference_mask = batches.isin(reference_batches).to_numpy()
    hold_out = _split_list(args.hold_out)
    if hold_out:
        absent = sorted(set(hold_out) - set(adata.obs[args.labels_key].astype(str)))
        if absent:
            msg = f"hold-out types {absent} are not in obs[{args.labels_key!r}]"
            raise SystemExit(msg)
        reference_mask &= ~adata.obs[args.labels_key].astype(str).isin(hold_out).to_numpy()
    reference = subset(reference_mask)
    query = subset(batches.isin(query_batches).to_numpy())
    if reference.n_obs == 0 or query.n_obs == 0:
        msg = f"empty split: {reference.n_obs} reference cells, {query.n_obs} query cells"
        raise SystemExit(msg)
    if not np.allclose(reference.X, np.round(reference.X)) or reference.X.min() < 0:
        warnings.warn("X does not look like raw counts; trVAE's 'nb' loss expects them", stacklevel=2)
    return reference, query, genes


def state_dict_snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of a module's state.

    Parameters
    ----------
    model
        The torch module.

    Returns
    -------
    dict[str, torch.Tensor]
        Name to a cloned tensor.
    """
    return {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}


def compare_states(reference: dict[str, torch.Tensor], query: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Count the values that surgery and query training changed.

    A tensor that grew (new batches: condition columns of the first encoder and decoder layers, the
    per-batch dispersion columns of ``theta``) is compared on the part it shares with the reference
    tensor; its new part counts as changed and is reported apart.

    Parameters
    ----------
    reference
        The reference model's state after reference training.
    query
        The query model's state after query training.

    Returns
    -------
    dict[str, Any]
        Counts in total and per tensor, the largest absolute change of a shared value, and the
        tensors that grew with their shapes.
    """
    import torch

    per_tensor: dict[str, dict[str, Any]] = {}
    grown: list[dict[str, Any]] = []
    changed_shared = new_values = 0
    max_abs_change = 0.0
    for name, after in query.items():
        before = reference.get(name)
        if before is None:
            per_tensor[name] = {"changed": 0, "new": after.numel()}
            new_values += after.numel()
            grown.append({"name": name, "reference_shape": None, "query_shape": list(after.shape)})
            continue
        if before.shape == after.shape:
            shared_after, n_new = after, 0
        else:
            if before.dim() != after.dim() or any(b > a for b, a in zip(before.shape, after.shape, strict=True)):
                msg = f"{name}: shape {tuple(before.shape)} -> {tuple(after.shape)} is not a growth"
                raise ValueError(msg)
            shared_after = after[tuple(slice(0, b) for b in before.shape)]
            n_new = after.numel() - before.numel()
            grown.append({"name": name, "reference_shape": list(before.shape), "query_shape": list(after.shape)})
        differs = shared_after != before
        n_changed = int(torch.count_nonzero(differs))
        if n_changed and before.is_floating_point():
            max_abs_change = max(max_abs_change, float((shared_after - before).abs().max()))
        per_tensor[name] = {"changed": n_changed, "new": n_new}
        changed_shared += n_changed
        new_values += n_new
    dropped = sorted(set(reference) - set(query))
    return {
        "changed_values_shared_part": changed_shared,
        "max_abs_change_shared_part": max_abs_change,
        "new_values_grown_part": new_values,
        "changed_values_total": changed_shared + new_values,
        "state_values_reference": int(sum(t.numel() for t in reference.values())),
        "state_values_query": int(sum(t.numel() for t in query.values())),
        "grown_tensors": grown,
        "tensors_only_in_reference": dropped,
        "per_tensor": {k: v for k, v in per_tensor.items() if v["changed"] or v["new"]},
    }


def count_parameters(model: torch.nn.Module) -> dict[str, Any]:
    """Count a module's parameters.

    Parameters
    ----------
    model
        The torch module.

    Returns
    -------
    dict[str, Any]
        All parameter values, those with ``requires_grad``, and the names of the trainable tensors.
    """
    named = list(model.named_parameters())
    return {
        "total": int(sum(p.numel() for _, p in named)),
        "trainable": int(sum(p.numel() for _, p in named if p.requires_grad)),
        "trainable_tensors": [name for name, p in named if p.requires_grad],
    }


def _jsonable(value: Any) -> Any:
    """A JSON-friendly copy of simple values (numbers, strings, lists, dicts).

    Parameters
    ----------
    value
        Any value.

    Returns
    -------
    Any
        The value, with numpy scalars turned to Python ones and anything else to its ``repr``.
    """
    import numpy as np

    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple | range):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def _defaults(function: Any) -> dict[str, Any]:
    """The keyword defaults of a function.

    Parameters
    ----------
    function
        Any callable.

    Returns
    -------
    dict[str, Any]
        Parameter name to default, for the parameters that have one.
    """
    return {
        name: _jsonable(p.default)
        for name, p in inspect.signature(function).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


MODEL_ATTRIBUTES = (
    "condition_key_",
    "conditions_",
    "hidden_layer_sizes_",
    "latent_dim_",
    "dr_rate_",
    "use_mmd_",
    "mmd_on_",
    "mmd_boundary_",
    "recon_loss_",
    "beta_",
    "use_bn_",
    "use_ln_",
    "input_dim_",
)
TRAINER_ATTRIBUTES = (
    "batch_size",
    "train_frac",
    "n_samples",
    "use_stratified_sampling",
    "weight_decay",
    "clip_value",
    "alpha_epoch_anneal",
    "alpha_iter_anneal",
    "alpha_kl",
    "use_early_stopping",
    "reload_best",
    "n_workers",
    "seed",
)


def describe_model(model: Any) -> dict[str, Any]:
    """The settings trVAE resolved, of the model and of its last trainer.

    Parameters
    ----------
    model
        A trained ``scarches.models.TRVAE``.

    Returns
    -------
    dict[str, Any]
        Model attributes, trainer attributes, the optimizer's settings, early stopping, the epochs
        actually run and the best epoch, and whether the trainer's "best state" is a live view of the
        weights (in scArches 0.6.1 ``best_state_dict = model.state_dict()`` keeps no copy, so
        ``reload_best`` restores the last state, not the best one).
    """
    trainer = model.trainer
    stopper = trainer.early_stopping
    train_defaults = _defaults(type(model).train)
    group = trainer.optimizer.param_groups[0]
    epochs_run = int(trainer.epoch) + 1
    best = trainer.best_state_dict
    live = None
    if best is not None:
        current = model.model.state_dict()
        live = all(best[name].data_ptr() == current[name].data_ptr() for name in current)
    return {
        "model": {name: _jsonable(getattr(model, name, None)) for name in MODEL_ATTRIBUTES},
        "trainer": {name: _jsonable(getattr(trainer, name, None)) for name in TRAINER_ATTRIBUTES},
        "optimizer": {
            "class": type(trainer.optimizer).__name__,
            "lr_initial": train_defaults.get("lr"),
            "eps": _jsonable(group.get("eps")),
            "weight_decay": _jsonable(group.get("weight_decay")),
            "lr_final": _jsonable(group.get("lr")),
        },
        "early_stopping": {
            name: _jsonable(getattr(stopper, name, None))
            for name in (
                "early_stopping_metric",
                "mode",
                "threshold",
                "patience",
                "reduce_lr",
                "lr_patience",
                "lr_factor",
            )
        },
        "n_epochs": trainer.n_epochs,
        "epochs_run": epochs_run,
        "stopped_early": epochs_run < trainer.n_epochs,
        "best_epoch": None if trainer.best_epoch is None else int(trainer.best_epoch) + 1,
        "best_state_dict_is_live_view": live,
        "final_logs": {k: _jsonable(v[-1]) for k, v in trainer.logs.items() if len(v) > 0},
    }


def versions() -> dict[str, str]:
    """Versions of Python and the packages that matter.

    Returns
    -------
    dict[str, str]
        Package name to version.
    """
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in (
        "scArches",
        "torch",
        "anndata",
        "scvi-tools",
        "scanpy",
        "numpy",
        "scipy",
        "pandas",
        "scikit-learn",
        "lightning",
    ):
        try:
            found[name.lower()] = version(name)
        except PackageNotFoundError:
            found[name.lower()] = "absent"
    return found


def knn_transfer(
    reference_latent: np.ndarray, reference_labels: list[str], query_latent: np.ndarray, query_names: list[str]
) -> tuple[list[str], np.ndarray]:
    """Predict the query's labels with scArches' weighted kNN on the latent space.

    Parameters
    ----------
    reference_latent
        Latent means of the reference cells.
    reference_labels
        Their labels.
    query_latent
        Latent means of the query cells.
    query_names
        The query's obs names.

    Returns
    -------
    tuple[list[str], np.ndarray]
        The predicted label and the uncertainty (``1 - P(predicted label)``) of each query cell.
    """
    import anndata as ad
    import numpy as np
    import pandas as pd
    from scarches.utils.knn import weighted_knn_trainer, weighted_knn_transfer

    label = "label"
    reference_obs = pd.DataFrame(
        {label: np.asarray(reference_labels, dtype=object)}, index=[str(i) for i in range(len(reference_labels))]
    )
    reference_emb = ad.AnnData(X=np.asarray(reference_latent, dtype=np.float32), obs=reference_obs)
    query_emb = ad.AnnData(
        X=np.asarray(query_latent, dtype=np.float32), obs=pd.DataFrame(index=[str(n) for n in query_names])
    )
    knn_model = weighted_knn_trainer(reference_emb, "X", n_neighbors=KNN_NEIGHBORS)
    labels, uncertainties = weighted_knn_transfer(query_emb, "X", reference_obs, label, knn_model)
    pred = [str(p) for p in labels[label].tolist()]
    uncert = np.asarray(uncertainties[label].tolist(), dtype=np.float64)
    return pred, uncert


def label_metrics(true: list[str], pred: list[str], uncert: np.ndarray, hold_out: list[str]) -> dict[str, Any]:
    """Accuracy and macro F1 of the predicted labels, and uncertainty of held-out types.

    Parameters
    ----------
    true
        True labels of the query cells.
    pred
        Predicted labels.
    uncert
        The kNN's uncertainty per cell.
    hold_out
        Cell types absent from the reference.

    Returns
    -------
    dict[str, Any]
        Accuracy and macro F1 over all query cells (classes: the true labels) and, with a hold-out,
        over the cells of seen types, plus mean uncertainty of all, seen and held-out cells.
    """
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score

    true_a, pred_a = np.asarray(true), np.asarray(pred)
    out: dict[str, Any] = {
        "n_query_cells": len(true_a),
        "accuracy": float(accuracy_score(true_a, pred_a)),
        "macro_f1": float(f1_score(true_a, pred_a, labels=sorted(set(true_a)), average="macro", zero_division=0)),
        "mean_uncertainty": float(np.mean(uncert)),
    }
    if hold_out:
        seen = ~np.isin(true_a, hold_out)
        out["accuracy_seen_types"] = float(accuracy_score(true_a[seen], pred_a[seen]))
        out["macro_f1_seen_types"] = float(
            f1_score(true_a[seen], pred_a[seen], labels=sorted(set(true_a[seen])), average="macro", zero_division=0)
        )
        out["n_held_out_cells"] = int((~seen).sum())
        out["mean_uncertainty_seen"] = float(np.mean(uncert[seen]))
        out["mean_uncertainty_held_out"] = float(np.mean(uncert[~seen])) if (~seen).any() else None
        out["held_out_predicted_as"] = {
            str(k): int(v) for k, v in zip(*np.unique(pred_a[~seen], return_counts=True), strict=True)
        }
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train the reference, do the surgery, train the query, transfer the labels and write the outputs.

    Parameters
    ----------
    args
        The parsed options.

    Returns
    -------
    dict[str, Any]
        The content of ``result.json``.
    """
    set_threads(args.threads)
    import numpy as np
    from scarches.models import TRVAE
    from scarches.models.base._base import SurgeryMixin

    n_epochs = QUICK_EPOCHS if args.quick else args.epochs
    hold_out = _split_list(args.hold_out)
    reference, query, genes = load_data(args)
    args.out.mkdir(parents=True, exist_ok=True)

    reference_conditions = reference.obs[args.batch_key].unique().tolist()
    reference_init = {
        "condition_key": args.batch_key,
        "conditions": reference_conditions,
        "hidden_layer_sizes": HIDDEN_LAYER_SIZES,
    }
    reference_train = {
        "n_epochs": n_epochs,
        "alpha_epoch_anneal": ALPHA_EPOCH_ANNEAL,
        "early_stopping_kwargs": EARLY_STOPPING_KWARGS,
        "seed": args.seed,
    }
    query_load: dict[str, Any] = {}
    query_train = {
        "n_epochs": n_epochs,
        "alpha_epoch_anneal": ALPHA_EPOCH_ANNEAL,
        "early_stopping_kwargs": EARLY_STOPPING_KWARGS,
        "weight_decay": 0,
        "seed": args.seed,
    }

    seed_all(args.seed)
    start = time.perf_counter()
    reference_model = TRVAE(adata=reference, **reference_init)
    reference_model.train(**reference_train)
    reference_seconds = time.perf_counter() - start
    if args.save_reference is not None:  # scArches' own model.save(): attr.pkl, model_params.pt, var_names.csv
        reference_model.save(str(args.save_reference), overwrite=True)
    reference_state = state_dict_snapshot(reference_model.model)
    reference_params = count_parameters(reference_model.model)
    reference_description = describe_model(reference_model)
    reference_model.model.eval()
    reference_latent_before = np.asarray(
        reference_model.get_latent(reference.X, reference.obs[args.batch_key].to_numpy(), mean=True),
        dtype=np.float32,
    )

    start = time.perf_counter()
    query_model = TRVAE.load_query_data(adata=query, reference_model=reference_model, **query_load)
    query_params_at_surgery = count_parameters(query_model.model)
    query_model.train(**query_train)
    query_seconds = time.perf_counter() - start
    query_state = state_dict_snapshot(query_model.model)
    query_params = count_parameters(query_model.model)

    start = time.perf_counter()
    query_model.model.eval()
    query_latent = np.asarray(
        query_model.get_latent(query.X, query.obs[args.batch_key].to_numpy(), mean=True), dtype=np.float32
    )
    reference_latent = np.asarray(
        query_model.get_latent(reference.X, reference.obs[args.batch_key].to_numpy(), mean=True), dtype=np.float32
    )
    true = query.obs[args.labels_key].astype(str).tolist()
    pred, uncert = knn_transfer(
        reference_latent, reference.obs[args.labels_key].astype(str).tolist(), query_latent, list(query.obs_names)
    )
    predict_seconds = time.perf_counter() - start

    with open(args.out / "query_cells.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["obs_name", "true_label", "predicted_label", "uncertainty"])
        for name, t, p, u in zip(query.obs_names, true, pred, uncert, strict=True):
            writer.writerow([name, t, p, f"{u:.6g}"])
    np.savez(
        args.out / "latent.npz",
        query_latent=query_latent,
        query_obs_names=np.asarray(query.obs_names, dtype=str),
        reference_latent=reference_latent,
        reference_obs_names=np.asarray(reference.obs_names, dtype=str),
    )

    result = {
        "tool": "scArches trVAE (original), tutorial settings",
        "command": [sys.executable, *sys.argv],
        "data": str(args.data),
        "genes_file": str(args.genes),
        "n_genes": len(genes),
        "batch_key": args.batch_key,
        "labels_key": args.labels_key,
        "reference_batches": _split_list(args.reference_batches),
        "query_batches": _split_list(args.query_batches),
        "hold_out": hold_out,
        "n_reference_cells": reference.n_obs,
        "n_query_cells": query.n_obs,
        "seed": args.seed,
        "threads": args.threads,
        "quick": args.quick,
        "wall_seconds": {
            "reference_training": round(reference_seconds, 3),
            "query_surgery": round(query_seconds, 3),
            "latent_and_knn": round(predict_seconds, 3),
        },
        "epochs_trained": {
            "reference": reference_description["epochs_run"],
            "query": None,  # filled below
        },
        "versions": versions(),
        "parameters": {
            "reference": reference_params,
            "query_at_surgery": query_params_at_surgery,
            "query": query_params,
        },
        "state_changes": compare_states(reference_state, query_state),
        "reference_latent_max_abs_diff_reference_vs_query_model": float(
            np.max(np.abs(reference_latent - reference_latent_before))
        ),
        "metrics": label_metrics(true, pred, uncert, hold_out),
        "hyperparameters": {
            "reference_init": _jsonable(reference_init),
            "reference_train": _jsonable(reference_train),
            "query_load_query_data": _jsonable(query_load),
            "load_query_data_defaults": _defaults(SurgeryMixin.load_query_data),
            "query_train": _jsonable(query_train),
            "latent": {"model": "query", "method": "get_latent(x, c, mean=True)"},
            "knn": {
                "function": "scarches.utils.knn.weighted_knn_trainer/weighted_knn_transfer",
                "n_neighbors": KNN_NEIGHBORS,
                "threshold": 1,
                "pred_unknown": False,
                "uncertainty": "1 - P(predicted label)",
                "fit_on": "reference latent (query model)",
            },
            "reference_resolved": reference_description,
            "query_resolved": describe_model(query_model),
        },
    }
    result["epochs_trained"]["query"] = result["hyperparameters"]["query_resolved"]["epochs_run"]
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    """Run from the command line.

    Parameters
    ----------
    argv
        The arguments, ``sys.argv[1:]`` when ``None``.

    Returns
    -------
    int
        The exit status.
    """
    args = parse_args(argv)
    for name in THREAD_ENV:  # before numpy, torch and numba load their thread pools
        os.environ[name] = str(args.threads)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    result = run(args)
    metrics, seconds, epochs = result["metrics"], result["wall_seconds"], result["epochs_trained"]
    print(
        f"\naccuracy {metrics['accuracy']:.4f}  macro F1 {metrics['macro_f1']:.4f}  reference "
        f"{seconds['reference_training']:.1f} s ({epochs['reference']} epochs)  query "
        f"{seconds['query_surgery']:.1f} s ({epochs['query']} epochs)  -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

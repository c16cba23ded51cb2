"""Map a query onto a reference with the original scArches scPoli, as its surgery tutorial does.

A standalone baseline for fedarches: it never imports fedarches and runs under the separate
environment of ``make scarches-env`` (``.venv-scarches/bin/python``), which holds scArches 0.6.1
and the versions it supports. The scPoli settings are those of scArches' tutorial
``notebooks/scpoli_surgery_pipeline.ipynb``: ``embedding_dims=5``, ``recon_loss="nb"``, reference
``train(n_epochs=50, pretraining_epochs=40, early_stopping_kwargs=..., eta=5)``, query
``load_query_data(labeled_indices=[])`` then ``train(n_epochs=50, pretraining_epochs=40, eta=10)``,
``classify(scale_uncertainties=True)`` and latents with ``get_latent(mean=True)`` of the query model.

Writes ``result.json``, ``query_cells.csv`` and ``latent.npz`` in ``--out``.
"""

from __future__ import annotations

import argparse
import csv
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

# The tutorial's early stopping of the reference model (the query model keeps scArches' default).
EARLY_STOPPING_KWARGS: dict[str, Any] = {
    "early_stopping_metric": "val_prototype_loss",
    "mode": "min",
    "threshold": 0,
    "patience": 20,
    "reduce_lr": True,
    "lr_patience": 13,
    "lr_factor": 0.1,
}
FULL_EPOCHS = (50, 40)  # (n_epochs, pretraining_epochs), reference and query alike
QUICK_EPOCHS = (3, 2)
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
    parser.add_argument("--batch-key", default="batch", help="obs column of the batches (scPoli condition)")
    parser.add_argument("--labels-key", default="cell_type", help="obs column of the cell-type labels")
    parser.add_argument("--reference-batches", required=True, help="comma-separated batches of the reference")
    parser.add_argument("--query-batches", required=True, help="comma-separated batches of the query")
    parser.add_argument("--hold-out", default="", help="comma-separated cell types dropped from the reference only")
    parser.add_argument("--seed", type=int, default=0, help="seed of numpy, torch and scPoli's trainer")
    parser.add_argument("--threads", type=int, default=1, help="torch (and BLAS) threads")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--quick", action="store_true", help="3 epochs (2 pretraining) each: a smoke run")
    parser.add_argument("--save-reference", type=Path, default=None, help="also save the reference model here")
    parser.add_argument(
        "--epochs", type=int, default=FULL_EPOCHS[0], help="epochs of reference and query (80 %% of them pretraining)"
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
    """Seed Python, numpy and torch; scPoli's trainer gets the same seed as its ``seed`` argument.

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
        The reference and the query (X dense float32 counts, obs holding only the batch and label
        columns as strings) and the genes.

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
        warnings.warn("X does not look like raw counts; scPoli's 'nb' loss expects them", stacklevel=2)
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

    A tensor that grew (new batches: embedding rows, per-batch dispersion columns) is compared on the
    part it shares with the reference tensor; its new part counts as changed and is reported apart.

    Parameters
    ----------
    reference
        The reference model's state after reference training.
    query
        The query model's state after query training.

    Returns
    -------
    dict[str, Any]
        Counts in total and per tensor, and the tensors that grew with their shapes.
    """
    import torch

    per_tensor: dict[str, dict[str, int]] = {}
    grown: list[dict[str, Any]] = []
    changed_shared = new_values = 0
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
        n_changed = int(torch.count_nonzero(shared_after != before))
        per_tensor[name] = {"changed": n_changed, "new": n_new}
        changed_shared += n_changed
        new_values += n_new
    dropped = sorted(set(reference) - set(query))
    return {
        "changed_values_shared_part": changed_shared,
        "new_values_grown_part": new_values,
        "changed_values_total": changed_shared + new_values,
        "state_values_reference": int(sum(t.numel() for t in reference.values())),
        "state_values_query": int(sum(t.numel() for t in query.values())),
        "grown_tensors": grown,
        "tensors_only_in_reference": dropped,
        "per_tensor": {k: v for k, v in per_tensor.items() if v["changed"] or v["new"]},
    }


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Count a module's parameters.

    Parameters
    ----------
    model
        The torch module.

    Returns
    -------
    dict[str, int]
        All parameter values and those with ``requires_grad``.
    """
    params = list(model.parameters())
    return {
        "total": int(sum(p.numel() for p in params)),
        "trainable": int(sum(p.numel() for p in params if p.requires_grad)),
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


MODEL_ATTRIBUTES = (
    "hidden_layer_sizes_",
    "latent_dim_",
    "embedding_dims_",
    "embedding_max_norm_",
    "inject_condition_",
    "dr_rate_",
    "use_mmd_",
    "mmd_on_",
    "recon_loss_",
    "beta_",
    "use_bn_",
    "use_ln_",
    "input_dim_",
    "conditions_",
    "model_cell_types",
)
TRAINER_ATTRIBUTES = (
    "batch_size",
    "train_frac",
    "weight_decay",
    "alpha_epoch_anneal",
    "alpha_kl",
    "use_early_stopping",
    "reload_best",
    "clustering",
    "clustering_res",
    "n_clusters",
    "unlabeled_weight",
    "eta",
    "p_prototype_loss",
    "pretraining_epochs",
    "prototype_training",
    "unlabeled_prototype_training",
    "clip_value",
    "seed",
)


def describe_model(model: Any) -> dict[str, Any]:
    """The settings scPoli resolved, of the model and of its last trainer.

    Parameters
    ----------
    model
        A trained ``scarches.models.scpoli.scPoli``.

    Returns
    -------
    dict[str, Any]
        Model attributes, trainer attributes, early stopping and the epochs actually run.
    """
    trainer = model.trainer
    stopper = trainer.early_stopping
    return {
        "model": {name: _jsonable(getattr(model, name, None)) for name in MODEL_ATTRIBUTES},
        "trainer": {name: _jsonable(getattr(trainer, name, None)) for name in TRAINER_ATTRIBUTES},
        "early_stopping": {
            name: _jsonable(getattr(stopper, name, None))
            for name in ("early_stopping_metric", "mode", "threshold", "patience", "reduce_lr", "lr_patience",
                         "lr_factor")
        },
        "epochs_run": int(trainer.epoch) + 1,
        "n_epochs": trainer.n_epochs,
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
    for name in ("scArches", "torch", "anndata", "scvi-tools", "scanpy", "numpy", "scipy", "pandas",
                 "scikit-learn", "lightning"):
        try:
            found[name.lower()] = version(name)
        except PackageNotFoundError:
            found[name.lower()] = "absent"
    return found


def label_metrics(true: list[str], pred: list[str], uncert: np.ndarray, hold_out: list[str]) -> dict[str, Any]:
    """Accuracy and macro F1 of the predicted labels, and uncertainty of held-out types.

    Parameters
    ----------
    true
        True labels of the query cells.
    pred
        Predicted labels.
    uncert
        scPoli's (scaled) uncertainty per cell.
    hold_out
        Cell types absent from the reference.

    Returns
    -------
    dict[str, Any]
        Accuracy and macro F1 over all query cells (classes: the true labels) and, with a hold-out,
        over the cells of seen types, plus mean uncertainty of seen and held-out cells.
    """
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score

    true_a, pred_a = np.asarray(true), np.asarray(pred)
    out: dict[str, Any] = {
        "n_query_cells": len(true_a),
        "accuracy": float(accuracy_score(true_a, pred_a)),
        "macro_f1": float(f1_score(true_a, pred_a, labels=sorted(set(true_a)), average="macro", zero_division=0)),
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
    """Train the reference, do the surgery, classify the query and write the outputs.

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
    from scarches.models.scpoli import scPoli

    n_epochs, pretraining_epochs = QUICK_EPOCHS if args.quick else (args.epochs, round(0.8 * args.epochs))
    hold_out = _split_list(args.hold_out)
    reference, query, genes = load_data(args)
    args.out.mkdir(parents=True, exist_ok=True)

    reference_init = {"condition_keys": args.batch_key, "cell_type_keys": args.labels_key, "embedding_dims": 5,
                      "recon_loss": "nb"}
    reference_train = {"n_epochs": n_epochs, "pretraining_epochs": pretraining_epochs,
                       "early_stopping_kwargs": EARLY_STOPPING_KWARGS, "eta": 5, "seed": args.seed}
    query_load = {"labeled_indices": []}
    query_train = {"n_epochs": n_epochs, "pretraining_epochs": pretraining_epochs, "eta": 10, "seed": args.seed}
    classify_kwargs = {"scale_uncertainties": True}

    seed_all(args.seed)
    start = time.perf_counter()
    reference_model = scPoli(adata=reference, **reference_init)
    reference_model.train(**reference_train)
    reference_seconds = time.perf_counter() - start
    if args.save_reference is not None:  # scArches' own model.save(): attr.pkl, model_params.pt, var_names.csv
        reference_model.save(str(args.save_reference), overwrite=True)
    reference_state = state_dict_snapshot(reference_model.model)
    reference_params = count_parameters(reference_model.model)
    reference_description = describe_model(reference_model)

    start = time.perf_counter()
    query_model = scPoli.load_query_data(adata=query, reference_model=reference_model, **query_load)
    query_params_at_surgery = count_parameters(query_model.model)
    query_model.train(**query_train)
    query_seconds = time.perf_counter() - start
    query_state = state_dict_snapshot(query_model.model)
    query_params = count_parameters(query_model.model)

    start = time.perf_counter()
    results = query_model.classify(query, **classify_kwargs)[args.labels_key]
    query_model.model.eval()
    query_latent = np.asarray(query_model.get_latent(query, mean=True), dtype=np.float32)
    reference_latent = np.asarray(query_model.get_latent(reference, mean=True), dtype=np.float32)
    predict_seconds = time.perf_counter() - start

    true = query.obs[args.labels_key].astype(str).tolist()
    pred = [str(p) for p in results["preds"]]
    uncert = np.asarray(results["uncert"], dtype=np.float64).reshape(-1)
    with open(args.out / "query_cells.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["obs_name", "true_label", "predicted_label", "uncertainty"])
        for name, t, p, u in zip(query.obs_names, true, pred, uncert, strict=True):
            writer.writerow([name, t, p, f"{u:.6g}"])
    # the labelled prototypes, in the model's cell-type order, so a caller can also classify the latent means
    prototypes = np.asarray(query_model.prototypes_labeled_["mean"].detach().cpu().numpy(), dtype=np.float32)
    encoder = {name: code for name, code in query_model.model.cell_type_encoder.items() if code >= 0}
    prototype_names = [name for name, _ in sorted(encoder.items(), key=lambda item: item[1])][: len(prototypes)]
    np.savez(
        args.out / "latent.npz",
        query_latent=query_latent,
        query_obs_names=np.asarray(query.obs_names, dtype=str),
        reference_latent=reference_latent,
        reference_obs_names=np.asarray(reference.obs_names, dtype=str),
        prototypes=prototypes,
        prototype_names=np.asarray(prototype_names, dtype=str),
    )

    result = {
        "tool": "scArches scPoli (original), tutorial settings",
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
            "classify_and_latent": round(predict_seconds, 3),
        },
        "versions": versions(),
        "parameters": {
            "reference": reference_params,
            "query_at_surgery": query_params_at_surgery,
            "query": query_params,
        },
        "state_changes": compare_states(reference_state, query_state),
        "metrics": label_metrics(true, pred, uncert, hold_out),
        "hyperparameters": {
            "reference_init": _jsonable(reference_init),
            "reference_train": _jsonable(reference_train),
            "query_load_query_data": _jsonable(query_load),
            "query_train": _jsonable(query_train),
            "classify": _jsonable(classify_kwargs),
            "latent": {"model": "query", "mean": True},
            "reference_resolved": reference_description,
            "query_resolved": describe_model(query_model),
        },
    }
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
    metrics, seconds = result["metrics"], result["wall_seconds"]
    print(
        f"accuracy {metrics['accuracy']:.4f}  macro F1 {metrics['macro_f1']:.4f}  reference "
        f"{seconds['reference_training']:.1f} s  query {seconds['query_surgery']:.1f} s  -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

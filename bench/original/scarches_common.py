"""What the runners of the original scArches models share: options, data, surgery steps, metrics, outputs.

Imported by ``scarches_scpoli.py`` and ``scarches_trvae.py`` as ``from scarches_common import ...``
(a script's own folder is on ``sys.path``, whatever the working directory). Like them it never
imports fedarches and runs under ``.venv-scarches/bin/python``. numpy, torch, anndata and
scikit-learn are imported inside the functions, so that the thread variables set by
:func:`prepare_process` are in place before their thread pools load.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import random
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch
    from anndata import AnnData

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")
EARLY_STOPPING_ATTRIBUTES = (
    "early_stopping_metric",
    "mode",
    "threshold",
    "patience",
    "reduce_lr",
    "lr_patience",
    "lr_factor",
)
VERSION_PACKAGES = (
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
)


def base_parser(description: str, model: str, quick_help: str) -> argparse.ArgumentParser:
    """The options both runners take, in their order on the command line.

    Parameters
    ----------
    description
        The parser's description.
    model
        The model's name in the help texts ("scPoli", "trVAE").
    quick_help
        The help text of ``--quick``.

    Returns
    -------
    argparse.ArgumentParser
        A parser with every option up to ``--save-reference``; the runner adds ``--epochs``.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", required=True, type=Path, help="h5ad whose X holds raw integer counts")
    parser.add_argument("--genes", required=True, type=Path, help="text file, one gene (var_name) a line")
    parser.add_argument("--batch-key", default="batch", help=f"obs column of the batches ({model} condition)")
    parser.add_argument("--labels-key", default="cell_type", help="obs column of the cell-type labels")
    parser.add_argument("--reference-batches", required=True, help="comma-separated batches of the reference")
    parser.add_argument("--query-batches", required=True, help="comma-separated batches of the query")
    parser.add_argument("--hold-out", default="", help="comma-separated cell types dropped from the reference only")
    parser.add_argument("--seed", type=int, default=0, help=f"seed of numpy, torch and {model}'s trainer")
    parser.add_argument("--threads", type=int, default=1, help="torch (and BLAS) threads")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--save-reference", type=Path, default=None, help="also save the reference model here")
    return parser


def prepare_process(threads: int) -> None:
    """Set the BLAS thread variables and silence the deprecation noise of the older stack.

    Called first in ``main``, before numpy, torch and numba load their thread pools.

    Parameters
    ----------
    threads
        The thread count for every variable of :data:`THREAD_ENV`.
    """
    for name in THREAD_ENV:
        os.environ[name] = str(threads)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")


def split_list(text: str) -> list[str]:
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
    """Fix torch's thread counts (the BLAS ones come from the environment, see :func:`prepare_process`).

    Parameters
    ----------
    threads
        Threads for torch's intra-op and inter-op pools.
    """
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)


def seed_all(seed: int) -> None:
    """Seed Python, numpy and torch; the model's trainer gets the same seed as its ``seed`` argument.

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


def load_data(args: argparse.Namespace, model: str) -> tuple[AnnData, AnnData, list[str]]:
    """Read the counts, keep the listed genes in their order and split reference and query by batch.

    Parameters
    ----------
    args
        The parsed options.
    model
        The model's name, for the warning about counts that do not look raw.

    Returns
    -------
    tuple[AnnData, AnnData, list[str]]
        The reference and the query (X dense float32 counts, as the tutorials' ``remove_sparsity``
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
    reference_batches = split_list(args.reference_batches)
    query_batches = split_list(args.query_batches)
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
    hold_out = split_list(args.hold_out)
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
        warnings.warn(f"X does not look like raw counts; {model}'s 'nb' loss expects them", stacklevel=2)
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


def compare_states(
    reference: dict[str, torch.Tensor], query: dict[str, torch.Tensor], *, max_abs_change: bool = False
) -> dict[str, Any]:
    """Count the values that surgery and query training changed.

    A tensor that grew (new batches: embedding rows or condition columns, per-batch dispersion
    columns) is compared on the part it shares with the reference tensor; its new part counts as
    changed and is reported apart.

    Parameters
    ----------
    reference
        The reference model's state after reference training.
    query
        The query model's state after query training.
    max_abs_change
        Also report the largest absolute change of a shared floating-point value, as
        ``max_abs_change_shared_part`` (second key).

    Returns
    -------
    dict[str, Any]
        Counts in total and per tensor, with ``max_abs_change`` the largest change, and the tensors
        that grew with their shapes.
    """
    import torch

    per_tensor: dict[str, dict[str, int]] = {}
    grown: list[dict[str, Any]] = []
    changed_shared = new_values = 0
    largest = 0.0
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
        if max_abs_change and n_changed and before.is_floating_point():
            largest = max(largest, float((shared_after - before).abs().max()))
        per_tensor[name] = {"changed": n_changed, "new": n_new}
        changed_shared += n_changed
        new_values += n_new
    dropped = sorted(set(reference) - set(query))
    out: dict[str, Any] = {"changed_values_shared_part": changed_shared}
    if max_abs_change:
        out["max_abs_change_shared_part"] = largest
    out.update(
        {
            "new_values_grown_part": new_values,
            "changed_values_total": changed_shared + new_values,
            "state_values_reference": int(sum(t.numel() for t in reference.values())),
            "state_values_query": int(sum(t.numel() for t in query.values())),
            "grown_tensors": grown,
            "tensors_only_in_reference": dropped,
            "per_tensor": {k: v for k, v in per_tensor.items() if v["changed"] or v["new"]},
        }
    )
    return out


def count_parameters(model: torch.nn.Module, *, trainable_tensors: bool = False) -> dict[str, Any]:
    """Count a module's parameters.

    Parameters
    ----------
    model
        The torch module.
    trainable_tensors
        Also list the names of the trainable tensors, as ``trainable_tensors``.

    Returns
    -------
    dict[str, Any]
        All parameter values and those with ``requires_grad`` (and, when asked, the trainable names).
    """
    named = list(model.named_parameters())
    out: dict[str, Any] = {
        "total": int(sum(p.numel() for _, p in named)),
        "trainable": int(sum(p.numel() for _, p in named if p.requires_grad)),
    }
    if trainable_tensors:
        out["trainable_tensors"] = [name for name, p in named if p.requires_grad]
    return out


@dataclass
class Trained:
    """A model after one training stage, with what the runners report of it.

    Attributes
    ----------
    model
        The scArches model (its torch module is ``model.model``).
    seconds
        Wall seconds of building (or surgery) and training.
    state
        A snapshot of the module's state after training.
    parameters
        :func:`count_parameters` after training.
    parameters_at_surgery
        :func:`count_parameters` right after ``load_query_data``, for a query model.
    """

    model: Any
    seconds: float
    state: dict[str, torch.Tensor]
    parameters: dict[str, Any]
    parameters_at_surgery: dict[str, Any] | None = None


def train_reference(
    model_class: Any,
    adata: AnnData,
    init: dict[str, Any],
    train: dict[str, Any],
    *,
    seed: int,
    save_reference: Path | None,
    trainable_tensors: bool = False,
    reseed: bool = False,
) -> Trained:
    """Seed everything, build and train the reference model, and save it when asked.

    Parameters
    ----------
    model_class
        The scArches model class (``scPoli``, ``TRVAE``).
    adata
        The reference.
    init
        Keyword arguments of the constructor (besides ``adata``).
    train
        Keyword arguments of ``train``.
    seed
        The seed of :func:`seed_all`.
    save_reference
        A folder for scArches' own ``model.save()`` (``attr.pkl``, ``model_params.pt``,
        ``var_names.csv``), or ``None``.
    trainable_tensors
        Passed to :func:`count_parameters`.
    reseed
        Seed everything again between building and training (scGen's trainer shuffles with
        Python's ``random`` and reseeds torch with its own seed).

    Returns
    -------
    Trained
        The trained reference model.
    """
    seed_all(seed)
    start = time.perf_counter()
    model = model_class(adata=adata, **init)
    if reseed:
        seed_all(seed)
    model.train(**train)
    seconds = time.perf_counter() - start
    if save_reference is not None:
        model.save(str(save_reference), overwrite=True)
    return Trained(
        model=model,
        seconds=seconds,
        state=state_dict_snapshot(model.model),
        parameters=count_parameters(model.model, trainable_tensors=trainable_tensors),
    )


def map_query(
    model_class: Any,
    adata: AnnData,
    reference_model: Any,
    load: dict[str, Any],
    train: dict[str, Any],
    *,
    trainable_tensors: bool = False,
) -> Trained:
    """Do the surgery (``load_query_data``) and train the query model.

    Parameters
    ----------
    model_class
        The scArches model class.
    adata
        The query.
    reference_model
        The trained reference model.
    load
        Keyword arguments of ``load_query_data`` (besides ``adata`` and ``reference_model``).
    train
        Keyword arguments of ``train``.
    trainable_tensors
        Passed to :func:`count_parameters`.

    Returns
    -------
    Trained
        The trained query model, with its parameter counts right after the surgery.
    """
    start = time.perf_counter()
    model = model_class.load_query_data(adata=adata, reference_model=reference_model, **load)
    at_surgery = count_parameters(model.model, trainable_tensors=trainable_tensors)
    model.train(**train)
    seconds = time.perf_counter() - start
    return Trained(
        model=model,
        seconds=seconds,
        state=state_dict_snapshot(model.model),
        parameters=count_parameters(model.model, trainable_tensors=trainable_tensors),
        parameters_at_surgery=at_surgery,
    )


def parameter_counts(reference: Trained, query: Trained) -> dict[str, Any]:
    """The ``parameters`` entry of ``result.json``.

    Parameters
    ----------
    reference
        The trained reference model.
    query
        The trained query model.

    Returns
    -------
    dict[str, Any]
        The counts of the reference, of the query right after the surgery and after training.
    """
    return {
        "reference": reference.parameters,
        "query_at_surgery": query.parameters_at_surgery,
        "query": query.parameters,
    }


def jsonable(value: Any) -> Any:
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
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return repr(value)


def pick_attributes(obj: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """Some attributes of an object, JSON-friendly.

    Parameters
    ----------
    obj
        A model, a trainer or an early stopper.
    names
        The attribute names.

    Returns
    -------
    dict[str, Any]
        Name to :func:`jsonable` value, ``None`` where the attribute is absent.
    """
    return {name: jsonable(getattr(obj, name, None)) for name in names}


def final_logs(trainer: Any) -> dict[str, Any]:
    """The last value of each of a trainer's non-empty logs.

    Parameters
    ----------
    trainer
        A scArches trainer.

    Returns
    -------
    dict[str, Any]
        Log name to its last value.
    """
    return {k: jsonable(v[-1]) for k, v in trainer.logs.items() if len(v) > 0}


def versions() -> dict[str, str]:
    """Versions of Python and the packages that matter.

    Returns
    -------
    dict[str, str]
        Package name to version.
    """
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in VERSION_PACKAGES:
        try:
            found[name.lower()] = version(name)
        except PackageNotFoundError:
            found[name.lower()] = "absent"
    return found


def label_metrics(
    true: list[str], pred: list[str], uncert: np.ndarray, hold_out: list[str], *, mean_uncertainty: bool = False
) -> dict[str, Any]:
    """Accuracy and macro F1 of the predicted labels, and uncertainty of held-out types.

    Parameters
    ----------
    true
        True labels of the query cells.
    pred
        Predicted labels.
    uncert
        The uncertainty per cell (scPoli's scaled uncertainty, or the kNN's).
    hold_out
        Cell types absent from the reference.
    mean_uncertainty
        Also report the mean uncertainty of all cells, as ``mean_uncertainty`` (after ``macro_f1``).

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
    if mean_uncertainty:
        out["mean_uncertainty"] = float(np.mean(uncert))
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


def write_query_outputs(
    out: Path,
    reference: AnnData,
    query: AnnData,
    labels: tuple[list[str], list[str], np.ndarray],
    latents: tuple[np.ndarray, np.ndarray],
    extra_arrays: dict[str, np.ndarray] | None = None,
) -> None:
    """Write ``query_cells.csv`` and ``latent.npz``.

    Parameters
    ----------
    out
        The output folder.
    reference
        The reference (for its obs names).
    query
        The query (for its obs names).
    labels
        True labels, predicted labels and uncertainty of the query cells.
    latents
        The query's and the reference's latents (float32).
    extra_arrays
        More arrays for ``latent.npz``, stored after the four standard ones.
    """
    import numpy as np

    true, pred, uncert = labels
    with open(out / "query_cells.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["obs_name", "true_label", "predicted_label", "uncertainty"])
        for name, t, p, u in zip(query.obs_names, true, pred, uncert, strict=True):
            writer.writerow([name, t, p, f"{u:.6g}"])
    query_latent, reference_latent = latents
    np.savez(
        out / "latent.npz",
        query_latent=query_latent,
        query_obs_names=np.asarray(query.obs_names, dtype=str),
        reference_latent=reference_latent,
        reference_obs_names=np.asarray(reference.obs_names, dtype=str),
        **(extra_arrays or {}),
    )


def result_header(
    args: argparse.Namespace, tool: str, n_genes: int, reference: AnnData, query: AnnData
) -> dict[str, Any]:
    """The first entries of ``result.json``: the tool, the command, the data and the run's options.

    Parameters
    ----------
    args
        The parsed options.
    tool
        What ran.
    n_genes
        The number of genes kept.
    reference
        The reference.
    query
        The query.

    Returns
    -------
    dict[str, Any]
        The entries from ``tool`` to ``quick``, in their order.
    """
    return {
        "tool": tool,
        "command": [sys.executable, *sys.argv],
        "data": str(args.data),
        "genes_file": str(args.genes),
        "n_genes": n_genes,
        "batch_key": args.batch_key,
        "labels_key": args.labels_key,
        "reference_batches": split_list(args.reference_batches),
        "query_batches": split_list(args.query_batches),
        "hold_out": split_list(args.hold_out),
        "n_reference_cells": reference.n_obs,
        "n_query_cells": query.n_obs,
        "seed": args.seed,
        "threads": args.threads,
        "quick": args.quick,
    }


def keyword_defaults(function: Any) -> dict[str, Any]:
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
    import inspect

    return {
        name: jsonable(p.default)
        for name, p in inspect.signature(function).parameters.items()
        if p.default is not inspect.Parameter.empty
    }

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
import json
import time
from typing import TYPE_CHECKING, Any

from scarches_common import (
    EARLY_STOPPING_ATTRIBUTES,
    base_parser,
    compare_states,
    final_logs,
    jsonable,
    keyword_defaults,
    label_metrics,
    load_data,
    map_query,
    parameter_counts,
    pick_attributes,
    prepare_process,
    result_header,
    set_threads,
    split_list,
    train_reference,
    versions,
    write_query_outputs,
)

if TYPE_CHECKING:
    import numpy as np

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
    parser = base_parser(__doc__.splitlines()[0], "trVAE", "3 epochs each: a smoke run")
    parser.add_argument(
        "--epochs", type=int, default=FULL_EPOCHS, help="most epochs of reference and query (early stopping stays on)"
    )
    return parser.parse_args(argv)


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
    train_defaults = keyword_defaults(type(model).train)
    group = trainer.optimizer.param_groups[0]
    epochs_run = int(trainer.epoch) + 1
    best = trainer.best_state_dict
    live = None
    if best is not None:
        current = model.model.state_dict()
        live = all(best[name].data_ptr() == current[name].data_ptr() for name in current)
    return {
        "model": pick_attributes(model, MODEL_ATTRIBUTES),
        "trainer": pick_attributes(trainer, TRAINER_ATTRIBUTES),
        "optimizer": {
            "class": type(trainer.optimizer).__name__,
            "lr_initial": train_defaults.get("lr"),
            "eps": jsonable(group.get("eps")),
            "weight_decay": jsonable(group.get("weight_decay")),
            "lr_final": jsonable(group.get("lr")),
        },
        "early_stopping": pick_attributes(stopper, EARLY_STOPPING_ATTRIBUTES),
        "n_epochs": trainer.n_epochs,
        "epochs_run": epochs_run,
        "stopped_early": epochs_run < trainer.n_epochs,
        "best_epoch": None if trainer.best_epoch is None else int(trainer.best_epoch) + 1,
        "best_state_dict_is_live_view": live,
        "final_logs": final_logs(trainer),
    }


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
    hold_out = split_list(args.hold_out)
    reference, query, genes = load_data(args, "trVAE")
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

    trained_reference = train_reference(
        TRVAE,
        reference,
        reference_init,
        reference_train,
        seed=args.seed,
        save_reference=args.save_reference,
        trainable_tensors=True,
    )
    reference_model = trained_reference.model
    reference_description = describe_model(reference_model)
    reference_model.model.eval()
    reference_latent_before = np.asarray(
        reference_model.get_latent(reference.X, reference.obs[args.batch_key].to_numpy(), mean=True),
        dtype=np.float32,
    )
    trained_query = map_query(TRVAE, query, reference_model, query_load, query_train, trainable_tensors=True)
    query_model = trained_query.model

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
    write_query_outputs(args.out, reference, query, (true, pred, uncert), (query_latent, reference_latent))

    result = {
        **result_header(args, "scArches trVAE (original), tutorial settings", len(genes), reference, query),
        "wall_seconds": {
            "reference_training": round(trained_reference.seconds, 3),
            "query_surgery": round(trained_query.seconds, 3),
            "latent_and_knn": round(predict_seconds, 3),
        },
        "epochs_trained": {
            "reference": reference_description["epochs_run"],
            "query": None,  # filled below
        },
        "versions": versions(),
        "parameters": parameter_counts(trained_reference, trained_query),
        "state_changes": compare_states(trained_reference.state, trained_query.state, max_abs_change=True),
        "reference_latent_max_abs_diff_reference_vs_query_model": float(
            np.max(np.abs(reference_latent - reference_latent_before))
        ),
        "metrics": label_metrics(true, pred, uncert, hold_out, mean_uncertainty=True),
        "hyperparameters": {
            "reference_init": jsonable(reference_init),
            "reference_train": jsonable(reference_train),
            "query_load_query_data": jsonable(query_load),
            "load_query_data_defaults": keyword_defaults(SurgeryMixin.load_query_data),
            "query_train": jsonable(query_train),
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
    prepare_process(args.threads)  # before numpy, torch and numba load their thread pools
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

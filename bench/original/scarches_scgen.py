"""Map a query onto a reference with the original scArches scGen, as its query-mapping tutorial does.

A standalone baseline for fedarches: it never imports fedarches and runs under the separate
environment of ``make scarches-env`` (``.venv-scarches/bin/python``), which holds scArches 0.6.1
and the versions it supports. The scGen settings are those of scArches' tutorial
``notebooks/scgen_map_query.ipynb``: ``scgen(adata, hidden_layer_sizes=[256, 128])`` (``z_dimension=10``,
``dr_rate=0.05``, its defaults), ``train(n_epochs=50, early_stopping_kwargs=...)`` (batch size 32), the
reference corrected with ``batch_removal(reference, batch_key, cell_label_key, return_latent=True)`` and
the query with ``scgen.map_query_data(reference_model, corrected_reference, query, batch_key,
return_latent=True)``, which trains nothing.

scGen wants log-normalized data: X is the raw counts of the ``--genes`` genes, then
``sc.pp.normalize_total(target_sum=1e4)`` (library size over these genes only) and ``sc.pp.log1p``.

scGen's correction needs every cell's label, the query's too: ``map_query_data`` hard-codes
``cell_label_key="cell_type"``, so the true labels are copied to ``obs["cell_type"]`` when
``--labels-key`` differs. The labels are therefore predicted before the correction, from the
query's uncorrected latent (the encoder means; ``get_latent`` samples, its accuracy is reported too)
with scArches' weighted kNN (k = 15, ``scarches_trvae.knn_transfer``) fitted on the corrected
reference latent with the reference labels.

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
    pick_attributes,
    prepare_process,
    result_header,
    set_threads,
    split_list,
    state_dict_snapshot,
    train_reference,
    versions,
    write_query_outputs,
)
from scarches_trvae import KNN_NEIGHBORS, knn_transfer

if TYPE_CHECKING:
    import numpy as np
    from anndata import AnnData

# The tutorial's early stopping ("mode" stays "min"); it is also vaeArithTrainer's default.
EARLY_STOPPING_KWARGS: dict[str, Any] = {
    "early_stopping_metric": "val_loss",
    "patience": 20,
    "threshold": 0,
    "reduce_lr": True,
    "lr_patience": 13,
    "lr_factor": 0.1,
}
HIDDEN_LAYER_SIZES = [256, 128]
FULL_EPOCHS = 50  # the tutorial's value
QUICK_EPOCHS = 3
TARGET_SUM = 1e4
LABEL_COLUMN = "cell_type"  # map_query_data's hard-coded cell_label_key
MAP_COLUMNS = ("reference_map", "original_batch")  # obs columns map_query_data writes


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
    parser = base_parser(__doc__.splitlines()[0], "scGen", "3 reference epochs: a smoke run")
    parser.add_argument(
        "--epochs", type=int, default=FULL_EPOCHS, help="most reference epochs (early stopping stays on)"
    )
    args = parser.parse_args(argv)
    if args.batch_key in (LABEL_COLUMN, *MAP_COLUMNS):
        parser.error(f"--batch-key may not be {args.batch_key!r}: scGen's map_query_data uses that column")
    return args


def log_normalize(adata: AnnData, labels_key: str) -> None:
    """Log-normalize the counts in place, as scGen expects, and add the ``cell_type`` column.

    Parameters
    ----------
    adata
        The reference or the query, X dense float32 counts of the kept genes.
    labels_key
        The obs column of the labels, copied to ``obs["cell_type"]`` when it is another one.
    """
    import numpy as np
    import scanpy as sc

    sc.pp.normalize_total(adata, target_sum=TARGET_SUM)  # library size over the kept genes
    sc.pp.log1p(adata)
    adata.X = np.ascontiguousarray(adata.X, dtype=np.float32)
    if labels_key != LABEL_COLUMN:
        adata.obs[LABEL_COLUMN] = adata.obs[labels_key].to_numpy()


MODEL_ATTRIBUTES = ("x_dim_", "z_dim_", "hidden_layer_sizes_", "dr_rate_")
TRAINER_ATTRIBUTES = ("batch_size", "train_frac", "shuffle", "seed", "monitor")


def describe_model(model: Any) -> dict[str, Any]:
    """The settings scGen resolved, of the model and of its trainer.

    Parameters
    ----------
    model
        A trained ``scarches.models.scgen``.

    Returns
    -------
    dict[str, Any]
        Model attributes, the KL weight, trainer attributes, the optimizer's settings, early stopping,
        the epochs actually run and the best epoch, and whether the trainer's "best state" is a live view
        of the weights (in scArches 0.6.1 ``best_state_dict = model.state_dict()`` keeps no copy, so the
        "best state" loaded after training is the last one).
    """
    trainer = model.trainer
    stopper = trainer.early_stopping
    train_defaults = keyword_defaults(type(model).train)
    group = trainer.optim.param_groups[0]
    epochs_run = int(trainer.epoch) + 1
    best = trainer.best_state_dict
    live = None
    if best is not None:
        current = model.model.state_dict()
        live = all(best[name].data_ptr() == current[name].data_ptr() for name in current)
    return {
        "model": pick_attributes(model, MODEL_ATTRIBUTES),
        "kl_weight_alpha": jsonable(model.model.alpha),
        "loss": "mse(x_hat, x) + alpha * KL (summed over the batch)",
        "trainer": pick_attributes(trainer, TRAINER_ATTRIBUTES),
        # scgen.train passes batch_size positionally into vaeArithTrainer's train_frac (hence the trainer's
        # train_frac attribute is the batch size); the split itself uses train_valid_split's own default
        "train_frac_used": keyword_defaults(type(trainer).train_valid_split).get("train_frac"),
        "optimizer": {
            "class": type(trainer.optim).__name__,
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
        "module_in_training_mode_after_train": bool(model.model.training),
        "final_logs": final_logs(trainer),
    }


def rows_by_name(adata: AnnData, names: Any, key: str) -> np.ndarray:
    """The rows of ``adata.obsm[key]`` for these obs names, in their order.

    Parameters
    ----------
    adata
        An AnnData with unique obs names.
    names
        The obs names wanted.
    key
        The obsm key.

    Returns
    -------
    np.ndarray
        The rows, float32.

    Raises
    ------
    RuntimeError
        When the obs names are not unique or a name is missing.
    """
    import numpy as np

    if not adata.obs_names.is_unique:
        msg = "scGen's output has duplicate obs names"
        raise RuntimeError(msg)
    index = adata.obs_names.get_indexer(names)
    if (index < 0).any():
        msg = f"{int((index < 0).sum())} cells are missing from scGen's output"
        raise RuntimeError(msg)
    return np.asarray(adata.obsm[key], dtype=np.float32)[index]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train the reference, correct it, transfer the labels, map the query and write the outputs.

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
    import torch
    from scarches.models import scgen
    from scarches.trainers import vaeArithTrainer

    n_epochs = QUICK_EPOCHS if args.quick else args.epochs
    hold_out = split_list(args.hold_out)
    reference, query, genes = load_data(args, "scGen")
    for adata in (reference, query):
        log_normalize(adata, args.labels_key)
    args.out.mkdir(parents=True, exist_ok=True)

    reference_init = {"hidden_layer_sizes": HIDDEN_LAYER_SIZES}
    reference_train = {"n_epochs": n_epochs, "early_stopping_kwargs": EARLY_STOPPING_KWARGS, "seed": args.seed}
    batch_removal_kwargs = {"batch_key": args.batch_key, "cell_label_key": args.labels_key, "return_latent": True}
    map_kwargs = {"batch_key": args.batch_key, "return_latent": True}

    trained = train_reference(
        scgen, reference, reference_init, reference_train, seed=args.seed, save_reference=args.save_reference,
        trainable_tensors=True, reseed=True,
    )  # fmt: skip
    network = trained.model
    description = describe_model(network)

    # the reference, corrected: its latent_corrected is what the query's labels are transferred from
    start = time.perf_counter()
    corrected_reference = network.batch_removal(reference, **batch_removal_kwargs)
    correction_seconds = time.perf_counter() - start
    reference_latent_knn = rows_by_name(corrected_reference, reference.obs_names, "latent_corrected")

    # labels before correction (the correction needs them): the query's uncorrected latent
    start = time.perf_counter()
    network.model.eval()
    with torch.no_grad():
        query_means = network.model.encoder(torch.tensor(query.X))[0].cpu().numpy().astype(np.float32)
    query_sampled = np.asarray(network.get_latent(query.X), dtype=np.float32)  # scArches' get_latent samples
    true = query.obs[args.labels_key].astype(str).tolist()
    reference_labels = reference.obs[args.labels_key].astype(str).tolist()
    pred, uncert = knn_transfer(reference_latent_knn, reference_labels, query_means, list(query.obs_names))
    predict_seconds = time.perf_counter() - start
    pred_sampled, uncert_sampled = knn_transfer(
        reference_latent_knn, reference_labels, query_sampled, list(query.obs_names)
    )

    # which branch map_query_data takes: the reference model itself when its adata.X equals the corrected
    # reference's X, else a fresh scgen built from its state dict (left in training mode: dropout on and
    # batch norm on the statistics of the whole reference + query)
    first_attribute = network._get_user_attributes()[0]
    reuses_reference_model = bool(np.all(first_attribute[1].X == corrected_reference.X))
    start = time.perf_counter()
    integrated = scgen.map_query_data(
        reference_model=network, corrected_reference=corrected_reference, query=query, **map_kwargs
    )
    surgery_seconds = time.perf_counter() - start
    query_latent = rows_by_name(integrated, query.obs_names, "latent_corrected")
    reference_latent = rows_by_name(integrated, reference.obs_names, "latent_corrected")
    state_changes = compare_states(trained.state, state_dict_snapshot(network.model), max_abs_change=True)
    state_changes["note"] = (
        "scGen has no query model and trains nothing at query time: map_query_data corrects the query with "
        "the reference weights (new_values_grown_part 0); the reference model's state is compared before "
        "and after map_query_data (changed_values_shared_part)"
    )

    write_query_outputs(
        args.out,
        reference,
        query,
        (true, pred, uncert),
        (query_latent, reference_latent),
        {
            "query_latent_uncorrected": query_means,
            "query_latent_uncorrected_sampled": query_sampled,
            "reference_latent_batch_removal": reference_latent_knn,
        },
    )
    metrics = label_metrics(true, pred, uncert, hold_out, mean_uncertainty=True)
    metrics["sampled_latent"] = label_metrics(true, pred_sampled, uncert_sampled, hold_out, mean_uncertainty=True)

    result = {
        **result_header(args, "scArches scGen (original), tutorial settings", len(genes), reference, query),
        "wall_seconds": {
            "reference_training": round(trained.seconds, 3),
            "reference_correction": round(correction_seconds, 3),
            "latent_and_knn": round(predict_seconds, 3),
            "query_surgery": round(surgery_seconds, 3),
        },
        "epochs_trained": {"reference": description["epochs_run"], "query": 0},
        "versions": versions(),
        "parameters": {"reference": trained.parameters, "query_at_surgery": None, "query": None},
        "state_changes": state_changes,
        "reference_latent_max_abs_diff_map_query_vs_batch_removal": float(
            np.max(np.abs(reference_latent - reference_latent_knn))
        ),
        "metrics": metrics,
        "scarches_quirks": [
            "scgen.train(batch_size=...) lands in vaeArithTrainer's train_frac; the trainer keeps its default "
            "batch size 32 and the split uses 0.9, so the tutorial's defaults are unaffected",
            "best_state_dict is a live view of the weights: the 'best state' reloaded is the last epoch's",
            "map_query_data builds a fresh scgen from the reference state dict and corrects in training mode "
            "(dropout on, batch norm on the batch statistics of reference + query); kept as shipped",
            "every latent_corrected is a sample (get_latent of the decoded corrected latent)",
        ],
        "hyperparameters": {
            "preprocessing": {
                "normalize_total": {"target_sum": TARGET_SUM, "library_size": "over the kept genes"},
                "log1p": True,
                "dtype": "float32, dense",
            },
            "reference_init": jsonable(reference_init),
            "init_defaults": keyword_defaults(scgen.__init__),
            "reference_train": jsonable(reference_train),
            "train_defaults": keyword_defaults(scgen.train),
            "trainer_defaults": keyword_defaults(vaeArithTrainer.__init__),
            "batch_removal": jsonable(batch_removal_kwargs),
            "map_query_data": {
                **jsonable(map_kwargs),
                "cell_label_key": f"{LABEL_COLUMN} (hard-coded; the query's true labels)",
                "reuses_reference_model": reuses_reference_model,
                "branch": (
                    "reference model"
                    if reuses_reference_model
                    else "fresh scgen loaded from the reference state dict, in training mode"
                ),
            },
            "latent": {
                "reference_latent": "map_query_data obsm['latent_corrected'], reference rows",
                "query_latent": "map_query_data obsm['latent_corrected'], query rows",
                "query_latent_uncorrected": "reference model encoder means (eval mode)",
                "query_latent_uncorrected_sampled": "reference model get_latent (a sample)",
                "reference_latent_batch_removal": "batch_removal obsm['latent_corrected'] (the kNN's fit)",
                "sampled": "every latent_corrected is get_latent of the decoded corrected latent: a sample",
            },
            "knn": {
                "function": "scarches.utils.knn.weighted_knn_trainer/weighted_knn_transfer",
                "n_neighbors": KNN_NEIGHBORS,
                "threshold": 1,
                "pred_unknown": False,
                "uncertainty": "1 - P(predicted label)",
                "fit_on": "corrected reference latent (batch_removal), reference labels",
                "query": "uncorrected query latent means (metrics.sampled_latent: a get_latent sample)",
            },
            "reference_resolved": description,
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
    prepare_process(args.threads)  # before numpy, torch and numba load their thread pools
    result = run(args)
    metrics, seconds, epochs = result["metrics"], result["wall_seconds"], result["epochs_trained"]
    print(
        f"\naccuracy {metrics['accuracy']:.4f}  macro F1 {metrics['macro_f1']:.4f}  (sampled latent: accuracy "
        f"{metrics['sampled_latent']['accuracy']:.4f})  reference {seconds['reference_training']:.1f} s "
        f"({epochs['reference']} epochs)  query mapping {seconds['query_surgery']:.1f} s  -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

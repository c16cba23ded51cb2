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
import json
import time
from typing import Any

from scarches_common import (
    EARLY_STOPPING_ATTRIBUTES,
    base_parser,
    compare_states,
    final_logs,
    jsonable,
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
    parser = base_parser(__doc__.splitlines()[0], "scPoli", "3 epochs (2 pretraining) each: a smoke run")
    parser.add_argument(
        "--epochs", type=int, default=FULL_EPOCHS[0], help="epochs of reference and query (80 %% of them pretraining)"
    )
    return parser.parse_args(argv)


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
    return {
        "model": pick_attributes(model, MODEL_ATTRIBUTES),
        "trainer": pick_attributes(trainer, TRAINER_ATTRIBUTES),
        "early_stopping": pick_attributes(trainer.early_stopping, EARLY_STOPPING_ATTRIBUTES),
        "epochs_run": int(trainer.epoch) + 1,
        "n_epochs": trainer.n_epochs,
        "final_logs": final_logs(trainer),
    }


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
    hold_out = split_list(args.hold_out)
    reference, query, genes = load_data(args, "scPoli")
    args.out.mkdir(parents=True, exist_ok=True)

    reference_init = {
        "condition_keys": args.batch_key,
        "cell_type_keys": args.labels_key,
        "embedding_dims": 5,
        "recon_loss": "nb",
    }
    reference_train = {
        "n_epochs": n_epochs,
        "pretraining_epochs": pretraining_epochs,
        "early_stopping_kwargs": EARLY_STOPPING_KWARGS,
        "eta": 5,
        "seed": args.seed,
    }
    query_load = {"labeled_indices": []}
    query_train = {"n_epochs": n_epochs, "pretraining_epochs": pretraining_epochs, "eta": 10, "seed": args.seed}
    classify_kwargs = {"scale_uncertainties": True}

    trained_reference = train_reference(
        scPoli, reference, reference_init, reference_train, seed=args.seed, save_reference=args.save_reference
    )
    reference_model = trained_reference.model
    reference_description = describe_model(reference_model)
    trained_query = map_query(scPoli, query, reference_model, query_load, query_train)
    query_model = trained_query.model

    start = time.perf_counter()
    results = query_model.classify(query, **classify_kwargs)[args.labels_key]
    query_model.model.eval()
    query_latent = np.asarray(query_model.get_latent(query, mean=True), dtype=np.float32)
    reference_latent = np.asarray(query_model.get_latent(reference, mean=True), dtype=np.float32)
    predict_seconds = time.perf_counter() - start

    true = query.obs[args.labels_key].astype(str).tolist()
    pred = [str(p) for p in results["preds"]]
    uncert = np.asarray(results["uncert"], dtype=np.float64).reshape(-1)
    # the labelled prototypes, in the model's cell-type order, so a caller can also classify the latent means
    prototypes = np.asarray(query_model.prototypes_labeled_["mean"].detach().cpu().numpy(), dtype=np.float32)
    encoder = {name: code for name, code in query_model.model.cell_type_encoder.items() if code >= 0}
    prototype_names = [name for name, _ in sorted(encoder.items(), key=lambda item: item[1])][: len(prototypes)]
    write_query_outputs(
        args.out,
        reference,
        query,
        (true, pred, uncert),
        (query_latent, reference_latent),
        {"prototypes": prototypes, "prototype_names": np.asarray(prototype_names, dtype=str)},
    )

    result = {
        **result_header(args, "scArches scPoli (original), tutorial settings", len(genes), reference, query),
        "wall_seconds": {
            "reference_training": round(trained_reference.seconds, 3),
            "query_surgery": round(trained_query.seconds, 3),
            "classify_and_latent": round(predict_seconds, 3),
        },
        "versions": versions(),
        "parameters": parameter_counts(trained_reference, trained_query),
        "state_changes": compare_states(trained_reference.state, trained_query.state),
        "metrics": label_metrics(true, pred, uncert, hold_out),
        "hyperparameters": {
            "reference_init": jsonable(reference_init),
            "reference_train": jsonable(reference_train),
            "query_load_query_data": jsonable(query_load),
            "query_train": jsonable(query_train),
            "classify": jsonable(classify_kwargs),
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
    prepare_process(args.threads)  # before numpy, torch and numba load their thread pools
    result = run(args)
    metrics, seconds = result["metrics"], result["wall_seconds"]
    print(
        f"accuracy {metrics['accuracy']:.4f}  macro F1 {metrics['macro_f1']:.4f}  reference "
        f"{seconds['reference_training']:.1f} s  query {seconds['query_surgery']:.1f} s  -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

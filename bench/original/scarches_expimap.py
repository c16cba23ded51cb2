"""Map a query onto a reference with the original scArches expiMap, as its basic surgery tutorial does.

A standalone baseline for fedarches: it never imports fedarches and runs under the separate
environment of ``make scarches-env`` (``.venv-scarches/bin/python``), which holds scArches 0.6.1
and the versions it supports. The expiMap settings are those of scArches' tutorial
``notebooks/expimap_surgery_pipeline_basic.ipynb``: ``EXPIMAP(condition_key=...,
hidden_layer_sizes=[256, 256, 256], recon_loss="nb")`` (every other setting at EXPIMAP's default),
reference ``train(n_epochs=400, alpha_epoch_anneal=100, alpha=0.7, alpha_kl=0.5, weight_decay=0.,
early_stopping_kwargs=..., use_early_stopping=True, monitor_only_val=False)``, query
``EXPIMAP.load_query_data(adata, reference_model)`` then ``train(n_epochs=400, alpha_epoch_anneal=100,
weight_decay=0., alpha_kl=0.1, use_early_stopping=True)``. With ``--new-programs K`` the surgery also
adds K unconstrained programs (``unfreeze_ext=True, new_n_ext=K``) and the query training gets
``gamma_ext=0.7, gamma_epoch_anneal=100``.

The gene-program mask is given as an ``.npz`` (``genes``, ``terms``, ``I`` genes x terms); it goes to
``adata.varm["I"]`` and ``adata.uns["terms"]``, the tutorial's keys (``scarches.utils.add_annotations``
is not used: it splits GMT lines on whitespace, which breaks term names with spaces).

Latents come from the query model's ``get_latent(x, c, mean=True, only_active=True)`` (the encoder
means of the active terms, the tutorial plots samples). expiMap has no classifier: the query's cell
types are predicted with scArches' own weighted kNN (k = 15) from the reference latent, as in
``scarches_trvae.py``.

Writes ``result.json``, ``query_cells.csv`` and ``latent.npz`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
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
from scarches_trvae import KNN_NEIGHBORS, knn_transfer

if TYPE_CHECKING:
    import numpy as np

# The tutorial's early stopping of the reference model (the query model keeps scArches' default).
EARLY_STOPPING_KWARGS: dict[str, Any] = {
    "early_stopping_metric": "val_unweighted_loss",
    "threshold": 0,
    "patience": 50,
    "reduce_lr": True,
    "lr_patience": 13,
    "lr_factor": 0.1,
}
HIDDEN_LAYER_SIZES = [256, 256, 256]
ALPHA = 0.7  # group lasso of the reference's annotated terms
ALPHA_EPOCH_ANNEAL = 100
REFERENCE_ALPHA_KL = 0.5
QUERY_ALPHA_KL = 0.1
GAMMA_EXT = 0.7  # L1 of the new unconstrained programs (--new-programs)
GAMMA_EPOCH_ANNEAL = 100
FULL_EPOCHS = 400  # reference and query alike; early stopping usually ends them sooner
QUICK_EPOCHS = 3
MASK_KEY = "I"
TERMS_KEY = "terms"


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
    parser = base_parser(__doc__.splitlines()[0], "expiMap", "3 epochs each: a smoke run")
    parser.add_argument(
        "--mask",
        required=True,
        type=Path,
        help="npz with 'genes' (the --genes list, in order), 'terms' and 'I' (genes x terms, 0/1)",
    )
    parser.add_argument(
        "--epochs", type=int, default=FULL_EPOCHS, help="most epochs of reference and query (early stopping stays on)"
    )
    parser.add_argument(
        "--new-programs",
        type=int,
        default=0,
        help="new unconstrained programs added in the query surgery (new_n_ext; 0: none, the basic tutorial)",
    )
    args = parser.parse_args(argv)
    if args.new_programs < 0:
        parser.error("--new-programs must be 0 or more")
    return args


def load_mask(path: Path, genes: list[str]) -> tuple[np.ndarray, list[str]]:
    """Read and check the gene-program mask.

    Parameters
    ----------
    path
        An ``.npz`` with ``genes``, ``terms`` and ``I``.
    genes
        The genes kept (the ``--genes`` list), in order.

    Returns
    -------
    tuple[np.ndarray, list[str]]
        ``I`` as int32 genes x terms (the dtype of ``scarches.utils.add_annotations``) and the terms.

    Raises
    ------
    SystemExit
        When an array is missing, the genes differ from ``genes``, the shape is wrong or ``I`` is not 0/1.
    """
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as error:
        msg = f"{path}: cannot read the mask ({error}); store 'genes' and 'terms' as str arrays"
        raise SystemExit(msg) from error
    missing = [key for key in ("genes", "terms", MASK_KEY) if key not in arrays]
    if missing:
        msg = f"{path}: arrays {missing} are missing (found {sorted(arrays)})"
        raise SystemExit(msg)
    mask_genes = [str(g) for g in arrays["genes"].reshape(-1)]
    terms = [str(t) for t in arrays["terms"].reshape(-1)]
    if mask_genes != genes:
        if len(mask_genes) != len(genes):
            msg = f"{path}: {len(mask_genes)} genes, but the --genes list has {len(genes)}"
        else:
            first = next(i for i, (a, b) in enumerate(zip(mask_genes, genes, strict=True)) if a != b)
            msg = (
                f"{path}: its genes differ from the --genes list (in order); first at position {first}: "
                f"{mask_genes[first]!r} vs {genes[first]!r}"
            )
        raise SystemExit(msg)
    matrix = np.asarray(arrays[MASK_KEY])
    if matrix.shape != (len(genes), len(terms)):
        msg = f"{path}: I has shape {matrix.shape}, expected (genes, terms) = ({len(genes)}, {len(terms)})"
        raise SystemExit(msg)
    if matrix.dtype.kind not in "biuf" or not np.isin(matrix, (0, 1)).all():
        msg = f"{path}: I must hold only 0 and 1 (dtype {matrix.dtype})"
        raise SystemExit(msg)
    if len(terms) == 0:
        msg = f"{path}: no terms"
        raise SystemExit(msg)
    if len(set(terms)) != len(terms):
        warnings.warn(f"{path}: duplicate term names", stacklevel=2)
    empty = [t for t, n in zip(terms, matrix.sum(0), strict=True) if n == 0]
    if empty:
        warnings.warn(f"{path}: {len(empty)} terms have no gene, e.g. {empty[:3]}", stacklevel=2)
    return matrix.astype(np.int32), terms


MODEL_ATTRIBUTES = (
    "condition_key_",
    "conditions_",
    "hidden_layer_sizes_",
    "latent_dim_",
    "dr_rate_",
    "recon_loss_",
    "use_bn_",
    "use_ln_",
    "use_l_encoder_",
    "decoder_last_layer_",
    "soft_mask_",
    "n_ext_",
    "n_ext_m_",
    "use_hsic_",
    "hsic_one_vs_all_",
    "soft_ext_mask_",
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
    "alpha",
    "alpha_l1",
    "alpha_l1_epoch_anneal",
    "gamma_ext",
    "gamma_epoch_anneal",
    "gamma_anneal_each",
    "beta",
    "use_early_stopping",
    "reload_best",
    "monitor_only_val",
    "n_workers",
    "seed",
)


def describe_model(model: Any) -> dict[str, Any]:
    """The settings expiMap resolved, of the model and of its last trainer.

    Parameters
    ----------
    model
        A trained ``scarches.models.EXPIMAP``.

    Returns
    -------
    dict[str, Any]
        Model attributes, trainer attributes, the proximal operators (group lasso, L1) and their
        final strengths, the optimizer's settings, early stopping, the epochs actually run and the
        best epoch, the active terms, the genes with a non-zero decoder weight in each new
        unconstrained program (the L1 ``gamma_ext`` sparsifies them), and whether the trainer's
        "best state" is a live view of the weights (in scArches 0.6.1 ``best_state_dict =
        model.state_dict()`` keeps no copy, so ``reload_best`` restores the last state, not the
        best one).
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
    prox_ops = {
        name: {
            "class": type(op).__name__,
            "alpha_times_lr": jsonable(getattr(op, "_alpha", None)),
            "group_coeff": jsonable(getattr(op, "_group_coeff", None)),
        }
        for name, op in trainer.prox_ops.items()
    }
    active = model.nonzero_terms()
    decoder = model.model.decoder.L0
    new_program_genes = (
        [int(n) for n in (decoder.ext_L.weight.data != 0).sum(0)] if model.model.n_ext_decoder > 0 else []
    )
    return {
        "model": pick_attributes(model, MODEL_ATTRIBUTES),
        "decoder_last_layer_resolved": model.model.decoder_last_layer,
        "trainer": pick_attributes(trainer, TRAINER_ATTRIBUTES),
        "proximal_operators_used": jsonable(trainer.use_prox_ops),
        "proximal_operators_final": prox_ops,
        "anneal_coefficients_final": jsonable(trainer.corr_coeffs),
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
        "n_latent": len(active),
        "n_active_terms": int(active.sum()),
        "n_inactive_annotated_terms": int(model.model.decoder.n_inactive_terms()),
        "n_genes_per_new_program": new_program_genes,
        "final_logs": final_logs(trainer),
    }


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
    from scarches.models import EXPIMAP
    from scarches.trainers.expimap.regularized import expiMapTrainer
    from scarches.trainers.trvae.trainer import Trainer

    n_epochs = QUICK_EPOCHS if args.quick else args.epochs
    hold_out = split_list(args.hold_out)
    reference, query, genes = load_data(args, "expiMap")
    mask, terms = load_mask(args.mask, genes)
    for adata in (reference, query):
        adata.varm[MASK_KEY] = mask
        adata.uns[TERMS_KEY] = list(terms)
    args.out.mkdir(parents=True, exist_ok=True)

    reference_init = {
        "condition_key": args.batch_key,
        "hidden_layer_sizes": HIDDEN_LAYER_SIZES,
        "recon_loss": "nb",
    }
    reference_train = {
        "n_epochs": n_epochs,
        "alpha_epoch_anneal": ALPHA_EPOCH_ANNEAL,
        "alpha": ALPHA,
        "alpha_kl": REFERENCE_ALPHA_KL,
        "weight_decay": 0.0,
        "early_stopping_kwargs": EARLY_STOPPING_KWARGS,
        "use_early_stopping": True,
        "monitor_only_val": False,
        "seed": args.seed,
    }
    query_load: dict[str, Any] = {}
    query_train: dict[str, Any] = {
        "n_epochs": n_epochs,
        "alpha_epoch_anneal": ALPHA_EPOCH_ANNEAL,
        "weight_decay": 0.0,
        "alpha_kl": QUERY_ALPHA_KL,
        "seed": args.seed,
        "use_early_stopping": True,
    }
    if args.new_programs > 0:
        query_load.update({"unfreeze_ext": True, "new_n_ext": args.new_programs})
        query_train.update({"gamma_ext": GAMMA_EXT, "gamma_epoch_anneal": GAMMA_EPOCH_ANNEAL})

    trained_reference = train_reference(
        EXPIMAP,
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
        reference_model.get_latent(reference.X, reference.obs[args.batch_key].to_numpy(), mean=True, only_active=True),
        dtype=np.float32,
    )
    trained_query = map_query(EXPIMAP, query, reference_model, query_load, query_train, trainable_tensors=True)
    query_model = trained_query.model

    start = time.perf_counter()
    query_model.model.eval()
    query_latent = np.asarray(
        query_model.get_latent(query.X, query.obs[args.batch_key].to_numpy(), mean=True, only_active=True),
        dtype=np.float32,
    )
    reference_latent = np.asarray(
        query_model.get_latent(reference.X, reference.obs[args.batch_key].to_numpy(), mean=True, only_active=True),
        dtype=np.float32,
    )
    true = query.obs[args.labels_key].astype(str).tolist()
    pred, uncert = knn_transfer(
        reference_latent, reference.obs[args.labels_key].astype(str).tolist(), query_latent, list(query.obs_names)
    )
    predict_seconds = time.perf_counter() - start
    active_terms = np.asarray(query_model.nonzero_terms(), dtype=bool)
    all_terms = query_model.update_terms(list(terms))  # the reference terms, then "unconstrained_<i>"
    write_query_outputs(
        args.out,
        reference,
        query,
        (true, pred, uncert),
        (query_latent, reference_latent),
        {"active_terms": active_terms, "terms": np.asarray(all_terms, dtype=str)},
    )

    # the new programs are the last latent columns; the annotated ones must match the reference model's
    n_shared = reference_latent_before.shape[1]
    result = {
        **result_header(args, "scArches expiMap (original), tutorial settings", len(genes), reference, query),
        "mask": {
            "file": str(args.mask),
            "n_terms": len(terms),
            "genes_per_term": {
                "min": int(mask.sum(0).min()),
                "median": float(np.median(mask.sum(0))),
                "max": int(mask.sum(0).max()),
            },
            "n_genes_in_a_term": int((mask.sum(1) > 0).sum()),
            "n_new_programs": args.new_programs,
        },
        "wall_seconds": {
            "reference_training": round(trained_reference.seconds, 3),
            "query_surgery": round(trained_query.seconds, 3),
            "latent_and_knn": round(predict_seconds, 3),
        },
        "epochs_trained": {
            "reference": reference_description["epochs_run"],
            "query": None,  # filled below
        },
        "active_terms": {
            "reference": reference_description["n_active_terms"],
            "reference_deactivated": reference_description["n_inactive_annotated_terms"],
            "query_latent_columns": int(active_terms.sum()),
        },
        "versions": versions(),
        "parameters": parameter_counts(trained_reference, trained_query),
        "state_changes": compare_states(trained_reference.state, trained_query.state, max_abs_change=True),
        "reference_latent_max_abs_diff_reference_vs_query_model": float(
            np.max(np.abs(reference_latent[:, :n_shared] - reference_latent_before))
        ),
        "metrics": label_metrics(true, pred, uncert, hold_out, mean_uncertainty=True),
        "hyperparameters": {
            "reference_init": jsonable(reference_init),
            "init_defaults": keyword_defaults(EXPIMAP.__init__),
            "reference_train": jsonable(reference_train),
            "train_defaults": keyword_defaults(EXPIMAP.train),
            "trainer_defaults": {**keyword_defaults(Trainer.__init__), **keyword_defaults(expiMapTrainer.__init__)},
            "query_load_query_data": jsonable(query_load),
            "load_query_data_defaults": keyword_defaults(EXPIMAP.load_query_data),
            "query_train": jsonable(query_train),
            "latent": {
                "model": "query",
                "method": "get_latent(x, c, mean=True, only_active=True)",
                "columns": "the active terms (latent.npz: terms[active_terms]), new programs last",
            },
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
        f"{seconds['reference_training']:.1f} s ({epochs['reference']} epochs, "
        f"{result['active_terms']['reference']} active terms)  query "
        f"{seconds['query_surgery']:.1f} s ({epochs['query']} epochs)  -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

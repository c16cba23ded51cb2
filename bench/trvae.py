"""`python -m fedarches.bench trvae`: the trVAE backend on PBMC beside the scArches package's trVAE.

``symphony_pbmc_3chem``: reference = 10x 3' v1 + v2, lab = 10x 5' (nine types), the genes of
fedarches' reference (1,000 HVGs) for every method, per seed:

* fedarches' ``trvae`` backend: ``build_reference`` and ``map_query`` (MMD on the first decoder
  layer, kNN labels from the bundle's reference embedding), up to 500 epochs with early stopping;
* fedarches' ``TRVAE`` with ``mmd_on="z"``, the scArches class's default that its tutorial keeps,
  through its Python API, labels by the same weighted kNN (15 neighbours) as the scArches run;
* scArches 0.6.1's TRVAE (``bench/original/scarches_trvae.py`` in ``.venv-scarches``, its tutorial's
  settings, its own weighted kNN), when ``make scarches-env`` has run.

Reported: accuracy, macro-F1, scib's cell-type and batch ASW on the joint latent, epochs trained,
surgery seconds, adapter bytes, reference values surgery changed. Writes docs/benchmarks_trvae.md.

    python -m fedarches.bench trvae [--out bench-output/trvae] [--seeds 0 1] [--quick]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from fedarches.bench.parity import write_results
from fedarches.bench.paths import DOCS, OUTPUT
from fedarches.bench.runner import log
from fedarches.bench.scpoli import (
    LAB_BATCH,
    ORIGINAL_PYTHON,
    PBMC,
    REFERENCE_BATCHES,
    THREADS,
    _bundle,
    _cells,
    _integration,
    _load,
    _map,
    _reference_latent,
    _scores,
    run_original,
)

DOC = DOCS / "benchmarks_trvae.md"
ORIGINAL_RUNNER = Path(__file__).resolve().parent / "original" / "scarches_trvae.py"
EPOCHS = 500  # the tutorial's, with early stopping (patience 20)
NEIGHBORS = 15


def _knn(reference_latent: np.ndarray, labels: np.ndarray, query_latent: np.ndarray) -> np.ndarray:
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(NEIGHBORS, weights="distance").fit(reference_latent, labels).predict(query_latent)


def _row(method: str, seed: int, truth: np.ndarray, predicted: np.ndarray, joint: np.ndarray, reference: Any,
         lab: Any, **extra: Any) -> dict[str, Any]:  # fmt: skip
    labels = np.r_[reference.obs["cell_type"], truth]
    batches = np.r_[reference.obs["batch"], lab.obs["batch"]]
    scores = {**_scores(truth, predicted), **_integration(joint, labels, batches)}
    return {"method": method, "seed": seed, **scores, **extra}


def run_seed(out: Path, seed: int, *, quick: bool) -> list[dict[str, Any]]:
    """The three methods on one seed."""
    data = _load(PBMC)
    reference, lab = _cells(data, REFERENCE_BATCHES), _cells(data, (LAB_BATCH,))
    truth = lab.obs["cell_type"].to_numpy()
    epochs = 3 if quick else EPOCHS
    work = out / f"seed{seed}"
    rows = []
    tick = time.perf_counter()
    bundle = _bundle(reference, work, seed, epochs, model="trvae")
    build_s = time.perf_counter() - tick
    result, annotated = _map(lab, bundle, "lab", seed, epochs)
    joint = np.vstack([_reference_latent(bundle, reference), annotated.obsm["X_trVAE"]])
    rows.append(_row(
        "fedarches trVAE (backend, MMD on y)", seed, truth, annotated.obs["predicted_cell_type"].astype(str).to_numpy(),
        joint, reference, lab, build_s=build_s, surgery_s=result.timings["train_s"], epochs_query=result.n_epochs,
        adapter_bytes=result.adapter.nbytes, reference_values_changed=0,
    ))  # fmt: skip
    log(f"fedarches trVAE (y) seed {seed}: {rows[-1]}")
    genes = list(bundle.var_names)
    rows.append(_api_z(reference[:, genes].copy(), lab[:, genes].copy(), seed, epochs))
    log(f"fedarches TRVAE (z) seed {seed}: {rows[-1]}")
    if ORIGINAL_PYTHON.exists():
        genes_file = work / "genes.txt"
        genes_file.write_text("\n".join(genes) + "\n")
        rows.append(_original(genes_file, seed, work / "original", reference, lab, quick=quick))
        log(f"scArches TRVAE seed {seed}: {rows[-1]}")
    return rows


def _api_z(reference: Any, lab: Any, seed: int, epochs: int) -> dict[str, Any]:
    """Fedarches' TRVAE through its Python API with scArches' default ``mmd_on="z"``."""
    import tempfile

    from fedarches.shared._training import scoped_seed, torch_threads
    from fedarches.shared.models.trvae import TRVAE

    with scoped_seed(seed), torch_threads(THREADS), tempfile.TemporaryDirectory() as tmp:
        TRVAE.setup_anndata(reference, batch_key="batch", labels_key="cell_type")
        model = TRVAE(reference, mmd_on="z")
        tick = time.perf_counter()
        model.train(max_epochs=epochs, enable_progress_bar=False)
        build_s = time.perf_counter() - tick
        model.save(tmp, overwrite=True)
        query = lab.copy()
        query.obs["cell_type"] = reference.obs["cell_type"].iloc[0]  # labels are not used by the query
        query_model = TRVAE.load_query_data(query, tmp)
        tick = time.perf_counter()
        query_model.train(max_epochs=epochs, enable_progress_bar=False)
        surgery_s = time.perf_counter() - tick
        reference_latent = model.get_latent_representation()
        query_latent = query_model.get_latent_representation(query)
    truth = lab.obs["cell_type"].to_numpy()
    predicted = _knn(reference_latent, reference.obs["cell_type"].to_numpy(), query_latent)
    return _row(
        "fedarches TRVAE (API, MMD on z)", seed, truth, predicted, np.vstack([reference_latent, query_latent]),
        reference, lab, build_s=build_s, surgery_s=surgery_s, epochs_query=len(query_model.history["elbo_train"]),
        adapter_bytes=None, reference_values_changed=0,
    )  # fmt: skip


def _original(genes: Path, seed: int, out: Path, reference: Any, lab: Any, *, quick: bool) -> dict[str, Any]:
    """Run scArches 0.6.1's TRVAE on the same genes, split and seed, in its own environment."""
    run = run_original(ORIGINAL_RUNNER, genes, seed, out, reference, lab, *(["--quick"] if quick else []))
    return {"method": "scArches 0.6.1 TRVAE", "seed": seed, **run.row,
            "epochs_query": run.result["epochs_trained"]["query"]}  # fmt: skip


def run(out: Path = OUTPUT / "trvae", *, seeds: tuple[int, ...] = (0, 1), quick: bool = False, doc: bool = True,
        invoked: str = "python -m fedarches.bench trvae") -> list[dict[str, Any]]:  # fmt: skip
    """Every seed; results in ``out/results.json`` and, with ``doc``, docs/benchmarks_trvae.md."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [row for seed in seeds for row in run_seed(out, seed, quick=quick)]
    write_results(
        out, rows, doc=DOC if doc and not quick else None, invoked=invoked,
        title="trVAE: fedarches' implementation on PBMC beside scArches' own",
        intro=[
            "Reference 10x 3' v1 + v2 (770 cells), lab 10x 5' (430 cells), the 1,000 HVGs of fedarches' reference,",
            f"up to {EPOCHS} epochs with early stopping (patience 20) for reference and surgery;",
            f"kNN labels ({NEIGHBORS} neighbours).",
        ],
        numeric=["accuracy", "macro_f1", "label_asw", "batch_asw", "build_s", "surgery_s"],
    )  # fmt: skip
    return rows

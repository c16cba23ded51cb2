"""`make bench-backends`: every model backend on real data, beside plain scvi-tools.

For each backend a coordinator process builds a reference with ``build_reference`` and writes it as a
signed bundle (:func:`fedarches.bench.bundles.make_bundle`); then a lab process maps one held-out sample onto it
twice, with :func:`fedarches.client.mapping.map_query` and with plain scvi-tools on the same bundle's model
(``load_query_data``, ``train``, ``get_latent_representation``, ``predict``, ``get_normalized_expression``; same
seed, same epochs: :func:`fedarches.bench.methods.plain_surgery`). Reported per backend: reference build and
surgery wall (and CPU) times, each process's peak RSS, adapter bytes per batch, accuracy and macro-F1, the Unknown
rate on cells of reference types, and the agreement with plain scvi-tools (max |latent difference|, share of
identical predictions). :mod:`fedarches.bench.report_backends` regenerates docs/benchmarks_backends.md.

* ``scanvi``, ``scvi``: ``../shared/data/symphony_pbmc_3chem.h5ad``; reference = 10x 3' v1 + 3' v2,
  lab = 10x 5' (nine fine PBMC types, the authors' labels).
* ``totalvi``, ``totalanvi``: ``../shared/data/citefuse_eccite_pbmc500.h5ad``; reference = hashtag samples
  HTO28/29/44, lab = HTO30, labels from protein-marker gating (``make_demo_citeseq.gate_cell_types``).
  The lab is mapped RNA-only (its proteins hidden) and, as a contrast, with its proteins; imputed
  proteins (``obsm['denoised_protein']``) are scored against the measured ones by Pearson r per protein.
* ``peakvi``: skipped, there is no real ATAC data in ``../shared/data``.

    python -m fedarches.bench backends [--out bench-output/backends] [--quick] [--resume] [--threads 1]
                                                                   (make bench-backends: scripts/bench_backends.py)

Each step runs in a fresh process (:func:`fedarches.bench.runner.run_method`), so its peak RSS is its own:
``python -m fedarches.bench worker backends {build,map} SPEC.json RESULT.json``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fedarches.bench.datasets import CITESEQ_CASE, PBMC_CASE, PROTEIN_KEY, load_case, truth_of
from fedarches.bench.metrics import TRANSFORMS, known_type_scores, protein_correlations
from fedarches.bench.paths import DOCS, OUTPUT, SHARED_DATA, MissingDataError
from fedarches.bench.runner import log, run_method, start_run

if TYPE_CHECKING:
    import anndata as ad

DOC = DOCS / "benchmarks_backends.md"
COMMAND = "make bench-backends   (or: .venv/bin/python scripts/bench_backends.py)"
LAB = "lab"  # the lab's name in map_query, and so its batch name in the query model
DENOISED_KEY = "denoised_protein"
KEY_MARKERS = ("CD3", "CD4", "CD8", "CD14", "CD19", "CD56")
SEED = 0
MAX_REFERENCE_CELLS, MAX_LAB_CELLS = 3000, 1000  # cap for time; both data sets are smaller, so all cells are used
QUICK_REFERENCE_CELLS, QUICK_LAB_CELLS = 200, 60
REFERENCE_EPOCHS, CLASSIFIER_EPOCHS = 200, 20  # as `make compare`; early stopping on
QUICK_EPOCHS = 5
PLAIN_PROTEIN_SAMPLES = 25  # posterior samples of plain scvi-tools' imputed proteins, as in its totalVI tutorial

CASES = {"scanvi": PBMC_CASE, "scvi": PBMC_CASE, "totalvi": CITESEQ_CASE, "totalanvi": CITESEQ_CASE}
NOT_RUN = {"peakvi": "no real ATAC data in ../shared/data (only scRNA-seq and CITE-seq); not benchmarked here"}


# --- workers (each in a fresh process) ------------------------------------------------------------
def build_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Coordinator: build and sign the reference; write the lab's cells for the map step."""
    import scvi  # noqa: F401 - imported before anything is timed
    import torch

    from fedarches.bench.bundles import make_bundle
    from fedarches.server.reference import ReferenceOptions
    from fedarches.shared._process import peak_rss_bytes

    torch.set_num_threads(spec["threads"])
    case = CASES[spec["backend"]]
    caps = (QUICK_REFERENCE_CELLS, QUICK_LAB_CELLS) if spec["quick"] else (MAX_REFERENCE_CELLS, MAX_LAB_CELLS)
    reference, lab = load_case(case, *caps)
    out = Path(spec["out"])
    lab.write_h5ad(out / "lab.h5ad")
    options = ReferenceOptions(
        model=spec["backend"],
        n_top_genes=2000,
        max_epochs=QUICK_EPOCHS if spec["quick"] else REFERENCE_EPOCHS,
        scanvi_max_epochs=2 if spec["quick"] else CLASSIFIER_EPOCHS,
        seed=spec["seed"],
        progress_bar=False,
        threads=spec["threads"],
    )
    tick, cpu = time.perf_counter(), time.process_time()
    bundle = make_bundle(reference, out, options)
    build_s, build_cpu_s = time.perf_counter() - tick, time.process_time() - cpu
    return {
        "build_s": build_s,
        "build_cpu_s": build_cpu_s,
        "peak_rss_bytes": peak_rss_bytes(),
        "bundle_bytes": bundle.size_bytes,
        "n_reference": reference.n_obs,
        "n_lab": lab.n_obs,
        "n_genes": len(bundle.var_names),
        "n_proteins": len(bundle.protein_names),
        "label_categories": list(bundle.label_categories),
        "reference_types": {k: int(v) for k, v in reference.obs["cell_type"].astype(str).value_counts().items()},
        "lab_types": {k: int(v) for k, v in pd.Series(truth_of(lab)).value_counts().items()},
    }


def map_fedarches(
    lab: ad.AnnData, bundle: Any, options: Any, *, with_proteins: bool
) -> tuple[ad.AnnData, Any, float, float]:
    """``map_query`` on a copy of the lab (its proteins hidden unless ``with_proteins``); wall and CPU seconds."""
    from fedarches.client.mapping import map_query

    query = lab.copy()
    if not with_proteins:
        query.obsm.pop(PROTEIN_KEY, None)
    tick, cpu = time.perf_counter(), time.process_time()
    result = map_query(query, bundle, lab_name=LAB, options=options)
    return query, result, time.perf_counter() - tick, time.process_time() - cpu


def map_plain(lab: ad.AnnData, bundle: Any, options: Any, workdir: Path, *, with_proteins: bool) -> dict[str, Any]:
    """The same surgery with scvi-tools only (no fedarches code in the model steps).

    Cell types: ``predict(soft=True)`` for models with a classifier; for scVI and totalVI, which have
    none, the same weighted kNN on the bundle's reference embedding that fedarches uses, applied to
    scvi-tools' latent (so any disagreement comes from the surgery). Proteins absent from the query
    are zeros, as in the scvi-tools totalVI reference-mapping tutorial.
    """
    from fedarches.bench.methods import plain_query_adata, plain_surgery
    from fedarches.shared._training import quiet_training
    from fedarches.shared.backends import backend_for
    from fedarches.shared.embedding import knn_label_probabilities

    backend = backend_for(bundle)
    tick, cpu = time.perf_counter(), time.process_time()
    model_dir = bundle.write_model_dir(workdir / f"plain-{'proteins' if with_proteins else 'rna'}")
    query = plain_query_adata(lab, bundle, LAB)
    if bundle.protein_names:
        measured = lab.obsm[PROTEIN_KEY].reindex(columns=bundle.protein_names)
        proteins = measured.fillna(0) * (1 if with_proteins else 0)
        proteins.index = query.obs_names
        query.obsm[bundle.setup_args["protein_expression_obsm_key"]] = proteins.astype(np.float32)
    denoised = None
    with quiet_training():
        model = plain_surgery(backend.model_cls(), query, model_dir, options, plain_train_kwargs(backend.name, options))
        latent = np.asarray(model.get_latent_representation(), dtype=np.float32)
        if backend.has_classifier:
            soft = model.predict(soft=True)[bundle.label_categories].to_numpy()
        else:
            embedding = bundle.embedding
            soft = knn_label_probabilities(
                latent, embedding["latent"], embedding["labels"], len(bundle.label_categories)
            )
        if bundle.protein_names:
            _, denoised = model.get_normalized_expression(
                n_samples=PLAIN_PROTEIN_SAMPLES, return_mean=True, transform_batch=bundle.batch_categories
            )
    return {
        "latent": latent,
        "predicted": np.asarray(bundle.label_categories)[soft.argmax(axis=1)],
        "denoised": denoised,
        "seconds": time.perf_counter() - tick,
        "cpu_seconds": time.process_time() - cpu,
        "epochs": len(model.history["elbo_train"]),
    }


def plain_train_kwargs(backend: str, options: Any) -> dict[str, Any]:
    """Learning rate, no weight decay, and for totalVI / totalANVI no adversarial loss (their surgery tutorial).

    ``TOTALVI.train`` sets the learning rate from its own ``lr`` argument; the others read ``plan_kwargs``.
    """
    plan = {"weight_decay": 0.0, "lr": options.learning_rate}
    if backend == "totalvi":
        return {"lr": options.learning_rate, "plan_kwargs": {**plan, "scale_adversarial_loss": 0.0}}
    if backend == "totalanvi":
        return {"plan_kwargs": {**plan, "scale_adversarial_loss": 0.0}}
    return {"plan_kwargs": plan}


def agreement(fed: ad.AnnData, result: Any, plain: dict[str, Any]) -> dict[str, Any]:
    """How far fedarches' mapping is from plain scvi-tools': latent difference, identical calls, times."""
    from fedarches.shared._constants import ADATA_KEYS

    predicted = fed.obs[ADATA_KEYS.PREDICTION].astype(str).to_numpy()
    out = {
        "max_abs_latent_diff": float(np.abs(fed.obsm[result.latent_key] - plain["latent"]).max()),
        "identical_predictions": float(np.mean(predicted == plain["predicted"])),
        "plain_s": plain["seconds"],
        "plain_cpu_s": plain["cpu_seconds"],
        "epochs": [result.n_epochs, plain["epochs"]],
    }
    if plain["denoised"] is not None and DENOISED_KEY in fed.obsm:
        ours = np.log1p(np.asarray(fed.obsm[DENOISED_KEY], dtype=np.float64))
        theirs = np.log1p(np.asarray(plain["denoised"], dtype=np.float64))
        out["max_abs_log1p_protein_diff"] = float(np.abs(ours - theirs).max())
    return out


def map_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Lab: map with fedarches (RNA-only first; its peak RSS is the mapping's), then plain scvi-tools."""
    import anndata as ad
    import scvi  # noqa: F401 - imported before anything is timed
    import torch

    from fedarches.client.mapping import MappingOptions
    from fedarches.shared.bundle import ReferenceBundle

    torch.set_num_threads(spec["threads"])
    bundle = ReferenceBundle.open(Path(spec["bundle"]), Path(spec["trust"]))
    lab = ad.read_h5ad(spec["lab"])
    truth = truth_of(lab)
    options = MappingOptions(
        max_epochs=QUICK_EPOCHS if spec["quick"] else None,
        seed=spec["seed"],
        threads=spec["threads"],
        progress_bar=False,
    )
    workdir = Path(spec["workdir"])
    out: dict[str, Any] = {}
    variants = (False, True) if bundle.protein_names else (False,)
    for with_proteins in variants:
        fed, result, fed_s, fed_cpu_s = map_fedarches(lab, bundle, options, with_proteins=with_proteins)
        uns = fed.uns["fedarches"]
        entry = {
            "surgery_s": fed_s,
            "surgery_cpu_s": fed_cpu_s,
            "timings": dict(uns["timings"]),
            "peak_rss_bytes": int(uns["peak_rss_bytes"]),
            "adapter_bytes": result.adapter.nbytes,
            "adapter_batches": len(result.adapter.batch_categories),
            "adapter_bytes_per_batch": result.adapter.nbytes // max(1, len(result.adapter.batch_categories)),
            "adapter_tensors": len(result.adapter.tensors),
            **known_type_scores(bundle, truth, fed.obs),
            **agreement(fed, result, map_plain(lab, bundle, options, workdir, with_proteins=with_proteins)),
        }
        if bundle.protein_names:
            entry["protein_r"] = {
                t: protein_correlations(fed.obsm[DENOISED_KEY], lab.obsm[PROTEIN_KEY], t) for t in TRANSFORMS
            }
        out["with_proteins" if with_proteins else "rna_only"] = entry
    return out


WORKERS = {"build": build_worker, "map": map_worker}


# --- the benchmark --------------------------------------------------------------------------------
def run_backend(backend: str, out: Path, *, quick: bool, threads: int) -> dict[str, Any]:
    """One backend: its reference build, then the lab's mapping, each in a fresh process."""
    from fedarches.shared.crypto import PUBLIC_KEY_NAME

    wdir = out / backend
    shutil.rmtree(wdir, ignore_errors=True)
    common = {"backend": backend, "quick": quick, "threads": threads, "seed": SEED}
    log(f"[{backend}] reference build ({CASES[backend].describe()})")
    build = run_method("build", {**common, "out": str(wdir)}, wdir / "build", suite="backends")
    log(f"[{backend}] built in {build['build_s']:.1f} s; mapping the lab with fedarches and with plain scvi-tools")
    spec = {**common, "bundle": str(wdir / "bundle"), "trust": str(wdir / "keys" / PUBLIC_KEY_NAME),
            "lab": str(wdir / "lab.h5ad")}  # fmt: skip
    mapped = run_method("map", spec, wdir / "map", suite="backends")
    return {"build": build, "map": mapped}


def run_worker(step: str, spec_path: Path, result_path: Path) -> None:
    """Run ``step`` (``build`` or ``map``) on the spec at ``spec_path``; write its result to ``result_path``."""
    result = WORKERS[step](json.loads(spec_path.read_text()))
    result_path.write_text(json.dumps(result, indent=1, default=float))


def run(
    out: Path = OUTPUT / "backends", *, quick: bool = False, threads: int = 1, doc: bool = True, resume: bool = False
) -> dict[str, Any]:
    """Every backend of :data:`CASES` into ``out``; its tables printed and, with ``doc``, :data:`DOC` written.

    ``quick``: a smoke run (a few hundred cells, 5 epochs); ``threads``: torch threads per process; ``resume``:
    keep the backends ``OUT/results.json`` already holds. Returns the results.
    """
    from fedarches.bench.report_backends import tables, write_doc
    from fedarches.shared.backends import BACKENDS

    missing = sorted({case.data for case in CASES.values()} - {p.name for p in SHARED_DATA.glob("*.h5ad")})
    if missing:
        msg = f"{', '.join(missing)} not found in {SHARED_DATA}: the benchmark reads the shared data"
        raise MissingDataError(msg)
    out = out.resolve()
    results_path = out / "results.json"
    results, started = start_run(out, resume=resume, quick=quick, threads=threads, backends={})
    for backend in CASES:
        if "map" in results["backends"].get(backend, {}):
            continue
        if backend not in BACKENDS:
            results["backends"][backend] = {
                "skipped": f"no backend {backend!r} registered in fedarches.shared.backends"
            }
        else:
            try:
                results["backends"][backend] = run_backend(backend, out, quick=quick, threads=threads)
            except RuntimeError as err:  # one failing backend must not lose the others' numbers
                results["backends"][backend] = {"failed": str(err)[-2000:]}
                log(f"[{backend}] FAILED: {str(err).splitlines()[0]}")
        results["total_s"] = time.monotonic() - started
        results_path.write_text(json.dumps(results, indent=1))
    log(f"results: {results_path} ({results['total_s'] / 60:.1f} min)")
    print(tables(results))
    if doc:
        write_doc(results)
        log(f"wrote {DOC}")
    return results

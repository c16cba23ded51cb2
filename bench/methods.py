"""The methods `make bench` compares, each run in a fresh process so its wall time and peak RSS are its own.

    python -m fedarches.bench worker methods METHOD SPEC.json RESULT.json      (runner.run_method)

SPEC names the bundle, the labs' .h5ad files and what to run; RESULT gets the per-lab metrics
(:func:`fedarches.bench.metrics.scores`: :func:`fedarches.shared.evaluation.label_transfer_metrics` and the
Unknown rates), timings, the process's peak RSS and ``process_s`` (from interpreter start to the result, imports
included). Latents go to ``result-latents.npz`` beside RESULT for the integration metrics. A method without an
Unknown call of its own calls Unknown the cells whose confidence is below 0.5
(:data:`fedarches.bench.metrics.CONFIDENCE_UNKNOWN`). Methods (:data:`METHODS`):

* ``scvi_surgery``: the centralized anchor. Plain scvi-tools, as in its scArches tutorial:
  ``SCANVI.load_query_data`` on the bundle's model, ``train(max_epochs=100, plan_kwargs={"weight_decay": 0.0},
  check_val_every_n_epoch=10)``, ``predict(soft=True)``; one lab after another in one process.
* ``fedarches``: :func:`fedarches.client.mapping.map_query` with the spec's options (the speed sweep
  and the query-size scaling use it).
* ``de_novo``: scVI then scANVI trained on reference + every query together (queries unlabeled), the ceiling.
* ``baseline``: log-normalized counts, PCA (50) fitted on the reference, kNN (k=15) and logistic regression.
* ``celltypist``: CellTypist (PyPI) trained on the reference with ``celltypist.train`` (its default logistic
  regression, all genes, log1p of counts per 10,000) and ``celltypist.annotate`` on each lab: plain
  predictions, then with its majority voting over an over-clustering of the lab. No model is downloaded.
* ``integration``: scib-metrics over each method's query latent.

Plain scvi-tools surgery with fedarches' own settings, for the agreement checks (``compare``, ``backends``):
:func:`plain_query_adata` and :func:`plain_surgery`.

Heavy optional libraries (CellTypist, scib-metrics) are imported by the method that needs them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from fedarches.bench.metrics import Cells, cells_of, fedarches_calls, scores
from fedarches.shared._process import peak_rss_bytes

if TYPE_CHECKING:
    from fedarches.client.options import MappingOptions
    from fedarches.shared.bundle import ReferenceBundle

TUTORIAL_EPOCHS = 100
DE_NOVO_SCANVI_EPOCHS = 20


def log_normalized(adata: ad.AnnData, genes: Any = None) -> ad.AnnData:
    """log1p of counts per 10,000 (each cell's total over all its genes), of ``genes`` (default: every gene)."""
    import scanpy as sc

    out = ad.AnnData(X=sp.csr_matrix(adata.X, dtype=np.float32), obs=pd.DataFrame(index=adata.obs_names))
    out.var_names = adata.var_names
    sc.pp.normalize_total(out, target_sum=1e4)
    sc.pp.log1p(out)
    return out if genes is None else out[:, genes].copy()


def each_lab(spec: dict[str, Any]) -> Iterator[tuple[str, ad.AnnData, float]]:
    """Each lab's name, its cells (read from its .h5ad) and the time its turn started."""
    for lab, path in spec["labs"].items():
        start = time.perf_counter()
        yield lab, ad.read_h5ad(path), start


def open_bundle(spec: dict[str, Any]) -> Any:
    """The spec's bundle, verified against its trusted key."""
    from fedarches.shared.bundle import ReferenceBundle

    return ReferenceBundle.open(Path(spec["bundle"]), Path(spec["trust"]))


def scvi_surgery(spec: dict[str, Any], latents: dict[str, np.ndarray]) -> dict[str, Any]:
    """Plain scvi-tools surgery with its tutorial's settings, each lab in turn."""
    import scvi
    import torch

    from fedarches.shared._training import quiet_training

    torch.set_num_threads(spec["threads"])
    bundle = open_bundle(spec)
    genes = pd.Index(bundle.var_names)
    setup = bundle.setup_args
    runs: dict[str, Any] = {}
    cells: Cells = {}
    tick = time.perf_counter()
    for lab, adata, start in each_lab(spec):
        query = ad.AnnData(X=sp.csr_matrix(adata.X, dtype=np.float32), obs=pd.DataFrame(index=adata.obs_names))
        query.var_names = adata.var_names
        query.obs[setup["batch_key"]] = lab
        query.obs[setup["labels_key"]] = setup.get("unlabeled_category") or "Unknown"
        model_dir = bundle.write_model_dir(Path(spec["workdir"]) / f"model-{lab}")
        with quiet_training():
            scvi.settings.seed = spec.get("seed", 0)
            query = query[:, query.var_names.isin(genes)].copy()
            scvi.model.SCANVI.prepare_query_anndata(query, str(model_dir))  # zero-fills missing genes, reorders
            model = scvi.model.SCANVI.load_query_data(query, str(model_dir))
            model.train(
                max_epochs=spec.get("max_epochs", TUTORIAL_EPOCHS),
                plan_kwargs={"weight_decay": 0.0},
                check_val_every_n_epoch=10,
                enable_progress_bar=False,
            )
            soft = model.predict(soft=True)[bundle.label_categories]
            latents[lab] = model.get_latent_representation().astype(np.float32)
        probabilities = soft.to_numpy()
        predicted = np.asarray(bundle.label_categories)[probabilities.argmax(axis=1)]
        cells[lab] = cells_of(adata, predicted, probabilities.max(axis=1))
        runs[lab] = {"wall_s": time.perf_counter() - start, "n_epochs": len(model.history["elbo_train"])}
    return {**scores(cells, bundle.label_categories), "runs": runs, "mapping_s": time.perf_counter() - tick}


def fedarches(spec: dict[str, Any], latents: dict[str, np.ndarray]) -> dict[str, Any]:
    """``map_query`` with the spec's options (every default unless it names some), each lab in turn."""
    import torch

    from fedarches.client.mapping import MappingOptions, map_query

    torch.set_num_threads(spec["threads"])
    bundle = open_bundle(spec)
    options = MappingOptions(**spec.get("options", {}), threads=spec["threads"], progress_bar=False)
    runs: dict[str, Any] = {}
    cells: Cells = {}
    tick = time.perf_counter()
    for lab, adata, start in each_lab(spec):
        read_s = time.perf_counter() - start
        result = map_query(adata, bundle, lab_name=lab, options=options)
        latents[lab] = adata.obsm[result.latent_key]
        cells[lab] = fedarches_calls(adata)
        runs[lab] = {
            "wall_s": time.perf_counter() - start,
            "read_s": read_s,
            "timings": result.timings,
            "n_epochs": result.n_epochs,
            "adapter_bytes": result.adapter.nbytes,
        }
    return {**scores(cells, bundle.label_categories), "runs": runs, "mapping_s": time.perf_counter() - tick}


def de_novo(spec: dict[str, Any], latents: dict[str, np.ndarray]) -> dict[str, Any]:
    """De novo scVI then scANVI, trained on the reference and every lab together (the labs unlabeled)."""
    import scvi
    import torch

    from fedarches.shared._training import quiet_training

    torch.set_num_threads(spec["threads"])
    bundle = open_bundle(spec)
    tick = time.perf_counter()
    reference = ad.read_h5ad(spec["reference"])
    queries = {lab: ad.read_h5ad(path) for lab, path in spec["labs"].items()}
    combined = ad.concat([reference, *queries.values()], join="inner", label="part", keys=["reference", *queries])
    combined = combined[:, combined.var_names.isin(bundle.var_names)].copy()
    combined.obs["batch_all"] = np.where(
        combined.obs["part"] == "reference", combined.obs["batch"].astype(str), combined.obs["part"].astype(str)
    )
    combined.obs["label_train"] = np.where(
        combined.obs["part"] == "reference", combined.obs["cell_type"].astype(str), "Unknown"
    )
    with quiet_training():
        scvi.settings.seed = spec.get("seed", 0)
        scvi.model.SCVI.setup_anndata(combined, batch_key="batch_all", labels_key="label_train")
        vae = scvi.model.SCVI(combined, n_latent=10, n_layers=2)
        vae.train(max_epochs=spec.get("max_epochs"), enable_progress_bar=False)
        scanvi = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category="Unknown")
        scanvi.train(
            max_epochs=spec.get("scanvi_epochs", DE_NOVO_SCANVI_EPOCHS),
            n_samples_per_label=100,
            enable_progress_bar=False,
        )
        soft = scanvi.predict(soft=True)
        latent = scanvi.get_latent_representation().astype(np.float32)
    types = sorted(reference.obs["cell_type"].astype(str).unique())
    probabilities = soft[types].to_numpy()
    cells: Cells = {}
    for lab, query in queries.items():
        rows = (combined.obs["part"] == lab).to_numpy()
        latents[lab] = latent[rows]
        p = probabilities[rows]
        cells[lab] = cells_of(query, np.asarray(types)[p.argmax(axis=1)], p.max(axis=1))
    return {
        **scores(cells, types),
        "mapping_s": time.perf_counter() - tick,
        "n_cells_trained": int(combined.n_obs),
    }


def baseline(spec: dict[str, Any], latents: dict[str, np.ndarray]) -> dict[str, Any]:
    """PCA (50) of log-normalized counts fitted on the reference; kNN (k = 15) and logistic regression on it."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    bundle = open_bundle(spec)
    tick = time.perf_counter()

    def model_genes(adata: ad.AnnData) -> np.ndarray:  # the reference model's genes; every split has all of them
        return log_normalized(adata, bundle.var_names).X.toarray()

    reference = ad.read_h5ad(spec["reference"])
    pca = PCA(n_components=50, random_state=0).fit(model_genes(reference))
    train = pca.transform(model_genes(reference))
    labels = reference.obs["cell_type"].astype(str).to_numpy()
    types = sorted(set(labels))
    classifiers = {
        "knn": KNeighborsClassifier(n_neighbors=15).fit(train, labels),
        "logreg": LogisticRegression(max_iter=2000).fit(train, labels),
    }
    fit_s = time.perf_counter() - tick
    cells: dict[str, Cells] = {name: {} for name in classifiers}
    for lab, path in spec["labs"].items():
        query = ad.read_h5ad(path)
        projected = pca.transform(model_genes(query))
        latents[lab] = projected.astype(np.float32)
        for name, classifier in classifiers.items():
            p = classifier.predict_proba(projected)
            cells[name][lab] = cells_of(query, np.asarray(classifier.classes_)[p.argmax(axis=1)], p.max(axis=1))
    return {
        "classifiers": {name: scores(c, types) for name, c in cells.items()},
        "mapping_s": time.perf_counter() - tick,
        "fit_s": fit_s,
    }


def celltypist_ovr_logistic_regression() -> None:
    """Let ``celltypist.train`` fit its default classifier on this scikit-learn.

    CellTypist 1.7.1 (the latest release) builds ``LogisticRegression(multi_class="ovr", ...)``;
    scikit-learn 1.8 removed ``multi_class`` (Teichlab/celltypist#164, open), so training fails with a
    TypeError. Put in its place, in CellTypist's module only: what scikit-learn < 1.8 fitted for
    ``multi_class="ovr"``, one binary L2 logistic regression per type with the same C, solver and
    max_iter, the coefficients stacked into ``coef_``. CellTypist's own ``decision_function`` and
    sigmoid probabilities then work as they did. Nothing changes where ``multi_class`` still exists.
    """
    import importlib
    import inspect

    from sklearn.linear_model import LogisticRegression

    if "multi_class" in inspect.signature(LogisticRegression).parameters:
        return

    class OneVsRestLogisticRegression(LogisticRegression):
        def fit(self, X: Any, y: Any, sample_weight: Any = None) -> OneVsRestLogisticRegression:
            classes = np.unique(y)
            if classes.size <= 2:
                return super().fit(X, y, sample_weight)
            binary = [LogisticRegression(**self.get_params()).fit(X, y == c, sample_weight) for c in classes]
            self.classes_ = classes
            self.coef_ = np.vstack([m.coef_ for m in binary])
            self.intercept_ = np.concatenate([m.intercept_ for m in binary])
            self.n_iter_ = np.concatenate([m.n_iter_ for m in binary])
            self.n_features_in_ = binary[0].n_features_in_
            return self

    def logistic_regression(*, multi_class: str = "ovr", **params: Any) -> OneVsRestLogisticRegression:
        if multi_class != "ovr":
            msg = f"only CellTypist's multi_class='ovr' is provided, not {multi_class!r}"
            raise ValueError(msg)
        return OneVsRestLogisticRegression(**params)

    importlib.import_module("celltypist.train").LogisticRegression = logistic_regression


def celltypist(spec: dict[str, Any], latents: dict[str, np.ndarray]) -> dict[str, Any]:
    """CellTypist trained on the reference; each lab annotated plainly and with majority voting."""
    # CellTypist makes its model folders at import: keep them in the workdir, not the home directory
    os.environ["CELLTYPIST_FOLDER"] = str(Path(spec["workdir"]) / "celltypist")
    from importlib.metadata import version

    import celltypist as ct

    celltypist_ovr_logistic_regression()
    np.random.seed(spec.get("seed", 0))
    tick = time.perf_counter()
    reference = ad.read_h5ad(spec["reference"])
    labels = reference.obs["cell_type"].astype(str).to_numpy()
    # docs: log1p of counts per 10,000 over all genes; the default classifier, no feature selection (small data)
    model = ct.train(log_normalized(reference), labels=labels, feature_selection=False)
    fit_s = time.perf_counter() - tick
    types = sorted(set(labels))
    cells: dict[str, Cells] = {"plain": {}, "majority_voting": {}}
    voting_s, voted_labs = 0.0, []
    for lab, path in spec["labs"].items():
        query = ad.read_h5ad(path)
        plain = ct.annotate(log_normalized(query), model=model)
        probabilities = plain.probability_matrix
        predicted = plain.predicted_labels["predicted_labels"].astype(str).to_numpy()
        cells["plain"][lab] = cells_of(query, predicted, probabilities.to_numpy().max(axis=1))
        start = time.perf_counter()
        voted = ct.annotate(log_normalized(query), model=model, majority_voting=True)
        voting_s += time.perf_counter() - start
        if "majority_voting" in voted.predicted_labels:  # CellTypist skips voting for 50 cells or fewer
            voted_labs.append(lab)
            predicted = voted.predicted_labels["majority_voting"].astype(str).to_numpy()
        # its confidence by majority voting: the cell's probability of the voted type
        columns = probabilities.columns.get_indexer(predicted)
        confidence = probabilities.to_numpy()[np.arange(len(predicted)), columns]
        cells["majority_voting"][lab] = cells_of(query, predicted, confidence)
    return {
        "classifiers": {name: scores(c, types) for name, c in cells.items()},
        "mapping_s": time.perf_counter() - tick,
        "fit_s": fit_s,
        "voting_s": voting_s,
        "voted_labs": voted_labs,
        "n_features": len(model.features),
        "version": version("celltypist"),
    }


def integration(spec: dict[str, Any], latents: dict[str, np.ndarray]) -> dict[str, Any]:
    """scib-metrics on the query cells of each variant: labs are the batches, true types the labels."""
    from importlib.metadata import version

    from scib_metrics.benchmark import Benchmarker

    tick = time.perf_counter()
    out: dict[str, Any] = {}
    for variant, entry in spec["variants"].items():
        obs = pd.concat(
            [ad.read_h5ad(path, backed="r").obs[["cell_type"]].assign(lab=lab) for lab, path in entry["labs"].items()]
        )
        arrays = {method: np.load(path) for method, path in entry["latents"].items()}
        unintegrated = np.concatenate([arrays["PCA baseline"][lab] for lab in entry["labs"]]).astype(np.float32)
        adata = ad.AnnData(X=unintegrated, obs=obs.astype(str).reset_index(drop=True))
        adata.obs_names = adata.obs_names.astype(str)
        adata.obsm["unintegrated PCA"] = unintegrated
        keys = list(arrays)
        for method, latent in arrays.items():
            adata.obsm[method] = np.concatenate([latent[lab] for lab in entry["labs"]]).astype(np.float32)
        bench = Benchmarker(
            adata, batch_key="lab", label_key="cell_type", embedding_obsm_keys=keys,
            pre_integrated_embedding_obsm_key="unintegrated PCA", n_jobs=1, progress_bar=False,
        )  # fmt: skip
        bench.benchmark()
        table = bench.get_results(min_max_scale=False)
        out[variant] = {
            m: {k: _plain(v) for k, v in row.items()} for m, row in table.drop(index="Metric Type").iterrows()
        }
    return {"variants": out, "version": version("scib-metrics"), "mapping_s": time.perf_counter() - tick}


def _plain(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


METHODS = {
    "integration": integration,
    "scvi_surgery": scvi_surgery,
    "fedarches": fedarches,
    "de_novo": de_novo,
    "baseline": baseline,
    "celltypist": celltypist,
}


def run_worker(method: str, spec_path: Path, result_path: Path) -> None:
    """Run ``method`` on the spec at ``spec_path``; write its result (and any latents beside it) to ``result_path``."""
    from fedarches.bench import STARTED

    spec = json.loads(spec_path.read_text())
    Path(spec["workdir"]).mkdir(parents=True, exist_ok=True)
    latents: dict[str, np.ndarray] = {}
    result = METHODS[method](spec, latents)
    result["process_s"] = time.perf_counter() - STARTED
    result["peak_rss_bytes"] = peak_rss_bytes()
    if latents:
        np.savez(result_path.with_name(result_path.stem + "-latents.npz"), **latents)
    result_path.write_text(json.dumps(result, indent=1))


# --- plain scvi-tools surgery ---------------------------------------------------------------------
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

    from fedarches.client.options import auto_max_epochs

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

"""`make bench-backends`: every model backend on real data, beside plain scvi-tools; regenerates docs/benchmarks_backends.md.

For each backend a coordinator process builds a reference with ``build_reference`` and writes it as a
signed bundle; then a lab process maps one held-out sample onto it twice, with
:func:`fedarches.client.mapping.map_query` and with plain scvi-tools on the same bundle's model
(``load_query_data``, ``train``, ``get_latent_representation``, ``predict``,
``get_normalized_expression``; same seed, same epochs: ``compare_scvi.plain_surgery``). Reported per
backend: reference build and surgery wall (and CPU) times, each process's peak RSS, adapter bytes per batch,
accuracy and macro-F1, the Unknown rate on cells of reference types, and the agreement with plain
scvi-tools (max |latent difference|, share of identical predictions).

* ``scanvi``, ``scvi``: ``../shared/data/symphony_pbmc_3chem.h5ad``; reference = 10x 3' v1 + 3' v2,
  lab = 10x 5' (nine fine PBMC types, the authors' labels).
* ``totalvi``, ``totalanvi``: ``../shared/data/citefuse_eccite_pbmc500.h5ad``; reference = hashtag samples
  HTO28/29/44, lab = HTO30, labels from protein-marker gating (``make_demo_citeseq.gate_cell_types``).
  The lab is mapped RNA-only (its proteins hidden) and, as a contrast, with its proteins; imputed
  proteins (``obsm['denoised_protein']``) are scored against the measured ones by Pearson r per protein.
* ``peakvi``: skipped, there is no real ATAC data in ``../shared/data``.

    .venv/bin/python scripts/bench_backends.py [--out bench-output/backends] [--quick] [--resume] [--threads 1]

Each step runs in a fresh process (``bench.run_method``), so its peak RSS is its own:
``bench_backends.py {build,map} SPEC.json RESULT.json``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import pandas as pd
import typer

if TYPE_CHECKING:
    import anndata as ad

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT.parent / "shared" / "data"
DOC = ROOT / "docs" / "benchmarks_backends.md"
COMMAND = "make bench-backends   (or: .venv/bin/python scripts/bench_backends.py)"
LAB = "lab"  # the lab's name in map_query, and so its batch name in the query model
PROTEIN_KEY = "protein_expression"
DENOISED_KEY = "denoised_protein"
UNGATED = "(no gate)"
KEY_MARKERS = ("CD3", "CD4", "CD8", "CD14", "CD19", "CD56")
SEED = 0
MAX_REFERENCE_CELLS, MAX_LAB_CELLS = 3000, 1000  # cap for time; both data sets are smaller, so all cells are used
QUICK_REFERENCE_CELLS, QUICK_LAB_CELLS = 200, 60
REFERENCE_EPOCHS, CLASSIFIER_EPOCHS = 200, 20  # as `make compare`; early stopping on
QUICK_EPOCHS = 5
PLAIN_PROTEIN_SAMPLES = 25  # posterior samples of plain scvi-tools' imputed proteins, as in its totalVI tutorial


@dataclass(frozen=True)
class Case:
    """One data set and split: the reference's batches and the lab's."""

    data: str
    reference_batches: tuple[str, ...]
    lab_batch: str
    proteins: bool = False

    def describe(self) -> str:
        return f"`{self.data}`: reference {' + '.join(self.reference_batches)}, lab {self.lab_batch}"


PBMC = Case("symphony_pbmc_3chem.h5ad", ("3pv1", "3pv2"), "5p")
CITESEQ = Case("citefuse_eccite_pbmc500.h5ad", ("HTO28_5P", "HTO29_5P", "HTO44_5P"), "HTO30_5P", proteins=True)
CASES = {"scanvi": PBMC, "scvi": PBMC, "totalvi": CITESEQ, "totalanvi": CITESEQ}
NOT_RUN = {"peakvi": "no real ATAC data in ../shared/data (only scRNA-seq and CITE-seq); not benchmarked here"}

app = typer.Typer(add_completion=False)


# --- data -----------------------------------------------------------------------------------------
def subsample(adata: ad.AnnData, n: int, rng: np.random.Generator) -> ad.AnnData:
    """At most ``n`` cells of ``adata``, drawn without replacement, in their original order."""
    if adata.n_obs <= n:
        return adata.copy()
    return adata[np.sort(rng.choice(adata.n_obs, n, replace=False))].copy()


def load_case(case: Case, *, quick: bool) -> tuple[ad.AnnData, ad.AnnData]:
    """The reference (cells with a type only) and the lab of ``case``, subsampled with a fixed seed.

    CITE-seq: ``cell_type`` comes from protein-marker gating over all cells (the data has no labels),
    the proteins the demo drops are dropped (``make_demo_citeseq.DROPPED_PROTEINS``).
    """
    import anndata as ad

    data = ad.read_h5ad(DATA_DIR / case.data)
    if case.proteins:
        from make_demo_citeseq import DROPPED_PROTEINS, gate_cell_types

        proteins = data.obsm[PROTEIN_KEY].drop(columns=DROPPED_PROTEINS)
        data.obsm[PROTEIN_KEY] = proteins
        data.obs["cell_type"] = gate_cell_types(proteins).to_numpy()
    in_reference = data.obs["batch"].isin(case.reference_batches) & data.obs["cell_type"].notna()
    rng = np.random.default_rng(SEED)
    n_ref, n_lab = (QUICK_REFERENCE_CELLS, QUICK_LAB_CELLS) if quick else (MAX_REFERENCE_CELLS, MAX_LAB_CELLS)
    reference = subsample(data[in_reference.to_numpy()], n_ref, rng)
    lab = subsample(data[(data.obs["batch"] == case.lab_batch).to_numpy()], n_lab, rng)
    return reference, lab


def truth_of(lab: ad.AnnData) -> np.ndarray:
    return lab.obs["cell_type"].astype(object).fillna(UNGATED).astype(str).to_numpy()


# --- workers (each in a fresh process) ------------------------------------------------------------
def build_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Coordinator: build and sign the reference; write the lab's cells for the map step."""
    import scvi  # noqa: F401 - imported before anything is timed
    import torch
    from compare_scvi import make_bundle

    from fedarches.server.reference import ReferenceOptions
    from fedarches.shared._process import peak_rss_bytes

    torch.set_num_threads(spec["threads"])
    case = CASES[spec["backend"]]
    reference, lab = load_case(case, quick=spec["quick"])
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


def scores(bundle: Any, truth: np.ndarray, obs: pd.DataFrame) -> dict[str, Any]:
    """Accuracy and macro-F1 over cells of reference types, and how many of those are called Unknown."""
    from fedarches.shared._constants import ADATA_KEYS
    from fedarches.shared.evaluation import label_transfer_metrics

    predicted = obs[ADATA_KEYS.PREDICTION].astype(str).to_numpy()
    metrics = label_transfer_metrics(truth, predicted, obs[ADATA_KEYS.CONFIDENCE].to_numpy(), bundle.label_categories)
    known = np.isin(truth, bundle.label_categories)
    unknown = obs[ADATA_KEYS.UNKNOWN].to_numpy(dtype=bool) if ADATA_KEYS.UNKNOWN in obs else None
    return {
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "f1_per_type": metrics["f1_per_type"],
        "n_known": int(known.sum()),
        "unknown_known": float(unknown[known].mean()) if unknown is not None else None,
    }


def clr(values: np.ndarray) -> np.ndarray:
    """Centred log-ratio per cell across proteins, as Seurat's ``NormalizeData(method='CLR', margin=1)``."""
    logs = np.log1p(values)
    return np.log1p(values / np.exp(logs.mean(axis=1, keepdims=True)))


TRANSFORMS = {"log1p": np.log1p, "clr": clr}


def protein_correlations(imputed: pd.DataFrame, measured: pd.DataFrame, transform: str) -> dict[str, float | None]:
    """Pearson r per protein between transformed imputed and measured values; None for a constant column.

    ``transform``: ``"log1p"`` of each value, or ``"clr"`` per cell across the proteins (imputed and
    measured alike), which removes each cell's overall antibody capture.
    """
    a = TRANSFORMS[transform](np.asarray(imputed, dtype=np.float64))
    b = TRANSFORMS[transform](measured[list(imputed.columns)].to_numpy(dtype=np.float64))
    out: dict[str, float | None] = {}
    for j, name in enumerate(imputed.columns):
        x, y = a[:, j] - a[:, j].mean(), b[:, j] - b[:, j].mean()
        denominator = float(np.sqrt((x * x).sum() * (y * y).sum()))
        out[str(name)] = float((x * y).sum() / denominator) if denominator > 0 else None
    return out


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
    from compare_scvi import plain_query_adata, plain_surgery

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
            **scores(bundle, truth, fed.obs),
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
    from bench import log, run_method

    from fedarches.shared.crypto import PUBLIC_KEY_NAME

    wdir = out / backend
    shutil.rmtree(wdir, ignore_errors=True)
    common = {"backend": backend, "quick": quick, "threads": threads, "seed": SEED}
    log(f"[{backend}] reference build ({CASES[backend].describe()})")
    build = run_method("build", {**common, "out": str(wdir)}, wdir / "build", script=Path(__file__))
    log(f"[{backend}] built in {build['build_s']:.1f} s; mapping the lab with fedarches and with plain scvi-tools")
    spec = {**common, "bundle": str(wdir / "bundle"), "trust": str(wdir / "keys" / PUBLIC_KEY_NAME),
            "lab": str(wdir / "lab.h5ad")}  # fmt: skip
    mapped = run_method("map", spec, wdir / "map", script=Path(__file__))
    return {"build": build, "map": mapped}


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="Working directory for the run.")] = ROOT / "bench-output" / "backends",
    quick: Annotated[bool, typer.Option(help="Smoke run: a few hundred cells, 5 epochs.")] = False,
    threads: Annotated[int, typer.Option(help="torch threads per process.")] = 1,
    doc: Annotated[bool, typer.Option(help=f"Regenerate {DOC.relative_to(ROOT)} from this run.")] = True,
    resume: Annotated[
        bool, typer.Option(help="Keep the backends OUT/results.json already holds; run the rest.")
    ] = False,
) -> None:
    from bench import log, start_run

    from fedarches.shared.backends import BACKENDS

    missing = sorted({case.data for case in CASES.values()} - {p.name for p in DATA_DIR.glob("*.h5ad")})
    if missing:
        raise typer.BadParameter(f"{', '.join(missing)} not found in {DATA_DIR}: the benchmark reads the shared data")
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


# --- reporting ------------------------------------------------------------------------------------
def _mib(n: int) -> str:
    return f"{n / 2**20:.0f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, fmt)


def main_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for backend, entry in results["backends"].items():
        if "map" not in entry:
            rows.append([backend, entry.get("skipped") or f"FAILED: {entry.get('failed', '').splitlines()[0]}"])
            continue
        build, run = entry["build"], entry["map"]["rna_only"]
        rows.append(
            [
                backend,
                f"{build['n_reference']} / {build['n_lab']}",
                f"{build['build_s']:.0f} ({_num(build.get('build_cpu_s'), '.0f')})",
                f"{run['surgery_s']:.1f} / {run['plain_s']:.1f}",
                f"{_num(run.get('surgery_cpu_s'), '.1f')} / {_num(run.get('plain_cpu_s'), '.1f')}",
                f"{_mib(build['peak_rss_bytes'])} / {_mib(run['peak_rss_bytes'])}",
                f"{run['adapter_bytes_per_batch']:,}",
                _num(run["accuracy"]),
                _num(run["macro_f1"]),
                _pct(run["unknown_known"]),
                f"{run['max_abs_latent_diff']:.1e}",
                _pct(run["identical_predictions"]),
                f"{run['epochs'][0]}/{run['epochs'][1]}",
            ]
        )
    return rows


MAIN_HEADER = [
    "backend",
    "ref / lab cells",
    "build s (CPU s)",
    "surgery s (fed / scvi)",
    "surgery CPU s (fed / scvi)",
    "peak RSS MiB (build / map)",
    "adapter B/batch",
    "accuracy",
    "macro-F1",
    "Unknown (known types)",
    "max|dz| vs scvi",
    "same calls",
    "epochs f/s",
]


def protein_rows(results: dict[str, Any], transform: str, *, every_protein: bool) -> tuple[list[str], list[list[str]]]:
    """Pearson r (``transform``) of each protein backend, RNA-only and with proteins: median, key markers, each."""
    runs = {b: e["map"] for b, e in results["backends"].items() if "map" in e and "with_proteins" in e["map"]}
    if not runs:
        return [], []
    header = [f"protein ({transform})"] + [f"{b} {v}" for b in runs for v in ("RNA-only", "with proteins")]
    names = list(next(iter(runs.values()))["rna_only"]["protein_r"][transform])
    rows = [
        [name] + [_num(runs[b][v]["protein_r"][transform][name]) for b in runs for v in ("rna_only", "with_proteins")]
        for name in names
    ]
    summary = [["**median (all proteins)**"], *[[f"**{m}**"] for m in KEY_MARKERS if m in names]]
    for b in runs:
        for v in ("rna_only", "with_proteins"):
            r = runs[b][v]["protein_r"][transform]
            summary[0].append(_num(float(np.nanmedian([x for x in r.values() if x is not None]))))
            for row in summary[1:]:
                row.append(_num(r[row[0].strip("*")]))
    return header, summary + (rows if every_protein else [])


CONTRAST_HEADER = [
    "backend",
    "surgery s (fed / scvi)",
    "accuracy",
    "macro-F1",
    "max|dz| vs scvi",
    "same calls",
    "max abs log1p protein diff vs scvi (RNA-only / with)",
]


def tables(results: dict[str, Any]) -> str:
    from fedarches.shared._cli import text_table

    rows = main_rows(results)
    ran = [r for r in rows if len(r) == len(MAIN_HEADER)]
    text = text_table(MAIN_HEADER, ran)
    text += "".join(f"\n{r[0]}: {r[1]}" for r in rows if len(r) != len(MAIN_HEADER))
    for transform in TRANSFORMS:
        header, prows = protein_rows(results, transform, every_protein=transform == "log1p")
        if prows:
            text += f"\n\nPearson r, imputed vs measured protein ({transform}):\n"
            text += text_table(header, [[c.strip("*") for c in r] for r in prows])
    return text


def _md(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table (``|`` inside a cell escaped)."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *[line(r) for r in rows]]


def write_doc(results: dict[str, Any]) -> None:
    backends = results["backends"]
    first = {c.data: next((e["build"] for b, e in backends.items() if "build" in e and CASES[b] == c), None)
             for c in CASES.values()}  # fmt: skip
    rows = main_rows(results)
    lines = [
        "# Benchmark: every model backend on real data, beside plain scvi-tools",
        "",
        f"Generated by `make bench-backends` (`scripts/bench_backends.py`); do not edit by hand. Run "
        f"{results['started']}, {results['total_s'] / 60:.1f} min on CPU, {results['threads']} torch thread(s) per "
        f"process{' (QUICK smoke run: not for quoting)' if results['quick'] else ''}.",
        "",
        "Per backend a coordinator process builds the reference (`build_reference`, seed 0, 2,000 seurat_v3 genes at "
        f"most, {REFERENCE_EPOCHS} epochs at most with early stopping, {CLASSIFIER_EPOCHS} classifier epochs) and "
        "signs the bundle; a lab process maps one held-out sample onto it with `map_query` (scArches surgery, "
        "defaults: learning rate 1e-3, 100 epochs at most) and again with plain scvi-tools on the same bundle's "
        "model: `load_query_data(freeze_batchnorm_decoder=True)`, `train` with the same settings and seed, "
        "`get_latent_representation`, `predict(soft=True)` (`compare_scvi.plain_surgery`, as `make compare`).",
        "",
        *_md(MAIN_HEADER, [r for r in rows if len(r) == len(MAIN_HEADER)]),
        "",
        *[f"- **{r[0]}**: {r[1]}" for r in rows if len(r) != len(MAIN_HEADER)],
        f"- **peakvi**: {NOT_RUN['peakvi']}.",
        "",
        "Columns: build s = wall seconds of `build_reference` + signing (training, embedding, reference summary), "
        "with the process's CPU seconds in brackets (above the wall time where libraries besides torch, which had "
        "one thread, ran threads of their own); surgery s = `map_query` end to end / plain scvi-tools (load, train, "
        "latent, predictions, imputed proteins); surgery CPU s = the same in CPU seconds (steadier than wall seconds "
        "when other jobs share the cores); peak RSS = high-water mark "
        "of the coordinator's process (reading the data included) / of the lab's process at the end of its "
        "mapping; adapter B/batch = bytes of the tensors that leave the lab per new batch; accuracy and macro-F1 "
        "over lab cells whose type the reference has; Unknown (known types) = share of those cells fedarches calls "
        "Unknown; max|dz| = largest absolute difference between fedarches' and plain scvi-tools' latent; same calls "
        "= share of cells with the same predicted type; epochs f/s = epochs trained by fedarches / plain scvi-tools.",
        "",
        "## Data",
        "",
    ]
    for data, build in first.items():
        case = next(c for c in CASES.values() if c.data == data)
        names = ", ".join(b for b in CASES if CASES[b] == case)
        if build is None:
            lines += [f"- {names}: {case.describe()}: not run.", ""]
            continue
        proteins = f" + {build['n_proteins']} proteins" if build["n_proteins"] else ""
        lines += [
            f"- **{names}**: {case.describe()}. {build['n_reference']} reference cells, {build['n_lab']} lab cells, "
            f"{build['n_genes']} genes{proteins}. "
            f"Reference types: {', '.join(f'{k} {v}' for k, v in build['reference_types'].items())}. Lab: "
            f"{', '.join(f'{k} {v}' for k, v in build['lab_types'].items())}.",
            "",
        ]
        ran = [b for b in CASES if CASES[b] == case and "map" in backends.get(b, {})]
        types = sorted({t for b in ran for t in backends[b]["map"]["rna_only"]["f1_per_type"]})
        f1_rows = [[t, *(_num(backends[b]["map"]["rna_only"]["f1_per_type"].get(t)) for b in ran)] for t in types]
        rare = [f"{t} ({n})" for t, n in build["lab_types"].items() if t in build["label_categories"] and n < 5]
        lines += [
            "F1 per type (lab cells; the main row's mapping)"
            + (f"; macro-F1 averages these, rare lab types included: {', '.join(rare)} cells" if rare else "")
            + ":",
            "",
            *_md(["type", *ran], f1_rows),
            "",
        ]
    caps = (QUICK_REFERENCE_CELLS, QUICK_LAB_CELLS) if results["quick"] else (MAX_REFERENCE_CELLS, MAX_LAB_CELLS)
    lines += [
        f"Subsampling: at most {caps[0]:,} reference and {caps[1]:,} lab cells (seed {SEED}); "
        + (
            "both data sets are smaller than that (1,200 and 500 cells), so every cell is used. "
            if not results["quick"]
            else "QUICK run: subsampled. "
        )
        + "symphony_pbmc_3chem: the authors' (Symphony) labels; only 1,767 genes ship with it. "
        "citefuse_eccite_pbmc500 has **no cell-type labels**: reference labels and the lab's truth both come from "
        "protein-marker gating (`scripts/make_demo_citeseq.py`, `gate_cell_types`, on arcsinh(ADT / 5) of all "
        "cells), so accuracy there is agreement with marker-gated labels, which the RNA-only lab never sees. "
        "Ungated cells are left out of the reference and count as unseen in the lab (not in accuracy). "
        "The demo's dropped protein (CD223, two counts in 500 cells) is dropped here too.",
        "",
        "scVI and totalVI have no classifier: fedarches calls types by weighted kNN on the bundle's reference "
        "embedding, and the plain scvi-tools row applies that same kNN to scvi-tools' own latent, so `same calls` "
        "measures the surgery, not two different classifiers.",
        "",
    ]
    header, prows = protein_rows(results, "log1p", every_protein=True)
    if prows:
        runs = {b: e["map"] for b, e in backends.items() if "map" in e and "with_proteins" in e["map"]}
        contrast = [
            [b, f"{runs[b]['with_proteins']['surgery_s']:.1f} / {runs[b]['with_proteins']['plain_s']:.1f}",
             _num(runs[b]["with_proteins"]["accuracy"]), _num(runs[b]["with_proteins"]["macro_f1"]),
             f"{runs[b]['with_proteins']['max_abs_latent_diff']:.1e}",
             _pct(runs[b]["with_proteins"]["identical_predictions"]),
             " / ".join(_num(runs[b][v].get("max_abs_log1p_protein_diff"), ".1e") for v in ("rna_only", "with_proteins"))]
            for b in runs
        ]  # fmt: skip
        lines += [
            "## CITE-seq: protein imputation",
            "",
            "The lab's proteins are hidden for the main row (an RNA-only lab: every protein is imputed from RNA); "
            "the contrast maps the same cells with their measured proteins. Imputed = `obsm['denoised_protein']` "
            f"(fedarches); plain scvi-tools: `get_normalized_expression(n_samples={PLAIN_PROTEIN_SAMPLES}, "
            "return_mean=True, transform_batch=<reference batches>)`. Score: Pearson r per protein over the lab's "
            "cells between log1p(imputed) and **log1p(measured ADT counts)**, and, summarised, between the CLR "
            "transforms of both (centred log-ratio per cell across the proteins, Seurat's `margin=1`). log1p r also "
            "follows each cell's overall antibody capture, which the isotype controls (IgG1, IgG2a: no specific "
            "signal) show; CLR removes it. Key markers as this panel names them; CD3, CD14 and CD56 stain weakly in "
            "this panel (99th percentile of arcsinh(ADT / 5) about 2.2 to 2.7), so their measured values are mostly "
            "background.",
            "",
            "With proteins given (contrast run):",
            "",
            *_md(CONTRAST_HEADER, contrast),
            "",
            "Pearson r, CLR on both sides (summary):",
            "",
            *_md(*protein_rows(results, "clr", every_protein=False)),
            "",
            "Pearson r, log1p on both sides, every protein:",
            "",
            *_md(header, prows),
            "",
        ]
    lines += [f"Reproduce: `{COMMAND}`; `--quick` is a smoke run.", ""]
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text("\n".join(lines))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    if len(sys.argv) == 4 and sys.argv[1] in WORKERS:  # bench.run_method: METHOD SPEC.json RESULT.json
        result = WORKERS[sys.argv[1]](json.loads(Path(sys.argv[2]).read_text()))
        Path(sys.argv[3]).write_text(json.dumps(result, indent=1, default=float))
    else:
        app()

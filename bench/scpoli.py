"""`python -m fedarches.bench scpoli`: the scPoli backend on PBMC, scArches' own scPoli beside it, and new cell types.

Two parts, both on ``../shared/data``; docs/benchmarks_scpoli.md is written from their JSON.

* **PBMC and parity.** ``symphony_pbmc_3chem``: reference = 10x 3' v1 + 3' v2, lab = 10x 5' (nine fine
  types). fedarches builds the scPoli reference (``build_reference``, 1,000 HVGs) and maps the lab
  (``map_query``), per seed. The same genes, split and seed go to the scArches package's scPoli
  (``bench/original/scarches_scpoli.py`` under ``.venv-scarches``, from ``make scarches-env``),
  when that environment exists. Reported: accuracy and macro-F1 of the lab's predictions, surgery
  wall time, adapter bytes, and two integration metrics on the joint latent of reference and lab
  (scib's cell-type ASW, ``(silhouette + 1) / 2``, and batch ASW, ``1 - |silhouette by batch|`` within
  each type, averaged over types).
* **New cell types.** A type is held out of the reference; one or two labs whose queries carry labels
  contribute its prototype (:func:`fedarches.shared.prototypes.contribute`, under a lab policy);
  :func:`fedarches.server.merge.merge_adapters` merges adapters and prototypes into an atlas; a third
  lab, which never labelled anything, is mapped onto the original bundle and onto the atlas. Reported:
  recall and precision of the new type in the third lab, its accuracy and macro-F1, and the share of
  the new type's cells called Unknown. Cases: Symphony PBMC without ``T_CD8`` (reference 3' v2; labs
  3' v1 and the two halves of 5'), and Kang's five donors without ``NK cells`` (reference donor 1015;
  labs 1016, 1244 and 1256).

    python -m fedarches.bench scpoli [--out bench-output/scpoli] [--seeds 0 1 2] [--quick]
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedarches.bench.paths import DOCS, OUTPUT, SHARED_DATA, MissingDataError
from fedarches.bench.runner import log

DOC = DOCS / "benchmarks_scpoli.md"
REPO = Path(__file__).resolve().parents[1]
ORIGINAL_PYTHON = REPO / ".venv-scarches" / "bin" / "python"
ORIGINAL_RUNNER = REPO / "bench" / "original" / "scarches_scpoli.py"
PBMC = "symphony_pbmc_3chem.h5ad"
REFERENCE_BATCHES, LAB_BATCH = ("3pv1", "3pv2"), "5p"
N_TOP_GENES = 1000
NOISE_MULTIPLIERS = (1.0, 4.0)  # noise sd on prototype sums in units of the clip (99th-percentile latent norm)
THREADS = 1
TUTORIAL_EPOCHS, LONG_EPOCHS = 50, 200  # the scPoli tutorial's; and enough for 770 cells (6 steps an epoch)


@dataclass(frozen=True)
class NewTypeCase:
    """A held-out type, the reference's batches, the contributing labs' batches and the evaluated lab's."""

    name: str
    data: str
    held_out: str
    reference: tuple[str, ...]
    contributors: tuple[tuple[str, tuple[str, ...], int], ...]  # (lab, batches, half: 0 all, 1 or 2)
    evaluated: tuple[str, tuple[str, ...], int]


NEW_TYPE_CASES = (
    NewTypeCase("symphony-T_CD8", PBMC, "T_CD8", ("3pv2",),
                (("lab_3pv1", ("3pv1",), 0), ("lab_5p_a", ("5p",), 1)), ("lab_5p_b", ("5p",), 2)),
    NewTypeCase("kang-NK", "kang_ctrl_5donors.h5ad", "NK cells", ("1015",),
                (("donor_1016", ("1016",), 0), ("donor_1244", ("1244",), 0)), ("donor_1256", ("1256",), 0)),
)  # fmt: skip


# ---- shared steps ------------------------------------------------------------------------------------
def _load(name: str) -> Any:
    import anndata as ad

    path = SHARED_DATA / name
    if not path.exists():
        msg = f"{path} is missing; the scPoli benchmark reads ../shared/data"
        raise MissingDataError(msg)
    adata = ad.read_h5ad(path)
    adata.obs["batch"] = adata.obs["batch"].astype(str)
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(str)
    return adata


def _cells(adata: Any, batches: tuple[str, ...], half: int = 0, drop: str | None = None) -> Any:
    keep = adata.obs["batch"].isin(batches).to_numpy()
    if drop is not None:
        keep &= (adata.obs["cell_type"] != drop).to_numpy()
    if half:
        order = np.random.default_rng(0).permutation(np.flatnonzero(keep))
        chosen = np.sort(order[: len(order) // 2] if half == 1 else order[len(order) // 2 :])
        keep = np.zeros(adata.n_obs, dtype=bool)
        keep[chosen] = True
    return adata[keep].copy()


def _bundle(reference: Any, work: Path, seed: int, epochs: int | None, model: str = "scpoli", **extra: Any) -> Any:
    from fedarches.bench.bundles import make_bundle
    from fedarches.server.reference import ReferenceOptions

    options = ReferenceOptions(
        model=model, n_top_genes=N_TOP_GENES, seed=seed, progress_bar=False, threads=THREADS, max_epochs=epochs,
        **extra,
    )  # fmt: skip
    return make_bundle(reference, work, options)


def _map(adata: Any, bundle: Any, lab: str, seed: int, epochs: int | None) -> tuple[Any, Any]:
    from fedarches.client.mapping import MappingOptions, map_query

    options = MappingOptions(seed=seed, threads=THREADS, progress_bar=False, max_epochs=epochs)  # None: 50
    result = map_query(adata, bundle, lab_name=lab, options=options, copy=True)
    return result, result.adata


def _scores(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import f1_score

    return {
        "accuracy": float(np.mean(truth == predicted)),
        "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
    }


def _integration(latent: np.ndarray, labels: np.ndarray, batches: np.ndarray) -> dict[str, float]:
    """Scib's cell-type ASW and batch ASW (within each type with two batches or more)."""
    from sklearn.metrics import silhouette_samples

    label_asw = float(np.mean((silhouette_samples(latent, labels) + 1) / 2))
    per_type = []
    for cell_type in np.unique(labels):
        inside = labels == cell_type
        if len(np.unique(batches[inside])) > 1 and inside.sum() > 2:
            per_type.append(float(np.mean(1 - np.abs(silhouette_samples(latent[inside], batches[inside])))))
    return {"label_asw": label_asw, "batch_asw": float(np.mean(per_type)) if per_type else float("nan")}


def _reference_latent(bundle: Any, reference: Any) -> np.ndarray:
    """Latent of the reference's own cells under the bundle's model."""
    from fedarches.shared.backends import backend_for

    cells = reference[:, bundle.var_names].copy()
    backend = backend_for(bundle)
    with tempfile.TemporaryDirectory() as tmp:
        model = backend.model_cls().load(str(bundle.write_model_dir(Path(tmp) / "model")), adata=cells)
        return backend.latent(model)


# ---- PBMC and parity ---------------------------------------------------------------------------------
def pbmc_and_parity(
    out: Path, seeds: tuple[int, ...], *, epochs: int = TUTORIAL_EPOCHS, quick: bool = False
) -> dict[str, Any]:
    """Map the 5' lab onto a 3' reference with fedarches' scPoli and, when installed, scArches' own.

    ``epochs`` for reference and surgery alike, 80 % of them before the prototype loss, in both.
    """
    data = _load(PBMC)
    reference, lab = _cells(data, REFERENCE_BATCHES), _cells(data, (LAB_BATCH,))
    epochs = 3 if quick else epochs
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        work = out / f"pbmc-{epochs}epochs-seed{seed}"
        tick = time.perf_counter()
        bundle = _bundle(reference, work, seed, epochs)
        build_s = time.perf_counter() - tick
        result, annotated = _map(lab, bundle, "lab", seed, epochs)
        truth = lab.obs["cell_type"].to_numpy()
        predicted = annotated.obs["predicted_cell_type"].astype(str).to_numpy()
        joint = np.vstack([_reference_latent(bundle, reference), annotated.obsm["X_scPoli"]])
        rows.append({
            "method": "fedarches scPoli", "epochs": epochs, "seed": seed, **_scores(truth, predicted),
            **_integration(
                joint, np.r_[reference.obs["cell_type"], truth], np.r_[reference.obs["batch"], lab.obs["batch"]]
            ),
            "build_s": build_s, "surgery_s": result.timings["train_s"], "adapter_bytes": result.adapter.nbytes,
            "reference_values_changed": 0,  # map_query checks every reference tensor bit for bit
            "unknown_share": float(annotated.obs["is_unknown"].mean()), "n_genes": len(bundle.var_names),
        })  # fmt: skip
        log(f"fedarches scPoli seed {seed}: {rows[-1]}")
        genes = work / "genes.txt"
        genes.write_text("\n".join(bundle.var_names) + "\n")
        if ORIGINAL_PYTHON.exists():
            rows.extend(_original(genes, seed, work / "original", reference, lab, epochs=epochs, quick=quick))
    return {"rows": rows, "original_available": ORIGINAL_PYTHON.exists()}


@dataclass(frozen=True)
class OriginalRun:
    """What a scArches runner (``bench/original``) wrote: its result, its cells' calls, its latents."""

    result: dict[str, Any]
    latent: Any  # the npz
    truth: np.ndarray
    predicted: np.ndarray
    row: dict[str, Any]  # scores, integration metrics, times, adapter bytes, reference values changed


def run_original(runner: Path, genes: Path, seed: int, out: Path, reference: Any, lab: Any, *extra: str) -> OriginalRun:
    """Run a scArches runner on the PBMC split with these genes and seed in ``.venv-scarches``; read its outputs."""
    command = [
        str(ORIGINAL_PYTHON), str(runner), "--data", str(SHARED_DATA / PBMC), "--genes", str(genes),
        "--reference-batches", ",".join(REFERENCE_BATCHES), "--query-batches", LAB_BATCH,
        "--seed", str(seed), "--threads", str(THREADS), "--out", str(out), *extra,
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True)
    result = json.loads((out / "result.json").read_text())
    cells = pd.read_csv(out / "query_cells.csv")
    latent = np.load(out / "latent.npz", allow_pickle=False)
    truth = cells["true_label"].astype(str).to_numpy()
    predicted = cells["predicted_label"].astype(str).to_numpy()
    ref_obs = reference.obs.loc[latent["reference_obs_names"].astype(str)]
    joint = np.vstack([latent["reference_latent"], latent["query_latent"]])
    labels = np.r_[ref_obs["cell_type"], truth]
    batches = np.r_[ref_obs["batch"], lab.obs["batch"].to_numpy()]
    row = {
        **_scores(truth, predicted), **_integration(joint, labels, batches),
        "build_s": result["wall_seconds"]["reference_training"], "surgery_s": result["wall_seconds"]["query_surgery"],
        "adapter_bytes": 4 * result["state_changes"]["new_values_grown_part"],  # float32 values
        "reference_values_changed": result["state_changes"]["changed_values_shared_part"],
    }  # fmt: skip
    return OriginalRun(result, latent, truth, predicted, row)


def _original(
    genes: Path, seed: int, out: Path, reference: Any, lab: Any, *, epochs: int, quick: bool
) -> list[dict[str, Any]]:
    """Run scArches 0.6.1's scPoli on the same genes, split and seed, in its own environment.

    Three rows: its own ``classify`` (a sampled latent), nearest prototype of the latent means, and its
    trained reference imported into a bundle and mapped onto by fedarches.
    """
    extra = ["--epochs", str(epochs), "--save-reference", str(out / "reference-model"), *(["--quick"] if quick else [])]
    run = run_original(ORIGINAL_RUNNER, genes, seed, out, reference, lab, *extra)
    row = {"method": "scArches 0.6.1 scPoli", "epochs": epochs, "seed": seed, **run.row, "unknown_share": None,
           "n_genes": run.result["n_genes"]}  # fmt: skip
    log(f"scArches scPoli seed {seed}: {row}")
    # the same model's latent means against its prototypes: what fedarches predicts from (scArches samples)
    latent = run.latent
    distances = np.linalg.norm(latent["query_latent"][:, None, :] - latent["prototypes"][None], axis=2)
    by_means = latent["prototype_names"].astype(str)[distances.argmin(axis=1)]
    mean_row = {**row, "method": "scArches 0.6.1 scPoli, latent means", **_scores(run.truth, by_means)}
    return [row, mean_row, _imported(out / "reference-model", reference, lab, seed, epochs, out / "imported")]


def _imported(saved: Path, reference: Any, lab: Any, seed: int, epochs: int, work: Path) -> dict[str, Any]:
    """Import scArches' trained reference into a signed bundle (import-reference), then map with fedarches."""
    from fedarches.server.reference import import_reference
    from fedarches.shared.bundle import ReferenceBundle, write_bundle
    from fedarches.shared.crypto import generate_signing_keys, load_private_key

    contents = import_reference(saved, reference_adata=reference)
    private, public = generate_signing_keys(work / "keys", overwrite=True)
    written = write_bundle(work / "bundle", contents, load_private_key(private), overwrite=True)
    bundle = ReferenceBundle.open(written, public)
    result, annotated = _map(lab, bundle, "lab", seed, epochs)
    truth = lab.obs["cell_type"].to_numpy()
    joint = np.vstack([_reference_latent(bundle, reference), annotated.obsm["X_scPoli"]])
    row = {
        "method": "scArches-trained reference, imported; fedarches surgery", "epochs": epochs, "seed": seed,
        **_scores(truth, annotated.obs["predicted_cell_type"].astype(str).to_numpy()),
        **_integration(
            joint, np.r_[reference.obs["cell_type"], truth], np.r_[reference.obs["batch"], lab.obs["batch"]]
        ),
        "build_s": None, "surgery_s": result.timings["train_s"], "adapter_bytes": result.adapter.nbytes,
        "reference_values_changed": 0, "unknown_share": float(annotated.obs["is_unknown"].mean()),
        "n_genes": len(bundle.var_names),
    }  # fmt: skip
    log(f"imported scArches reference seed {seed}: {row}")
    return row


# ---- new cell types ----------------------------------------------------------------------------------
def new_types(out: Path, *, quick: bool = False, seed: int = 0) -> list[dict[str, Any]]:
    """Hold a type out, let one or two labs contribute it, and score a third lab on the atlas."""
    from fedarches.server.merge import merge_adapters
    from fedarches.shared.policy import DPPolicy, PrototypePolicy
    from fedarches.shared.prototypes import contribute

    epochs = 3 if quick else None
    rows: list[dict[str, Any]] = []
    for case in NEW_TYPE_CASES:
        data = _load(case.data)
        work = out / case.name
        bundle = _bundle(_cells(data, case.reference, drop=case.held_out), work, seed, epochs)
        private_key = work / "keys" / "bundle-signing.key"
        labs = {name: _cells(data, batches, half) for name, batches, half in case.contributors}
        evaluated_name, batches, half = case.evaluated
        evaluated = _cells(data, batches, half)
        mapped = {name: _map(adata, bundle, name, seed, epochs) for name, adata in labs.items()}
        latent_norms = np.linalg.norm(bundle.embedding["latent"], axis=1)
        clip = float(np.quantile(latent_norms, 0.99))  # what the coordinator publishes as the latent's scale
        policies = {
            "exact (no noise)": (PrototypePolicy(release=True), DPPolicy(enabled=False)),
            **{
                f"DP: sums σ={sigma:g}·C, counts Laplace ε=1": (
                    PrototypePolicy(release=True, clip_norm=clip, noise_multiplier=sigma), DPPolicy(enabled=True),
                )
                for sigma in NOISE_MULTIPLIERS
            },
        }  # fmt: skip
        truth = evaluated.obs["cell_type"].to_numpy()
        _, baseline = _map(evaluated, bundle, evaluated_name, seed, epochs)
        rows.append(_new_type_row(case, "reference (type held out)", "-", [], truth, baseline, bundle))
        for policy_name, (policy, counts) in policies.items():
            contributions = {}
            for lab, (result, annotated) in mapped.items():
                contribution, report = contribute(
                    annotated.obsm["X_scPoli"], labs[lab].obs["cell_type"], bundle.label_categories,
                    bundle_id=bundle.bundle_id, policy=policy, count_policy=counts,
                )  # fmt: skip
                contributions[lab] = (result.adapter, contribution, report)
            for chosen in ([next(iter(labs))], list(labs)):
                atlas = merge_adapters(
                    bundle, [(lab, contributions[lab][0]) for lab in chosen], work / f"atlas-{len(chosen)}",
                    private_key, new_types=[(lab, contributions[lab][1]) for lab in chosen if contributions[lab][1]],
                )  # fmt: skip
                _, annotated = _map(evaluated, atlas, evaluated_name, seed, epochs)
                epsilon = contributions[chosen[0]][2].get("spend", {}).get("sums", {}).get("epsilon", 0.0)
                rows.append(_new_type_row(case, policy_name, epsilon, chosen, truth, annotated, atlas))
                log(f"{case.name} {policy_name} {chosen}: {rows[-1]}")
    return rows


def _new_type_row(case: NewTypeCase, policy: str, epsilon: Any, labs: list[str], truth: np.ndarray, annotated: Any,
                  bundle: Any) -> dict[str, Any]:  # fmt: skip
    predicted = annotated.obs["predicted_cell_type"].astype(str).to_numpy()
    new = truth == case.held_out
    called = predicted == case.held_out
    return {
        "case": case.name, "held_out": case.held_out, "policy": policy, "epsilon_sums": epsilon,
        "contributing_labs": labs, "atlas_types": len(bundle.label_categories),
        "new_type_cells": int(new.sum()), "recall": float(called[new].mean()),
        "precision": float(new[called].mean()) if called.any() else None,
        "new_type_unknown": float(annotated.obs["is_unknown"].to_numpy()[new].mean()),
        **_scores(truth, predicted),
    }  # fmt: skip


# ---- the document ------------------------------------------------------------------------------------
def _frame_table(frame: pd.DataFrame) -> str:
    from fedarches.bench.report_suite import md_table

    return md_table([str(c) for c in frame.columns], frame.to_numpy().tolist())


def write_doc(results: dict[str, Any], invoked: str) -> None:
    """docs/benchmarks_scpoli.md from the results."""
    pbmc = pd.DataFrame(results["pbmc"]["rows"])
    numeric = ["accuracy", "macro_f1", "label_asw", "batch_asw", "build_s", "surgery_s"]
    means = pbmc.groupby(["epochs", "method"])[numeric].mean().round(3).reset_index()
    sds = pbmc.groupby(["epochs", "method"])[numeric].std().round(3).reset_index()
    lines = [
        "# scPoli: fedarches' implementation on PBMC, scArches' own beside it, and new cell types",
        "",
        f"Generated by `{invoked}` on {time.strftime('%Y-%m-%d %H:%M')} ({THREADS} torch thread).",
        "",
        "## PBMC: reference 10x 3' v1 + v2 (770 cells), lab 10x 5' (430 cells), 1,000 HVGs, nine types",
        "",
        "Per seed:",
        "",
        _frame_table(pbmc.round(3)),
        "",
        "Mean over seeds:",
        "",
        _frame_table(means),
        "",
        "Standard deviation over seeds:",
        "",
        _frame_table(sds),
        "",
    ]
    if not results["pbmc"]["original_available"]:
        lines += ["scArches' own scPoli was not run: `.venv-scarches` is missing (`make scarches-env`).", ""]
    lines += ["## New cell types learned from labs", "", _frame_table(pd.DataFrame(results["new_types"]).round(3)), ""]
    DOC.write_text("\n".join(lines))


def run(out: Path = OUTPUT / "scpoli", *, seeds: tuple[int, ...] = (0, 1, 2), quick: bool = False,
        doc: bool = True, invoked: str = "python -m fedarches.bench scpoli") -> dict[str, Any]:  # fmt: skip
    """Both parts; results in ``out/results.json`` and, with ``doc``, docs/benchmarks_scpoli.md."""
    out.mkdir(parents=True, exist_ok=True)
    parts = [pbmc_and_parity(out, seeds, epochs=e, quick=quick) for e in (TUTORIAL_EPOCHS, LONG_EPOCHS)]
    rows = [row for part in parts for row in part["rows"]]
    pbmc = {"rows": rows, "original_available": parts[0]["original_available"]}
    results = {"pbmc": pbmc, "new_types": new_types(out, quick=quick)}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    if doc and not quick:
        write_doc(results, invoked)
    return results

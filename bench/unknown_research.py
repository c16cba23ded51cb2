"""Research: Unknown-call and confidence methods on real PBMC splits (issue 15).

Two stages, so methods can be re-evaluated without retraining:

``build``
    For every split, build a scANVI reference with the package API (``build_reference``,
    ``write_bundle``, ``ReferenceBundle.open``), map the lab with ``map_query``, and cache what the
    methods need under ``bench-output/unknown-research/<split>.npz``: the reference latent, labels
    and batches (the bundle's embedding holds every reference cell here), the reference summary,
    the reference cells' soft predictions, the lab's latent, soft predictions, labels, and the
    landed Unknown call and calibrated confidence. Existing caches are kept (``--force`` rebuilds).
``eval``
    Score every candidate method from the caches (no training) and write
    ``bench-output/unknown-research/report.md`` (tables) and ``results.json`` (per split, per method).

Splits: ``symphony_pbmc_3chem`` leave-one-chemistry-out (3 labs) x (no type held out, or one of B,
NK, Mono_CD16, T_CD8 held out of the reference); ``zheng_sorted_pbmc3500`` (a stratified random
50/50 split, none / one fine T subset held out); ``kang_ctrl_5donors`` (one donor as lab). No
threshold ever sees a lab's labels; some see the lab's unlabelled latent (the query-relative ones).

    python -m fedarches.bench unknown-research build [--datasets symphony zheng kang] [--only NAME ...]
    python -m fedarches.bench unknown-research eval              (or: scripts/research_unknown.py build / eval)

The splits are :data:`fedarches.bench.datasets.RESEARCH_SPLITS`.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedarches.bench.datasets import RESEARCH_SPLITS, ResearchSplit
from fedarches.bench.paths import OUTPUT, SHARED_DATA

CACHE = OUTPUT / "unknown-research"


# ---- build stage -----------------------------------------------------------------------------
def build_split(split: ResearchSplit, keys: tuple[Path, Path], out: Path) -> dict[str, float]:
    """Build the reference, map the lab, cache everything the methods need."""
    import anndata as ad
    import pandas as pd

    from fedarches.bench.bundles import make_bundle
    from fedarches.client.mapping import MappingOptions, map_query
    from fedarches.server.reference import ReferenceOptions
    from fedarches.shared.backends import backend_for

    data = ad.read_h5ad(SHARED_DATA / f"{split.dataset}.h5ad")
    ref_mask, lab_mask = split.make_masks(data)
    reference, lab = data[ref_mask].copy(), data[lab_mask].copy()
    timings = {}
    with tempfile.TemporaryDirectory() as tmp:
        tick = time.monotonic()
        options = ReferenceOptions(
            n_top_genes=2000, max_epochs=200, scanvi_max_epochs=20, threads=1, progress_bar=False
        )
        bundle = make_bundle(reference, Path(tmp), options, batch_key=split.batch_key, keys=keys)
        timings["build_s"] = time.monotonic() - tick
        tick = time.monotonic()
        result = map_query(lab, bundle, lab_name="lab", options=MappingOptions(seed=0, threads=1, progress_bar=False))
        timings["map_s"] = time.monotonic() - tick
        categories = list(bundle.label_categories)
        lab_probs = result.model.predict(soft=True)[categories].to_numpy()
        # the reference cells' soft predictions, through the same (query) model: reference batch
        # columns are frozen, so these are the reference model's predictions (scvi-tools' public predict)
        backend = backend_for(bundle)
        counts = reference[:, list(bundle.var_names)].X
        ref_query = backend.query_anndata(
            counts, reference.obs[split.batch_key].astype(str).to_numpy(), reference.obs_names, bundle
        )
        ref_probs = result.model.predict(ref_query, soft=True)[categories].to_numpy()
        lab_deviance = deviance_per_umi(result.model, None, result.model.adata.X)
        ref_deviance = deviance_per_umi(result.model, ref_query, counts)
    embedding = bundle.embedding
    assert embedding is not None and len(embedding["latent"]) == reference.n_obs, "embedding must hold every cell"
    summary = bundle.reference_summary
    assert summary is not None
    obs = lab.obs
    np.savez_compressed(
        out,
        ref_latent=embedding["latent"],
        ref_codes=embedding["labels"].astype(np.int32),
        ref_batch=reference.obs[split.batch_key].astype(str).to_numpy().astype("U"),
        ref_probs=ref_probs.astype(np.float32),
        summary=np.frombuffer(summary.to_bytes(), dtype=np.uint8),
        lab_latent=np.asarray(lab.obsm["X_scANVI"], dtype=np.float32),
        lab_probs=lab_probs.astype(np.float32),
        lab_deviance=lab_deviance.astype(np.float32),
        ref_deviance=ref_deviance.astype(np.float32),
        lab_truth=obs["cell_type"].astype(str).to_numpy().astype("U"),
        lab_predicted=obs["predicted_cell_type"].astype(str).to_numpy().astype("U"),
        lab_is_unknown=obs["is_unknown"].to_numpy(dtype=bool),
        lab_confidence=obs["prediction_confidence"].to_numpy(dtype=np.float32),
        lab_confidence_raw=obs["prediction_confidence_raw"].to_numpy(dtype=np.float32),
        lab_distance=obs["mapping_distance"].to_numpy(dtype=np.float32),
        categories=np.asarray(categories, dtype="U"),
        meta=np.frombuffer(
            json.dumps(
                {
                    "split": split.name,
                    "dataset": split.dataset,
                    "lab": split.lab,
                    "held_out": split.held_out,
                    "n_reference": int(reference.n_obs),
                    "n_lab": int(lab.n_obs),
                    "n_genes": len(bundle.var_names),
                    "reference_batches": sorted(pd.unique(reference.obs[split.batch_key].astype(str))),
                    "n_epochs_surgery": result.n_epochs,
                    **{k: round(v, 1) for k, v in timings.items()},
                }
            ).encode(),
            dtype=np.uint8,
        ),
    )
    return timings


def deviance_per_umi(model: Any, adata: Any, counts: Any) -> np.ndarray:
    """Poisson deviance of each cell's counts from the decoder's expected counts, per UMI.

    Expected counts = ``get_normalized_expression`` (scvi-tools' public API; posterior mean over 5
    samples of z, each cell's own batch) times the cell's observed library over the model's genes. A
    type the reference lacks is placed near a known type, whose decoded profile then misses its markers.
    """
    import scipy.sparse as sp

    scale = np.asarray(model.get_normalized_expression(adata, library_size=1, n_samples=5, return_numpy=True))
    x = np.asarray(counts.toarray() if sp.issparse(counts) else counts, dtype=np.float64)
    library = np.maximum(x.sum(axis=1, keepdims=True), 1.0)
    mu = np.maximum(scale * library, 1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        term = np.where(x > 0, x * np.log(x / mu), 0.0)
    return (2.0 * (term - (x - mu)).sum(axis=1) / library[:, 0]).astype(np.float32)


def build(datasets: list[str], only: list[str] | None, force: bool) -> None:
    """Build and cache every split of ``datasets`` (``only``: those names; ``force``: rebuild cached ones)."""
    import torch

    from fedarches.shared.crypto import generate_signing_keys

    torch.set_num_threads(1)
    CACHE.mkdir(parents=True, exist_ok=True)
    splits = [s for d in datasets for s in RESEARCH_SPLITS[d]()]
    if only:
        splits = [s for s in splits if s.name in only]
    with tempfile.TemporaryDirectory() as tmp:
        keys = generate_signing_keys(Path(tmp) / "keys", overwrite=True)
        for i, split in enumerate(splits, 1):
            out = CACHE / f"{split.name}.npz"
            if out.exists() and not force:
                print(f"[{i}/{len(splits)}] {split.name}: cached", flush=True)
                continue
            tick = time.monotonic()
            timings = build_split(split, keys, out)
            print(
                f"[{i}/{len(splits)}] {split.name}: build {timings['build_s']:.0f} s, map {timings['map_s']:.0f} s, "
                f"total {time.monotonic() - tick:.0f} s",
                flush=True,
            )


# ---- eval stage ------------------------------------------------------------------------------
K_NEIGHBORS = 15
TARGET_DETECTION, TARGET_FALSE_UNKNOWN, TARGET_AUROC = 0.80, 0.05, 0.95
TARGET_CONF_AUROC, TARGET_ECE = 0.90, 0.05
SEED = 0
# How the per-type latent Gaussians are fitted:
#   summary  the bundle's ReferenceSummary as shipped before issue 15 (Ledoit-Wolf per type, types with >= 2 cells);
#            refits (half split, leave-one-batch-out) use the same rule
#   tied     one Ledoit-Wolf covariance shared by all types (pooled within-type residuals), a mean per type
#   shrunk   per-type covariance shrunk to the tied one: (n_k S_k + NU * S_tied) / (n_k + NU)
#   lwN      Ledoit-Wolf per type, only types with >= N labelled cells (rarer types get no Gaussian)
#   tiedN    tied, only types with >= N labelled cells
# (rare types, e.g. MK or HSC with 1-5 cells, otherwise get Gaussians that act as catch-alls for
# cells of unseen types: the scANVI latent puts both in the same leftover region; N = 10 is the
# latent dimension, below which a type's covariance is not estimable)
GAUSSIAN_KINDS = ("summary", "tied", "shrunk", "lw10", "tied10", "lw20", "tied20")
NU = 20.0
LAB_SHARE_K = 50


@dataclass
class Case:
    """One cached split."""

    name: str
    meta: dict[str, Any]
    categories: list[str]
    summary: Any  # fedarches.shared.quality.ReferenceSummary
    ref_latent: np.ndarray
    ref_codes: np.ndarray
    ref_batch: np.ndarray
    ref_probs: np.ndarray
    lab_latent: np.ndarray
    lab_probs: np.ndarray
    truth: np.ndarray
    cached_unknown: np.ndarray
    cached_confidence: np.ndarray
    lab_deviance: np.ndarray | None = None  # caches built before the deviance was added lack it
    ref_deviance: np.ndarray | None = None

    @property
    def held(self) -> np.ndarray:
        """Lab cells of the held-out type."""
        return self.truth == (self.meta["held_out"] or "\0")

    @property
    def known(self) -> np.ndarray:
        """Lab cells of types the reference knows."""
        return np.isin(self.truth, self.categories)

    @property
    def correct(self) -> np.ndarray:
        """Lab cells whose top prediction is their true type."""
        return np.asarray(self.categories)[self.lab_probs.argmax(axis=1)] == self.truth


def load_case(path: Path) -> Case:
    """One cached split."""
    from fedarches.shared.quality import ReferenceSummary

    with np.load(path, allow_pickle=False) as z:
        return Case(
            name=path.stem,
            meta=json.loads(z["meta"].tobytes()),
            categories=[str(c) for c in z["categories"]],
            summary=ReferenceSummary.from_bytes(z["summary"].tobytes()),
            ref_latent=z["ref_latent"].astype(np.float64),
            ref_codes=z["ref_codes"],
            ref_batch=z["ref_batch"],
            ref_probs=z["ref_probs"],
            lab_latent=z["lab_latent"].astype(np.float64),
            lab_probs=z["lab_probs"],
            truth=z["lab_truth"],
            cached_unknown=z["lab_is_unknown"],
            cached_confidence=z["lab_confidence"],
            lab_deviance=z["lab_deviance"].astype(np.float64) if "lab_deviance" in z.files else None,
            ref_deviance=z["ref_deviance"].astype(np.float64) if "ref_deviance" in z.files else None,
        )


def fit_gaussians(
    latent: np.ndarray, codes: np.ndarray, mask: np.ndarray, kind: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-type means and precisions from the labelled cells in ``mask``; returns (means, precisions, type codes)."""
    from sklearn.covariance import LedoitWolf

    mask = mask & (codes >= 0)
    digits = re.search(r"\d+$", kind)  # lw10, tied20: types with at least that many cells
    smallest = 2 if kind == "summary" else int(digits.group()) if digits else 1
    present = [c for c in np.unique(codes[mask]) if np.sum(mask & (codes == c)) >= smallest]
    means = np.stack([latent[mask & (codes == c)].mean(axis=0) for c in present])
    if kind == "summary" or kind.startswith("lw"):
        fits = [LedoitWolf().fit(latent[mask & (codes == c)]) for c in present]
        return np.stack([f.location_ for f in fits]), np.stack([f.precision_ for f in fits]), np.asarray(present)
    keep = mask & np.isin(codes, present)
    lookup = {c: i for i, c in enumerate(present)}
    residuals = latent[keep] - means[[lookup[c] for c in codes[keep]]]
    tied = LedoitWolf(assume_centered=True).fit(residuals).covariance_
    if kind.startswith("tied"):
        return means, np.repeat(np.linalg.inv(tied)[None], len(present), axis=0), np.asarray(present)
    precisions = []
    for c in present:
        cells = latent[mask & (codes == c)]
        own = np.cov(cells, rowvar=False, bias=True) if len(cells) > 1 else np.zeros_like(tied)
        precisions.append(np.linalg.inv((len(cells) * own + NU * tied) / (len(cells) + NU)))
    return means, np.stack(precisions), np.asarray(present)


def p_values(scores: np.ndarray, calibration: np.ndarray) -> np.ndarray:
    """Conformal p-value of each score among calibration scores: (1 + #{cal >= s}) / (n + 1)."""
    ordered = np.sort(calibration)
    at_least = len(ordered) - np.searchsorted(ordered, scores, side="left")
    return (1.0 + at_least) / (len(ordered) + 1.0)


def robust_threshold(values: np.ndarray, z: float) -> float:
    """Label-free query-relative cut: the lab's median plus ``z`` robust standard deviations (1.4826 MAD)."""
    median = float(np.median(values))
    return median + z * 1.4826 * float(np.median(np.abs(values - median)))


def lab_share(lab: np.ndarray, ref: np.ndarray, k: int) -> np.ndarray:
    """Share of lab cells among each lab cell's k nearest neighbours in lab + reference (itself excluded).

    Surgery should mix a known type's lab cells with the reference's cells of that type; a type the
    reference lacks forms lab-only neighbourhoods.
    """
    from sklearn.neighbors import NearestNeighbors

    both = np.vstack([lab, ref])
    k = min(k, len(both) - 1)
    _, indices = NearestNeighbors(n_neighbors=k + 1).fit(both).kneighbors(lab)
    return (indices[:, 1:] < len(lab)).mean(axis=1)


def scarches_knn(query: np.ndarray, reference: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """The scArches tutorial's weighted kNN label transfer: (vote of the winning label, winner, neighbour distances).

    Weights ``exp(-d / (2 / std(d))**2)`` over the k nearest reference cells, normalised; the
    uncertainty is 1 - the summed weight of the winning label (scarches.utils.knn.weighted_knn_transfer).
    """
    from sklearn.neighbors import NearestNeighbors

    distances, indices = NearestNeighbors(n_neighbors=k).fit(reference).kneighbors(query)
    stds = (2.0 / (np.std(distances, axis=1, keepdims=True) + 1e-12)) ** 2
    kernel = np.exp(-distances / stds)
    weights = kernel / kernel.sum(axis=1, keepdims=True)
    neighbour_labels = labels[indices]
    codes = np.unique(labels)
    votes = np.stack([(weights * (neighbour_labels == c)).sum(axis=1) for c in codes], axis=1)
    return votes.max(axis=1), codes[votes.argmax(axis=1)], distances


@dataclass
class Distances:
    """One Gaussian kind's distances: lab, reference (in-sample), half-split conformal, leave-one-batch-out."""

    lab: np.ndarray
    ref: np.ndarray
    half_lab: np.ndarray
    half_cal: np.ndarray
    lobo: np.ndarray | None  # pooled distances of each reference batch's cells to Gaussians fitted without it
    lobo_per_batch: dict[str, float]

    @property
    def threshold(self) -> float:
        """The 99th percentile of the reference's in-sample distances."""
        return float(np.percentile(self.ref, 99))

    @property
    def r_median(self) -> float:
        """Query-relative factor: the lab's median distance over the reference's (no labels)."""
        return float(np.median(self.lab) / np.median(self.ref))

    def detectors(self) -> dict[str, tuple[np.ndarray, float]]:
        """Unknown detectors of this kind: (score, threshold); a cell is Unknown when score > threshold."""
        p_half = p_values(self.half_lab, self.half_cal)
        p_half_rel = p_values(self.half_lab * np.median(self.half_cal) / np.median(self.half_lab), self.half_cal)
        det = {
            "p99": (self.lab, self.threshold),
            "rel-median": (self.lab, self.threshold * self.r_median),
            "robust-z3": (self.lab, robust_threshold(self.lab, 3.0)),
            "conformal-a0.01": (1.0 - p_half, 0.99),
            "conformal-a0.05": (1.0 - p_half, 0.95),
            "conformal-rel-a0.01": (1.0 - p_half_rel, 0.99),
            "conformal-rel-a0.05": (1.0 - p_half_rel, 0.95),
        }
        if self.lobo is not None:
            det["lobo-p99"] = (self.lab, float(np.percentile(self.lobo, 99)))
            det["lobo-p99.5"] = (self.lab, float(np.percentile(self.lobo, 99.5)))
            det["lobo-max-batch-p99"] = (self.lab, max(self.lobo_per_batch.values()))
        return det


def kind_distances(case: Case, kind: str) -> Distances:
    """Lab, reference, half-split and leave-one-batch-out distances under one kind of Gaussians."""
    from fedarches.shared.quality import min_mahalanobis

    labelled = case.ref_codes >= 0
    everything = np.ones(len(case.ref_codes), dtype=bool)
    if (
        kind == "summary"
    ):  # as shipped before issue 15: fitted on scANVI's training split, quantiles over every labelled cell
        means, precisions = case.summary.means, case.summary.precisions
    else:
        means, precisions, _ = fit_gaussians(case.ref_latent, case.ref_codes, everything, kind)
    lab = min_mahalanobis(case.lab_latent, means, precisions).astype(np.float64)
    ref = min_mahalanobis(case.ref_latent[labelled], means, precisions).astype(np.float64)
    rng = np.random.default_rng(SEED)
    fit = np.zeros(len(case.ref_codes), dtype=bool)
    for c in np.unique(case.ref_codes[labelled]):
        cells = rng.permutation(np.flatnonzero(case.ref_codes == c))
        fit[cells[: (len(cells) + 1) // 2]] = True
    means, precisions, _ = fit_gaussians(case.ref_latent, case.ref_codes, fit, kind)
    half_cal = min_mahalanobis(case.ref_latent[labelled & ~fit], means, precisions).astype(np.float64)
    half_lab = min_mahalanobis(case.lab_latent, means, precisions).astype(np.float64)
    lobo, per_batch = None, {}
    batches = np.unique(case.ref_batch)
    if len(batches) > 1:
        pooled = []
        for b in batches:
            others = case.ref_batch != b
            means, precisions, fitted = fit_gaussians(case.ref_latent, case.ref_codes, others, kind)
            cells = (case.ref_batch == b) & np.isin(case.ref_codes, fitted)  # types the other batches know
            d = min_mahalanobis(case.ref_latent[cells], means, precisions).astype(np.float64)
            per_batch[str(b)] = float(np.percentile(d, 99))
            pooled.append(d)
        lobo = np.concatenate(pooled)
    else:  # one reference batch: leave out a random half instead (the half-split's calibration cells)
        lobo, per_batch = half_cal, {"random half": float(np.percentile(half_cal, 99))}
    return Distances(lab, ref, half_lab, half_cal, lobo, per_batch)


class Quantities:
    """Label-free scores of one case, each computed once."""

    def __init__(self, case: Case) -> None:
        from sklearn.neighbors import NearestNeighbors

        self.case = case
        self.calibrated = case.summary.calibrate(case.lab_probs)
        self.dist = {kind: kind_distances(case, kind) for kind in GAUSSIAN_KINDS}
        labelled = case.ref_codes >= 0
        ref, codes = case.ref_latent[labelled], case.ref_codes[labelled]
        vote, self.knn_label, knn_d = scarches_knn(case.lab_latent, ref, codes, K_NEIGHBORS)
        self.knn_uncertainty = np.maximum(1.0 - vote, 0.0)
        self.knn_dist_lab = knn_d.mean(axis=1)
        ref_d, _ = NearestNeighbors(n_neighbors=K_NEIGHBORS + 1).fit(ref).kneighbors(ref)
        self.knn_dist_ref = ref_d[:, 1:].mean(axis=1)  # leave-one-out: each reference cell's own neighbours
        self.r_knn = float(np.median(self.knn_dist_lab) / np.median(self.knn_dist_ref))
        self.lab_share = lab_share(case.lab_latent, case.ref_latent, LAB_SHARE_K)

    def shipped_summary(self) -> Any:
        """The summary fedarches builds now (issue 15), refitted on this case's reference latent and batches."""
        from fedarches.shared.quality import fit_reference_summary

        c = self.case
        return fit_reference_summary(c.ref_latent, c.ref_codes, c.categories, batches=c.ref_batch)

    def detectors(self) -> dict[str, tuple[np.ndarray, float]]:
        """Base Unknown detectors: (score, threshold); a cell is Unknown when score > threshold."""
        s = self.case.summary
        det = {
            "before-p99": (self.dist["summary"].lab, s.distance_threshold),  # the summary's own threshold
            "conf<0.5": (1.0 - self.calibrated.max(axis=1), s.confidence_threshold),
            "knn-unc>0.5": (self.knn_uncertainty, 0.5),
            "knn-dist-p99": (self.knn_dist_lab, float(np.percentile(self.knn_dist_ref, 99))),
            "knn-dist-rel-median": (self.knn_dist_lab, float(np.percentile(self.knn_dist_ref, 99)) * self.r_knn),
            "labshare-z3": (self.lab_share, robust_threshold(self.lab_share, 3.0)),
        }
        shipped = self.shipped_summary()
        det["shipped-shift-p99"] = (shipped.distances(self.case.lab_latent), shipped.distance_threshold)
        for kind, d in self.dist.items():
            for name, value in d.detectors().items():
                det[f"{kind}:{name}"] = value
        lab, ref = self.case.lab_deviance, self.case.ref_deviance
        if lab is not None and ref is not None:
            det["deviance-rel-p99"] = (lab, float(np.percentile(ref, 99) * np.median(lab) / np.median(ref)))
            det["deviance-robust-z3"] = (lab, robust_threshold(lab, 3.0))
        return det


def method_table() -> dict[str, tuple[str, ...]]:
    """Unknown-call methods: ORs of base detectors."""
    methods: dict[str, tuple[str, ...]] = {
        "before issue 15 (p99 | conf<0.5)": ("before-p99", "conf<0.5"),
        "shipped (lw10:shift-p99 | conf<0.5)": ("shipped-shift-p99", "conf<0.5"),
        "conf<0.5": ("conf<0.5",),
        "knn-unc>0.5": ("knn-unc>0.5",),
        "knn-dist-p99": ("knn-dist-p99",),
        "knn-dist-rel-median": ("knn-dist-rel-median",),
        "labshare-z3": ("labshare-z3",),
        "deviance-rel-p99": ("deviance-rel-p99",),
        "deviance-robust-z3": ("deviance-robust-z3",),
    }
    for kind in GAUSSIAN_KINDS:
        dets = (
            "p99", "rel-median", "robust-z3", "conformal-a0.01", "conformal-a0.05", "conformal-rel-a0.01",
            "conformal-rel-a0.05", "lobo-p99", "lobo-p99.5", "lobo-max-batch-p99",
        )  # fmt: skip
        for det in dets:
            methods[f"{kind}:{det}"] = (f"{kind}:{det}",)
        for det in ("rel-median", "robust-z3", "conformal-a0.01", "lobo-p99", "lobo-p99.5"):
            methods[f"{kind}:{det} | conf<0.5"] = (f"{kind}:{det}", "conf<0.5")
            methods[f"{kind}:{det} | knn-unc"] = (f"{kind}:{det}", "knn-unc>0.5")
            methods[f"{kind}:{det} | labshare-z3"] = (f"{kind}:{det}", "labshare-z3")
            methods[f"{kind}:{det} | deviance-rel-p99"] = (f"{kind}:{det}", "deviance-rel-p99")
            methods[f"{kind}:{det} | deviance-robust-z3"] = (f"{kind}:{det}", "deviance-robust-z3")
    return methods


METHODS = method_table()


def confidences(case: Case, q: Quantities) -> dict[str, np.ndarray]:
    """Candidate per-cell confidences (higher = more likely a correct call of a known type)."""
    calibrated = q.calibrated.max(axis=1).astype(np.float64)
    out = {
        "raw": case.lab_probs.max(axis=1).astype(np.float64),
        "calibrated (shipped)": calibrated,
        "cal x mapping_score": calibrated * case.summary.scores(q.dist["summary"].lab),
        "knn vote": 1.0 - q.knn_uncertainty,
        "cal x knn vote": calibrated * (1.0 - q.knn_uncertainty),
    }
    for kind, d in q.dist.items():
        out[f"cal x min(1, p_{kind}/0.05)"] = calibrated * np.minimum(1.0, p_values(d.lab, d.ref) / 0.05)
        out[f"cal x min(1, p_{kind}-rel/0.05)"] = calibrated * np.minimum(
            1.0, p_values(d.lab / d.r_median, d.ref) / 0.05
        )
        if d.lobo is not None:
            out[f"cal x min(1, p_{kind}-lobo/0.05)"] = calibrated * np.minimum(1.0, p_values(d.lab, d.lobo) / 0.05)
    lab, ref = case.lab_deviance, case.ref_deviance
    if lab is not None and ref is not None:  # decoder deviance, rescaled to the lab's median (label-free)
        g_dev = np.minimum(1.0, p_values(lab * np.median(ref) / np.median(lab), ref) / 0.05)
        out["cal x min(1, p_dev-rel/0.05)"] = calibrated * g_dev
        d = q.dist["lw10"]
        out["cal x min(1, p_lw10-lobo/0.05) x min(1, p_dev-rel/0.05)"] = (
            calibrated * g_dev * np.minimum(1.0, p_values(d.lab, d.lobo) / 0.05)
        )
    return out


def _auroc(positive: np.ndarray, negative: np.ndarray, score: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    if positive.sum() == 0 or negative.sum() == 0:
        return None
    keep = positive | negative
    return float(roc_auc_score(positive[keep], score[keep]))


def evaluate_case(case: Case) -> dict[str, Any]:
    """Every method's detection, false-Unknown and AUROC, every confidence's AUROC and ECE, on one split."""
    from fedarches.shared.quality import expected_calibration_error

    q = Quantities(case)
    held, known, correct = case.held, case.known, case.correct
    has_held = bool(held.any())
    det = q.detectors()
    current = (det["before-p99"][0] > det["before-p99"][1]) | (det["conf<0.5"][0] > det["conf<0.5"][1])
    row: dict[str, Any] = {
        "meta": case.meta,
        "n_held": int(held.sum()),
        "n_known": int(known.sum()),
        "n_other_unseen": int((~held & ~known).sum()),
        "accuracy_known": float(correct[known].mean()),
        "knn_accuracy_known": float((np.asarray(case.categories)[q.knn_label] == case.truth)[known].mean()),
        "r_median": {kind: d.r_median for kind, d in q.dist.items()},
        "r_knn": q.r_knn,
        "thresholds": {name: float(t) for name, (_, t) in det.items()},
        "lobo_per_batch_p99": {kind: d.lobo_per_batch for kind, d in q.dist.items()},
        "current_matches_cache": bool(np.array_equal(current, case.cached_unknown)),
        "methods": {},
        "confidence": {},
    }
    for method, parts in METHODS.items():
        if any(part not in det for part in parts):  # leave-one-batch-out needs two reference batches
            continue
        unknown = np.zeros(len(case.truth), dtype=bool)
        score = np.full(len(case.truth), -np.inf)
        for part in parts:
            s, t = det[part]
            unknown |= s > t
            score = np.maximum(score, s / t)
        row["methods"][method] = {
            "detection": float(unknown[held].mean()) if has_held else None,
            "false_unknown": float(unknown[known].mean()),
            "auroc": _auroc(held, known, score),
        }
    for name, conf in confidences(case, q).items():
        row["confidence"][name] = {
            "auroc": _auroc(held, known, 1.0 - conf),
            "ece": expected_calibration_error(conf[known], correct[known]),
        }
    return row


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "–"
    return f"{x:.1%}" if pct else f"{x:.3f}"


def summarise(rows: dict[str, dict[str, Any]], method: str) -> dict[str, Any]:
    """Over the splits where ``method`` ran: means, extremes, and how many splits meet each target."""
    ms = [r["methods"][method] for r in rows.values() if method in r["methods"]]
    det = [m["detection"] for m in ms if m["detection"] is not None]
    fu = [m["false_unknown"] for m in ms]
    au = [m["auroc"] for m in ms if m["auroc"] is not None]

    def ok(m: dict[str, Any]) -> bool:
        return (
            (m["detection"] is None or m["detection"] >= TARGET_DETECTION)
            and m["false_unknown"] <= TARGET_FALSE_UNKNOWN
            and (m["auroc"] is None or m["auroc"] >= TARGET_AUROC)
        )

    return {
        "n": len(ms),
        "det_mean": float(np.mean(det)) if det else None,
        "det_min": min(det) if det else None,
        "det_ok": sum(d >= TARGET_DETECTION for d in det),
        "n_det": len(det),
        "fu_mean": float(np.mean(fu)),
        "fu_max": max(fu),
        "fu_ok": sum(f <= TARGET_FALSE_UNKNOWN for f in fu),
        "auroc_mean": float(np.mean(au)) if au else None,
        "auroc_min": min(au) if au else None,
        "auroc_ok": sum(a >= TARGET_AUROC for a in au),
        "n_auroc": len(au),
        "all_ok": sum(ok(m) for m in ms),
        "fu_and_det_ok": sum(
            (m["detection"] is None or m["detection"] >= TARGET_DETECTION)
            and m["false_unknown"] <= TARGET_FALSE_UNKNOWN
            for m in ms
        ),
    }


def write_report(rows: dict[str, dict[str, Any]], out: Path, selected: list[str]) -> str:
    """The research report (markdown) to ``out``; its text. ``selected``: the per-split table's methods."""
    names = list(rows)
    n_held = sum(rows[n]["n_held"] > 0 for n in names)
    lines = [
        "# Unknown call and confidence: candidate methods on real PBMC splits",
        "",
        "Generated by `scripts/research_unknown.py eval` from the caches in `bench-output/unknown-research/`.",
        f"{len(names)} splits ({n_held} with a type held out of the reference). Targets: detection >= 80 %,",
        "false-Unknown (FU) <= 5 % of known-type cells, detection AUROC >= 0.95; confidence: AUROC(1 - conf,",
        "held-out vs known) >= 0.90, ECE <= 0.05 on known types. 'all' = splits meeting every applicable target;",
        "'det+FU' = detection and false-Unknown both met. Method names: `<Gaussians>:<threshold>`, `|` = OR.",
        "",
        "## Unknown call: summary over splits",
        "",
        "| method | det. mean | det. min | FU mean | FU max | AUROC mean | AUROC min | det. ok | FU ok | AUROC ok "
        "| det+FU | all |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        m = summarise(rows, method)
        if m["n"] == 0:
            continue
        lines.append(
            f"| {method} | {_fmt(m['det_mean'], True)} | {_fmt(m['det_min'], True)} | {m['fu_mean']:.1%} "
            f"| {m['fu_max']:.1%} | {_fmt(m['auroc_mean'])} | {_fmt(m['auroc_min'])} | {m['det_ok']}/{m['n_det']} "
            f"| {m['fu_ok']}/{m['n']} | {m['auroc_ok']}/{m['n_auroc']} | {m['fu_and_det_ok']}/{m['n']} "
            f"| {m['all_ok']}/{m['n']} |"
        )
    lines += ["", "## Unknown call per split (detection / false-Unknown / AUROC)", ""]
    lines += [
        "| split | held / known / other | acc. (kNN acc.) | r_median summary / tied | " + " | ".join(selected) + " |",
        "|" + "---|" * (4 + len(selected)),
    ]
    for n in names:
        r = rows[n]
        cells = []
        for method in selected:
            m = r["methods"].get(method)
            cells.append(
                "n/a" if m is None else f"{_fmt(m['detection'], True)} / {m['false_unknown']:.1%} / {_fmt(m['auroc'])}"
            )
        lines.append(
            f"| {n} | {r['n_held']} / {r['n_known']} / {r['n_other_unseen']} "
            f"| {r['accuracy_known']:.3f} ({r['knn_accuracy_known']:.3f}) "
            f"| {r['r_median']['summary']:.2f} / {r['r_median']['tied']:.2f} | " + " | ".join(cells) + " |"
        )
    conf_names = list(next(iter(rows.values()))["confidence"])
    for r in rows.values():  # splits without deviance lack the deviance-based confidences
        conf_names += [c for c in r["confidence"] if c not in conf_names]
    lines += [
        "",
        "'other' = lab cells of types the reference lacks besides the held-out one (excluded from both rates).",
        "",
        "## Confidence: summary over splits",
        "",
        "| confidence | AUROC mean | AUROC min | ECE mean | ECE max | AUROC ok | ECE ok | both ok |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in conf_names:
        cs = [r["confidence"][c] for r in rows.values() if c in r["confidence"]]
        au = [x["auroc"] for x in cs if x["auroc"] is not None]
        ece = [x["ece"] for x in cs]
        both = sum(1 for x in cs if (x["auroc"] is None or x["auroc"] >= TARGET_CONF_AUROC) and x["ece"] <= TARGET_ECE)
        lines.append(
            f"| {c} | {_fmt(np.mean(au) if au else None)} | {_fmt(min(au) if au else None)} | {np.mean(ece):.3f} "
            f"| {max(ece):.3f} | {sum(a >= TARGET_CONF_AUROC for a in au)}/{len(au)} "
            f"| {sum(e <= TARGET_ECE for e in ece)}/{len(ece)} | {both}/{len(cs)} |"
        )
    lines += ["", "## Confidence per split (AUROC / ECE)", ""]
    lines += ["| split | " + " | ".join(conf_names) + " |", "|" + "---|" * (1 + len(conf_names))]
    for n in names:
        cs = rows[n]["confidence"]
        lines.append(
            f"| {n} | "
            + " | ".join(f"{_fmt(cs[c]['auroc'])} / {cs[c]['ece']:.3f}" if c in cs else "n/a" for c in conf_names)
            + " |"
        )
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    return text


def evaluate(selected: list[str] | None = None) -> None:
    """Score every cached split; write report.md and results.json beside the caches."""
    paths = sorted(CACHE.glob("*.npz"))
    if not paths:
        msg = f"no caches in {CACHE}: run `build` first"
        raise SystemExit(msg)
    rows = {}
    for path in paths:
        rows[path.stem] = evaluate_case(load_case(path))
        r = rows[path.stem]
        cur = r["methods"]["before issue 15 (p99 | conf<0.5)"]
        print(
            f"{path.stem}: acc {r['accuracy_known']:.3f}, before-issue-15 det {_fmt(cur['detection'], True)} "
            f"FU {cur['false_unknown']:.1%} AUROC {_fmt(cur['auroc'])} (matches the lab's is_unknown: "
            f"{r['current_matches_cache']})",
            flush=True,
        )
    (CACHE / "results.json").write_text(json.dumps(rows, indent=1))
    if not selected:  # before, shipped, and the best by splits meeting every target, then by false-Unknown
        ranked = sorted(METHODS, key=lambda m: (-summarise(rows, m)["all_ok"], -summarise(rows, m)["fu_and_det_ok"]))
        first = ["before issue 15 (p99 | conf<0.5)", "shipped (lw10:shift-p99 | conf<0.5)"]
        selected = [*first, *[m for m in ranked if m not in first][:5]]
    write_report(rows, CACHE / "report.md", selected)
    print(f"wrote {CACHE / 'report.md'} and results.json")

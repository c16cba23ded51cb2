"""PNG plots of a mapped query: on the reference embedding, its confidence distribution, its proteins.

Every plot reads only ``obs`` and ``obsm``, so an annotated MuData (annotations on its top level)
is plotted as an AnnData is.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fedarches.shared._constants import ADATA_KEYS, AnnDataKeys
from fedarches.shared._io import write_atomically

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

    from fedarches.shared.bundle import ReferenceBundle
    from fedarches.shared.quality import ReferenceSummary

MAX_PROTEIN_PANELS = 6
ISOTYPE_CONTROL = re.compile(r"igg|isotype|control", re.IGNORECASE)
"""Names of isotype-control antibodies (``IgG1``, ``IgG2a_control``): background, never plotted."""


def plot_mapping(
    adata: AnnData | MuData,
    bundle: ReferenceBundle,
    out_dir: Path,
    *,
    confidence_threshold: float,
    keys: AnnDataKeys = ADATA_KEYS,
) -> list[Path]:
    """Write ``reference_embedding.png``, ``confidence_histogram.png`` and the others that apply; return their paths.

    ``mapping_distance.png`` needs the bundle's reference summary; ``protein_panels.png`` needs
    ``obsm['denoised_protein']`` (a totalVI mapping). ``keys`` are where the mapping wrote
    (``MappingResult.keys``). Figures are drawn without pyplot, so the caller's matplotlib backend
    and open figures are left as they were.
    """
    import matplotlib

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    confidence = adata.obs[keys.CONFIDENCE].to_numpy()
    predicted = adata.obs[keys.PREDICTION]
    embedding = bundle.embedding
    if embedding is not None and keys.REF_UMAP in adata.obsm:
        ref = embedding["umap"]
        query = adata.obsm[keys.REF_UMAP]
        fig = Figure(figsize=(13, 5.5), layout="constrained")
        axes = fig.subplots(1, 2)
        for ax in axes:
            ax.scatter(ref[:, 0], ref[:, 1], s=6, c="#d0d0d0", linewidths=0, label="reference")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel("reference UMAP 1")
            ax.set_ylabel("reference UMAP 2")
        colors = matplotlib.colormaps["tab10" if len(predicted.cat.categories) <= 10 else "tab20"]
        for i, cell_type in enumerate(predicted.cat.categories):
            mask = (predicted == cell_type).to_numpy()
            if mask.any():
                axes[0].scatter(
                    query[mask, 0],
                    query[mask, 1],
                    s=10,
                    color=colors(i % colors.N),
                    linewidths=0,
                    label=f"{cell_type} ({mask.sum()})",
                )
        axes[0].set_title("query on the reference, by predicted cell type")
        axes[0].legend(markerscale=2, fontsize=8, loc="best", frameon=False)
        order = np.argsort(-confidence)
        points = axes[1].scatter(
            query[order, 0], query[order, 1], s=10, c=confidence[order], cmap="viridis", vmin=0, vmax=1, linewidths=0
        )
        low = confidence < confidence_threshold
        if low.any():
            axes[1].scatter(
                query[low, 0],
                query[low, 1],
                s=28,
                facecolors="none",
                edgecolors="crimson",
                linewidths=0.8,
                label=f"low confidence (< {confidence_threshold})",
            )
        if keys.UNKNOWN in adata.obs and adata.obs[keys.UNKNOWN].any():
            unknown = adata.obs[keys.UNKNOWN].to_numpy(dtype=bool)
            axes[1].scatter(
                query[unknown, 0], query[unknown, 1], s=22, marker="x", c="black", linewidths=0.8,
                label=f"Unknown: not in the atlas ({unknown.sum()})",
            )  # fmt: skip
        if axes[1].get_legend_handles_labels()[0]:
            axes[1].legend(fontsize=8, loc="best", frameon=False)
        fig.colorbar(points, ax=axes[1], label=keys.CONFIDENCE)
        axes[1].set_title("query on the reference, by prediction confidence")
        paths.append(_save(fig, out_dir / "reference_embedding.png"))
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    ax.hist(confidence, bins=np.linspace(0, 1, 41), color="#4c72b0")
    ax.axvline(confidence_threshold, color="crimson", linestyle="--", label=f"threshold {confidence_threshold}")
    ax.set_xlabel(keys.CONFIDENCE)
    ax.set_ylabel("cells")
    ax.set_title(
        f"prediction confidence ({int((confidence < confidence_threshold).sum())} of {len(confidence)} cells low)"
    )
    ax.legend(frameon=False)
    paths.append(_save(fig, out_dir / "confidence_histogram.png"))
    summary = bundle.reference_summary
    if summary is not None and keys.MAPPING_DISTANCE in adata.obs:
        paths.append(_plot_distances(adata, summary, out_dir / "mapping_distance.png", keys))
    if keys.DENOISED_PROTEIN in adata.obsm:
        umap = bundle.embedding["umap"] if bundle.embedding is not None else None
        proteins = plot_proteins(adata, out_dir / "protein_panels.png", reference_umap=umap, keys=keys)
        if proteins is not None:
            paths.append(proteins)
    return paths


def informative_proteins(denoised: pd.DataFrame, n: int = MAX_PROTEIN_PANELS) -> list[str]:
    """Up to ``n`` proteins that vary most across cells (variance of log1p values), isotype controls excluded.

    The log keeps abundant proteins from winning on scale alone; proteins that do not vary are left out.
    """
    values = np.log1p(np.clip(denoised.to_numpy(dtype=np.float64), 0, None))
    with np.errstate(invalid="ignore"):
        variance = pd.Series(np.nanvar(values, axis=0), index=denoised.columns.astype(str))
    keep = ~variance.index.str.contains(ISOTYPE_CONTROL) & (variance > 0)
    return variance[keep].sort_values(ascending=False, kind="stable").index[:n].tolist()


def plot_proteins(
    adata: AnnData | MuData,
    path: Path,
    *,
    reference_umap: np.ndarray | None = None,
    n: int = MAX_PROTEIN_PANELS,
    keys: AnnDataKeys = ADATA_KEYS,
) -> Path | None:
    """Denoised values of the most informative proteins: on the reference UMAP, or per predicted type.

    With ``obsm['X_ref_umap']`` each protein gets a panel of the query's cells on the reference UMAP
    (reference cells in grey behind them), else a box per predicted cell type. Returns ``path``, or
    ``None`` (nothing written) when no protein varies.
    """
    denoised = adata.obsm[keys.DENOISED_PROTEIN]
    if not isinstance(denoised, pd.DataFrame):
        denoised = pd.DataFrame(np.asarray(denoised), columns=[f"protein {i}" for i in range(denoised.shape[1])])
    denoised = denoised.set_axis(denoised.columns.astype(str), axis=1)
    chosen = informative_proteins(denoised, n)
    if not chosen:
        return None
    values = np.log1p(np.clip(denoised[chosen].to_numpy(dtype=np.float64), 0, None))
    on_umap = keys.REF_UMAP in adata.obsm
    n_cols = min(3, len(chosen))
    n_rows = math.ceil(len(chosen) / n_cols)
    size = (4.3, 3.9) if on_umap else (4.6, 3.6)
    fig = Figure(figsize=(size[0] * n_cols, size[1] * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for ax in axes.ravel()[len(chosen) :]:
        ax.set_visible(False)
    if on_umap:
        _protein_umaps(fig, axes.ravel(), chosen, values, np.asarray(adata.obsm[keys.REF_UMAP]), reference_umap)
    else:
        _protein_boxes(axes.ravel(), chosen, values, adata.obs[keys.PREDICTION])
    left_out = [str(c) for c in denoised.columns if ISOTYPE_CONTROL.search(str(c))]
    fig.suptitle(
        f"denoised protein, log1p: the {len(chosen)} most variable of {denoised.shape[1]} proteins"
        + (f" (isotype controls left out: {', '.join(left_out)})" if left_out else "")
    )
    return _save(fig, path)


def _protein_umaps(
    fig: Figure, axes: np.ndarray, names: list[str], values: np.ndarray, query: np.ndarray, reference: np.ndarray | None
) -> None:
    for i, (ax, name) in enumerate(zip(axes, names, strict=False)):
        if reference is not None:
            ax.scatter(reference[:, 0], reference[:, 1], s=4, c="#e0e0e0", linewidths=0)
        column = values[:, i]
        order = np.argsort(column)  # the highest on top
        low, high = np.nanpercentile(column, [1, 99])
        points = ax.scatter(
            query[order, 0], query[order, 1], s=8, c=column[order], cmap="viridis", vmin=low,
            vmax=max(high, low + 1e-6), linewidths=0,
        )  # fmt: skip
        fig.colorbar(points, ax=ax, shrink=0.8, label="log1p denoised")
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("reference UMAP 1")
        ax.set_ylabel("reference UMAP 2")


def _protein_boxes(axes: np.ndarray, names: list[str], values: np.ndarray, predicted: pd.Series) -> None:
    groups = predicted.astype("category")
    present = [c for c in groups.cat.categories if (groups == c).any()]
    masks = [(groups == c).to_numpy() for c in present]
    for i, (ax, name) in enumerate(zip(axes, names, strict=False)):
        ax.boxplot([values[m, i] for m in masks], showfliers=False)
        ax.set_xticks(range(1, len(present) + 1), [f"{c} ({m.sum()})" for c, m in zip(present, masks, strict=True)])
        for label in ax.get_xticklabels():
            label.set(rotation=40, ha="right", rotation_mode="anchor", fontsize=8)
        ax.set_title(name)
        ax.set_ylabel("log1p denoised")


def _plot_distances(adata: AnnData, summary: ReferenceSummary, path: Path, keys: AnnDataKeys) -> Path:
    """Query cells' distance to the nearest reference type, against the reference's own distances."""
    distances = adata.obs[keys.MAPPING_DISTANCE].to_numpy()
    unknown = adata.obs[keys.UNKNOWN].to_numpy(dtype=bool)
    top = max(float(distances.max()), float(summary.distance_quantiles[-1])) * 1.05
    bins = np.linspace(0, top, 50)
    fig = Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.subplots()
    ax.hist(distances, bins=bins, color="#4c72b0", label="query cells")
    reference = np.interp(
        np.linspace(0, 1, 2000), np.linspace(0, 1, summary.distance_quantiles.size), summary.distance_quantiles
    )
    weights = np.full(reference.size, len(distances) / reference.size)
    ax.hist(reference, bins=bins, weights=weights, histtype="step", color="#555", label="reference cells (scaled)")
    ax.axvline(summary.distance_threshold, color="crimson", linestyle="--", label="Unknown beyond (reference p99)")
    ax.set_xlabel("mapping distance (Mahalanobis to the nearest reference type)")
    ax.set_ylabel("cells")
    ax.set_title(f"{int(unknown.sum())} of {len(unknown)} cells called Unknown")
    ax.legend(frameon=False, fontsize=8)
    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Path:
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=120))
    return path

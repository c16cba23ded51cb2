"""PNG plots of a mapped query: on the reference embedding, and its confidence distribution."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedarches.shared._constants import ADATA_KEYS
from fedarches.shared._io import write_atomically

if TYPE_CHECKING:
    from anndata import AnnData

    from fedarches.shared.bundle import ReferenceBundle
    from fedarches.shared.quality import ReferenceSummary


def plot_mapping(adata: AnnData, bundle: ReferenceBundle, out_dir: Path, *, confidence_threshold: float) -> list[Path]:
    """Write ``reference_embedding.png`` and ``confidence_histogram.png``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    confidence = adata.obs[ADATA_KEYS.CONFIDENCE].to_numpy()
    predicted = adata.obs[ADATA_KEYS.PREDICTION]
    embedding = bundle.embedding
    if embedding is not None and ADATA_KEYS.REF_UMAP in adata.obsm:
        ref = embedding["umap"]
        query = adata.obsm[ADATA_KEYS.REF_UMAP]
        fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), constrained_layout=True)
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
        if ADATA_KEYS.UNKNOWN in adata.obs and adata.obs[ADATA_KEYS.UNKNOWN].any():
            unknown = adata.obs[ADATA_KEYS.UNKNOWN].to_numpy(dtype=bool)
            axes[1].scatter(
                query[unknown, 0], query[unknown, 1], s=22, marker="x", c="black", linewidths=0.8,
                label=f"Unknown: not in the atlas ({unknown.sum()})",
            )  # fmt: skip
        if axes[1].get_legend_handles_labels()[0]:
            axes[1].legend(fontsize=8, loc="best", frameon=False)
        fig.colorbar(points, ax=axes[1], label=ADATA_KEYS.CONFIDENCE)
        axes[1].set_title("query on the reference, by prediction confidence")
        paths.append(_save(fig, out_dir / "reference_embedding.png"))
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    ax.hist(confidence, bins=np.linspace(0, 1, 41), color="#4c72b0")
    ax.axvline(confidence_threshold, color="crimson", linestyle="--", label=f"threshold {confidence_threshold}")
    ax.set_xlabel(ADATA_KEYS.CONFIDENCE)
    ax.set_ylabel("cells")
    ax.set_title(
        f"prediction confidence ({int((confidence < confidence_threshold).sum())} of {len(confidence)} cells low)"
    )
    ax.legend(frameon=False)
    paths.append(_save(fig, out_dir / "confidence_histogram.png"))
    summary = bundle.reference_summary
    if summary is not None and ADATA_KEYS.MAPPING_DISTANCE in adata.obs:
        paths.append(_plot_distances(adata, summary, out_dir / "mapping_distance.png"))
    return paths


def _plot_distances(adata: AnnData, summary: ReferenceSummary, path: Path) -> Path:
    """Query cells' distance to the nearest reference type, against the reference's own distances."""
    import matplotlib.pyplot as plt

    distances = adata.obs[ADATA_KEYS.MAPPING_DISTANCE].to_numpy()
    unknown = adata.obs[ADATA_KEYS.UNKNOWN].to_numpy(dtype=bool)
    top = max(float(distances.max()), float(summary.distance_quantiles[-1])) * 1.05
    bins = np.linspace(0, top, 50)
    fig, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
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


def _save(fig: object, path: Path) -> Path:
    import matplotlib.pyplot as plt

    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=120))  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return path

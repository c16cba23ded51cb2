"""Place query cells on the reference's 2-D embedding and transfer labels, by kNN in latent space."""

from __future__ import annotations

import numpy as np

DEFAULT_NEIGHBORS = 15


def _neighbors(query_latent: np.ndarray, ref_latent: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(ref_latent))
    index = NearestNeighbors(n_neighbors=k).fit(ref_latent)
    distances, indices = index.kneighbors(query_latent)
    return distances, indices


def _weights(distances: np.ndarray) -> np.ndarray:
    """Gaussian kernel weights with a per-cell bandwidth (the mean neighbour distance)."""
    scale = distances.mean(axis=1, keepdims=True) + 1e-12
    weights = np.exp(-((distances / scale) ** 2))
    return weights / weights.sum(axis=1, keepdims=True)


def place_on_reference(
    query_latent: np.ndarray, ref_latent: np.ndarray, ref_coords: np.ndarray, *, k: int = DEFAULT_NEIGHBORS
) -> np.ndarray:
    """2-D position of each query cell: the weighted mean of its reference neighbours' coordinates."""
    distances, indices = _neighbors(query_latent, ref_latent, k)
    return np.einsum("nk,nkd->nd", _weights(distances), ref_coords[indices]).astype(np.float32)


def knn_label_probabilities(
    query_latent: np.ndarray,
    ref_latent: np.ndarray,
    ref_labels: np.ndarray,
    n_labels: int,
    *,
    k: int = DEFAULT_NEIGHBORS,
) -> np.ndarray:
    """Weighted-kNN class probabilities (n_query x n_labels); reference cells with label -1 are ignored."""
    keep = ref_labels >= 0
    distances, indices = _neighbors(query_latent, ref_latent[keep], k)
    weights = _weights(distances)
    labels = ref_labels[keep][indices]
    probs = np.zeros((len(query_latent), n_labels))
    for j in range(n_labels):
        probs[:, j] = (weights * (labels == j)).sum(axis=1)
    return probs

"""Names that other code must not spell by hand: bundle files, AnnData keys."""

from __future__ import annotations

from typing import NamedTuple


class _BundleKeys(NamedTuple):
    MANIFEST: str = "manifest.json"
    SIGNATURE: str = "manifest.sig"
    MODEL_DIR: str = "model"
    MODEL: str = "model/model.pt"
    SETUP: str = "setup.json"
    GENES: str = "genes.tsv"
    EMBEDDING: str = "embedding.npz"
    SUMMARY: str = "reference_summary.npz"


class _AnnDataKeys(NamedTuple):
    PREDICTION: str = "predicted_cell_type"
    CONFIDENCE: str = "prediction_confidence"
    LOW_CONFIDENCE: str = "is_low_confidence"
    RAW_CONFIDENCE: str = "prediction_confidence_raw"
    MAPPING_DISTANCE: str = "mapping_distance"
    MAPPING_SCORE: str = "mapping_score"
    UNKNOWN: str = "is_unknown"
    REF_UMAP: str = "X_ref_umap"
    UNS: str = "fedarches"
    COUNTS_LAYER: str = "counts"


BUNDLE_KEYS = _BundleKeys()
ADATA_KEYS = _AnnDataKeys()

BUNDLE_FORMAT = "fedarches.reference-bundle"
BUNDLE_FORMAT_VERSION = 1

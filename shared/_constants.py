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


class AnnDataKeys(NamedTuple):
    """Where a mapping writes in an AnnData (``obs``, ``obsm``, ``uns``) and where it reads counts."""

    PREDICTION: str = "predicted_cell_type"
    CONFIDENCE: str = "prediction_confidence"
    LOW_CONFIDENCE: str = "is_low_confidence"
    RAW_CONFIDENCE: str = "prediction_confidence_raw"
    MAPPING_DISTANCE: str = "mapping_distance"
    MAPPING_SCORE: str = "mapping_score"
    UNKNOWN: str = "is_unknown"
    REF_UMAP: str = "X_ref_umap"
    DENOISED_PROTEIN: str = "denoised_protein"  # CITE-seq backends: every reference protein, denoised or imputed
    UNS: str = "fedarches"
    COUNTS_LAYER: str = "counts"

    def added(self, key_added: str | None) -> AnnDataKeys:
        """These keys under ``key_added``, scanpy's way (``{key_added}_{key}``); None keeps them as they are.

        The counts layer is the user's input, not an output, so it keeps its name.
        """
        if not key_added:
            return self
        return self._replace(**{f: added_key(key_added, getattr(self, f)) for f in self._fields if f != "COUNTS_LAYER"})


def added_key(key_added: str | None, key: str) -> str:
    """``key`` under ``key_added`` (``{key_added}_{key}``), or ``key`` itself when ``key_added`` is None or empty."""
    return f"{key_added}_{key}" if key_added else key


BUNDLE_KEYS = _BundleKeys()
ADATA_KEYS = AnnDataKeys()

BUNDLE_FORMAT = "fedarches.reference-bundle"
BUNDLE_FORMAT_VERSION = 1

# Size limits of a bundle, checked from file sizes before any byte is read (a reference model of a
# large atlas is tens of MB; the embedding of 50,000 cells a few MB).
MAX_BUNDLE_BYTES = 2 * 1024**3  # every file of a bundle together
MAX_BUNDLE_FILE_BYTES = 1024**3  # any one file
MAX_MANIFEST_BYTES = 1024**2  # manifest.json
MAX_SIGNATURE_BYTES = 1024  # manifest.sig: one base64 Ed25519 signature (88 characters)
MAX_BUNDLE_ENTRIES = 64  # files and directories in a bundle directory

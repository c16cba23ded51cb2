"""trVAE backend: scArches' conditional VAE with an MMD penalty (:class:`fedarches.shared.models.trvae.TRVAE`).

Written here on scvi-tools' base classes (the scArches package no longer imports on today's stack).
Cell types by weighted kNN on the reference embedding, as scArches' trVAE tutorial transfers labels.
Surgery grows one column per new batch in the first encoder and first decoder layers' condition
weights and in ``theta`` (negative-binomial dispersions), and trains only those: all an adapter holds.
"""

from __future__ import annotations

from typing import ClassVar

from fedarches.shared.backends.base import WrittenHereBackend


class TRVAEBackend(WrittenHereBackend):
    """``TRVAE``: the scArches tutorial's architecture and training, kNN labels."""

    name: ClassVar[str] = "trvae"
    model_class: ClassVar[str] = "TRVAE"
    module_path: ClassVar[str] = "fedarches.shared.models.trvae"
    latent_key: ClassVar[str] = "X_trVAE"
    adapter_tensors: ClassVar[tuple[str, ...]] = (r"(?:encoder|decoder)_first\.cond_L\.weight", r"theta")

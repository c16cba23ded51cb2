"""Merge labs' adapters into an updated atlas: a new signed bundle, no retraining.

The merged model is ``reference + adapter_1 + ... + adapter_n``: each grown tensor gets every
lab's batch columns appended in lab order, and the batch registry lists the labs' batches after
the reference's. Any lab can run surgery against it (its new batches go after all of these), and a
lab whose batches it already holds gets its own latent back with no training at all
(:func:`fedarches.client.mapping.embed_with_adapters` on the merged bundle, or simply
``load_query_data`` with zero new batches).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedarches.shared import crypto, prototypes
from fedarches.shared.adapters import Adapter, apply_adapters
from fedarches.shared.backends import backend_for
from fedarches.shared.bundle import BundleContents, ReferenceBundle, write_bundle
from fedarches.shared.errors import AdapterError
from fedarches.shared.prototypes import NewTypePrototypes
from fedarches.shared.weights import load_model_dict


def merge_adapters(
    bundle: ReferenceBundle,
    adapters: Sequence[tuple[str, Adapter]],
    out_dir: Path,
    signing_key: Path,
    *,
    round_id: str = "",
    new_types: Sequence[tuple[str, NewTypePrototypes]] = (),
) -> ReferenceBundle:
    """Write the merged atlas for ``(lab, adapter)`` pairs to ``out_dir``, signed; return it opened.

    ``new_types`` are labs' prototypes of cell types the bundle lacks (scPoli atlases): contributions
    to the same type add up (sums and counts), and the atlas then predicts every new type.
    """
    import torch

    if not adapters:
        msg = "no adapter to merge"
        raise AdapterError(msg, hint="the round needs at least one lab whose adapter was accepted")
    seen: set[str] = set()
    new_batches: list[str] = []
    for lab, adapter in adapters:
        if adapter.bundle_id != bundle.bundle_id:
            msg = f"adapter of {lab} was made against bundle {adapter.bundle_id}, not {bundle.bundle_id}"
            raise AdapterError(msg)
        clash = (set(adapter.batch_categories) & seen) | (set(adapter.batch_categories) & set(bundle.batch_categories))
        if clash:
            msg = f"batch names {sorted(clash)} of {lab} are already in the atlas"
            raise AdapterError(msg)
        seen.update(adapter.batch_categories)
        new_batches.extend(adapter.batch_categories)

    saved: dict[str, Any] = load_model_dict(bundle.model_bytes(), source=f"the model of bundle {bundle.bundle_id}")
    reference_state = bundle.reference_state()
    merged = apply_adapters(reference_state, [a for _, a in adapters])
    saved["model_state_dict"] = {
        name: torch.from_numpy(np.ascontiguousarray(merged[name])) if name in merged else tensor
        for name, tensor in saved["model_state_dict"].items()
    }
    categories = [*bundle.batch_categories, *new_batches]
    backend = backend_for(bundle)
    backend.extend_batches(saved, categories)
    learned = prototypes.combine([contribution for _, contribution in new_types])
    for lab, contribution in new_types:
        if contribution.bundle_id != bundle.bundle_id:
            msg = f"new-type prototypes of {lab} were made against bundle {contribution.bundle_id}"
            raise AdapterError(msg)
    summary = bundle.reference_summary
    if learned:
        backend.add_cell_types(saved, {name: mean for name, (mean, _, _) in learned.items()})
        if summary is not None:
            summary = summary.with_types(list(learned), np.stack([mean for mean, _, _ in learned.values()]))
    buffer = io.BytesIO()
    torch.save(saved, buffer)

    lineage = list(bundle.setup.get("lineage", []))
    lineage.append(
        {
            "parent_bundle": bundle.bundle_id,
            "round_id": round_id,
            "labs": {lab: list(adapter.batch_categories) for lab, adapter in adapters},
            **(
                {
                    "new_cell_types": {
                        name: {"labs": [lab for lab, c in new_types if name in c.names], "cells": round(count, 1)}
                        for name, (_, count, _) in learned.items()
                    }
                }
                if learned
                else {}
            ),
        }
    )
    contents = BundleContents(
        model_pt=buffer.getvalue(),
        model_class=bundle.model_class,
        setup_args=bundle.setup_args,
        batch_categories=categories,
        label_categories=[*bundle.label_categories, *learned],
        gene_ids=bundle.genes["gene_id"].tolist(),
        gene_symbols=bundle.genes["gene_symbol"].tolist(),
        embedding=bundle.embedding,
        summary=None if summary is None else summary.to_bytes(),
        description={
            **{k: v for k, v in bundle.setup.items() if k not in _SETUP_FIELDS},
            "lineage": lineage,
        },
    )
    key = crypto.load_private_key(Path(signing_key))
    write_bundle(out_dir, contents, key, overwrite=True)
    return ReferenceBundle.open(out_dir, key.public_key())


# Fields of setup.json that write_bundle fills itself.
_SETUP_FIELDS = ("model_class", "backend", "setup_args", "batch_categories", "label_categories", "lineage")

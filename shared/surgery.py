"""scArches surgery set-up, shared by the lab (mapping) and the coordinator (which tensors an adapter holds).

:func:`load_query_model` runs scvi-tools' ``load_query_data`` on reference-aligned counts, from a
bundle's verified (and sanitized) model bytes. :func:`grown_tensors` asks the same set-up which
reference tensors surgery grows, on a probe of empty cells in one new batch: an adapter must carry
exactly those, one column per new batch. Reading them off the model itself, rather than listing them
by name, keeps this right for every model class, layer layout and scvi-tools version.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedarches.shared.adapters import grown_axes
from fedarches.shared.backends import backend_for
from fedarches.shared.errors import AdapterError

if TYPE_CHECKING:
    import scipy.sparse as sp

    from fedarches.shared.bundle import ReferenceBundle

PROBE_BATCH = "fedarches-probe"
_grown_cache: dict[str, dict[str, int]] = {}


def load_query_model(
    counts: sp.csr_matrix,
    batches: Sequence[str],
    obs_names: Sequence[str],
    bundle: ReferenceBundle,
    workdir: Path,
    inputs: Mapping[str, Any] | None = None,
) -> Any:
    """``Model.load_query_data`` on ``counts`` (cells x the bundle's genes), with the decoder's batch-norm frozen.

    Each cell's batch is a new batch of the query model; cells are unlabeled; ``inputs`` are the
    backend's extra inputs (proteins for totalVI; zeros when absent). The reference model is read
    from the bundle's verified bytes, written to ``workdir`` as a sanitized copy.
    """
    backend = backend_for(bundle)
    query = backend.query_anndata(counts, batches, obs_names, bundle, inputs)
    model_dir = bundle.write_model_dir(Path(workdir) / "reference")
    return backend.load_query(query, model_dir)


def grown_tensors(bundle: ReferenceBundle, reference_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    """The tensors surgery on ``bundle`` grows, each with the axis it grows along (one column per new batch).

    Cached per bundle id: the probe (scvi-tools' surgery set-up on empty cells, no training) takes seconds.

    Raises
    ------
    AdapterError
        When surgery on this bundle grows no tensor, or grows one by other than one column per
        batch: fedarches adapters cannot describe that model.
    """
    if bundle.bundle_id not in _grown_cache:
        query_shapes = _probe_shapes(bundle)
        grown = grown_axes(reference_shapes, query_shapes)
        backend = backend_for(bundle)
        backend.check_adapter_tensors(grown)
        odd = {n: a for n, a in grown.items() if query_shapes[n][a] - tuple(reference_shapes[n])[a] != 1}
        if (not grown and backend.surgery_trains) or odd:
            msg = (
                f"surgery on bundle {bundle.bundle_id} grows {len(grown)} tensors"
                + (f", {sorted(odd)[:3]} by more than one column per batch" if odd else "")
                + "; fedarches adapters need one new column per batch in at least one tensor"
            )
            raise AdapterError(
                msg, hint="rebuild the reference with fedarches' reference builder (scArches architecture)"
            )
        _grown_cache[bundle.bundle_id] = grown
    return dict(_grown_cache[bundle.bundle_id])


def adapter_bytes_per_batch(bundle: ReferenceBundle, reference_state: Mapping[str, np.ndarray]) -> int:
    """Bytes one new batch adds to an adapter against ``bundle`` (adapters grow linearly with batches)."""
    grown = grown_tensors(bundle, {name: value.shape for name, value in reference_state.items()})
    return sum(
        int(np.prod([n for axis, n in enumerate(reference_state[name].shape) if axis != grown_axis]))
        * reference_state[name].dtype.itemsize
        for name, grown_axis in grown.items()
    )


def _probe_shapes(bundle: ReferenceBundle) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of the query model ``load_query_data`` builds for one new batch of empty cells."""
    import scipy.sparse as sp

    from fedarches.shared._training import quiet_training

    batch = PROBE_BATCH
    while batch in bundle.batch_categories:
        batch += "_"
    cells = 3
    counts = sp.csr_matrix((cells, len(bundle.var_names)), dtype=np.float32)
    with quiet_training(), tempfile.TemporaryDirectory() as tmp:
        model = load_query_model(counts, [batch] * cells, [f"probe{i}" for i in range(cells)], bundle, Path(tmp))
        return {name: tuple(tensor.shape) for name, tensor in model.module.state_dict().items()}

"""A federated round on loopback, as `make bench` measures it.

:func:`federated` builds the reference with ``fedarches-server build-reference`` (every default), starts a
coordinator and one SuperNode per lab on this machine (:class:`fedarches.testing.loopback.LoopbackFederation`,
TLS and node authentication on, one torch thread per lab), runs one ``fedarches-server run-round`` with every
default (privacy policy included), stops everything and reports what the round and each lab measured.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np

from fedarches.bench.bundles import build_bundle_cli
from fedarches.bench.metrics import fedarches_calls, scores
from fedarches.bench.runner import THREADS
from fedarches.shared.bundle import ReferenceBundle
from fedarches.testing.loopback import LoopbackFederation


def lab_outcome(fed: LoopbackFederation, lab: str, report_lab: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """A lab's own view of its round: its cells' calls from annotated.h5ad, and what went over the wire."""
    adata = ad.read_h5ad(fed.labs[lab].out_dir / "annotated.h5ad")
    uns = adata.uns["fedarches"]
    cells = fedarches_calls(adata)
    run = {
        "status": report_lab["status"],
        "bytes_to_lab": report_lab["bytes_to_lab"],
        "bytes_from_lab": report_lab["bytes_from_lab"],
        "reply_s": report_lab.get("reply_s"),
        "n_epochs": int(uns["params"]["n_epochs_trained"]),
        "adapter_bytes": int(uns["adapter_bytes"]),
        "timings": dict(uns["timings"]),
        "peak_rss_bytes": int(uns.get("peak_rss_bytes", 0)),
    }
    return cells, run, adata.obsm["X_scANVI"]


def federated(
    reference: Path,
    workdir: Path,
    labs: dict[str, Path],
    latents_out: Path | None = None,
    build_args: tuple[str, ...] = (),
    round_args: tuple[str, ...] = (),
    *,
    threads: int = THREADS,
) -> dict[str, Any]:
    """Build the bundle with a fresh coordinator's key, start everything, run one round, stop everything.

    ``labs``: each lab's name and .h5ad; ``latents_out``: where to save each lab's latent (.npz); ``build_args``,
    ``round_args``: options after the defaults of ``build-reference`` (run with ``threads`` torch threads) and
    ``run-round``.
    """
    with LoopbackFederation(workdir, threads=1) as fed:
        bundle_dir = workdir / "reference-bundle"
        build_s = build_bundle_cli(reference, fed.coord.signing_key, bundle_dir, build_args, threads=threads)
        startup = {"superlink_s": fed.start_coordinator()}
        for lab, path in labs.items():
            fed.add_lab(lab, path)
        for lab in labs:
            fed.join(lab, wait=False)
        tick = time.monotonic()
        fed.wait_online(list(labs))
        startup["supernodes_online_s"] = time.monotonic() - tick
        report = fed.run_round(bundle_dir, "--min-labs", str(len(labs)), *round_args)
        outcomes = {entry["name"]: lab_outcome(fed, entry["name"], entry) for entry in report["labs"]}
    bundle = ReferenceBundle.open(bundle_dir, fed.coord.signing_public_key)
    if latents_out is not None:
        np.savez(latents_out, **{lab: o[2] for lab, o in outcomes.items()})
    return {
        "bundle_dir": str(bundle_dir),
        "trust": str(fed.coord.signing_public_key),
        "bundle_bytes": bundle.size_bytes,
        "reference_build_s": build_s,
        "startup": startup,
        "round_wall_s": report["_cli"]["wall_s"],
        "phases_s": report["phases_s"],
        "status": report["status"],
        **scores({lab: o[0] for lab, o in outcomes.items()}, bundle.label_categories),
        "runs": {lab: o[1] for lab, o in outcomes.items()},
    }

"""Signed reference bundles for the benchmarks, built as the coordinator builds them.

* :func:`make_bundle`: in this process, with the Python API (``build_reference``, ``write_bundle``), and opened
  as a lab opens it. Every benchmark that builds in-process uses it.
* :func:`build_bundle_cli`: ``fedarches-server build-reference`` with every default in a fresh process, timed
  (`make bench`, whose reference build is part of what it measures).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fedarches.shared._process import own_executable

if TYPE_CHECKING:
    import anndata as ad

    from fedarches.server.reference import ReferenceOptions
    from fedarches.shared.bundle import ReferenceBundle


def make_bundle(
    reference: ad.AnnData,
    work: Path,
    options: ReferenceOptions,
    *,
    batch_key: str = "batch",
    labels_key: str = "cell_type",
    keys: tuple[Path, Path] | None = None,
) -> ReferenceBundle:
    """Train a reference on ``reference``, sign it, and open the bundle as a lab would.

    The bundle goes to ``work/bundle``; it is signed with ``keys`` (private, public), or with a fresh key pair
    written to ``work/keys``.
    """
    from fedarches.server.reference import build_reference
    from fedarches.shared.bundle import ReferenceBundle, write_bundle
    from fedarches.shared.crypto import generate_signing_keys, load_private_key

    contents = build_reference(reference, batch_key=batch_key, labels_key=labels_key, options=options)
    private, public = keys or generate_signing_keys(work / "keys", overwrite=True)
    path = write_bundle(work / "bundle", contents, load_private_key(private), overwrite=True)
    return ReferenceBundle.open(path, public)


def build_bundle_cli(
    reference: Path, signing_key: Path, out: Path, extra: tuple[str, ...] = (), *, threads: int = 2
) -> float:
    """``fedarches-server build-reference`` (every default, ``extra`` options after them); its wall time.

    ``threads``: ``OMP_NUM_THREADS`` of the process, and so its torch threads.
    """
    tick = time.monotonic()
    subprocess.run(
        [own_executable("fedarches-server"), "build-reference", str(reference), "--batch-key", "batch",
         "--labels-key", "cell_type", "--signing-key", str(signing_key), "--out", str(out), "--quiet", *extra],
        check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
    )  # fmt: skip
    return time.monotonic() - tick

"""What a round would send from this lab, computed locally: the lab's check before it joins.

:func:`preview` maps the lab's file exactly as a round would (its policy, its k, the egress limit),
builds the reply the lab would send, holds it to the egress allow-list, and returns it with its
description. It contacts nobody, records nothing in the ledger and writes no file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedarches.shared.policy import PrivacyPolicy
from fedarches.shared.protocol import MapReply

__all__ = ["Preview", "preview"]


@dataclass(frozen=True)
class Preview:
    """The reply a round would send, and what it was made from.

    Attributes
    ----------
    reply
        The reply, already held to the egress allow-list.
    description
        Every record it holds: tensor shapes, dtypes, bytes and hashes; config values.
    policy
        The lab's effective privacy policy.
    n_cells
        Cells in the lab's file (a tensor with this many rows would describe cells).
    """

    reply: MapReply
    description: dict[str, Any]
    policy: PrivacyPolicy
    n_cells: int


def preview(
    lab_dir: Path | str,
    bundle_dir: Path | str,
    data: Path | str,
    *,
    batch_key: str | None = None,
    layer: str | None = None,
    max_epochs: int | None = None,
    seed: int = 0,
    threads: int | None = None,
    progress_bar: bool = False,
    labels_key: str | None = None,
) -> Preview:
    """Map ``data`` onto the bundle as a round would, and return the reply the lab would send.

    ``labels_key``: the obs column a round reads the lab's own labels from (``join --labels-key``),
    for prototypes of cell types the atlas lacks when the policy releases them.

    The bundle is verified with the lab's trusted key, the lab's policy decides what is released
    (its ``release.min_count`` is the k), and the reply must pass the egress audit's allow-list.

    Raises
    ------
    FedarchesError
        Whatever a round would refuse: a bundle that does not verify, a query that cannot be
        mapped, a policy that is malformed, a reply the allow-list would stop.
    """
    from fedarches.client.lab import LabDir
    from fedarches.client.mapping import map_query
    from fedarches.client.mods import EGRESS_LIMIT_BYTES
    from fedarches.client.options import MappingOptions
    from fedarches.client.release import LabelledCells, Releaser, check_labels_key
    from fedarches.shared import protocol
    from fedarches.shared.bundle import ReferenceBundle
    from fedarches.shared.datafiles import query_obs, read_query
    from fedarches.shared.wire import describe_content

    lab = LabDir.open(lab_dir)
    releaser = Releaser.for_lab(lab, run_id="preview", round_id="preview", preview=True)
    bundle = ReferenceBundle.open(bundle_dir, lab.trusted_key)
    adata = read_query(Path(data))
    check_labels_key(query_obs(adata), labels_key)  # before any training
    options = MappingOptions(
        max_epochs=max_epochs,
        seed=seed,
        threads=threads,
        progress_bar=progress_bar,
        max_adapter_bytes=EGRESS_LIMIT_BYTES,
    )
    k = releaser.policy.release.min_count
    result = map_query(adata, bundle, batch_key=batch_key, layer=layer, lab_name=lab.name, options=options, min_count=k)
    timings = {key: float(v) for key, v in result.timings.items()}
    labelled = LabelledCells.of_mapping(adata, result, labels_key, bundle)
    _, _, reply = releaser.release_mapping(result, query_obs(adata), timings, labelled=labelled)
    content = reply.to_content()
    protocol.check_egress(protocol.MAP, content, max_array_bytes=EGRESS_LIMIT_BYTES)
    return Preview(reply, describe_content(content), releaser.policy, int(adata.n_obs))

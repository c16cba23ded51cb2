"""A lab's work for a round's messages, wherever it runs: in the ClientApp or in the warm worker.

:data:`WORK` names each piece by the operation the worker serves it under; each takes and returns
a Flower ``RecordDict``, so the same code serves the ClientApp directly and the lab's warm worker
(:mod:`fedarches.client.worker`), whose replies the ClientApp's egress audit checks all the same.

:func:`map_round` does what the ClientApp's ``train.map`` handler has always done: check the
lab's policy against the round, store or open the round's bundle, map the lab's file exactly as
``fedarches-client map`` would, write the outputs under ``out-dir`` and build the reply its
privacy policy releases (see :mod:`fedarches.client.release`). :func:`secure_sum_round` gives the
lab's (noised) count vector for SecAgg+'s masked-vector stage, recorded in the ledger.

:class:`BundleCache` keeps the bundles a long-lived process has verified: a held bundle is
verified once per bundle and process, and again only when one of its files changes.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.app import ConfigRecord, RecordDict

from fedarches.client.lab import LabDir
from fedarches.client.release import LabelledCells, Releaser, read_exact_counts, write_exact_counts
from fedarches.shared import protocol
from fedarches.shared.errors import ConfigError, PrivacyError

if TYPE_CHECKING:
    from fedarches.shared.bundle import ReferenceBundle

log = logging.getLogger("fedarches.client")


@dataclass(frozen=True)
class NodeSettings:
    """The lab's settings, from the SuperNode's ``--node-config`` (written by ``fedarches-client join``)."""

    lab_dir: Path
    data_path: Path
    out_dir: Path
    batch_key: str | None
    layer: str | None
    threads: int | None
    worker: bool = False
    labels_key: str | None = None  # cell-type labels: prototypes of the atlas's missing types (scPoli)

    @classmethod
    def from_config(cls, config: Any) -> NodeSettings:
        """Read a node config; a :class:`ConfigError` names what ``join`` should have set."""
        missing = [k for k in ("lab-dir", "data-path", "out-dir") if not config.get(k)]
        if missing:
            msg = f"the SuperNode's --node-config lacks {missing}"
            raise ConfigError(msg, hint="start the SuperNode with `fedarches-client join`, which sets them")
        threads = int(config.get("threads", 0) or 0)
        return cls(
            lab_dir=Path(str(config["lab-dir"])),
            data_path=Path(str(config["data-path"])),
            out_dir=Path(str(config["out-dir"])),
            batch_key=str(config.get("batch-key") or "") or None,
            layer=str(config.get("layer") or "") or None,
            threads=threads or None,
            worker=config.get("worker") is True,
            labels_key=str(config.get("labels-key") or "") or None,
        )

    def to_config(self) -> dict[str, Any]:
        """The settings as a node config, as :meth:`from_config` reads it (what the ClientApp sends its worker)."""
        return {
            "lab-dir": str(self.lab_dir),
            "data-path": str(self.data_path),
            "out-dir": str(self.out_dir),
            "batch-key": self.batch_key or "",
            "layer": self.layer or "",
            "threads": self.threads or 0,
            "worker": self.worker,
            "labels-key": self.labels_key or "",
        }


class BundleCache:
    """Bundles this process has opened and verified, by lab and id, each with its files' stat stamp."""

    def __init__(self) -> None:
        self._held: dict[tuple[Path, str], tuple[tuple, ReferenceBundle]] = {}

    def open(self, lab: LabDir, bundle_id: str) -> tuple[ReferenceBundle, bool]:
        """The held bundle ``bundle_id``; True when it was verified now, False when it came from the cache."""
        key = (lab.root, bundle_id)
        cached = self._held.get(key)
        if cached is not None and cached[0] == _stamp(lab.bundles_dir / bundle_id):
            return cached[1], False
        bundle = lab.open_bundle(bundle_id)
        self._held[key] = (_stamp(bundle.path), bundle)
        return bundle, True

    def store(self, lab: LabDir, bundle_id: str, files: Any) -> ReferenceBundle:
        """Verify and keep a received bundle (:meth:`LabDir.store_bundle`), and remember it."""
        bundle = lab.store_bundle(bundle_id, files)
        self._held[(lab.root, bundle_id)] = (_stamp(bundle.path), bundle)
        return bundle


def _stamp(directory: Path) -> tuple:
    """Name, size and modification time of every file under ``directory`` (empty when it is gone)."""
    if not directory.is_dir():
        return ()
    stats = []
    for path in sorted(directory.rglob("*")):
        info = path.lstat()
        stats.append((str(path.relative_to(directory)), info.st_size, info.st_mtime_ns, info.st_mode))
    return tuple(stats)


def map_round(
    settings: NodeSettings, content: RecordDict, *, run_id: int, bundles: BundleCache | None = None
) -> RecordDict:
    """Map the lab's query onto the round's bundle; return the reply content its policy releases.

    Parameters
    ----------
    settings
        The lab's node settings.
    content
        The map message's content: a :class:`~fedarches.shared.protocol.MapRequest` and, the first
        time, the bundle's files.
    run_id
        The Flower run, recorded in the lab's ledger.
    bundles
        Verified bundles of a long-lived process; None verifies the held bundle again.

    Raises
    ------
    FedarchesError
        The policy refuses the round, the bundle does not verify, or the query cannot be mapped.
    """
    tick_handler = time.perf_counter()
    lab = LabDir.open(settings.lab_dir)
    request = protocol.MapRequest.from_record(content.config_records.get(protocol.ROUND))
    releaser = Releaser.for_lab(lab, run_id=run_id, round_id=request.round_id)  # policy checked first
    k = releaser.policy.release.min_count  # the lab's policy decides its k; the round states what it accepts
    if k < request.min_count:
        msg = f"this lab's policy suppresses counts below k={k}; the round accepts only k>={request.min_count}"
        raise PrivacyError(msg, hint=f"set release.min_count to at least {request.min_count} in LAB_DIR/policy.toml")
    bundles = bundles or BundleCache()
    tick = time.perf_counter()
    if protocol.BUNDLE in content.array_records:
        files = protocol.BundleTransfer.from_record(content.array_records[protocol.BUNDLE]).files
        bundle = bundles.store(lab, request.bundle_id, files)
        log.info("received and verified bundle %s (%d bytes)", request.bundle_id, bundle.size_bytes)
    else:
        bundle, verified = bundles.open(lab, request.bundle_id)
        log.info("using held bundle %s (%s)", request.bundle_id, "verified now" if verified else "verified before")
    receive_s = time.perf_counter() - tick

    result, adata = _map_and_write(settings, lab, bundle, request, min_count=k)
    timings = {**{key: float(v) for key, v in result.timings.items()}, "receive_bundle_s": receive_s}
    from fedarches.shared.datafiles import query_obs

    timings["handler_s"] = time.perf_counter() - tick_handler
    labelled = LabelledCells.of_mapping(adata, result, settings.labels_key, bundle)
    released, counts, reply = releaser.release_mapping(result, query_obs(adata), timings, labelled=labelled)
    composition = reply.lab.composition
    if composition == protocol.Composition.SECURE_SUM:
        write_exact_counts(settings.out_dir, request.round_id, counts)
    new_types = list(released.new_types.names) if released.new_types else []
    parts = [
        part
        for part, present in (
            (f"a {released.adapter.nbytes if released.adapter else 0}-byte adapter", released.adapter),
            ("label statistics", released.label_statistics),
            (f"prototypes of new cell types {new_types}", new_types),
        )
        if present
    ]
    log.info(
        "mapped %d cells in %.1f s (%d epochs); releasing %s (ledger entry %d; composition: %s)",
        adata.n_obs,
        timings["total_s"],
        result.n_epochs,
        " and ".join(parts) or "nothing but its name and timings",
        released.entry_seq,
        composition,
    )
    return reply.to_content()


def secure_sum_round(
    settings: NodeSettings, content: RecordDict, *, run_id: int, bundles: BundleCache | None = None
) -> RecordDict:
    """The lab's (noised) count vector for a secure sum, in the coordinator's type order, recorded in the ledger.

    ``content`` holds a :class:`~fedarches.shared.protocol.SecureSumRequest` (its config, record
    :data:`~fedarches.shared.protocol.ROUND`); the reply, record ``secure-sum``, its ``vector`` (whole
    numbers) and the ledger entry ``seq``. It never leaves the lab as such: SecAgg+ masks it first.
    """
    lab = LabDir.open(settings.lab_dir)
    request = protocol.SecureSumRequest.from_config(content.config_records.get(protocol.ROUND) or {})
    releaser = Releaser.for_lab(lab, run_id=run_id, round_id=request.round_id)
    counts = read_exact_counts(settings.out_dir, request.round_id)
    vector, seq = releaser.secure_sum_counts(counts, list(request.categories))
    log.info("secure sum for round %s: count vector of %d values (ledger entry %d)", request.round_id, vector.size, seq)
    return RecordDict({SECURE_SUM_RECORD: ConfigRecord({"vector": [int(v) for v in vector], "seq": int(seq)})})


def secure_sum_request(request: protocol.SecureSumRequest) -> RecordDict:
    """The content :func:`secure_sum_round` takes."""
    return RecordDict({protocol.ROUND: ConfigRecord(request.to_config())})


def secure_sum_vector(reply: RecordDict) -> tuple[list[int], int]:
    """The vector and ledger entry of :func:`secure_sum_round`'s reply."""
    record = reply.config_records[SECURE_SUM_RECORD]
    return [int(v) for v in record["vector"]], int(record["seq"])


SECURE_SUM_RECORD = "secure-sum"
WORK = {"map": map_round, "secure-sum": secure_sum_round}  # what the worker serves, by operation


def _map_and_write(
    settings: NodeSettings, lab: LabDir, bundle: ReferenceBundle, request: protocol.MapRequest, *, min_count: int
) -> tuple[Any, Any]:
    """Map the lab's file as ``fedarches-client map`` would and write its outputs under ``out-dir``."""
    from fedarches.client.annotate import map_file
    from fedarches.client.options import MappingOptions
    from fedarches.client.outputs import ROUND_FILE_NAME, MappingOutputs
    from fedarches.shared.datafiles import query_suffix

    outputs = MappingOutputs.in_directory(settings.out_dir, suffix=query_suffix(settings.data_path))
    options = MappingOptions(
        max_epochs=request.max_epochs or None,  # 0: automatic
        seed=request.seed,
        threads=settings.threads,
        progress_bar=False,
        max_adapter_bytes=request.max_adapter_bytes,  # refused before training, not after
    )
    round_info = {"round_id": request.round_id, "bundle_id": bundle.bundle_id, "lab": lab.name}
    done = map_file(
        settings.data_path,
        bundle,
        outputs,
        batch_key=settings.batch_key,
        layer=settings.layer,
        lab_name=lab.name,
        options=options,
        confidence_threshold=request.confidence_threshold,
        min_count=min_count,
        extra={settings.out_dir / ROUND_FILE_NAME: json.dumps(round_info, indent=2).encode()},
        directory_option="--out",
    )
    return done.result, done.adata

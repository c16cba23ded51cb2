"""What a lab releases, made under its privacy policy and recorded in its ledger.

Two kinds of release, each one ledger entry (see :mod:`fedarches.client.ledger`):

- ``map-reply``: the reply to a mapping round. The adapter (unless ``adapters.release`` is off;
  clipped and noised when the policy says so) and, only when ``release.composition = "plain"``,
  the label statistics (noised with OpenDP when ``dp.enabled``, then primary, complement and
  secondary suppression at ``k``); and, when ``prototypes.release`` is on and the lab gave its
  labels (``join --labels-key``), the prototypes of cell types the atlas lacks (sums of clipped
  latents and cell counts, noised as the policy says; types under ``prototypes.min_cells`` cells
  never leave).
- ``secure-sum-counts``: the lab's count vector entering a SecAgg+ sum (when
  ``release.composition = "secure-sum"``), noised when ``dp.enabled``. The coordinator sees only
  the masked vector and learns only the sum over labs.

Both are built from the ledger's stored payload, so a retried release re-sends the same values.

A mapping reply also carries the ledger's newest entry after the release (``ledger-seq`` and
``ledger-head``), which the coordinator keeps as an anchor outside the lab (see
:mod:`fedarches.client.ledger`). A preview records nothing: it shows the ledger's current newest
entry (seq 0 and :data:`~fedarches.client.ledger.GENESIS_HASH` before the first release), where a
round would send the entry it records.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedarches.client.lab import LabDir
from fedarches.client.ledger import GENESIS_HASH, Ledger, Release, ReleaseContext, open_lab_ledger
from fedarches.shared import __version__, dp, prototypes
from fedarches.shared._io import atomic_write_bytes
from fedarches.shared.adapters import Adapter
from fedarches.shared.errors import ConfigError, PrivacyError
from fedarches.shared.labels import LabelCounts, LabelStatistics, suppress
from fedarches.shared.policy import PrivacyPolicy
from fedarches.shared.protocol import Composition, LabInfo, MapReply
from fedarches.shared.prototypes import NewTypePrototypes

if TYPE_CHECKING:
    import pandas as pd

MAP_REPLY = "map-reply"
SECURE_SUM_COUNTS = "secure-sum-counts"
COUNTS_FILE_NAME = "label_counts.json"  # exact counts kept in the lab's out-dir for the secure-sum stage


@dataclass(frozen=True)
class LabelledCells:
    """A lab's own cell-type labels beside its latent: the source of new-type prototypes (scPoli atlases)."""

    latent: np.ndarray
    labels: np.ndarray
    bundle: Any  # the ReferenceBundle mapped onto: its id and cell types

    @classmethod
    def of_mapping(cls, adata: Any, result: Any, labels_key: str | None, bundle: Any) -> LabelledCells | None:
        """The mapped cells' latent beside ``obs[labels_key]``; None without a labels column.

        Raises :class:`ConfigError` when ``labels_key`` names no obs column.
        """
        if labels_key is None:
            return None
        from fedarches.shared.datafiles import query_obs

        obs = query_obs(adata)
        check_labels_key(obs, labels_key)
        return cls(np.asarray(adata.obsm[result.latent_key]), obs[labels_key].to_numpy(), bundle)

    def kept(self, keep: np.ndarray | None) -> LabelledCells:
        """Only the cells ``keep`` marks (each donor's cells capped when the privacy unit is a donor)."""
        if keep is None:
            return self
        return LabelledCells(np.asarray(self.latent)[keep], np.asarray(self.labels)[keep], self.bundle)


def check_labels_key(obs: pd.DataFrame, labels_key: str | None) -> None:
    """Raise :class:`ConfigError` unless ``labels_key`` (when given) is a column of ``obs``."""
    if labels_key is not None and labels_key not in obs:
        msg = f"the lab's data has no obs column {labels_key!r} (its --labels-key); columns: {list(obs.columns)[:12]}"
        raise ConfigError(msg, hint="name the obs column with the lab's cell-type labels, or leave it out")


@dataclass(frozen=True)
class MapRelease:
    """What a mapping reply carries, as recorded in the ledger."""

    adapter: Adapter | None
    label_statistics: LabelStatistics | None
    entry_seq: int  # the entry this release wrote (or, retried, had written); 0 in a preview
    ledger_seq: int  # the ledger's newest entry after the release: the anchor the reply carries
    ledger_head: str  # that entry's hash (64 hex digits)
    new_types: NewTypePrototypes | None = None

    def to_reply(self, lab_name: str, n_epochs: int, composition: str, timings: Mapping[str, float]) -> MapReply:
        """The round's reply carrying this release, the lab's name, its timings and its ledger anchor."""
        info = LabInfo(lab_name, __version__, n_epochs, Composition(composition), self.ledger_seq, self.ledger_head)
        return MapReply(info, dict(timings), self.adapter, self.label_statistics, self.new_types)


@dataclass(frozen=True)
class Releaser:
    """Makes a lab's releases for one round: policy applied, budget checked, ledger written."""

    policy: PrivacyPolicy
    ledger: Ledger | None  # read only in a preview; None in a preview before the first release
    context: ReleaseContext
    preview: bool = False  # a preview releases nothing and records nothing

    @classmethod
    def for_lab(cls, lab: LabDir, *, run_id: int | str, round_id: str, preview: bool = False) -> Releaser:
        """The lab's policy and ledger, both checked now (before any long work); a preview never creates a ledger."""
        policy = PrivacyPolicy.load(lab.root)
        ledger = open_lab_ledger(lab.root) if preview else Ledger.for_lab(lab.root)
        context = ReleaseContext(lab=lab.name, coordinator=lab.superlink, run_id=str(run_id), round_id=round_id)
        return cls(policy, ledger, context, preview=preview)

    def release_mapping(
        self, result: Any, obs: pd.DataFrame, timings: Mapping[str, float], *, labelled: LabelledCells | None = None
    ) -> tuple[MapRelease, LabelCounts, MapReply]:
        """Release a mapping result under the policy: what was released, the exact counts, and the lab's reply.

        ``labelled``: the lab's own labels beside its latent, for prototypes of the atlas's missing types.
        """
        counts = self.exact_counts(result, obs)
        if labelled is not None:
            labelled = labelled.kept(self._donor_cap(obs))
        released = self.map_reply(result.adapter, counts, labelled=labelled)
        reply = released.to_reply(self.context.lab, int(result.n_epochs), self.policy.release.composition, timings)
        return released, counts, reply

    def head(self) -> tuple[int, str]:
        """The ledger's newest entry, ``(seq, hash)``: what a mapping reply carries as its anchor."""
        return (0, GENESIS_HASH) if self.ledger is None else self.ledger.head()

    def _release(self, kind: str, make: Callable[[], Release], expected: dp.PrivacySpend) -> tuple[bytes, int]:
        if self.preview or self.ledger is None:
            return make().payload, 0
        payload, entry = self.ledger.release(self.context, kind, make, budget=self.budget, expected_spend=expected)
        return payload, entry.seq

    @property
    def budget(self) -> tuple[float, float]:
        """The policy's total (ε, δ) budget."""
        return self.policy.dp.budget_epsilon, self.policy.dp.budget_delta

    def _donor_cap(self, obs: pd.DataFrame | None) -> np.ndarray | None:
        """Cells kept when the unit is a donor (each donor's cells capped); None when the unit is a cell."""
        donors = self.policy.dp.donors(obs)
        return None if donors is None else dp.bound_donor_contributions(donors, self.policy.dp.max_cells_per_donor)

    def exact_counts(self, result: Any, obs: pd.DataFrame | None) -> LabelCounts:
        """The lab's exact counts, each donor's cells (``obs[dp.donor_key]``) capped when the unit is a donor."""
        keep = self._donor_cap(obs)
        return result.label_counts() if keep is None else result.label_counts(keep)

    def map_reply(self, adapter: Adapter, counts: LabelCounts, *, labelled: LabelledCells | None = None) -> MapRelease:
        """Release the adapter, (plain composition only) the label statistics and new-type prototypes, in one entry.

        Prototypes leave only when the policy's ``prototypes.release`` is on and ``labelled`` is given.
        """
        policy = self.policy
        plain = policy.release.composition == "plain"
        count_spend = dp.count_measurement(policy.dp)[2] if plain and policy.dp.enabled else dp.NO_NOISE
        adapter_spend = dp.adapter_spend(policy.adapters) if policy.adapters.release else dp.NO_NOISE
        if not policy.prototypes.release:
            labelled = None
        known = [] if labelled is None else list(labelled.bundle.label_categories)
        prototype_spend = (
            dp.NO_NOISE
            if labelled is None
            else prototypes.expected_spend(labelled.labels, known, policy.prototypes, policy.dp)
        )
        expected = dp.combined(count_spend, adapter_spend, prototype_spend)

        def make() -> Release:
            out: dict[str, Any] = {"adapter": None, "label_statistics": None, "new_type_prototypes": None}
            spends = {}
            if policy.adapters.release:
                released, spends["adapter"] = noised_adapter(adapter, policy)
                out["adapter"] = base64.b64encode(released.to_bytes()).decode()
            if plain:
                stats, spends["label-statistics"] = _released_statistics(counts, policy)
                out["label_statistics"] = stats.to_dict()
            if labelled is not None:
                contribution, report = prototypes.contribute(
                    labelled.latent, labelled.labels, known, bundle_id=labelled.bundle.bundle_id,
                    policy=policy.prototypes, count_policy=policy.dp,
                )  # fmt: skip
                if contribution is not None:
                    out["new_type_prototypes"] = contribution.to_json()
                    spends["new-type-prototypes"] = report["total_spend"]
            detail = {
                "policy": policy.model_dump(),
                "parts": {name: spend.to_dict() for name, spend in spends.items()},
                "composition": policy.release.composition,
            }
            return Release(json.dumps(out, sort_keys=True).encode(), dp.combined(*spends.values()), detail)

        payload, seq = self._release(MAP_REPLY, make, expected)
        data = json.loads(payload)
        adapter_out = Adapter.from_bytes(base64.b64decode(data["adapter"])) if data["adapter"] else None
        stats = LabelStatistics.from_dict(data["label_statistics"]) if data["label_statistics"] else None
        types = data.get("new_type_prototypes")  # absent in entries written before prototypes
        new_types = NewTypePrototypes.from_json(types) if types else None
        head_seq, head = self.head()
        return MapRelease(adapter_out, stats, seq, head_seq, head, new_types)

    def secure_sum_counts(self, counts: LabelCounts, categories: list[str]) -> tuple[np.ndarray, int]:
        """The (noised) count vector this lab adds to a secure sum, in the coordinator's type order."""
        policy = self.policy
        policy.release.require_secure_sum()
        unknown = [t for t, n in zip(counts.categories, counts.n_cells, strict=True) if n and t not in categories]
        if unknown:
            msg = f"the coordinator's type list lacks types this lab predicted ({len(unknown)})"
            raise PrivacyError(msg, hint="the secure sum must cover every type; nothing was sent")
        index = {t: i for i, t in enumerate(counts.categories)}
        ordered = LabelCounts(
            tuple(categories),
            np.array([counts.n_cells[index[t]] if t in index else 0 for t in categories], dtype=np.int64),
            np.array([counts.n_low_confidence[index[t]] if t in index else 0 for t in categories], dtype=np.int64),
            None,
        )
        expected = dp.count_measurement(policy.dp)[2] if policy.dp.enabled else dp.NO_NOISE

        def make() -> Release:
            noisy, spend = dp.release_counts(ordered.as_vector(), policy.dp)
            payload = {"categories": list(categories), "vector": [int(v) for v in noisy]}
            detail = {"policy": policy.model_dump(), "parts": {"secure-sum-counts": spend.to_dict()}}
            return Release(json.dumps(payload, sort_keys=True).encode(), spend, detail)

        payload, seq = self._release(SECURE_SUM_COUNTS, make, expected)
        return np.asarray(json.loads(payload)["vector"], dtype=np.int64), seq


def write_exact_counts(out_dir: Path, round_id: str, counts: LabelCounts) -> None:
    """Keep the exact counts in the lab's out-dir for the round's secure-sum stage (they never leave)."""
    data = {
        "round_id": round_id,
        "categories": list(counts.categories),
        "n_cells": [int(v) for v in counts.n_cells],
        "n_low_confidence": [int(v) for v in counts.n_low_confidence],
    }
    atomic_write_bytes(Path(out_dir) / COUNTS_FILE_NAME, json.dumps(data, indent=2).encode())


def read_exact_counts(out_dir: Path, round_id: str) -> LabelCounts:
    """The counts :func:`write_exact_counts` kept for ``round_id``."""
    path = Path(out_dir) / COUNTS_FILE_NAME
    if not path.is_file():
        msg = f"no label counts for round {round_id}: this lab did not map in it"
        raise PrivacyError(msg, hint="a secure sum follows a mapping round; nothing was sent")
    data = json.loads(path.read_text())
    if data["round_id"] != round_id:
        msg = f"the kept label counts are for round {data['round_id']}, not {round_id}"
        raise PrivacyError(msg, hint="a secure sum follows a mapping round; nothing was sent")
    return LabelCounts(
        tuple(data["categories"]),
        np.asarray(data["n_cells"], dtype=np.int64),
        np.asarray(data["n_low_confidence"], dtype=np.int64),
        None,
    )


def _released_statistics(counts: LabelCounts, policy: PrivacyPolicy) -> tuple[LabelStatistics, dp.PrivacySpend]:
    k = policy.release.min_count
    if not policy.dp.enabled:
        return suppress(counts, min_count=k), dp.NO_NOISE
    noisy, spend = dp.release_counts(counts.as_vector(), policy.dp)
    # under DP only the noised counts leave: mean confidence would need a budget of its own
    noised = LabelCounts.from_vector(counts.categories, noisy)
    return suppress(noised, min_count=k, privacy=spend.to_dict(), secondary=False), spend


def noised_adapter(adapter: Adapter, policy: PrivacyPolicy) -> tuple[Adapter, dp.PrivacySpend]:
    """The adapter clipped and noised as the policy says (unchanged when ``adapters.clip_norm`` is 0), and its cost."""
    if policy.adapters.clip_norm <= 0:
        return adapter, dp.NO_NOISE
    arrays, meta = adapter.to_arrays()
    names = sorted(arrays)
    flat = np.concatenate([arrays[n].ravel() for n in names])
    released, spend = dp.release_adapter(flat, policy.adapters)
    out, offset = {}, 0
    for name in names:
        size = arrays[name].size
        out[name] = released[offset : offset + size].reshape(arrays[name].shape).astype(arrays[name].dtype)
        offset += size
    return Adapter.from_arrays(out, meta), spend

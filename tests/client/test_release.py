"""Every policy mode makes a reply that passes the egress allow-list, records one ledger entry, and
releases only what the mode allows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedarches.client.ledger import Ledger, ReleaseContext
from fedarches.client.release import Releaser, read_exact_counts, write_exact_counts
from fedarches.shared import protocol
from fedarches.shared.adapters import Adapter, TensorSlice
from fedarches.shared.errors import BudgetExceededError, ConfigError, PrivacyError
from fedarches.shared.labels import LabelCounts
from fedarches.shared.policy import PrivacyPolicy

TYPES = ["T", "B", "NK", "Unknown"]


@pytest.fixture
def adapter() -> Adapter:
    rng = np.random.default_rng(0)
    tensors = {f"layer{i}.weight": TensorSlice(rng.normal(size=(128, 1)).astype(np.float32), 1, 3) for i in range(5)}
    return Adapter("0123456789abcdef", ("lab_a",), tensors)


@pytest.fixture
def counts() -> LabelCounts:
    predicted = ["T"] * 120 + ["B"] * 40 + ["NK"] * 5
    confidence = np.r_[np.full(120, 0.9), np.full(40, 0.4), np.full(5, 0.8)]
    return LabelCounts.from_cells(predicted, confidence, confidence < 0.5, TYPES)


def releaser(tmp_path: Path, policy: str) -> Releaser:
    return Releaser(
        PrivacyPolicy.from_toml(policy), Ledger(tmp_path / "ledger.sqlite"), ReleaseContext("lab_a", "c:1", "9", "r1")
    )


MODES = {
    "default (secure sum, DP)": "",
    "plain, DP laplace": '[release]\ncomposition = "plain"\n',
    "plain, DP off": '[release]\ncomposition = "plain"\n[dp]\nenabled = false\n',
    "plain, gaussian, donor-free": '[release]\ncomposition = "plain"\n[dp]\nmechanism = "gaussian"\ndelta = 1e-6\n',
    "none, adapter noised": '[release]\ncomposition = "none"\n[adapters]\nclip_norm = 1.0\nnoise_multiplier = 2.0\n',
    "nothing but name": '[release]\ncomposition = "none"\n[adapters]\nrelease = false\n',
}


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_passes_egress_and_is_recorded(tmp_path: Path, adapter: Adapter, counts: LabelCounts, mode) -> None:
    rel = releaser(tmp_path, MODES[mode])
    released = rel.map_reply(adapter, counts)
    content = released.to_reply("lab_a", 10, rel.policy.release.composition, {"total_s": 1.0}).to_content()
    protocol.check_egress(protocol.MAP, content, max_array_bytes=1_048_576)
    (entry,) = rel.ledger.entries()
    assert entry.kind == "map-reply" and entry.sha256
    policy = rel.policy
    assert (protocol.LABEL_STATS in content.config_records) == (policy.release.composition == "plain")
    assert (protocol.ADAPTER in content.array_records) == policy.adapters.release
    if policy.release.composition == "plain":
        stats = released.label_statistics
        assert stats is not None
        by_type = {t.cell_type: t for t in stats.types}
        released_counts = [v for t in stats.types for v in (t.n_cells, t.n_low_confidence) if v is not None]
        assert all(v >= policy.release.min_count for v in released_counts)  # noised or not, none below k
        if policy.dp.enabled:
            assert stats.privacy is not None and all(t.mean_confidence is None for t in stats.types)
            assert entry.epsilon == pytest.approx(policy.dp.epsilon)
        else:
            assert by_type["T"].n_cells == 120 and by_type["NK"].n_cells is None and entry.epsilon == 0
            assert '"n_cells": 5' not in content.config_records[protocol.LABEL_STATS]["json"]
    if policy.adapters.noise_multiplier > 0:
        assert released.adapter is not None
        sent = np.concatenate([t.values.ravel() for t in released.adapter.tensors.values()])
        assert np.linalg.norm(sent) > 1.0  # noised well beyond the clip norm 1.0
        assert entry.epsilon > 0 and json.loads(entry.detail)["parts"]["adapter"]["unit"] == "dataset"


def test_secure_sum_vector_follows_the_coordinators_order(tmp_path: Path, counts: LabelCounts) -> None:
    rel = releaser(tmp_path, "[dp]\nenabled = false\n")
    vector, _ = rel.secure_sum_counts(counts, ["NK", "T", "B", "Unknown", "DC"])
    np.testing.assert_array_equal(vector, [5, 120, 40, 0, 0, 0, 0, 40, 0, 0])
    with pytest.raises(PrivacyError, match="lacks types"):
        rel.secure_sum_counts(counts, ["B", "NK"])


def test_secure_sum_is_refused_when_the_policy_says_plain(tmp_path: Path, counts: LabelCounts) -> None:
    with pytest.raises(PrivacyError, match="not in a secure sum"):
        releaser(tmp_path, '[release]\ncomposition = "plain"\n').secure_sum_counts(counts, TYPES)


def test_budget_exhaustion_refuses_the_reply_and_records_nothing(tmp_path: Path, adapter, counts) -> None:
    policy = '[release]\ncomposition = "plain"\n[dp]\nepsilon = 2.0\nbudget_epsilon = 3.0\n'
    first = releaser(tmp_path, policy)
    first.map_reply(adapter, counts)
    second = Releaser(first.policy, first.ledger, ReleaseContext("lab_a", "c:1", "9", "r2"))
    with pytest.raises(BudgetExceededError):
        second.map_reply(adapter, counts)
    assert len(first.ledger.entries()) == 1


def test_exact_counts_are_kept_per_round(tmp_path: Path, counts: LabelCounts) -> None:
    write_exact_counts(tmp_path, "r1", counts)
    back = read_exact_counts(tmp_path, "r1")
    np.testing.assert_array_equal(back.as_vector(), counts.as_vector())
    with pytest.raises(PrivacyError, match="not r2"):
        read_exact_counts(tmp_path, "r2")


def test_donor_unit_caps_each_donors_cells(tmp_path: Path) -> None:
    from fedarches.client.mapping import MappingResult

    labels = np.array(["T"] * 60 + ["B"] * 30, dtype=object)
    result = MappingResult(
        adapter=None,  # type: ignore[arg-type]
        label_statistics=None,  # type: ignore[arg-type]
        latent_key="X_scANVI",
        gene_overlap={},
        n_epochs=1,
        cell_labels=labels,
        cell_confidence=np.ones(90),
        cell_low_confidence=np.zeros(90, bool),
        label_categories=("T", "B"),
    )
    donors = pd.DataFrame({"donor": ["d1"] * 60 + ["d2"] * 20 + ["d3"] * 10})
    rel = releaser(tmp_path, '[dp]\nunit = "donor"\ndonor_key = "donor"\nmax_cells_per_donor = 15\n')
    counts = rel.exact_counts(result, donors)
    assert counts.n_cells.tolist() == [15, 25]  # d1 capped at 15 (all T); d2 15 + d3 10 (all B)
    with pytest.raises(ConfigError, match="no obs column 'donor'"):
        rel.exact_counts(result, None)

from __future__ import annotations

import json

import numpy as np
import pytest

from fedarches.shared.labels import LabelCounts, LabelStatistics, compute_label_statistics, suppress


def test_small_counts_are_suppressed_never_stored() -> None:
    predicted = ["T"] * 20 + ["B"] * 10 + ["NK"] * 1
    confidence = np.r_[np.full(20, 0.9), np.full(10, 0.4), [0.7]]
    low = confidence < 0.5
    stats = compute_label_statistics(predicted, confidence, low, ["T", "B", "NK", "DC"], min_count=11)
    by_type = {t.cell_type: t for t in stats.types}
    assert by_type["T"].n_cells == 20
    assert by_type["T"].mean_confidence == pytest.approx(0.9)
    assert by_type["T"].n_low_confidence is None  # 0 < k
    for name in ("B", "NK", "DC"):
        assert by_type[name].n_cells is None
        assert by_type[name].mean_confidence is None
        assert by_type[name].suppressed == ("n_cells", "mean_confidence", "n_low_confidence")
    payload = json.dumps(stats.to_dict())
    assert '"n_cells": 10' not in payload and '"n_cells": 1,' not in payload
    assert LabelStatistics.from_dict(json.loads(payload)) == stats


def test_counts_at_k_are_released() -> None:
    stats = compute_label_statistics(["T"] * 11, np.full(11, 0.2), np.ones(11, bool), ["T"], min_count=11)
    assert stats.types[0].n_cells == 11
    assert stats.types[0].n_low_confidence == 11


def test_k_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        compute_label_statistics(["T"], np.ones(1), np.zeros(1, bool), ["T"], min_count=0)


def test_secondary_suppression_hides_a_count_derivable_from_the_total() -> None:
    # T=30, B=4: with the total (34) known, B = 34 - 30 would be derivable, so T is hidden too
    stats = compute_label_statistics(["T"] * 30 + ["B"] * 4, np.ones(34), np.zeros(34, bool), ["T", "B"])
    assert [t.n_cells for t in stats.types] == [None, None]
    # a third small type brings the hidden sum to k: the large count can be released
    stats = compute_label_statistics(
        ["T"] * 30 + ["B"] * 4 + ["NK"] * 7, np.ones(41), np.zeros(41, bool), ["T", "B", "NK"]
    )
    assert [t.n_cells for t in stats.types] == [30, None, None]


def test_complement_of_low_confidence_is_protected() -> None:
    # 40 cells, 35 low-confidence: releasing 35 would reveal 5 confident cells
    confidence = np.r_[np.full(35, 0.2), np.full(5, 0.9)]
    stats = compute_label_statistics(
        ["T"] * 40 + ["B"] * 20,
        np.r_[confidence, np.full(20, 0.9)],
        np.r_[confidence < 0.5, np.zeros(20, bool)],
        ["T", "B"],
    )
    by_type = {t.cell_type: t for t in stats.types}
    assert by_type["T"].n_cells == 40 and by_type["T"].n_low_confidence is None


def test_noised_counts_are_clamped_and_suppressed() -> None:
    counts = LabelCounts.from_vector(["T", "B", "NK"], np.array([50, -2, 15, 12, 0, 3]))
    stats = suppress(counts, min_count=11, privacy={"mechanism": "laplace"})
    assert [t.n_cells for t in stats.types] == [50, None, 15]
    assert all(t.mean_confidence is None for t in stats.types)  # not released under DP
    assert stats.privacy == {"mechanism": "laplace"}
    assert LabelStatistics.from_dict(stats.to_dict()) == stats

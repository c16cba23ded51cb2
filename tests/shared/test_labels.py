from __future__ import annotations

import json

import numpy as np
import pytest

from fedarches.shared.labels import LabelStatistics, compute_label_statistics


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

"""Metrics of the benchmarks on small arrays whose answers follow by hand."""

from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from fedarches.bench import metrics
from fedarches.bench.report_suite import md_table, sweep_rows
from fedarches.bench.unknown_research import p_values, robust_threshold


def _lab(truth: list[str], **obs: list) -> ad.AnnData:
    return ad.AnnData(obs=pd.DataFrame({"cell_type": truth, **obs}, index=[f"c{i}" for i in range(len(truth))]))


def test_unknown_rates_split_known_and_unseen_cells() -> None:
    truth = np.array(["A", "A", "B", "X"])
    unknown = np.array([True, False, False, True])
    # known cells A, A, B: one of three called Unknown; the one unseen cell (X) called Unknown
    assert metrics.unknown_rates(truth, unknown, ["A", "B"]) == {"unseen_unknown": 1.0, "known_unknown": 1 / 3}
    assert metrics.unknown_rates(truth[:3], unknown[:3], ("A", "B"))["unseen_unknown"] is None


def test_cells_of_calls_low_confidence_unknown_unless_told() -> None:
    lab = _lab(["A", "B", "A"])
    truth, predicted, confidence, unknown = metrics.cells_of(lab, ["A", "A", "B"], [0.9, 0.5, 0.49])
    assert truth.tolist() == ["A", "B", "A"]
    assert predicted.tolist() == ["A", "A", "B"]
    assert confidence.dtype == np.float64
    assert unknown.tolist() == [False, False, True]  # below 0.5 only
    *_, given = metrics.cells_of(lab, ["A", "A", "B"], [0.9, 0.5, 0.49], np.array([1, 0, 0]))
    assert given.tolist() == [True, False, False]


def test_fedarches_calls_read_the_annotated_columns() -> None:
    lab = _lab(["A", "B"], predicted_cell_type=["A", "A"], prediction_confidence=[0.9, 0.2], is_unknown=[False, False])
    *_, unknown = metrics.fedarches_calls(lab)
    assert unknown.tolist() == [False, False]  # its own call, not confidence < 0.5
    no_summary = _lab(["A", "B"], predicted_cell_type=["A", "A"], prediction_confidence=[0.9, 0.2])
    *_, fallback = metrics.fedarches_calls(no_summary)  # a bundle without a reference summary: confidence < 0.5
    assert fallback.tolist() == [False, True]


def test_scores_pool_the_labs() -> None:
    cells = {
        "lab1": (np.array(["A", "B"]), np.array(["A", "A"]), np.array([0.9, 0.4]), np.array([False, True])),
        "lab2": (np.array(["B", "X"]), np.array(["B", "A"]), np.array([0.8, 0.3]), np.array([False, True])),
    }
    out = metrics.scores(cells, ["A", "B"])
    assert out["labs"]["lab1"]["accuracy"] == 0.5
    assert out["labs"]["lab2"]["accuracy"] == 1.0  # X is unseen: not in accuracy
    assert out["overall"]["accuracy"] == pytest.approx(2 / 3)  # A->A, B->A, B->B
    assert out["overall"]["known_unknown"] == pytest.approx(1 / 3)
    assert out["overall"]["unseen_unknown"] == 1.0
    assert out["labs"]["lab1"]["unseen_unknown"] is None


def test_known_type_scores() -> None:
    class Bundle:
        label_categories = ("A", "B")

    obs = pd.DataFrame(
        {
            "predicted_cell_type": ["A", "B", "B", "A"],
            "prediction_confidence": [0.9, 0.8, 0.7, 0.6],
            "is_unknown": [False, True, False, True],
        }
    )
    out = metrics.known_type_scores(Bundle(), np.array(["A", "B", "A", "(no gate)"]), obs)
    assert out["n_known"] == 3
    assert out["accuracy"] == pytest.approx(2 / 3)
    assert out["unknown_known"] == pytest.approx(1 / 3)
    # F1: A has precision 1, recall 1/2 -> 2/3; B has precision 1/2, recall 1 -> 2/3
    assert out["f1_per_type"] == pytest.approx({"A": 2 / 3, "B": 2 / 3})


def test_clr_by_hand() -> None:
    # row [1, 1]: mean log1p = log 2, so each value becomes log1p(1 / 2) = log 1.5
    # row [0, 3]: log1p = [0, log 4], mean log 2, so [log1p(0), log1p(3 / 2)] = [0, log 2.5]
    out = metrics.clr(np.array([[1.0, 1.0], [0.0, 3.0]]))
    assert out == pytest.approx(np.array([[math.log(1.5), math.log(1.5)], [0.0, math.log(2.5)]]))


def test_protein_correlations() -> None:
    e1 = math.e - 1  # log1p(e - 1) = 1
    measured = pd.DataFrame({"P": [0.0, e1, 3.0], "Q": [e1, 0.0, 1.0], "R": [1.0, 2.0, 3.0]})
    imputed = pd.DataFrame({"P": [0.0, e1, 3.0], "Q": [0.0, e1, 0.5], "R": [0.0, 0.0, 0.0]})
    r = metrics.protein_correlations(imputed, measured, "log1p")
    assert r["P"] == pytest.approx(1.0)  # identical values
    assert r["R"] is None  # a constant imputed column has no correlation
    # Q: log1p values [0, 1, log 1.5] against [1, 0, log 2]: not perfectly anti-correlated, but negative
    assert -1.0 < r["Q"] < 0.0


def test_tv_distance() -> None:
    # [1/2, 1/2] against [1/4, 3/4]: half of 1/4 + 1/4
    assert metrics.tv_distance(np.array([1.0, 1.0]), np.array([1, 3])) == pytest.approx(0.25)
    assert metrics.tv_distance(np.array([0.0, 0.0]), np.array([1, 3])) == pytest.approx(0.25)  # uniform
    assert metrics.tv_distance(np.array([2.0, 6.0]), np.array([1, 3])) == 0.0


def test_conformal_p_values_and_robust_threshold() -> None:
    # (1 + #{calibration >= score}) / (n + 1)
    assert p_values(np.array([0.5, 2.0, 10.0]), np.array([1.0, 2.0, 3.0])).tolist() == [1.0, 0.75, 0.25]
    # median 3, absolute deviations [2, 1, 0, 1, 97] -> MAD 1
    assert robust_threshold(np.array([1.0, 2.0, 3.0, 4.0, 100.0]), 3.0) == pytest.approx(3 + 3 * 1.4826)


def test_md_table() -> None:
    assert md_table(["a", "b"], [[1.23456, None], ["x", 2]]) == "| a | b |\n|---|---|\n| 1.235 | - |\n| x | 2 |"


def _run(accuracy: float, known_unknown: float, train_s: float, epochs: int) -> dict:
    return {
        "overall": {"accuracy": accuracy, "known_unknown": known_unknown},
        "runs": {"lab": {"timings": {"train_s": train_s}, "n_epochs": epochs}},
    }


def test_sweep_pick_is_the_fastest_eligible_setting() -> None:
    from fedarches.bench.suite import BASELINE_SETTING

    sweep = {
        BASELINE_SETTING: _run(0.90, 0.01, 100.0, 100),
        "fast but inaccurate": _run(0.80, 0.01, 10.0, 10),  # 10 points below the tutorial setting
        "fast, too many Unknown": _run(0.91, 0.20, 10.0, 10),  # 20 % of known cells called Unknown
        "fast": _run(0.899, 0.02, 20.0, 20),  # 0.1 points below: eligible
        "as fast, more accurate": _run(0.905, 0.02, 21.0, 21),  # within 10 % of the fastest eligible time
    }
    columns, table, pick = sweep_rows({"depth": sweep})
    assert columns == ["depth"]
    assert table["fast"]["depths"]["depth"]["gap"] == pytest.approx(-0.1)
    assert pick == "as fast, more accurate"

"""The consortium report shows what labs sent: released counts, 'suppressed', statuses and reasons."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedarches.server.report import write_report
from fedarches.server.round import LabOutcome, RoundResult, RoundSettings
from fedarches.server.secure_sum import SecureSumResult
from fedarches.shared import crypto
from fedarches.shared.bundle import ReferenceBundle, write_bundle
from fedarches.shared.labels import compute_label_statistics


def test_report_marks_suppressed_counts_and_dropped_labs(tmp_path: Path, toy_contents, keys) -> None:
    bundle = ReferenceBundle.open(write_bundle(tmp_path / "b", toy_contents, crypto.load_private_key(keys[0])), keys[1])
    predicted = ["T"] * 30 + ["B"] * 4 + ["NK"] * 7  # B and NK hidden: together 11 >= k, so T stays released
    confidence = np.r_[np.full(30, 0.9), np.full(4, 0.4), np.full(7, 0.8)]
    stats = compute_label_statistics(predicted, confidence, confidence < 0.5, ["T", "B", "NK"])
    labs = [
        LabOutcome("lab_a", 1, status="accepted", label_statistics=stats, bytes_to_lab=500, bytes_from_lab=7000),
        LabOutcome("lab_b", 2, status="dropped", reason="SuperNode went offline during the round"),
        LabOutcome("lab_c", 3, status="rejected", reason="adapter tensor 'x' holds non-finite or non-float values"),
        LabOutcome("lab_d", 4, status="accepted", composition="secure-sum", in_secure_sum=True),
        LabOutcome("lab_e", 5, status="accepted", composition="secure-sum", in_secure_sum=True),
    ]
    settings = RoundSettings(tmp_path, bundle.path, tmp_path / "round", "r1", min_labs=1)
    result = RoundResult(settings, bundle, labs, started="2026-11-23T00:00:00+00:00", status="completed", message="ok")
    result.consortium_categories = ["T", "B", "Unknown"]
    result.consortium_counts = SecureSumResult(np.array([40, 12, 3, 0, 12, 0]), contributors=[4, 5])
    paths = write_report(result, tmp_path / "round")
    report = json.loads(paths["json"].read_text())
    assert report["composition"] == {"lab_a": {"T": 30, "B": "suppressed", "NK": "suppressed"}}
    consortium = report["consortium"]
    assert consortium["labs"] == ["lab_d", "lab_e"]
    # the sum is suppressed too: Unknown (3) is below k, so the smallest released total (B, 12) goes with it
    assert consortium["cells"] == {"T": 40, "B": "suppressed", "Unknown": "suppressed"}
    assert consortium["low_confidence"]["B"] == "suppressed"
    assert report["confidence"]["lab_a"] == {"released_cells": 30, "mean_confidence": 0.9, "low_confidence_share": None}
    assert report["dropped"] == ["lab_b"] and report["rejected"] == ["lab_c"]
    html = paths["html"].read_text()
    for text in (
        "lab_a",
        "went offline",
        "non-finite",
        "suppressed",
        "data:image/png;base64,",
        "SecAgg+",
        "secure sum",
    ):
        assert text in html
    assert paths["plot"].stat().st_size > 5_000

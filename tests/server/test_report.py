"""The consortium report shows what labs sent: released counts, 'suppressed', statuses and reasons."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedarches.server.report import ledger_anchor, plot_composition, render_html, report_dict, write_report
from fedarches.server.round import LabOutcome, RoundResult
from fedarches.server.secure_sum import SecureSumResult
from fedarches.server.settings import RoundSettings
from fedarches.shared import crypto
from fedarches.shared.bundle import ReferenceBundle, write_bundle
from fedarches.shared.labels import LabelStatistics, compute_label_statistics
from fedarches.shared.protocol import Composition, LabInfo, MapReply


def reply(lab: str, composition: str, stats: LabelStatistics | None = None) -> MapReply:
    """An accepted reply of ``lab``: no adapter, statistics only when composition is plain."""
    return MapReply(LabInfo(lab, "0.1.0", 3, Composition(composition)), {"total_s": 2.0}, None, stats)


def test_report_marks_suppressed_counts_and_dropped_labs(tmp_path: Path, toy_contents, keys) -> None:
    bundle = ReferenceBundle.open(write_bundle(tmp_path / "b", toy_contents, crypto.load_private_key(keys[0])), keys[1])
    predicted = ["T"] * 30 + ["B"] * 4 + ["NK"] * 7  # B and NK hidden: together 11 >= k, so T stays released
    confidence = np.r_[np.full(30, 0.9), np.full(4, 0.4), np.full(7, 0.8)]
    stats = compute_label_statistics(predicted, confidence, confidence < 0.5, ["T", "B", "NK"])
    labs = [
        LabOutcome("lab_a", 1, "accepted", reply=reply("lab_a", "plain", stats), bytes_to_lab=500, bytes_from_lab=7000),
        LabOutcome("lab_b", 2, status="dropped", reason="SuperNode went offline during the round"),
        LabOutcome("lab_c", 3, status="rejected", reason="adapter tensor 'x' holds non-finite or non-float values"),
        LabOutcome("lab_d", 4, status="accepted", reply=reply("lab_d", "secure-sum"), in_secure_sum=True),
        LabOutcome("lab_e", 5, status="accepted", reply=reply("lab_e", "secure-sum"), in_secure_sum=True),
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


def test_report_shows_each_labs_ledger_anchor(tmp_path: Path, toy_contents, keys) -> None:
    """Each lab's newest ledger entry (seq and full hash) is shown per lab; a lab whose reply carried none is not."""
    bundle = ReferenceBundle.open(write_bundle(tmp_path / "b", toy_contents, crypto.load_private_key(keys[0])), keys[1])
    labs = [
        LabOutcome("lab_a", 1, status="accepted", reply=reply("lab_a", "secure-sum")),
        LabOutcome("lab_b", 2, status="dropped", reason="SuperNode went offline during the round"),
        LabOutcome("lab_<c>", 3, status="accepted", reply=reply("lab_<c>", "none")),
    ]
    settings = RoundSettings(tmp_path, bundle.path, tmp_path / "round", "r7", min_labs=1)
    result = RoundResult(settings, bundle, labs, started="2026-11-23T00:00:00+00:00", status="completed", message="ok")
    data = report_dict(result)
    heads = {"lab_a": (12, "ab" * 32), "lab_<c>": (3, "0f" * 32)}  # hand-built, as round.py fills them from replies
    for lab in data["labs"]:
        seq, head = heads.get(lab["name"], (None, ""))
        lab.update(ledger_seq=seq, ledger_head=head)
    plot = tmp_path / "composition.png"
    plot_composition(data, plot)
    page = render_html(data, plot)
    anchors = page.split("<h2>Ledger anchors</h2>", 1)[1].split("<h2>", 1)[0]
    assert "<td>lab_a</td><td class=n>12</td><td><code>" + "ab" * 32 + "</code>" in anchors
    assert "<td>lab_&lt;c&gt;</td><td class=n>3</td>" in anchors and "lab_<c>" not in page  # escaped
    assert "lab_b" not in anchors  # dropped: its reply never came, so no anchor
    assert "fedarches-client ledger --lab-dir LAB_DIR --report report.json" in anchors
    assert "<th>ledger entry</th>" in page
    assert [ledger_anchor(lab) for lab in data["labs"]] == [(12, "ab" * 32), None, (3, "0f" * 32)]
    for lab in data["labs"]:
        lab.update(ledger_seq=None, ledger_head="")
    assert "No lab's reply named a ledger entry" in render_html(data, plot)
    # a report from before the anchor existed (no keys at all) still renders
    for lab in data["labs"]:
        del lab["ledger_seq"], lab["ledger_head"]
    assert "No lab's reply named a ledger entry" in render_html(data, plot)

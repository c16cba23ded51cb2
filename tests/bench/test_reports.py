"""Report generation on stored results: the privacy documents' JSON, and a real small `make bench` results file.

``data/bench_results_pbmc_quick.json`` was made by ``make_results_fixture.py`` beside this file (its
``provenance`` entry says how): one quick PBMC split of the benchmark, really run on ``data/demo``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fedarches.bench import report_backends, report_privacy, report_suite

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
FIXTURE = Path(__file__).with_name("data") / "bench_results_pbmc_quick.json"
SPLIT = ("held_out_type", "B held out, lab 5p")


@pytest.fixture
def results() -> dict:
    return json.loads(FIXTURE.read_text())


# --- docs/privacy.md ------------------------------------------------------------------------------
def test_privacy_doc_is_what_the_stored_results_render() -> None:
    """docs/privacy.md is generated: rendering the stored JSON beside it gives it back exactly."""
    assert report_privacy.render(DOCS) == (DOCS / "privacy.md").read_text()


def test_privacy_doc_numbers_come_from_the_json(tmp_path: Path) -> None:
    for name in ("privacy_utility.json", "privacy_membership.json", "privacy_membership_pbmc.json"):
        shutil.copy(DOCS / name, tmp_path / name)
    text = report_privacy.write_doc(tmp_path).read_text()
    utility = json.loads((DOCS / "privacy_utility.json").read_text())
    default = next(r for r in utility["rows"] if r["mode"] == "secure-sum" and r["epsilon"] == 1.0)
    assert f"{default['tv_mean']:.4f} ({default['count_mae']:.1f})" in text
    for stem in ("privacy_membership", "privacy_membership_pbmc"):
        data = json.loads((DOCS / f"{stem}.json").read_text())
        goal = data["default_policy_goal"]
        assert f"strongest attack AUC {goal['strongest_attack_auc']:.3f}" in text
        assert f"Run: `{data['command']}`" in text
        assert f"![attack AUC against noise]({stem}.png)" in text


def test_privacy_doc_without_results(tmp_path: Path) -> None:
    assert report_privacy.render(tmp_path).startswith("# Privacy evaluation")


# --- docs/benchmarks.md ---------------------------------------------------------------------------
def test_fixture_is_a_real_run(results: dict) -> None:
    provenance = results["provenance"]
    assert provenance["made_by"].startswith("tests/bench/make_results_fixture.py")
    assert results["quick"] is True
    entry = results["pbmc"][SPLIT[0]][SPLIT[1]]
    assert set(entry) >= {"fedarches", "scvi_surgery", "de_novo", "baseline"}
    assert entry["n_cells"] == {"reference": 200, "lab_5p": 80}
    assert "B" not in entry["reference_types"]


def test_pbmc_document(results: dict) -> None:
    text = report_suite.render(results, "pbmc")
    entry = results["pbmc"][SPLIT[0]][SPLIT[1]]
    assert text.startswith("# Benchmarks: PBMC")
    assert "quick smoke run: partial, not a measurement" in text
    assert "### Leave one chemistry out, one type held out of the reference (`data/demo/pbmc_3chem.h5ad`)" in text
    assert f"[{report_suite.RESULTS_NAME}]({report_suite.RESULTS_NAME})" in text
    fed, central = entry["fedarches"]["overall"], entry["scvi_surgery"]["overall"]
    row = next(line for line in text.splitlines() if line.startswith(f"| {SPLIT[1]} |"))
    assert f"{fed['accuracy']:.3f} / {fed['macro_f1']:.3f}" in row
    assert f"{central['accuracy']:.3f} / {central['macro_f1']:.3f}" in row
    header = next(line for line in text.splitlines() if line.startswith("| split | fedarches mapping |"))
    assert "CellTypist" not in header  # not run for the fixture: its columns are left out


def test_pbmc_targets_from_the_fixture(results: dict) -> None:
    rows, notes = report_suite.pbmc_targets(results["pbmc"])
    entry = results["pbmc"][SPLIT[0]][SPLIT[1]]
    by_target = {row[0]: row for row in rows}
    known = by_target["known-type cells called Unknown"]
    assert known[2] == f"{report_suite._pct(entry['fedarches']['overall']['known_unknown'])} ({': '.join(SPLIT)})"
    gap = 100 * (entry["fedarches"]["overall"]["accuracy"] - entry["scvi_surgery"]["overall"]["accuracy"])
    assert by_target["accuracy, fedarches - scvi-tools surgery (central)"][2].startswith(f"{gap:+.1f}")
    assert all(row[3] in ("met", "**missed**") for row in rows)
    assert len(notes) == sum(row[3] == "**missed**" for row in rows)


def test_write_doc_keeps_the_results_beside_the_document(results: dict, tmp_path: Path, capsys) -> None:
    written = report_suite.write_doc(results, tmp_path)
    assert {p.name for p in written} == {report_suite.RESULTS_NAME, "benchmarks.md", "benchmarks_pbmc.png"}
    assert json.loads((tmp_path / report_suite.RESULTS_NAME).read_text()) == results
    assert (tmp_path / "benchmarks.md").read_text() == report_suite.render(results, "pbmc")
    assert (tmp_path / "benchmarks_pbmc.png").read_bytes().startswith(b"\x89PNG")
    assert not (tmp_path / "benchmarks_cellbench.md").exists()  # no CellBench results in this run
    report_suite.print_tables(results)
    assert "PBMC targets (fedarches mapping)" in capsys.readouterr().out


def test_regenerate_puts_a_quick_run_beside_its_results(results: dict, tmp_path: Path) -> None:
    source = tmp_path / "results.json"
    source.write_text(json.dumps(results))
    report_suite.regenerate(source)
    assert (tmp_path / "docs" / "benchmarks.md").is_file()
    assert json.loads((tmp_path / "docs" / report_suite.RESULTS_NAME).read_text()) == results


# --- docs/benchmarks_backends.md: no stored results; the path where nothing ran --------------------
def test_backends_document_when_nothing_ran(tmp_path: Path) -> None:
    results = {
        "started": "-",
        "total_s": 0.0,
        "threads": 1,
        "quick": True,
        "backends": {"scanvi": {"skipped": "not registered"}, "totalvi": {"failed": "exit 1\ntraceback"}},
    }
    report_backends.write_doc(results, tmp_path / "backends.md")
    text = (tmp_path / "backends.md").read_text()
    assert "- **scanvi**: not registered" in text
    assert "- **totalvi**: FAILED: exit 1" in text
    assert "not run." in text
    assert "scanvi: not registered" in report_backends.tables(results)

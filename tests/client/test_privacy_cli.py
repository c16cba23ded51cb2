"""`fedarches-client policy show|init` and `fedarches-client ledger`, as a lab would run them."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fedarches.client.cli import app
from fedarches.client.ledger import Ledger, Release, ReleaseContext
from fedarches.shared.dp import PrivacySpend
from fedarches.shared.policy import PrivacyPolicy

runner = CliRunner()


def test_policy_init_then_show_marks_what_the_lab_changed(tmp_path: Path) -> None:
    result = runner.invoke(app, ["policy", "init", "--lab-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert PrivacyPolicy.load(tmp_path) == PrivacyPolicy()
    again = runner.invoke(app, ["policy", "init", "--lab-dir", str(tmp_path)])
    assert again.exit_code == 13 and "exists" in again.output  # never overwrites the lab's policy
    path = tmp_path / "policy.toml"
    path.write_text(path.read_text().replace("epsilon = 1.0", "epsilon = 0.5"))
    shown = runner.invoke(app, ["policy", "show", "--lab-dir", str(tmp_path)], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    line = next(row for row in shown.output.splitlines() if "dp.epsilon " in row)
    assert "0.5" in line and "policy.toml" in line
    assert "ε=0.5" in shown.output
    as_json = runner.invoke(app, ["policy", "show", "--lab-dir", str(tmp_path), "--json"])
    assert json.loads(as_json.output)["dp"]["epsilon"] == 0.5


def test_a_bad_policy_is_refused_with_the_key_and_a_hint(tmp_path: Path) -> None:
    (tmp_path / "policy.toml").write_text('[release]\ncomposition = "public"\n')
    result = runner.invoke(app, ["policy", "show", "--lab-dir", str(tmp_path)])
    assert result.exit_code == 13
    assert "release.composition" in result.output and "hint:" in result.output
    assert "Traceback" not in result.output


def test_ledger_lists_releases_and_verifies_the_chain(tmp_path: Path) -> None:
    empty = runner.invoke(app, ["ledger", "--lab-dir", str(tmp_path)])
    assert empty.exit_code == 0 and "no releases yet" in empty.output
    book = Ledger.for_lab(tmp_path)
    spend = PrivacySpend("laplace", 1.0, 0.0, "cell", 2.0, 2.0)
    for round_id in ("r1", "r2"):
        book.release(
            ReleaseContext("lab_a", "127.0.0.1:9092", "42", round_id),
            "secure-sum-counts",
            lambda: Release(b'{"vector": [1, 2]}', spend, {}),
            budget=(10.0, 1e-5),
            expected_spend=spend,
        )
    result = runner.invoke(app, ["ledger", "--lab-dir", str(tmp_path), "--verify"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert result.output.count("secure-sum-counts") == 2
    assert "spent ε=2 δ=0 of the budget ε=10" in result.output and "hash chain intact over 2 entries" in result.output
    entries = json.loads(runner.invoke(app, ["ledger", "--lab-dir", str(tmp_path), "--json"]).output)
    assert [e["round_id"] for e in entries] == ["r1", "r2"] and entries[0]["payload"] == '{"vector": [1, 2]}'


def test_an_undecodable_or_misplaced_policy_is_a_clear_error_not_a_bug(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_bytes('[release]\ncomposition = "none"\n'.encode("utf-16"))
    result = runner.invoke(app, ["policy", "show", "--lab-dir", str(tmp_path)])
    assert result.exit_code == 13, result.output
    assert "is not UTF-8 text (it looks UTF-16)" in result.output and "hint:" in result.output
    assert "unexpected" not in result.output and "Traceback" not in result.output
    path.unlink()
    path.mkdir()  # a directory is not "no policy": the defaults must not silently apply
    shown = runner.invoke(app, ["policy", "show", "--lab-dir", str(tmp_path)])
    assert shown.exit_code == 13 and "is a directory" in shown.output


def test_ledger_that_is_a_directory_is_not_no_releases_yet(tmp_path: Path) -> None:
    (tmp_path / "ledger.sqlite").mkdir()
    result = runner.invoke(app, ["ledger", "--lab-dir", str(tmp_path), "--verify"])
    assert result.exit_code == 33, result.output
    assert "is a directory, not a ledger" in result.output and "no releases yet" not in result.output

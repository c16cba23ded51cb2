"""Federation commands refuse what they cannot do before contacting anyone: one line, a hint, an exit code."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedarches.client.cli import app as client_app
from fedarches.server.cli import app as server_app
from fedarches.shared import crypto
from fedarches.shared._process import free_port
from fedarches.shared.bundle import write_bundle

runner = CliRunner()


@pytest.fixture
def coord_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "coord"
    result = runner.invoke(server_app, ["init", "--dir", str(directory), "--port", str(free_port())])
    assert result.exit_code == 0, result.output
    return directory


def test_init_then_add_lab_while_the_superlink_is_down(coord_dir: Path) -> None:
    result = runner.invoke(server_app, ["add-lab", "lab_a", "--dir", str(coord_dir)])
    assert result.exit_code == 0, result.output
    assert "will be registered when `fedarches-server serve` starts" in result.output
    assert (coord_dir / "exports" / "lab_a" / "supernode.key").is_file()


def test_run_round_refuses_foreign_bundles_and_a_missing_superlink(
    coord_dir: Path, toy_contents, keys, tmp_path
) -> None:
    foreign = write_bundle(tmp_path / "foreign", toy_contents, crypto.load_private_key(keys[0]))
    result = runner.invoke(server_app, ["run-round", "--dir", str(coord_dir), "--bundle", str(foreign)])
    assert result.exit_code == 21 and "signature" in result.output, result.output
    own_key = crypto.load_private_key(coord_dir / "keys" / "bundle-signing.key")
    own = write_bundle(tmp_path / "own", toy_contents, own_key)
    result = runner.invoke(server_app, ["run-round", "--dir", str(coord_dir), "--bundle", str(own)])
    assert result.exit_code == 40 and "fedarches-server serve" in result.output, result.output
    assert "Traceback" not in result.output


def test_run_round_on_a_missing_directory(tmp_path: Path) -> None:
    result = runner.invoke(server_app, ["run-round", "--dir", str(tmp_path / "nowhere"), "--bundle", str(tmp_path)])
    assert result.exit_code == 13 and "fedarches-server init" in result.output


def test_join_without_a_node_key_says_how_to_make_one(coord_dir: Path, tmp_path: Path, demo_dir: Path) -> None:
    pub = tmp_path / "k"
    assert runner.invoke(client_app, ["keygen", "--lab-dir", str(pub)]).exit_code == 0
    runner.invoke(server_app, ["add-lab", "lab_b", "--dir", str(coord_dir), "--public-key", str(pub / "supernode.pub")])
    export = coord_dir / "exports" / "lab_b"
    result = runner.invoke(
        client_app, ["join", "--lab-dir", str(export), "--data", str(demo_dir / "lab_b.h5ad"), "--out", str(tmp_path)]
    )
    assert result.exit_code == 30 and "fedarches-client keygen" in result.output


def test_join_checks_the_data_before_connecting(coord_dir: Path, tmp_path: Path, demo_dir: Path) -> None:
    runner.invoke(server_app, ["add-lab", "lab_c", "--dir", str(coord_dir)])
    export = coord_dir / "exports" / "lab_c"
    args = ["join", "--lab-dir", str(export), "--out", str(tmp_path / "out")]
    result = runner.invoke(client_app, [*args, "--data", str(demo_dir / "lab_c.h5ad"), "--batch-key", "donor"])
    assert result.exit_code == 11 and "obs has no column 'donor'" in result.output
    result = runner.invoke(client_app, [*args, "--data", str(tmp_path / "missing.h5ad")])
    assert result.exit_code == 10 and "does not exist" in result.output
    assert not (tmp_path / "out").exists()

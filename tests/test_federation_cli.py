"""Federation commands refuse what they cannot do before contacting anyone: one line, a hint, an exit code."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedarches.client.cli import app as client_app
from fedarches.server.cli import app as server_app
from fedarches.shared import crypto
from fedarches.shared._process import free_port
from fedarches.shared.bundle import ReferenceBundle, write_bundle

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


def test_join_refuses_an_out_that_would_replace_its_data(coord_dir: Path, tmp_path: Path, demo_dir: Path) -> None:
    runner.invoke(server_app, ["add-lab", "lab_d", "--dir", str(coord_dir)])
    export = coord_dir / "exports" / "lab_d"
    data = tmp_path / "annotated.h5ad"
    data.write_bytes((demo_dir / "lab_a.h5ad").read_bytes())
    for out in (data, tmp_path):  # the data file itself; the directory where annotated.h5ad would replace it
        result = runner.invoke(client_app, ["join", "--lab-dir", str(export), "--data", str(data), "--out", str(out)])
        assert result.exit_code == 14 and "hint:" in result.output, result.output
    assert (tmp_path / "annotated.h5ad").read_bytes() == (demo_dir / "lab_a.h5ad").read_bytes()


@pytest.mark.slow
def test_too_many_batches_are_refused_by_preview_and_before_join_connects(
    coord_dir: Path, tmp_path: Path, demo_dir: Path, demo_bundle, resign
) -> None:
    import anndata as ad
    import numpy as np

    runner.invoke(server_app, ["add-lab", "lab_e", "--dir", str(coord_dir)])
    export = coord_dir / "exports" / "lab_e"
    signed = resign(demo_bundle, tmp_path / "signed", coord_dir / "keys" / "bundle-signing.key")
    lab = ad.read_h5ad(demo_dir / "lab_a.h5ad")
    many = ad.concat([lab] * 20, index_unique="-")  # 4,200 cells in 4,000 samples
    many.obs["sample"] = [f"s{i}" for i in np.arange(many.n_obs) % 4000]
    data = tmp_path / "many.h5ad"
    many.write_h5ad(data)
    common = ["--lab-dir", str(export), "--data", str(data), "--batch-key", "sample"]
    result = runner.invoke(client_app, ["preview", *common, "--bundle", str(signed), "-q"])
    assert result.exit_code == 16, result.output
    assert "the query has 4000 batches, so its adapter would hold" in result.output and "hint:" in result.output
    assert "Epoch" not in result.output  # refused before training
    held = export / "bundles" / ReferenceBundle.open(signed, export / "bundle-signing.pub").bundle_id
    shutil.copytree(signed, held)
    result = runner.invoke(client_app, ["join", *common, "--out", str(tmp_path / "out")])
    assert result.exit_code == 16 and "4000 batches" in result.output, result.output  # no SuperLink: never connected


@pytest.mark.parametrize(
    "content", [b"\xff\xfe n\x00a\x00m\x00e\x00", b"name = [", b"name = 7\n", b"superlink = 'x'\n"]
)
def test_a_damaged_lab_toml_is_a_config_error_not_a_bug(coord_dir: Path, tmp_path: Path, content: bytes) -> None:
    runner.invoke(server_app, ["add-lab", "lab_f", "--dir", str(coord_dir)])
    export = coord_dir / "exports" / "lab_f"
    (export / "lab.toml").write_bytes(content)
    result = runner.invoke(client_app, ["join", "--lab-dir", str(export), "--data", "x.h5ad", "--out", str(tmp_path)])
    assert result.exit_code == 13 and "lab.toml" in result.output and "hint:" in result.output, result.output
    assert "unexpected" not in result.output


def test_a_damaged_coordinator_toml_is_a_config_error_not_a_bug(coord_dir: Path) -> None:
    for content in (b"\x00\x01binary", b"[superlink]\nport = 'many'\n"):
        (coord_dir / "coordinator.toml").write_bytes(content)
        result = runner.invoke(server_app, ["add-lab", "lab_g", "--dir", str(coord_dir)])
        assert result.exit_code == 13 and "coordinator.toml" in result.output, result.output
        assert "unexpected" not in result.output


def test_join_refuses_extra_mods_it_cannot_load_before_connecting(coord_dir: Path, tmp_path: Path, demo_dir) -> None:
    runner.invoke(server_app, ["add-lab", "lab_h", "--dir", str(coord_dir)])
    args = ["join", "--lab-dir", str(coord_dir / "exports" / "lab_h"), "--data", str(demo_dir / "lab_a.h5ad")]
    for spec, message in (("nomodule", "not of the form module:attribute"), ("no_such_mod:f", "cannot be loaded")):
        result = runner.invoke(client_app, [*args, "--out", str(tmp_path / "o"), "--extra-mods", spec])
        assert result.exit_code == 13 and message in result.output, result.output


def test_key_paths_that_are_not_files_say_what_they_are(coord_dir: Path, tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "lab.pub"
    os.mkfifo(fifo)  # reading it would block forever
    result = runner.invoke(server_app, ["add-lab", "lab_i", "--dir", str(coord_dir), "--public-key", str(fifo)])
    assert result.exit_code == 30 and "is a FIFO (named pipe), not a key file" in result.output, result.output
    args = ["map", str(tmp_path / "q.h5ad"), "--reference", str(tmp_path / "b"), "--out", str(tmp_path / "o.h5ad")]
    (tmp_path / "keys").mkdir()
    result = runner.invoke(client_app, [*args, "--trust", str(tmp_path / "keys")])
    assert result.exit_code == 30 and "is a directory, not a key file" in result.output, result.output
    assert "bundle-signing.pub" in result.output  # the hint names the file a lab passes


def test_a_lab_toml_that_is_a_fifo_is_refused_without_blocking(coord_dir: Path, tmp_path: Path) -> None:
    import os

    runner.invoke(server_app, ["add-lab", "lab_j", "--dir", str(coord_dir)])
    export = coord_dir / "exports" / "lab_j"
    (export / "lab.toml").unlink()
    os.mkfifo(export / "lab.toml")  # opening it would wait for a writer forever
    result = runner.invoke(client_app, ["join", "--lab-dir", str(export), "--data", "x.h5ad", "--out", str(tmp_path)])
    assert result.exit_code == 13 and "is a FIFO (named pipe), not a settings file" in result.output, result.output

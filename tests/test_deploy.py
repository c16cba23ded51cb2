"""deploy/ cannot run here (no Docker, no systemd): check that its files parse and name real commands.

Each command line in the compose file and the systemd units is parsed by the real Typer/click
command it names, so a renamed command or option fails this test. Mounted and writable paths must
cover the paths those commands use, and the published port must be the SuperLink's.
"""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import click
import pytest
import typer
import yaml

from fedarches.client.cli import app as client_app
from fedarches.server.cli import app as server_app
from fedarches.server.coordinator import DEFAULT_PORT

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
APPS = {"fedarches-server": server_app, "fedarches-client": client_app}


def parse_command(argv: list[str]) -> tuple[str, dict]:
    """Parse ``argv`` with the real CLI; return (subcommand, its parameters)."""
    program = Path(argv[0]).name
    group = typer.main.get_command(APPS[program])
    assert isinstance(group, click.Group)
    name, *rest = argv[1:]
    command = group.get_command(click.Context(group), name)
    assert command is not None, f"{program} has no command {name!r}"
    context = command.make_context(name, list(rest))
    return name, context.params


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_runs_serve_and_join_with_the_mounted_material() -> None:
    services = compose()["services"]
    name, params = parse_command(services["coordinator"]["command"])
    assert name == "serve"
    mounts = {v.split(":")[1] for v in services["coordinator"]["volumes"]}
    assert str(params["directory"]) in mounts
    assert services["coordinator"]["ports"] == [f"{DEFAULT_PORT}:{DEFAULT_PORT}"]

    name, params = parse_command(services["lab"]["command"])
    assert name == "join"
    lab_mounts = {v.split(":")[1]: v for v in services["lab"]["volumes"]}
    assert str(params["lab_dir"]) in lab_mounts and not lab_mounts[str(params["lab_dir"])].endswith(":ro")
    assert str(Path(params["data"]).parent) in lab_mounts and lab_mounts[str(Path(params["data"]).parent)].endswith(
        ":ro"
    )
    assert str(params["out"]) in lab_mounts
    assert params["superlink"].endswith(f":{DEFAULT_PORT}")


def test_compose_builds_from_the_dockerfile_that_pins_torch() -> None:
    build = compose()["services"]["coordinator"]["build"]
    dockerfile = (DEPLOY / build["context"] / build["dockerfile"]).resolve()
    text = dockerfile.read_text()
    assert "torch==2.13.0" in text and "-c requirements.lock" in text
    for copied in ("pyproject.toml", "requirements.lock", "server", "client", "shared"):
        assert (dockerfile.parents[1] / copied).exists()


@pytest.mark.parametrize(("unit", "command"), [("fedarches-coordinator", "serve"), ("fedarches-lab", "join")])
def test_systemd_units_parse_and_can_write_where_their_command_writes(unit: str, command: str) -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DEPLOY / "systemd" / f"{unit}.service")
    assert {"Unit", "Service", "Install"} <= set(parser.sections())
    argv = shlex.split(parser["Service"]["ExecStart"])
    assert argv[0].startswith("/opt/fedarches/.venv/bin/")
    name, params = parse_command(argv)
    assert name == command
    writable = parser["Service"]["ReadWritePaths"].split()
    for key in ("directory", "lab_dir", "out"):
        if key in params:
            assert str(params[key]) in writable
    if "data" in params:
        assert str(Path(params["data"]).parent) in parser["Service"]["ReadOnlyPaths"].split()

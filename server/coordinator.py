"""The coordinator's directory: TLS material, signing key, lab registry, SuperLink state, rounds.

::

    COORD_DIR/
      coordinator.toml         address, ports, round defaults
      pki/ca.crt ca.key        consortium CA (ca.key never leaves)
      pki/superlink.crt .key   SuperLink TLS certificate and key
      keys/bundle-signing.*    Ed25519 key that signs every bundle
      labs/NAME/lab.toml       one registered lab: public key, Flower node id
      labs/NAME/supernode.pub
      exports/NAME/            what a lab receives (see :func:`add_lab`)
      flwr/config.toml         FLWR_HOME of the `flwr` CLI (connection to our SuperLink)
      state/superlink.db       SuperLink state (registrations, runs) across restarts
      logs/                    SuperLink log
      app/pyproject.toml       the Flower app `run-round` submits
      rounds/ROUND_ID/         report, merged atlas, received adapters
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedarches.server.settings import ROUND_DEFAULTS
from fedarches.shared import crypto, pki
from fedarches.shared._io import atomic_write_bytes, read_toml, write_toml
from fedarches.shared.errors import ConfigError, UserInputError
from fedarches.shared.lab_export import NODE_PRIVATE_KEY_NAME, NODE_PUBLIC_KEY_NAME, LabExport, write_lab_export

CONFIG_NAME = "coordinator.toml"
LAB_CONFIG_NAME = "lab.toml"
CONNECTION_NAME = "fedarches"
DEFAULT_PORT = 8000
LAB_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


_LAB_HINT = "restore the lab's lab.toml, or register the lab again with `fedarches-server add-lab NAME --overwrite`"


@dataclass(frozen=True)
class CoordinatorDir:
    """Paths and settings of a coordinator directory created by :func:`init_coordinator`."""

    root: Path

    @classmethod
    def open(cls, root: Path | str) -> CoordinatorDir:
        """Open an existing coordinator directory, or fail with the command that creates one."""
        coord = cls(Path(root).resolve())
        if not coord.config_path.exists():
            msg = f"{coord.root} is not a coordinator directory (no {CONFIG_NAME})"
            raise ConfigError(msg, hint=f"create it with `fedarches-server init --dir {root}`")
        superlink = coord.config.get("superlink")
        host, port, address = (
            (superlink.get(k) for k in ("host", "port", "public-address"))
            if isinstance(superlink, dict)
            else (None, None, None)
        )
        if not (isinstance(host, str) and isinstance(address, str) and isinstance(port, int) and 0 < port < 65536):
            msg = f"{coord.config_path} lacks a valid [superlink] table (host, port, public-address)"
            raise ConfigError(msg, hint="restore it, or create the directory again with `fedarches-server init`")
        return coord

    @property
    def config_path(self) -> Path:
        """The coordinator's settings file, ``coordinator.toml``."""
        return self.root / CONFIG_NAME

    @property
    def config(self) -> dict[str, Any]:
        """The parsed ``coordinator.toml``."""
        return read_toml(self.config_path, hint=f"restore {CONFIG_NAME}, or run `fedarches-server init` again")

    @property
    def host(self) -> str:
        """The host the SuperLink binds to."""
        return str(self.config["superlink"]["host"])

    @property
    def port(self) -> int:
        """The SuperLink's port."""
        return int(self.config["superlink"]["port"])

    @property
    def public_address(self) -> str:
        """Address labs dial (``host:port``)."""
        return str(self.config["superlink"]["public-address"])

    @property
    def local_address(self) -> str:
        """Address the coordinator's own tools dial."""
        host = self.host if self.host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"{host}:{self.port}"

    @property
    def round_defaults(self) -> dict[str, Any]:
        """Round settings: the built-in defaults, overridden by the ``[round]`` table of ``coordinator.toml``."""
        return {**ROUND_DEFAULTS, **self.config.get("round", {})}

    @property
    def pki_dir(self) -> Path:
        """The directory of the consortium CA and the SuperLink's TLS certificate and key."""
        return self.root / "pki"

    @property
    def ca_cert(self) -> Path:
        """The consortium CA certificate, which labs use to verify the SuperLink."""
        return self.pki_dir / "ca.crt"

    @property
    def server_cert(self) -> Path:
        """The SuperLink's TLS certificate."""
        return self.pki_dir / "superlink.crt"

    @property
    def server_key(self) -> Path:
        """The SuperLink's TLS private key."""
        return self.pki_dir / "superlink.key"

    @property
    def signing_key(self) -> Path:
        """The Ed25519 private key that signs every bundle."""
        return self.root / "keys" / crypto.PRIVATE_KEY_NAME

    @property
    def signing_public_key(self) -> Path:
        """The public half of the bundle-signing key, exported to every lab."""
        return self.root / "keys" / crypto.PUBLIC_KEY_NAME

    @property
    def labs_dir(self) -> Path:
        """The lab registry: one directory per registered lab."""
        return self.root / "labs"

    @property
    def flwr_home(self) -> Path:
        """``FLWR_HOME`` of the ``flwr`` CLI (its connection to this SuperLink)."""
        return self.root / "flwr"

    @property
    def database(self) -> Path:
        """The SuperLink's state database (registrations, runs), kept across restarts."""
        return self.root / "state" / "superlink.db"

    @property
    def logs_dir(self) -> Path:
        """The directory of the SuperLink log."""
        return self.root / "logs"

    @property
    def app_dir(self) -> Path:
        """The directory of the Flower app that each round submits."""
        return self.root / "app"

    @property
    def rounds_dir(self) -> Path:
        """The directory of the rounds' outputs, one directory per round."""
        return self.root / "rounds"

    @property
    def probes_dir(self) -> Path:
        """What surgery grows in each bundle a round used (``BUNDLE_ID.json``), so each is probed once."""
        return self.root / "probes"

    def labs(self) -> dict[str, dict[str, Any]]:
        """Registered labs by name, each with its ``lab.toml`` settings."""
        labs = {}
        for path in sorted(self.labs_dir.glob(f"*/{LAB_CONFIG_NAME}")):
            labs[path.parent.name] = read_toml(path, hint=_LAB_HINT)
        return labs

    def lab(self, name: str) -> dict[str, Any]:
        """The ``lab.toml`` settings of the registered lab ``name``; an error naming the known labs if none."""
        path = self.labs_dir / name / LAB_CONFIG_NAME
        if not path.is_file():
            msg = f"no lab named {name!r} in {self.root}; labs are {sorted(self.labs())}"
            raise ConfigError(msg, hint=f"add it with `fedarches-server add-lab {name} --dir {self.root}`")
        return read_toml(path, hint=_LAB_HINT)

    def update_lab(self, name: str, **values: Any) -> None:
        """Set ``values`` in the ``lab.toml`` of the registered lab ``name``."""
        record = {**self.lab(name), **values}
        write_toml(self.labs_dir / name / LAB_CONFIG_NAME, record)


def init_coordinator(
    root: Path,
    *,
    hosts: list[str] | None = None,
    port: int = DEFAULT_PORT,
    bind_host: str = "127.0.0.1",
    public_address: str | None = None,
    overwrite: bool = False,
) -> CoordinatorDir:
    """Create a coordinator directory: CA, SuperLink certificate, signing key, configuration."""
    root = Path(root).resolve()
    hosts = hosts or ["127.0.0.1", "localhost"]
    if (root / CONFIG_NAME).exists() and not overwrite:
        msg = f"{root} is already a coordinator directory"
        raise UserInputError(msg, hint="pass --overwrite to replace its keys and certificates (labs must re-join)")
    if not 1 <= port <= 65535:
        msg = f"--port {port} is not a TCP port"
        raise UserInputError(msg)
    coord = CoordinatorDir(root)
    pki.create_ca_and_server_cert(coord.pki_dir, hosts)
    crypto.generate_signing_keys(coord.signing_key.parent, overwrite=True)
    for directory in (coord.labs_dir, coord.flwr_home, coord.database.parent, coord.logs_dir, coord.rounds_dir):
        directory.mkdir(parents=True, exist_ok=True)
    write_toml(
        coord.config_path,
        {
            "created": _now(),
            "superlink": {
                "host": bind_host,
                "port": port,
                "public-address": public_address or f"{hosts[0]}:{port}",
                "tls-hosts": hosts,
            },
            "round": dict(ROUND_DEFAULTS),
        },
    )
    write_flwr_config(coord)
    return coord


def write_flwr_config(coord: CoordinatorDir) -> Path:
    """``FLWR_HOME/config.toml`` pointing the `flwr` CLI at this coordinator's SuperLink over TLS."""
    path = coord.flwr_home / "config.toml"
    write_toml(
        path,
        {
            "superlink": {
                "default": CONNECTION_NAME,
                CONNECTION_NAME: {"address": coord.local_address, "root-certificates": str(coord.ca_cert)},
            }
        },
    )
    return path


def add_lab(
    coord: CoordinatorDir,
    name: str,
    *,
    public_key: Path | None = None,
    export_dir: Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Register lab ``name`` and write its export directory; return the export's path.

    With ``public_key`` (made at the lab by ``fedarches-client keygen``) the lab's private key
    never leaves the lab. Without it, a key pair is generated here and the private key is put in
    the export, which must then travel to the lab over a trusted channel.

    The export holds ``lab.toml`` (name, SuperLink address), ``ca.crt`` (to verify the
    SuperLink), ``bundle-signing.pub`` (to verify bundles) and, when generated here,
    ``supernode.key``/``supernode.pub``. Registration with the SuperLink happens now if it is
    running, else when ``fedarches-server serve`` next starts.
    """
    if not LAB_NAME_PATTERN.match(name):
        msg = f"lab name {name!r} must be lower-case letters, digits, '-' or '_' (at most 63, not starting with - or _)"
        raise UserInputError(msg, hint="for example: add-lab lab_a")
    lab_dir = coord.labs_dir / name
    if (lab_dir / LAB_CONFIG_NAME).exists() and not overwrite:
        msg = f"lab {name!r} is already registered in {coord.root}"
        raise UserInputError(msg, hint="choose another name, or pass --overwrite to issue it a new key")
    export_dir = Path(export_dir or coord.root / "exports" / name).resolve()
    if export_dir.exists() and any(export_dir.iterdir()) and not overwrite:
        msg = f"{export_dir} already exists and is not empty"
        raise UserInputError(msg, hint="choose another --out directory, or pass --overwrite")
    export_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    if public_key is not None:
        line = pki.load_node_public_key(public_key)
        atomic_write_bytes(lab_dir / NODE_PUBLIC_KEY_NAME, line + b"\n")
        key_origin = "lab"
    else:
        pki.create_node_keys(export_dir / NODE_PRIVATE_KEY_NAME, export_dir / NODE_PUBLIC_KEY_NAME)
        shutil.copyfile(export_dir / NODE_PUBLIC_KEY_NAME, lab_dir / NODE_PUBLIC_KEY_NAME)
        key_origin = "coordinator"
    write_lab_export(
        export_dir,
        LabExport(name, superlink=coord.public_address, coordinator_key_id=_signing_key_id(coord)),
        ca_cert=coord.ca_cert,
        signing_public_key=coord.signing_public_key,
    )
    write_toml(
        lab_dir / LAB_CONFIG_NAME,
        {"name": name, "added": _now(), "key-origin": key_origin, "registered": False, "node-id": 0},
    )
    return export_dir


def _signing_key_id(coord: CoordinatorDir) -> str:
    return crypto.key_id(crypto.load_public_key(coord.signing_public_key))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")

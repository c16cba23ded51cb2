"""The lab export: the directory the coordinator writes for one lab and the lab reads back.

::

    EXPORT/
      lab.toml              name, SuperLink address, id of the key that signs bundles
      ca.crt                consortium CA: verifies the SuperLink's TLS certificate
      bundle-signing.pub    the coordinator's key: verifies every reference bundle
      supernode.key / .pub  the node-authentication key pair, only when made by the coordinator

This module owns the format: :func:`write_lab_export` is the only writer and
:func:`read_lab_export` the only reader, so neither role parses what the other wrote by hand.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from fedarches.shared import crypto
from fedarches.shared._io import read_toml, write_toml
from fedarches.shared.errors import ConfigError

__all__ = [
    "CA_CERT_NAME",
    "LAB_CONFIG_NAME",
    "NODE_PRIVATE_KEY_NAME",
    "NODE_PUBLIC_KEY_NAME",
    "LabExport",
    "read_lab_export",
    "write_lab_export",
]

LAB_CONFIG_NAME = "lab.toml"
CA_CERT_NAME = "ca.crt"
NODE_PRIVATE_KEY_NAME = "supernode.key"
NODE_PUBLIC_KEY_NAME = "supernode.pub"
REQUIRED_FILES = (CA_CERT_NAME, crypto.PUBLIC_KEY_NAME)
_HINT = "ask the atlas maintainers for this lab's export directory again"


@dataclass(frozen=True)
class LabExport:
    """What ``lab.toml`` of an export says.

    Attributes
    ----------
    name
        The lab's registered name.
    superlink
        ``host:port`` of the coordinator's SuperLink ("" when not stated).
    coordinator_key_id
        Id of the key that signs bundles ("" in exports made before it was recorded).
    """

    name: str
    superlink: str = ""
    coordinator_key_id: str = ""


def write_lab_export(
    directory: Path,
    export: LabExport,
    *,
    ca_cert: Path,
    signing_public_key: Path,
) -> Path:
    """Write the export's certificate, bundle key and ``lab.toml`` into ``directory``; return it.

    A node key pair, when the coordinator makes one, is written beside them by the caller
    (:data:`NODE_PRIVATE_KEY_NAME`, :data:`NODE_PUBLIC_KEY_NAME`). ``lab.toml`` is written last
    and atomically: a directory without it is not an export.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ca_cert, directory / CA_CERT_NAME)
    shutil.copyfile(signing_public_key, directory / crypto.PUBLIC_KEY_NAME)
    table = {"name": export.name, "superlink": export.superlink, "coordinator-key-id": export.coordinator_key_id}
    write_toml(directory / LAB_CONFIG_NAME, table)
    return directory


def read_lab_export(root: Path) -> LabExport:
    """Read and check an export directory; the error names what is missing and how to get it.

    Raises
    ------
    ConfigError
        When ``lab.toml`` is missing or malformed, or a required file is absent.
    """
    root = Path(root)
    config = root / LAB_CONFIG_NAME
    if not config.exists():  # anything else there (a FIFO, a directory) is named by read_toml
        msg = f"{root} is not a lab directory (no {LAB_CONFIG_NAME})"
        raise ConfigError(msg, hint="use the lab's export directory from the atlas maintainers")
    hint = f"restore {LAB_CONFIG_NAME} from the export directory the atlas maintainers sent"
    settings = read_toml(config, hint=hint)
    for key, required in (("name", True), ("superlink", False), ("coordinator-key-id", False)):
        value = settings.get(key)
        if (value is None and required) or (value is not None and not (isinstance(value, str) and value)):
            msg = f"{config}: {key!r} must be a non-empty string, found {value!r}"
            raise ConfigError(msg, hint=hint)
    for name in REQUIRED_FILES:
        if not (root / name).is_file():
            msg = f"{root} lacks {name}, which the lab's export holds"
            raise ConfigError(msg, hint=_HINT)
    return LabExport(
        name=settings["name"],
        superlink=settings.get("superlink", ""),
        coordinator_key_id=settings.get("coordinator-key-id", ""),
    )

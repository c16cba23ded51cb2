"""The lab's directory: what the coordinator exported for it, plus the lab's own state.

::

    LAB_DIR/
      lab.toml              lab name, SuperLink address (from `fedarches-server add-lab`)
      ca.crt                consortium CA: verifies the SuperLink's TLS certificate
      bundle-signing.pub    coordinator's key: verifies every reference bundle
      supernode.key / .pub  node-authentication key pair (made at the lab, or exported)
      bundles/BUNDLE_ID/    bundles received, kept so that later rounds send only the id
      egress/audit.jsonl    one line per message this lab sent (see fedarches.client.mods)
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from fedarches.shared import crypto, pki
from fedarches.shared._io import atomic_directory
from fedarches.shared.bundle import ReferenceBundle
from fedarches.shared.errors import BundleIntegrityError, ConfigError, CryptoError

LAB_CONFIG_NAME = "lab.toml"
_BUNDLE_ID = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True)
class LabDir:
    """A lab directory as exported by ``fedarches-server add-lab``."""

    root: Path
    name: str
    superlink: str

    @classmethod
    def open(cls, root: Path | str) -> LabDir:
        """Open and check a lab directory; the error names what is missing and who provides it."""
        root = Path(root).resolve()
        config = root / LAB_CONFIG_NAME
        if not config.is_file():
            msg = f"{root} is not a lab directory (no {LAB_CONFIG_NAME})"
            raise ConfigError(
                msg, hint="use the directory the atlas maintainers exported with `fedarches-server add-lab`"
            )
        settings = tomllib.loads(config.read_text())
        for name in ("ca.crt", crypto.PUBLIC_KEY_NAME):
            if not (root / name).is_file():
                msg = f"{root} lacks {name}, which `fedarches-server add-lab` exports"
                raise ConfigError(msg, hint="ask the atlas maintainers for the lab's export directory again")
        return cls(root, str(settings["name"]), str(settings.get("superlink", "")))

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def trusted_key(self) -> Path:
        return self.root / crypto.PUBLIC_KEY_NAME

    @property
    def node_key(self) -> Path:
        return self.root / "supernode.key"

    @property
    def bundles_dir(self) -> Path:
        return self.root / "bundles"

    @property
    def egress_dir(self) -> Path:
        return self.root / "egress"

    def require_node_key(self) -> Path:
        """The node-authentication private key, or a clear error saying how to make one."""
        if not self.node_key.is_file():
            msg = f"{self.root} has no supernode.key, so the SuperLink cannot authenticate this lab"
            raise CryptoError(
                msg,
                hint=(
                    f"run `fedarches-client keygen --lab-dir {self.root}` and send supernode.pub to the "
                    "atlas maintainers for `fedarches-server add-lab NAME --public-key supernode.pub`"
                ),
            )
        return self.node_key

    def open_bundle(self, bundle_id: str) -> ReferenceBundle:
        """Open a held bundle, verifying it against the coordinator's key and its id."""
        if not _BUNDLE_ID.match(bundle_id):
            msg = f"{bundle_id!r} is not a bundle id"
            raise BundleIntegrityError(msg)
        bundle = ReferenceBundle.open(self.bundles_dir / bundle_id, self.trusted_key)
        if bundle.bundle_id != bundle_id:
            msg = f"stored bundle {bundle_id} has id {bundle.bundle_id}"
            raise BundleIntegrityError(msg, hint=f"delete {self.bundles_dir / bundle_id}; the next round resends it")
        return bundle

    def store_bundle(self, bundle_id: str, files: dict[str, bytes]) -> ReferenceBundle:
        """Verify bundle files received from the coordinator and keep them under ``bundles/``.

        The files are written to a temporary directory and verified there (signature, hashes, id)
        before the directory is moved into place, so a bad bundle never lands.
        """
        if not _BUNDLE_ID.match(bundle_id):
            msg = f"{bundle_id!r} is not a bundle id"
            raise BundleIntegrityError(msg)
        target = self.bundles_dir / bundle_id
        with atomic_directory(target, overwrite=True) as tmp:
            for name, data in files.items():
                path = tmp / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            staged = ReferenceBundle.open(tmp, self.trusted_key)
            if staged.bundle_id != bundle_id:
                msg = f"received bundle has id {staged.bundle_id}, announced as {bundle_id}"
                raise BundleIntegrityError(msg)
        return self.open_bundle(bundle_id)


def keygen(lab_dir: Path, *, overwrite: bool = False) -> Path:
    """Create the lab's node-authentication key pair in ``lab_dir``; return the public key's path."""
    lab_dir = Path(lab_dir)
    private, public = lab_dir / "supernode.key", lab_dir / "supernode.pub"
    if private.exists() and not overwrite:
        msg = f"{private} already exists; refusing to replace the lab's key"
        raise CryptoError(msg, hint="pass --overwrite, then have the maintainers register the new supernode.pub")
    lab_dir.mkdir(parents=True, exist_ok=True)
    pki.create_node_keys(private, public)
    return public

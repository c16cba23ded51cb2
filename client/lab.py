"""The lab's directory: what the coordinator exported for it, plus the lab's own state.

::

    LAB_DIR/
      lab.toml, ca.crt,     the export from `fedarches-server add-lab`
      bundle-signing.pub    (format: fedarches.shared.lab_export)
      supernode.key / .pub  node-authentication key pair (made at the lab, or exported)
      bundles/BUNDLE_ID/    bundles received, kept so that later rounds send only the id
      egress/audit.jsonl    one line per message this lab sent (see fedarches.client.mods)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedarches.shared import crypto, pki
from fedarches.shared._constants import MAX_BUNDLE_BYTES, MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES
from fedarches.shared._io import atomic_directory
from fedarches.shared.bundle_files import check_file_names
from fedarches.shared.errors import (
    BundleError,
    BundleIntegrityError,
    BundleSizeError,
    CryptoError,
    FedarchesError,
)
from fedarches.shared.lab_export import CA_CERT_NAME, NODE_PRIVATE_KEY_NAME, NODE_PUBLIC_KEY_NAME, read_lab_export

if TYPE_CHECKING:  # the bundle code (pandas, scipy) loads only where a bundle is opened, not in a SecAgg+ stage
    from fedarches.shared.bundle import ReferenceBundle

_BUNDLE_ID = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True)
class LabDir:
    """A lab directory: the coordinator's export (:mod:`fedarches.shared.lab_export`) plus the lab's own state."""

    root: Path
    name: str
    superlink: str

    @classmethod
    def open(cls, root: Path | str) -> LabDir:
        """Open and check a lab directory; the error names what is missing and who provides it."""
        root = Path(root).resolve()
        export = read_lab_export(root)
        return cls(root, export.name, export.superlink)

    @property
    def ca_cert(self) -> Path:
        """The consortium CA certificate that verifies the SuperLink."""
        return self.root / CA_CERT_NAME

    @property
    def trusted_key(self) -> Path:
        """The coordinator's bundle-signing public key, which every bundle must verify against."""
        return self.root / crypto.PUBLIC_KEY_NAME

    @property
    def node_key(self) -> Path:
        """The lab's node-authentication private key (``supernode.key``)."""
        return self.root / NODE_PRIVATE_KEY_NAME

    @property
    def bundles_dir(self) -> Path:
        """Where received bundles are kept, one directory per bundle id."""
        return self.root / "bundles"

    @property
    def egress_dir(self) -> Path:
        """Where the egress audit log of every message this lab sent is kept."""
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
        from fedarches.shared.bundle import ReferenceBundle

        if not _BUNDLE_ID.match(bundle_id):
            msg = f"{bundle_id!r} is not a bundle id"
            raise BundleIntegrityError(msg)
        bundle = ReferenceBundle.open(self.bundles_dir / bundle_id, self.trusted_key)
        if bundle.bundle_id != bundle_id:
            msg = f"stored bundle {bundle_id} has id {bundle.bundle_id}"
            raise BundleIntegrityError(msg, hint=f"delete {self.bundles_dir / bundle_id}; the next round resends it")
        return bundle

    def newest_bundle(self) -> ReferenceBundle | None:
        """The most recently received bundle that still verifies, or None when the lab holds none."""
        if not self.bundles_dir.is_dir():
            return None
        held = sorted(
            (p for p in self.bundles_dir.iterdir() if _BUNDLE_ID.match(p.name) and p.is_dir()),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for path in held:
            try:
                return self.open_bundle(path.name)
            except FedarchesError:
                continue
        return None

    def store_bundle(self, bundle_id: str, files: Mapping[str, bytes]) -> ReferenceBundle:
        """Verify bundle files received from the coordinator and keep them under ``bundles/``.

        The names must follow the bundle's rules (:func:`~fedarches.shared.bundle.check_file_names`)
        and the files fit the bundle size limit before anything is written. They are then written to
        a fresh temporary directory (each file created anew, never through an existing path) and
        verified there (signature, schema, sizes, hashes, id) before the directory is moved into
        place, so a bad bundle never lands. Raises only :class:`FedarchesError`.
        """
        if not isinstance(bundle_id, str) or not _BUNDLE_ID.match(bundle_id):
            msg = f"{str(bundle_id)[:40]!r} is not a bundle id"
            raise BundleIntegrityError(msg)
        if not isinstance(files, Mapping) or not all(isinstance(data, bytes) for data in files.values()):
            msg = f"bundle {bundle_id} arrived as {type(files).__name__}, not file names and bytes"
            raise BundleIntegrityError(msg)
        names = check_file_names(files, allow_manifest=True)
        limit = MAX_BUNDLE_BYTES + MAX_MANIFEST_BYTES + MAX_SIGNATURE_BYTES
        total = sum(len(data) for data in files.values())
        if total > limit:
            msg = f"bundle {bundle_id} holds {total} bytes, over the limit of {limit}; nothing was stored"
            raise BundleSizeError(msg)
        target = self.bundles_dir / bundle_id
        try:
            with atomic_directory(target, overwrite=True) as tmp:
                for name in names:
                    path = tmp / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with open(path, "xb") as fh:
                        fh.write(files[name])
                from fedarches.shared.bundle import ReferenceBundle

                staged = ReferenceBundle.open(tmp, self.trusted_key)
                if staged.bundle_id != bundle_id:
                    msg = f"received bundle has id {staged.bundle_id}, announced as {bundle_id}"
                    raise BundleIntegrityError(msg)
        except OSError as err:
            msg = f"cannot store bundle {bundle_id} under {self.bundles_dir}: {err.strerror or err}"
            raise BundleError(msg, hint=f"check the free space and permissions of {self.bundles_dir}") from None
        return self.open_bundle(bundle_id)


def keygen(lab_dir: Path, *, overwrite: bool = False) -> Path:
    """Create the lab's node-authentication key pair in ``lab_dir``; return the public key's path."""
    lab_dir = Path(lab_dir)
    private, public = lab_dir / NODE_PRIVATE_KEY_NAME, lab_dir / NODE_PUBLIC_KEY_NAME
    if private.exists() and not overwrite:
        msg = f"{private} already exists; refusing to replace the lab's key"
        raise CryptoError(msg, hint="pass --overwrite, then have the maintainers register the new supernode.pub")
    lab_dir.mkdir(parents=True, exist_ok=True)
    pki.create_node_keys(private, public)
    return public

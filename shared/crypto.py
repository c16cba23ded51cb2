"""Ed25519 signing keys and file hashing, over the ``cryptography`` library.

Key files are PEM: PKCS#8 for the private key (written with mode 0600), SubjectPublicKeyInfo
for the public key. Nothing here logs or prints key material.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedarches.shared._io import atomic_write_bytes
from fedarches.shared.errors import BundleIntegrityError, CryptoError, UserInputError

PRIVATE_KEY_NAME = "bundle-signing.key"
PUBLIC_KEY_NAME = "bundle-signing.pub"


def generate_signing_keys(out_dir: Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair to ``out_dir``; return (private, public) paths."""
    out_dir = Path(out_dir)
    private_path, public_path = out_dir / PRIVATE_KEY_NAME, out_dir / PUBLIC_KEY_NAME
    if not overwrite and (private_path.exists() or public_path.exists()):
        msg = f"{private_path} already exists; refusing to overwrite a signing key"
        raise UserInputError(msg, hint="choose another --out directory, or pass --overwrite")
    out_dir.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write_bytes(private_path, private_pem, mode=0o600)
    atomic_write_bytes(public_path, public_pem(key.public_key()), mode=0o644)
    return private_path, public_path


def public_pem(key: Ed25519PublicKey) -> bytes:
    """PEM bytes of a public key."""
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(key: Ed25519PublicKey) -> str:
    """Short, stable fingerprint of a public key (sha256 of its raw bytes, 16 hex digits)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an Ed25519 private key written by :func:`generate_signing_keys`."""
    data = read_key_file(path, "private")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        msg = f"{path} is not an unencrypted PEM private key"
        raise CryptoError(msg) from err
    if not isinstance(key, Ed25519PrivateKey):
        msg = f"{path} holds a {type(key).__name__}, not an Ed25519 signing key"
        raise CryptoError(msg)
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read an Ed25519 public key (PEM)."""
    data = read_key_file(path, "public")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as err:
        msg = f"{path} is not a PEM public key"
        raise CryptoError(msg, hint="pass the coordinator's bundle-signing.pub file to --trust") from err
    if not isinstance(key, Ed25519PublicKey):
        msg = f"{path} holds a {type(key).__name__}, not an Ed25519 public key"
        raise CryptoError(msg)
    return key


def sign(key: Ed25519PrivateKey, payload: bytes) -> str:
    """Detached signature of ``payload``, base64-encoded."""
    return base64.b64encode(key.sign(payload)).decode("ascii")


def verify(key: Ed25519PublicKey, payload: bytes, signature_b64: str) -> None:
    """Raise :class:`BundleIntegrityError` unless ``signature_b64`` signs ``payload``."""
    try:
        key.verify(base64.b64decode(signature_b64, validate=True), payload)
    except (InvalidSignature, ValueError) as err:
        msg = "the bundle's signature does not verify against the trusted public key"
        raise BundleIntegrityError(msg) from err


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


_MAX_KEY_FILE_BYTES = 65_536


def read_key_file(path: Path, kind: str, *, hint: str | None = None) -> bytes:
    """A key file's bytes; :class:`CryptoError` unless a regular file of at most 64 KiB (a FIFO never blocks)."""
    from fedarches.shared.paths import describe_kind

    path = Path(path)
    what = describe_kind(path)
    if what != "a regular file" and not what.startswith("a symbolic link to a regular file"):
        msg = f"{kind} key file {path} " + ("does not exist" if what == "missing" else f"is {what}, not a key file")
        if hint is None:
            hint = (
                "pass the coordinator's bundle-signing.pub file (for a lab: LAB_DIR/bundle-signing.pub)"
                if kind == "public"
                else CryptoError.hint
            )
        raise CryptoError(msg, hint=hint)
    try:
        with path.open("rb") as fh:
            data = fh.read(_MAX_KEY_FILE_BYTES + 1)
    except OSError as err:
        msg = f"cannot read {kind} key file {path}: {err.strerror}"
        raise CryptoError(msg) from err
    if len(data) > _MAX_KEY_FILE_BYTES:
        msg = f"{kind} key file {path} holds more than {_MAX_KEY_FILE_BYTES} bytes: it is not a key"
        raise CryptoError(msg)
    return data

"""TLS and node-authentication material for a federation, made with ``cryptography``.

* A consortium CA (EC P-384, self-signed) and a SuperLink server certificate it signs, with
  subject alternative names for every host name or IP address labs will dial.
* SuperNode authentication keys in the form Flower 1.41 reads: an EC key on a NIST curve,
  private key in OpenSSH format (``flower-supernode --auth-supernode-private-key``), public key
  as an OpenSSH line (``flwr supernode register``).

Private keys are written atomically with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedarches.shared._io import atomic_write_bytes
from fedarches.shared.crypto import read_key_file
from fedarches.shared.errors import CryptoError

_CURVE = ec.SECP384R1()
_NODE_PUBLIC_KEY_HINT = "pass the public key (supernode.pub) of the lab's node key pair"
CA_DAYS = 3650
SERVER_DAYS = 825


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the CA and server certificate material."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def create_ca_and_server_cert(directory: Path, hosts: Sequence[str], *, organization: str = "fedarches") -> TlsFiles:
    """Write ``ca.crt``, ``ca.key``, ``superlink.crt`` and ``superlink.key`` under ``directory``."""
    if not hosts:
        msg = "the SuperLink certificate needs at least one host name or IP address"
        raise CryptoError(msg, hint="pass --host with the address labs will dial, e.g. --host 127.0.0.1")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(_CURVE)
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{organization} consortium CA"),
        ]
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(_CURVE)
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                    x509.NameAttribute(NameOID.COMMON_NAME, hosts[0]),
                ]
            )
        )
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    files = TlsFiles(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        server_cert=directory / "superlink.crt",
        server_key=directory / "superlink.key",
    )
    atomic_write_bytes(files.ca_key, _private_pem(ca_key), mode=0o600)
    atomic_write_bytes(files.server_key, _private_pem(server_key), mode=0o600)
    atomic_write_bytes(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    atomic_write_bytes(files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))
    return files


def certificate_hosts(cert_path: Path) -> list[str]:
    """Host names and IP addresses a certificate is valid for."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in san.get_values_for_type(x509.DNSName)] + [
        str(v) for v in san.get_values_for_type(x509.IPAddress)
    ]


def create_node_keys(private_path: Path, public_path: Path) -> str:
    """Write a SuperNode authentication key pair; return the public key line."""
    key = ec.generate_private_key(_CURVE)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    atomic_write_bytes(Path(private_path), private, mode=0o600)
    atomic_write_bytes(Path(public_path), public + b"\n")
    return public.decode()


def load_node_public_key(path: Path) -> bytes:
    """Read and check a SuperNode public key (OpenSSH line, EC on a NIST curve); return its line."""
    data = read_key_file(Path(path), "public", hint=_NODE_PUBLIC_KEY_HINT).strip()
    try:
        key = serialization.load_ssh_public_key(data)
    except (ValueError, TypeError) as err:
        msg = f"{path} is not an OpenSSH public key"
        raise CryptoError(msg, hint=_NODE_PUBLIC_KEY_HINT) from err
    if not isinstance(key, ec.EllipticCurvePublicKey):
        msg = f"{path} holds a {type(key).__name__}; Flower node authentication needs an EC key (NIST curve)"
        raise CryptoError(msg, hint="pass the supernode.pub of a node key pair that fedarches made (an EC key)")
    return data


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )

"""Coordinator directory: TLS material, lab registration and exports (no SuperLink needed)."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from fedarches.client.lab import LabDir, keygen
from fedarches.server.coordinator import CoordinatorDir, add_lab, init_coordinator
from fedarches.shared import pki
from fedarches.shared.errors import ConfigError, CryptoError, UserInputError


@pytest.fixture
def coord(tmp_path: Path) -> CoordinatorDir:
    return init_coordinator(tmp_path / "coord", hosts=["atlas.example.org", "127.0.0.1"], port=8123)


def test_init_makes_a_ca_signed_superlink_certificate_for_the_hosts(coord: CoordinatorDir) -> None:
    ca = x509.load_pem_x509_certificate(coord.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(coord.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert sorted(pki.certificate_hosts(coord.server_cert)) == ["127.0.0.1", "atlas.example.org"]
    for key in (coord.server_key, coord.pki_dir / "ca.key", coord.signing_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert coord.public_address == "atlas.example.org:8123"
    flwr_config = tomllib.loads((coord.flwr_home / "config.toml").read_text())
    assert flwr_config["superlink"]["fedarches"] == {
        "address": "127.0.0.1:8123",
        "root-certificates": str(coord.ca_cert),
    }


def test_init_refuses_to_overwrite(coord: CoordinatorDir) -> None:
    with pytest.raises(UserInputError, match="already a coordinator"):
        init_coordinator(coord.root)


def test_add_lab_with_a_key_made_at_the_lab(coord: CoordinatorDir, tmp_path: Path) -> None:
    public = keygen(tmp_path / "lab_b_keys")
    export = add_lab(coord, "lab_b", public_key=public)
    lab = LabDir.open(export)
    assert lab.name == "lab_b" and lab.superlink == coord.public_address
    assert not lab.node_key.exists()  # the private key stayed at the lab
    with pytest.raises(CryptoError, match=r"no supernode\.key"):
        lab.require_node_key()
    assert (coord.labs_dir / "lab_b" / "supernode.pub").read_bytes().strip() == public.read_bytes().strip()
    assert coord.lab("lab_b")["registered"] is False  # until the SuperLink is up


def test_add_lab_without_a_key_exports_an_ec_key_flower_can_read(coord: CoordinatorDir) -> None:
    export = add_lab(coord, "lab_a")
    key = load_ssh_private_key((export / "supernode.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert stat.S_IMODE((export / "supernode.key").stat().st_mode) == 0o600
    assert (export / "ca.crt").read_bytes() == coord.ca_cert.read_bytes()
    assert (export / "bundle-signing.pub").read_bytes() == coord.signing_public_key.read_bytes()


@pytest.mark.parametrize("name", ["Lab A", "../x", "-lab", ""])
def test_bad_lab_names_are_refused(coord: CoordinatorDir, name: str) -> None:
    with pytest.raises(UserInputError, match="lab name"):
        add_lab(coord, name)


def test_a_lab_is_added_once(coord: CoordinatorDir) -> None:
    add_lab(coord, "lab_a")
    with pytest.raises(UserInputError, match="already registered"):
        add_lab(coord, "lab_a", export_dir=coord.root / "elsewhere")


def test_non_ec_public_keys_are_refused(coord: CoordinatorDir, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = tmp_path / "ed.pub"
    path.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    with pytest.raises(CryptoError, match="EC key"):
        add_lab(coord, "lab_c", public_key=path)


def test_opening_a_missing_directory_names_the_command(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a coordinator directory"):
        CoordinatorDir.open(tmp_path)
    with pytest.raises(ConfigError, match="not a lab directory"):
        LabDir.open(tmp_path)

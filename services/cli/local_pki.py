"""The mesh's own certificates: a CA made for one mesh, a client certificate for the gateway and a
server certificate for each technique service, so the workers answer the gateway alone (mutual TLS).

`modelpress up --auth` makes them once under `home/auth/tls`; `modelpress mesh-certs` writes the
same files for Compose and Kubernetes Secrets. The CA's key is never written: nothing can issue a
certificate this mesh trusts after the set is made, and a lost or expiring set is made anew whole
(every process of the mesh restarts with `up` anyway).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CLIENT_ROLE = "gateway"
# Names every worker certificate answers to: the launcher dials 127.0.0.1, tools dial localhost, and
# Compose and Kubernetes dial the service's own name (added per worker).
LOCAL_NAMES = ("localhost", "127.0.0.1")
VALID_DAYS = 3 * 365
# A set with a certificate this close to its end is made anew at the next `up`.
RENEW_BEFORE = datetime.timedelta(days=30)


@dataclass(frozen=True)
class MeshTls:
    """Where a mesh's certificate files lie: `ca.crt`, and `<role>.crt` / `<role>.key` per role."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.crt"

    def cert(self, role: str) -> Path:
        return self.folder / f"{role}.crt"

    def key(self, role: str) -> Path:
        return self.folder / f"{role}.key"

    def files(self, roles: Iterable[str]) -> list[Path]:
        return [self.ca, *(path for role in roles for path in (self.cert(role), self.key(role)))]


def ensure_mesh_tls(folder: Path, workers: Iterable[str], hostnames: Iterable[str] = ()) -> MeshTls:
    """The set under `folder`, made if a file is missing or a certificate ends within RENEW_BEFORE."""
    workers = list(workers)
    tls = MeshTls(folder)
    paths = tls.files([CLIENT_ROLE, *workers])
    if all(path.exists() for path in paths) and all(
            _not_after(path) - RENEW_BEFORE > _now() for path in paths if path.suffix == ".crt"):
        return tls
    return issue_mesh_tls(folder, workers, hostnames)


def issue_mesh_tls(folder: Path, workers: Iterable[str], hostnames: Iterable[str] = ()) -> MeshTls:
    """A new CA and, signed by it, the gateway's client certificate and one server certificate per
    worker (its name, LOCAL_NAMES and `hostnames` as subject alternative names). Folder 0700, files
    0600."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    tls = MeshTls(folder)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("modelpress mesh CA")
    ca_cert = (_builder(ca_name, ca_name, ca_key.public_key())
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))
    # Client only / server only: a worker's certificate cannot stand in for the gateway's.
    leaves = {CLIENT_ROLE: (ExtendedKeyUsageOID.CLIENT_AUTH, [CLIENT_ROLE])}
    for worker in workers:
        leaves[worker] = (ExtendedKeyUsageOID.SERVER_AUTH, [worker, *LOCAL_NAMES, *hostnames])
    for role, (usage, names) in leaves.items():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (_builder(_name(f"modelpress {role}"), ca_name, key.public_key())
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in dict.fromkeys(names)]),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        _write_private(tls.key(role), key.private_bytes(serialization.Encoding.PEM,
                                                        serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
        _write_private(tls.cert(role), cert.public_bytes(serialization.Encoding.PEM))
    _write_private(tls.ca, ca_cert.public_bytes(serialization.Encoding.PEM))
    return tls


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "modelpress"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = _now()
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))  # a peer whose clock is a little behind
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS)))


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _not_after(path: Path) -> datetime.datetime:
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc


def _write_private(path: Path, data: bytes) -> None:
    """Written 0600 from the first byte (not chmod after), then moved into place whole."""
    scratch = path.with_name(path.name + ".tmp")
    scratch.unlink(missing_ok=True)
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(scratch, path)

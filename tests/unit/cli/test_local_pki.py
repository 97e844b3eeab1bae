"""The mesh's own certificates: one CA signs a client-only gateway certificate and a server-only
certificate per worker naming it, localhost and 127.0.0.1; owner-only files; made once, made anew
whole when a file is missing; the CA's key is never written."""

from __future__ import annotations

import ipaddress
import stat

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from services.cli.local_pki import CLIENT_ROLE, ensure_mesh_tls, issue_mesh_tls

WORKERS = ["quantizer", "evaluator"]


def _cert(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_one_ca_signs_a_client_gateway_and_server_workers_with_their_names(tmp_path):
    tls = issue_mesh_tls(tmp_path / "tls", WORKERS, hostnames=["quantizer.modelpress.svc"])
    ca = _cert(tls.ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usages = {}
    for role in [CLIENT_ROLE, *WORKERS]:
        cert = _cert(tls.cert(role))
        cert.verify_directly_issued_by(ca)
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        usages[role] = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert usages[CLIENT_ROLE] == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert all(usages[w] == [ExtendedKeyUsageOID.SERVER_AUTH] for w in WORKERS)  # no worker poses as the gateway
    names = _cert(tls.cert("quantizer")).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["quantizer", "localhost", "quantizer.modelpress.svc"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]


def test_files_are_the_owners_alone_and_the_ca_key_is_not_kept(tmp_path):
    tls = issue_mesh_tls(tmp_path / "tls", WORKERS)
    assert stat.S_IMODE(tls.folder.stat().st_mode) == 0o700
    files = sorted(path.name for path in tls.folder.iterdir())
    assert files == sorted(["ca.crt", "gateway.crt", "gateway.key", *(f"{w}.{ext}" for w in WORKERS
                                                                      for ext in ("crt", "key"))])
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in tls.folder.iterdir())


def test_a_set_is_made_once_and_anew_whole_when_a_file_is_missing(tmp_path):
    first = ensure_mesh_tls(tmp_path / "tls", WORKERS)
    ca = first.ca.read_bytes()
    assert ensure_mesh_tls(tmp_path / "tls", WORKERS).ca.read_bytes() == ca
    first.key("evaluator").unlink()
    again = ensure_mesh_tls(tmp_path / "tls", WORKERS)
    assert again.key("evaluator").exists() and again.ca.read_bytes() != ca
    _cert(again.cert("quantizer")).verify_directly_issued_by(_cert(again.ca))

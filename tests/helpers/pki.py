"""A throwaway certificate authority for TLS tests: a CA, a server certificate for
``localhost`` / ``127.0.0.1`` and a client certificate, all signed by it, as PEM files."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pdserve.security import TlsFiles


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @property
    def server(self) -> TlsFiles:
        """What a server presents (its certificate and key) and checks clients by (the CA)."""
        return TlsFiles(str(self.server_cert), str(self.server_key), str(self.ca))


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey] | None
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    issuer_name, signer = (_name(issuer[0]), issuer[1]) if issuer else (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer, hashes.SHA256())


def make_pki(d: Path, ca_name: str = "pdserve test CA") -> Pki:
    """Fresh keys and certificates in ``d`` (a second call with another ``d`` is an unrelated CA)."""
    d.mkdir(parents=True, exist_ok=True)

    def write(name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
        (d / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        (d / f"{name}.key").write_bytes(pem)
        return d / f"{name}.pem", d / f"{name}.key"

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca, _ = write("ca", _cert(ca_name, ca_key, None), ca_key)
    keys = {n: ec.generate_private_key(ec.SECP256R1()) for n in ("server", "client")}
    server = write("server", _cert("localhost", keys["server"], (ca_name, ca_key)), keys["server"])
    client = write("client", _cert("router", keys["client"], (ca_name, ca_key)), keys["client"])
    return Pki(ca, *server, *client)

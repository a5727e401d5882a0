"""Throwaway certificates for the TLS tests, made with `cryptography`: a CA, a broker and a client.

`make_pki(directory)` writes, in the layout `scripts/kafka.sh` expects for KAFKA_SSL_DIR:

- `ca.pem`: the CA certificate (clients trust it; the broker checks client certificates against it);
- `broker.pem`: the broker's unencrypted PKCS#8 key followed by its certificate and the CA's
  (SAN 127.0.0.1 and localhost, usable as server and as client: the broker's tools present it);
- `client.pem` + `client-key.pem`: a client certificate for mutual TLS, signed by the CA;
- `other-ca.pem`: a second, unrelated CA that signed nothing here (a client that trusts only it
  must refuse the broker).

Keys are EC P-256 (fast to make); certificates are valid from an hour ago for a week.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    directory: Path
    ca: Path
    broker: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(common_name: str, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
          usages: list[x509.ObjectIdentifier], san: list[x509.GeneralName] | None = None
          ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_pki(directory: Path) -> Pki:
    """Write a CA, a broker certificate, a client certificate and an unrelated CA into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("hiddenstate test CA")
    broker_key, broker_cert = _leaf(
        "127.0.0.1", ca_key, ca_cert, [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
    )
    client_key, client_cert = _leaf("hiddenstate", ca_key, ca_cert, [ExtendedKeyUsageOID.CLIENT_AUTH])
    _, other_cert = _ca("some other CA")
    pki = Pki(directory, directory / "ca.pem", directory / "broker.pem", directory / "client.pem",
              directory / "client-key.pem", directory / "other-ca.pem")
    pki.ca.write_bytes(_pem_cert(ca_cert))
    pki.broker.write_bytes(_pem_key(broker_key) + _pem_cert(broker_cert) + _pem_cert(ca_cert))
    pki.client_cert.write_bytes(_pem_cert(client_cert))
    pki.client_key.write_bytes(_pem_key(client_key))
    pki.other_ca.write_bytes(_pem_cert(other_cert))
    for path in (pki.broker, pki.client_key):
        path.chmod(0o600)
    return pki

"""Certificates and SuperNode keys for a deployment (``fedrecon certs``, ``fedrecon node-key``).

Written with the ``cryptography`` package rather than by calling ``openssl`` and
``ssh-keygen``, so that the same files come out on every machine that has fedrecon
installed, including ones without those tools. docs/deployment.md shows both ways.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

CERT_FILES = {"ca": "ca.crt", "cert": "server.pem", "key": "server.key"}


def refuse_existing(paths) -> None:
    """Never overwrite a key or certificate: a deployment may already trust it."""
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing:
        raise FileExistsError(f"{', '.join(existing)}: already there (delete or move it first, or pick another folder)")


def make_certificates(folder: Path, hosts: tuple[str, ...] = ("localhost",), ips: tuple[str, ...] = ("127.0.0.1",),
                      days: float = 1.0) -> dict[str, Path]:
    """A CA and a SuperLink certificate signed by it, valid ``days`` for the names ``hosts``
    and addresses ``ips`` (its subject alternative names, which the SuperNodes and the flwr
    CLI check against the address they dial). The CA's private key is not kept: to add a
    name, make a new pair and give every node the new ``ca.crt``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    if not hosts and not ips:
        raise ValueError("give at least one --host NAME or --ip ADDRESS: the names SuperNodes dial the SuperLink by")
    try:
        addresses = [ipaddress.ip_address(ip) for ip in ips]
    except ValueError as exc:
        raise ValueError(f"--ip: {exc}") from None
    folder = Path(folder)
    paths = {k: folder / name for k, name in CERT_FILES.items()}
    refuse_existing(paths.values())
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def certificate(subject, key, issuer, signer, ca: bool, san=None):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate(name("fedrecon CA"), ca_key, name("fedrecon CA"), ca_key, True)
    san = [x509.DNSName(h) for h in hosts] + [x509.IPAddress(a) for a in addresses]
    server = certificate(name(hosts[0] if hosts else str(addresses[0])), server_key, ca.subject, ca_key, False, san)
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    paths["key"].chmod(0o600)
    return paths


def make_node_key(path: Path) -> tuple[Path, Path]:
    """An ECDSA P-384 key pair in OpenSSH format (what ``ssh-keygen -t ecdsa -b 384`` writes):
    ``path`` (private, for the SuperNode) and ``path.pub`` (to register with the SuperLink)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = Path(path)
    public = path.with_name(path.name + ".pub")
    refuse_existing([path, public])
    path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    return path, public

"""Optional TLS, and client certificates as a caller identity.

Certificates are made here with `cryptography`: a private CA, a server
certificate for localhost, and client certificates named `billing` (a
configured caller) and `stranger` (not one).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from authsvc.v1 import auth_pb2, auth_pb2_grpc
from tests.conftest import Keys, Refusal, Running, StartServer
from tests.support.callers import TEST_CALLER_KEY, TEST_CALLERS
from tests.support.jwks_stub import JwksStub
from tests.support.tokens import UID_A, es256

SERVER_NAME = "localhost"
TLS_CALLERS = TEST_CALLERS + (
    '\n[callers.billing]\ntls_names = ["billing"]\nscopes = ["tokens:verify"]\n'
)


@dataclass(frozen=True)
class Pem:
    cert: bytes
    key: bytes


def _issue(
    name: str, issuer: Pem | None, *, server: bool = False
) -> tuple[Pem, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    if issuer is None:
        issuer_name, signer = subject, key
    else:
        issuer_cert = x509.load_pem_x509_certificate(issuer.cert)
        issuer_name = issuer_cert.subject
        loaded = serialization.load_pem_private_key(issuer.key, password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        signer = loaded
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False
        )
    cert = builder.sign(signer, hashes.SHA256())
    pem = Pem(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return pem, key


@dataclass(frozen=True)
class Pki:
    ca: Pem
    server: Pem
    billing: Pem
    stranger: Pem
    directory: Path

    def file(self, name: str, data: bytes) -> str:
        path = self.directory / name
        path.write_bytes(data)
        return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca, _ = _issue("authsvc test CA", None)
    return Pki(
        ca=ca,
        server=_issue(SERVER_NAME, ca, server=True)[0],
        billing=_issue("billing", ca)[0],
        stranger=_issue("stranger", ca)[0],
        directory=tmp_path_factory.mktemp("pki"),
    )


async def _start_tls(
    start_server: StartServer, jwks: JwksStub, pki: Pki, *, client_ca: bool
) -> Running:
    env = {
        "AUTHSVC_TLS_CERT_FILE": pki.file("server.pem", pki.server.cert),
        "AUTHSVC_TLS_KEY_FILE": pki.file("server.key", pki.server.key),
        "AUTHSVC_CALLERS": TLS_CALLERS,
    }
    if client_ca:
        env["AUTHSVC_TLS_CLIENT_CA_FILE"] = pki.file("ca.pem", pki.ca.cert)
    return await start_server(jwks, **env)


async def _verify(
    target: str,
    keys: Keys,
    pki: Pki,
    client: Pem | None,
    key: str | None = None,
) -> Refusal | None:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert,
        private_key=client.key if client else None,
        certificate_chain=client.cert if client else None,
    )
    options = (("grpc.ssl_target_name_override", SERVER_NAME),)
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    async with grpc.aio.secure_channel(target, credentials, options) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        try:
            response = await stub.VerifyToken(
                auth_pb2.VerifyTokenRequest(token=es256(keys.ec1)),
                metadata=metadata,
                timeout=5,
            )
        except grpc.aio.AioRpcError as error:
            return Refusal.of(error)
    assert response.sub == UID_A
    return None


async def test_a_client_certificate_named_in_tls_names_identifies_the_caller(
    start_server: StartServer, jwks: JwksStub, keys: Keys, pki: Pki
) -> None:
    running = await _start_tls(start_server, jwks, pki, client_ca=True)

    billing = await _verify(running.target, keys, pki, pki.billing)
    stranger = await _verify(running.target, keys, pki, pki.stranger)
    stranger_with_key = await _verify(
        running.target, keys, pki, pki.stranger, TEST_CALLER_KEY
    )
    no_certificate = await _verify(running.target, keys, pki, None, TEST_CALLER_KEY)

    assert billing is None
    assert stranger is not None
    assert (stranger.code, stranger.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "CALLER_KEY_MISSING",
    )
    assert stranger_with_key is None
    # With a client CA configured, a certificate is required for the handshake.
    assert no_certificate is not None
    assert no_certificate.code == grpc.StatusCode.UNAVAILABLE


async def test_tls_without_a_client_ca_takes_keys_and_refuses_plaintext(
    start_server: StartServer, jwks: JwksStub, keys: Keys, pki: Pki
) -> None:
    running = await _start_tls(start_server, jwks, pki, client_ca=False)

    with_key = await _verify(running.target, keys, pki, None, TEST_CALLER_KEY)
    without_key = await _verify(running.target, keys, pki, None)
    with pytest.raises(grpc.aio.AioRpcError) as plaintext:
        await running.verify(es256(keys.ec1), timeout=3)

    assert with_key is None
    assert without_key is not None
    assert without_key.reason == "CALLER_KEY_MISSING"
    assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE

"""An attack corpus for VerifyToken: hostile tokens sent to a real server.

Every case is refused with the status and reason it names, the reason is one
the proto documents, and nothing the caller sees repeats the token or any key.
The tokens are built from the session keys when a case runs; the control test
at the bottom shows that the same harness reports a genuine token as accepted.
"""

from __future__ import annotations

import base64
import hmac
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from authsvc.errors import ERROR_DOMAIN, Reason
from authsvc.v1 import auth_pb2
from tests.conftest import Keys, Refusal, Running
from tests.support.tokens import (
    HS_SECRET,
    REMOVE,
    UID_B,
    EcKey,
    RsaKey,
    b64url,
    es256,
    hs256,
    rs256,
    supabase_claims,
)

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
# gRPC itself refuses a request over the server's 4 MiB receive limit, before
# authsvc runs: that refusal has no ErrorInfo, hence no reason.
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
TRANSPORT_REFUSAL = (RESOURCE_EXHAUSTED, "")

# The refusals the proto documents for VerifyToken, by status.
DOCUMENTED_REFUSALS: Mapping[grpc.StatusCode, frozenset[str]] = {
    UNAUTHENTICATED: frozenset(
        {
            Reason.MALFORMED,
            Reason.ALGORITHM_NOT_ALLOWED,
            Reason.HEADER_NOT_ALLOWED,
            Reason.UNKNOWN_KEY,
            Reason.BAD_SIGNATURE,
            Reason.TOKEN_EXPIRED,
            Reason.TOKEN_NOT_YET_VALID,
            Reason.BAD_ISSUER,
            Reason.BAD_AUDIENCE,
            Reason.INVALID_CLAIM,
        }
    ),
    INVALID_ARGUMENT: frozenset({Reason.TOKEN_TOO_LARGE, Reason.TOKEN_MISSING}),
}
MAX_TOKEN_BYTES = 16 * 1024
MIN_CORPUS_SIZE = 40
# Token segments shorter than this could turn up in a message by chance.
MIN_SEGMENT_CHARS_CHECKED = 16
NESTING_LEVELS = 1000
ES256_HEADER = {"alg": "ES256", "kid": "ec-1", "typ": "JWT"}
RS256_HEADER = {"alg": "RS256", "kid": "rsa-1", "typ": "JWT"}

Sign = Callable[[bytes], bytes]
Build = Callable[[Keys], str]


@dataclass(frozen=True)
class Attack:
    """One hostile token and the refusal it must get."""

    name: str
    build: Build
    reason: str
    code: grpc.StatusCode = UNAUTHENTICATED
    metadata: Mapping[str, str] = field(default_factory=dict)


# Building blocks: JSON text and signatures made by hand, so that a case can
# sign bytes no well-behaved JWT library would produce.


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _compact(header: bytes, payload: bytes, sign: Sign | None) -> str:
    signing_input = f"{b64url(header)}.{b64url(payload)}"
    signature = b"" if sign is None else sign(signing_input.encode())
    return f"{signing_input}.{b64url(signature)}"


def _signed_text(signing_input: str, sign: Sign) -> str:
    """Sign whatever text stands before the last dot, however broken it is."""
    return f"{signing_input}.{b64url(sign(signing_input.encode()))}"


def _claims_with(raw_members: str | bytes, **overrides: Any) -> bytes:
    """Supabase claims as JSON text with `raw_members` spliced in at the end."""
    if isinstance(raw_members, str):
        raw_members = raw_members.encode()
    return _json(supabase_claims(**overrides))[:-1] + b"," + raw_members + b"}"


def _hmac(secret: bytes, digest: str = "sha256") -> Sign:
    return lambda data: hmac.new(secret, data, digest).digest()


def _ecdsa(key: EcKey, algorithm: hashes.HashAlgorithm) -> Sign:
    def sign(data: bytes) -> bytes:
        r, s = decode_dss_signature(key.private.sign(data, ec.ECDSA(algorithm)))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    return sign


def _pss(key: RsaKey) -> Sign:
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    return lambda data: key.private.sign(data, pss, hashes.SHA256())


def _public_bytes(key: EcKey | RsaKey, encoding: Encoding, form: PublicFormat) -> bytes:
    return key.private.public_key().public_bytes(encoding, form)


def _pem(key: EcKey | RsaKey) -> bytes:
    return _public_bytes(key, Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def _der(key: EcKey | RsaKey) -> bytes:
    return _public_bytes(key, Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _confused(secret: bytes, alg: str = "HS256", kid: str | None = None) -> str:
    """An HMAC token keyed with public key material, as in RS/HS confusion."""
    digest = {"HS256": "sha256", "HS384": "sha384", "HS512": "sha512"}[alg]
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    return _compact(_json(header), _json(supabase_claims()), _hmac(secret, digest))


def _self_signed_x5c(key: EcKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evil.example")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key.private, hashes.SHA256())
    )
    return base64.b64encode(certificate.public_bytes(Encoding.DER)).decode()


def _evil(keys: Keys, **header: Any) -> str:
    """A token signed by the attacker's key, naming EC1's kid."""
    return es256(keys.ec_evil, supabase_claims(), **header)


def _segments_replaced(token: str, index: int, segment: str) -> str:
    parts = token.split(".")
    parts[index] = segment
    return ".".join(parts)


def _payload_swapped(keys: Keys, **changes: Any) -> str:
    """Sign one payload, then put a changed copy of it under the signature."""
    claims = supabase_claims()
    token = es256(keys.ec1, claims)
    return _segments_replaced(token, 1, b64url(_json({**claims, **changes})))


def _header_swapped(token: str, header: dict[str, Any]) -> str:
    return _segments_replaced(token, 0, b64url(_json(header)))


def _nested(levels: int) -> str:
    return '{"n":' * levels + "0" + "}" * levels


def _just_over_the_limit(keys: Keys) -> str:
    """A well-signed token a few characters longer than the maximum."""
    blob = 0
    token = es256(keys.ec1)
    while len(token) <= MAX_TOKEN_BYTES:
        blob += max(1, (MAX_TOKEN_BYTES + 1 - len(token)) * 3 // 4)
        token = es256(keys.ec1, supabase_claims(app_metadata={"blob": "x" * blob}))
    return token


def _token_of_about(keys: Keys, size: int) -> str:
    """A well-signed token of about `size` characters (base64 adds a third)."""
    blob = "x" * (size * 3 // 4)
    return es256(keys.ec1, supabase_claims(app_metadata={"blob": blob}))


def _standard_alphabet(keys: Keys, urlsafe: str, standard: str) -> str:
    """A token holding `urlsafe`, spelled in the standard base64 alphabet."""
    for n in range(1000):
        token = es256(keys.ec1, supabase_claims(jti=str(n)))
        if urlsafe in token:
            return token.replace(urlsafe, standard)
    raise AssertionError(f"no token with {urlsafe!r} in 1000 tries")


def _padded(keys: Keys) -> str:
    """Standard base64 padding, signed as a lenient signer would sign it."""
    for n in range(3):
        payload = _json(supabase_claims(jti="x" * n))
        if len(payload) % 3:
            break
    header = b64url(_json(ES256_HEADER))
    signing_input = f"{header}.{base64.urlsafe_b64encode(payload).decode()}"
    return _signed_text(signing_input, keys.ec1.sign_raw)


def _length_one_mod_four(keys: Keys, index: int) -> str:
    """Segment `index` stretched to a length no base64 text can have."""
    parts = es256(keys.ec1).split(".")
    parts[index] += "A" * ((1 - len(parts[index])) % 4)
    return _signed_text(".".join(parts[:2]), keys.ec1.sign_raw)


def _inserted(token: str, index: int, text: str) -> str:
    """`text` put into the middle of segment `index`."""
    parts = token.split(".")
    middle = len(parts[index]) // 2
    parts[index] = parts[index][:middle] + text + parts[index][middle:]
    return ".".join(parts)


def _raw_es256(keys: Keys, header: bytes, payload: bytes) -> str:
    return _compact(header, payload, keys.ec1.sign_raw)


def _now() -> int:
    return int(time.time())


ALGORITHM_CONFUSION = [
    Attack(
        "hs256-keyed-with-rsa-pem-kid-rsa-1",
        lambda k: _confused(_pem(k.rsa1), kid="rsa-1"),
        Reason.BAD_SIGNATURE,
    ),
    Attack(
        "hs256-keyed-with-rsa-pem-no-kid",
        lambda k: _confused(_pem(k.rsa1)),
        Reason.BAD_SIGNATURE,
    ),
    Attack(
        "hs256-keyed-with-rsa-pkcs1-pem-kid-rsa-1",
        lambda k: _confused(
            _public_bytes(k.rsa1, Encoding.PEM, PublicFormat.PKCS1), kid="rsa-1"
        ),
        Reason.BAD_SIGNATURE,
    ),
    Attack(
        "hs256-keyed-with-rsa-der-kid-rsa-1",
        lambda k: _confused(_der(k.rsa1), kid="rsa-1"),
        Reason.BAD_SIGNATURE,
    ),
    Attack(
        "hs256-keyed-with-rsa-der-no-kid",
        lambda k: _confused(_der(k.rsa1)),
        Reason.BAD_SIGNATURE,
    ),
    Attack(
        "hs256-keyed-with-ec-pem-kid-ec-1",
        lambda k: _confused(_pem(k.ec1), kid="ec-1"),
        Reason.BAD_SIGNATURE,
    ),
    Attack(
        "hs256-keyed-with-ec-pem-no-kid",
        lambda k: _confused(_pem(k.ec1)),
        Reason.BAD_SIGNATURE,
    ),
    Attack(
        "hs256-keyed-with-rsa-jwk-json-kid-rsa-1",
        lambda k: _confused(_json(k.rsa1.jwk()), kid="rsa-1"),
        Reason.BAD_SIGNATURE,
    ),
    Attack(
        "hs256-keyed-with-rsa-jwk-json-no-kid",
        lambda k: _confused(_json(k.rsa1.jwk())),
        Reason.BAD_SIGNATURE,
    ),
    Attack(
        "hs256-keyed-with-ec-jwk-json-kid-ec-1",
        lambda k: _confused(_json(k.ec1.jwk()), kid="ec-1"),
        Reason.BAD_SIGNATURE,
    ),
    Attack(
        "hs256-keyed-with-ec-jwk-json-no-kid",
        lambda k: _confused(_json(k.ec1.jwk())),
        Reason.BAD_SIGNATURE,
    ),
    Attack(
        "hs384-keyed-with-rsa-pem-kid-rsa-1",
        lambda k: _confused(_pem(k.rsa1), "HS384", kid="rsa-1"),
        Reason.ALGORITHM_NOT_ALLOWED,
    ),
    Attack(
        "hs512-keyed-with-ec-pem-kid-ec-1",
        lambda k: _confused(_pem(k.ec1), "HS512", kid="ec-1"),
        Reason.ALGORITHM_NOT_ALLOWED,
    ),
    Attack(
        "hs512-keyed-with-rsa-jwk-json-no-kid",
        lambda k: _confused(_json(k.rsa1.jwk()), "HS512"),
        Reason.ALGORITHM_NOT_ALLOWED,
    ),
]

UNACCEPTED_ALGORITHMS = [
    *(
        Attack(
            f"alg-{alg}-{'signed' if signed else 'unsigned'}",
            lambda k, alg=alg, signed=signed: _compact(
                _json({"alg": alg, "typ": "JWT"}),
                _json(supabase_claims()),
                k.ec1.sign_raw if signed else None,
            ),
            Reason.ALGORITHM_NOT_ALLOWED,
        )
        for alg in ("none", "None", "NONE", "nOnE")
        for signed in (False, True)
    ),
    Attack(
        "alg-missing",
        lambda k: es256(k.ec1, alg=REMOVE),
        Reason.ALGORITHM_NOT_ALLOWED,
    ),
    Attack("alg-null", lambda k: es256(k.ec1, alg=None), Reason.ALGORITHM_NOT_ALLOWED),
    Attack("alg-number", lambda k: es256(k.ec1, alg=1), Reason.ALGORITHM_NOT_ALLOWED),
    Attack(
        "alg-list",
        lambda k: es256(k.ec1, alg=["ES256"]),
        Reason.ALGORITHM_NOT_ALLOWED,
    ),
    Attack(
        "alg-lowercase-es256",
        lambda k: es256(k.ec1, alg="es256"),
        Reason.ALGORITHM_NOT_ALLOWED,
    ),
    Attack(
        "alg-es256-with-a-trailing-space",
        lambda k: es256(k.ec1, alg="ES256 "),
        Reason.ALGORITHM_NOT_ALLOWED,
    ),
    Attack(
        "alg-es384-with-the-p256-key",
        lambda k: _compact(
            _json({**ES256_HEADER, "alg": "ES384"}),
            _json(supabase_claims()),
            _ecdsa(k.ec1, hashes.SHA384()),
        ),
        Reason.ALGORITHM_NOT_ALLOWED,
    ),
    Attack(
        "alg-ps256-with-the-rsa-key",
        lambda k: _compact(
            _json({**RS256_HEADER, "alg": "PS256"}),
            _json(supabase_claims()),
            _pss(k.rsa1),
        ),
        Reason.ALGORITHM_NOT_ALLOWED,
    ),
    Attack(
        "alg-eddsa",
        lambda k: _compact(
            _json({"alg": "EdDSA", "kid": "ec-1", "typ": "JWT"}),
            _json(supabase_claims()),
            ed25519.Ed25519PrivateKey.generate().sign,
        ),
        Reason.ALGORITHM_NOT_ALLOWED,
    ),
]

HOSTILE_KIDS = [
    *(
        Attack(
            f"kid-{name}",
            lambda k, kid=kid: es256(k.ec1, kid=kid),
            Reason.UNKNOWN_KEY,
        )
        for name, kid in {
            "path-traversal": "../../etc/passwd",
            "device-path": "/dev/null",
            "sql-injection": "' OR 1=1 --",
            "nul-suffix": "ec-1\u0000",
            "10-kib": "k" * 10 * 1024,
        }.items()
    ),
    Attack("kid-number", lambda k: es256(k.ec1, kid=1), Reason.MALFORMED),
    Attack(
        "kid-object",
        lambda k: es256(k.ec1, kid={"$ne": ""}),
        Reason.MALFORMED,
    ),
]

KEY_POINTING_HEADERS = [
    Attack(
        "jku-to-an-attacker-jwks",
        lambda k: _evil(k, jku="https://evil.example/jwks.json"),
        Reason.HEADER_NOT_ALLOWED,
        metadata={"header": "jku"},
    ),
    Attack(
        "x5u-to-an-attacker-certificate",
        lambda k: _evil(k, x5u="https://evil.example/cert.pem"),
        Reason.HEADER_NOT_ALLOWED,
        metadata={"header": "x5u"},
    ),
    Attack(
        "jwk-embedding-the-attacker-key",
        lambda k: _evil(k, jwk=k.ec_evil.jwk()),
        Reason.HEADER_NOT_ALLOWED,
        metadata={"header": "jwk"},
    ),
    Attack(
        "x5c-with-a-self-signed-attacker-certificate",
        lambda k: _evil(k, x5c=[_self_signed_x5c(k.ec_evil)]),
        Reason.HEADER_NOT_ALLOWED,
        metadata={"header": "x5c"},
    ),
    Attack(
        "crit-exp",
        lambda k: es256(k.ec1, crit=["exp"]),
        Reason.HEADER_NOT_ALLOWED,
        metadata={"header": "crit"},
    ),
    Attack(
        "crit-b64-with-b64-false",
        lambda k: es256(k.ec1, crit=["b64"], b64=False),
        Reason.HEADER_NOT_ALLOWED,
        metadata={"header": "crit"},
    ),
    Attack(
        "crit-empty-list",
        lambda k: es256(k.ec1, crit=[]),
        Reason.HEADER_NOT_ALLOWED,
        metadata={"header": "crit"},
    ),
    Attack(
        "crit-as-a-string",
        lambda k: es256(k.ec1, crit="exp"),
        Reason.HEADER_NOT_ALLOWED,
        metadata={"header": "crit"},
    ),
]

BROKEN_SIGNATURES = [
    Attack(
        "signature-stripped-es256",
        lambda k: _segments_replaced(es256(k.ec1), 2, ""),
        Reason.BAD_SIGNATURE,
    ),
    Attack(
        "signature-stripped-rs256",
        lambda k: _segments_replaced(rs256(k.rsa1), 2, ""),
        Reason.BAD_SIGNATURE,
    ),
    Attack(
        "signature-stripped-hs256",
        lambda k: _segments_replaced(hs256(), 2, ""),
        Reason.BAD_SIGNATURE,
    ),
    # 86 characters less one cannot be base64; less ten decodes to 57 bytes.
    Attack(
        "signature-truncated-by-1",
        lambda k: es256(k.ec1)[:-1],
        Reason.MALFORMED,
    ),
    Attack(
        "signature-truncated-by-10",
        lambda k: es256(k.ec1)[:-10],
        Reason.BAD_SIGNATURE,
    ),
    Attack(
        "signature-der-encoded-ecdsa",
        lambda k: _signed_text(es256(k.ec1).rsplit(".", 1)[0], k.ec1.sign_der),
        Reason.BAD_SIGNATURE,
    ),
    Attack(
        "signature-of-a-different-token",
        lambda k: _segments_replaced(
            es256(k.ec1),
            2,
            es256(k.ec1, supabase_claims(sub=UID_B)).split(".")[2],
        ),
        Reason.BAD_SIGNATURE,
    ),
    Attack(
        "signature-by-the-attacker-key-with-kid-ec-1",
        lambda k: _evil(k),
        Reason.BAD_SIGNATURE,
    ),
    Attack(
        "extra-trailing-dot",
        lambda k: es256(k.ec1) + ".",
        Reason.MALFORMED,
    ),
    Attack(
        "two-segments",
        lambda k: es256(k.ec1).rsplit(".", 1)[0],
        Reason.MALFORMED,
    ),
    Attack(
        "four-segments",
        lambda k: es256(k.ec1) + "." + b64url(b"more"),
        Reason.MALFORMED,
    ),
    Attack(
        "five-segments-shaped-like-a-jwe",
        lambda k: ".".join([b64url(b'{"alg":"dir","enc":"A256GCM"}'), *"abcd"]),
        Reason.MALFORMED,
    ),
]

TAMPERED = [
    Attack(
        "payload-swapped-sub",
        lambda k: _payload_swapped(k, sub=UID_B),
        Reason.BAD_SIGNATURE,
    ),
    Attack(
        "payload-swapped-role-service-role",
        lambda k: _payload_swapped(k, role="service_role"),
        Reason.BAD_SIGNATURE,
    ),
    Attack(
        "payload-swapped-exp-extended",
        lambda k: _payload_swapped(k, exp=_now() + 10 * 365 * 86400),
        Reason.BAD_SIGNATURE,
    ),
    Attack(
        "hs256-payload-swapped-role-service-role",
        lambda k: _segments_replaced(
            hs256(), 1, b64url(_json(supabase_claims(role="service_role")))
        ),
        Reason.BAD_SIGNATURE,
    ),
    Attack(
        "header-swapped-es256-to-rs256",
        lambda k: _header_swapped(es256(k.ec1), {**ES256_HEADER, "alg": "RS256"}),
        Reason.ALGORITHM_NOT_ALLOWED,
    ),
    Attack(
        "header-swapped-rs256-to-es256",
        lambda k: _header_swapped(rs256(k.rsa1), {**RS256_HEADER, "alg": "ES256"}),
        Reason.ALGORITHM_NOT_ALLOWED,
    ),
    Attack(
        "header-swapped-es256-to-rs256-with-kid-rsa-1",
        lambda k: _header_swapped(es256(k.ec1), RS256_HEADER),
        Reason.BAD_SIGNATURE,
    ),
    Attack(
        "header-swapped-es256-to-hs256",
        lambda k: _header_swapped(es256(k.ec1), {"alg": "HS256", "typ": "JWT"}),
        Reason.BAD_SIGNATURE,
    ),
]

DEEP_NESTING = [
    Attack(
        f"claims-nested-{NESTING_LEVELS}-levels",
        lambda k: _raw_es256(
            k, _json(ES256_HEADER), _claims_with(f'"deep":{_nested(NESTING_LEVELS)}')
        ),
        Reason.MALFORMED,
    ),
    Attack(
        f"arrays-nested-{NESTING_LEVELS}-levels",
        lambda k: _raw_es256(
            k,
            _json(ES256_HEADER),
            _claims_with('"deep":' + "[" * NESTING_LEVELS + "]" * NESTING_LEVELS),
        ),
        Reason.MALFORMED,
    ),
    Attack(
        f"header-nested-{NESTING_LEVELS}-levels",
        lambda k: _raw_es256(
            k,
            f'{{"alg":"ES256","kid":"ec-1","x":{_nested(NESTING_LEVELS)}}}'.encode(),
            _json(supabase_claims()),
        ),
        Reason.MALFORMED,
    ),
]

SIZE_LIMITS = [
    Attack("empty", lambda k: "", Reason.TOKEN_MISSING, INVALID_ARGUMENT),
    Attack(
        "just-over-16-kib",
        _just_over_the_limit,
        Reason.TOKEN_TOO_LARGE,
        INVALID_ARGUMENT,
        {"max_bytes": str(MAX_TOKEN_BYTES)},
    ),
    Attack(
        "under-16-ki-characters-but-over-16-kib-of-utf8",
        lambda k: "é" * (MAX_TOKEN_BYTES // 2 + 1),
        Reason.TOKEN_TOO_LARGE,
        INVALID_ARGUMENT,
    ),
    Attack(
        "3-mib-under-the-grpc-message-limit",
        lambda k: _token_of_about(k, 3 * 1024 * 1024),
        Reason.TOKEN_TOO_LARGE,
        INVALID_ARGUMENT,
    ),
    # gRPC's 4 MiB receive limit refuses this one before authsvc sees it.
    Attack(
        "5-mib-over-the-grpc-message-limit",
        lambda k: _token_of_about(k, 5 * 1024 * 1024),
        "",
        RESOURCE_EXHAUSTED,
    ),
]

HOSTILE_TIMES = [
    Attack(
        "exp-numeric-string",
        lambda k: es256(k.ec1, supabase_claims(exp="9999999999")),
        Reason.INVALID_CLAIM,
        metadata={"claim": "exp"},
    ),
    Attack(
        "exp-fractional-in-the-past",
        lambda k: es256(k.ec1, supabase_claims(exp=_now() - 3600.5, iat=_now() - 7200)),
        Reason.TOKEN_EXPIRED,
    ),
    Attack(
        "exp-1e400",
        lambda k: _raw_es256(
            k, _json(ES256_HEADER), _claims_with('"exp":1e400', exp=REMOVE)
        ),
        Reason.MALFORMED,
    ),
    Attack(
        "exp-nan",
        lambda k: _raw_es256(
            k, _json(ES256_HEADER), _claims_with('"exp":NaN', exp=REMOVE)
        ),
        Reason.MALFORMED,
    ),
    # Integers past 2**63 are refused while the JSON is read, before any claim rule.
    Attack(
        "exp-10-to-the-30",
        lambda k: es256(k.ec1, supabase_claims(exp=10**30)),
        Reason.MALFORMED,
    ),
    Attack(
        "exp-1e30-as-a-float",
        lambda k: es256(k.ec1, supabase_claims(exp=1e30)),
        Reason.INVALID_CLAIM,
        metadata={"claim": "exp"},
    ),
    Attack(
        "exp-negative",
        lambda k: es256(k.ec1, supabase_claims(exp=-(_now() + 3600))),
        Reason.INVALID_CLAIM,
        metadata={"claim": "exp"},
    ),
    Attack(
        "exp-null",
        lambda k: es256(k.ec1, supabase_claims(exp=None)),
        Reason.INVALID_CLAIM,
        metadata={"claim": "exp"},
    ),
    Attack(
        "exp-true",
        lambda k: es256(k.ec1, supabase_claims(exp=True)),
        Reason.INVALID_CLAIM,
        metadata={"claim": "exp"},
    ),
    Attack(
        "exp-missing",
        lambda k: es256(k.ec1, supabase_claims(exp=REMOVE)),
        Reason.INVALID_CLAIM,
        metadata={"claim": "exp"},
    ),
    Attack(
        "iat-in-the-far-future",
        lambda k: es256(k.ec1, supabase_claims(iat=_now() + 50 * 365 * 86400)),
        Reason.TOKEN_NOT_YET_VALID,
        metadata={"claim": "iat"},
    ),
    Attack(
        "iat-after-year-9999",
        lambda k: es256(k.ec1, supabase_claims(iat=10**15)),
        Reason.INVALID_CLAIM,
        metadata={"claim": "iat"},
    ),
]

DUPLICATE_KEYS = [
    Attack(
        "duplicate-sub",
        lambda k: _raw_es256(k, _json(ES256_HEADER), _claims_with(f'"sub":"{UID_B}"')),
        Reason.MALFORMED,
    ),
    Attack(
        "duplicate-sub-spelled-with-an-escape",
        lambda k: _raw_es256(
            k, _json(ES256_HEADER), _claims_with(f'"\\u0073ub":"{UID_B}"')
        ),
        Reason.MALFORMED,
    ),
    Attack(
        "duplicate-exp-later-value-last",
        lambda k: _raw_es256(
            k,
            _json(ES256_HEADER),
            _claims_with(f'"exp":{_now() + 10**8}', exp=_now() - 3600),
        ),
        Reason.MALFORMED,
    ),
    Attack(
        "duplicate-alg-in-header",
        lambda k: _raw_es256(
            k, b'{"alg":"none","kid":"ec-1","alg":"ES256"}', _json(supabase_claims())
        ),
        Reason.MALFORMED,
    ),
    Attack(
        "duplicate-kid-in-header",
        lambda k: _raw_es256(
            k, b'{"alg":"ES256","kid":"rsa-1","kid":"ec-1"}', _json(supabase_claims())
        ),
        Reason.MALFORMED,
    ),
]

BAD_BASE64 = [
    Attack("padding", _padded, Reason.MALFORMED),
    Attack(
        "standard-alphabet-plus",
        lambda k: _standard_alphabet(k, "-", "+"),
        Reason.MALFORMED,
    ),
    Attack(
        "standard-alphabet-slash",
        lambda k: _standard_alphabet(k, "_", "/"),
        Reason.MALFORMED,
    ),
    Attack("space-inside", lambda k: _inserted(es256(k.ec1), 1, " "), Reason.MALFORMED),
    Attack(
        "newline-inside",
        lambda k: _inserted(es256(k.ec1), 2, "\n"),
        Reason.MALFORMED,
    ),
    Attack("trailing-newline", lambda k: es256(k.ec1) + "\n", Reason.MALFORMED),
    Attack(
        "non-ascii-letter",
        lambda k: _inserted(es256(k.ec1), 1, "é"),
        Reason.MALFORMED,
    ),
    Attack(
        "fullwidth-letters",
        lambda k: es256(k.ec1).replace("e", "\uff45", 1),
        Reason.MALFORMED,
    ),
    Attack(
        "header-length-1-mod-4",
        lambda k: _length_one_mod_four(k, 0),
        Reason.MALFORMED,
    ),
    # Signed as it stands, so only the decoder can refuse it.
    Attack(
        "payload-length-1-mod-4",
        lambda k: _length_one_mod_four(k, 1),
        Reason.MALFORMED,
    ),
]

NOT_UTF8 = [
    Attack(
        "header-with-byte-ff",
        lambda k: _raw_es256(
            k, b'{"alg":"ES256","kid":"ec-1","x":"\xff"}', _json(supabase_claims())
        ),
        Reason.MALFORMED,
    ),
    Attack(
        "header-with-a-utf8-bom",
        lambda k: _raw_es256(
            k, b"\xef\xbb\xbf" + _json(ES256_HEADER), _json(supabase_claims())
        ),
        Reason.MALFORMED,
    ),
    *(
        Attack(
            f"payload-with-{name}",
            lambda k, raw=raw: _raw_es256(
                k, _json(ES256_HEADER), _claims_with(b'"note":"' + raw + b'"')
            ),
            Reason.MALFORMED,
        )
        for name, raw in {
            "bytes-ff-fe": b"\xff\xfe",
            "latin1-e-acute": b"caf\xe9",
            "overlong-slash": b"\xc0\xaf",
            "cesu-surrogate": b"\xed\xa0\x80",
        }.items()
    ),
]

ATTACKS = [
    *ALGORITHM_CONFUSION,
    *UNACCEPTED_ALGORITHMS,
    *HOSTILE_KIDS,
    *KEY_POINTING_HEADERS,
    *BROKEN_SIGNATURES,
    *TAMPERED,
    *DEEP_NESTING,
    *SIZE_LIMITS,
    *HOSTILE_TIMES,
    *DUPLICATE_KEYS,
    *BAD_BASE64,
    *NOT_UTF8,
]


# The harness: send one token, then list everything wrong with the answer.


async def _outcome(
    server: Running, token: str
) -> auth_pb2.VerifyTokenResponse | Refusal:
    try:
        return await server.verify(token)
    except grpc.aio.AioRpcError as error:
        return Refusal.of(error)


def _key_material(keys: Keys) -> list[str]:
    """Text that must never reach a caller: the secret and every key's numbers."""
    material = [HS_SECRET]
    for key in (keys.ec1, keys.ec2, keys.rsa1, keys.ec_evil):
        jwk = key.jwk()
        material += [jwk[member] for member in ("x", "y", "n") if member in jwk]
        # The start of a PEM body is the algorithm's, shared by every key of a type.
        pem_body = b"".join(_pem(key).splitlines()[1:-1]).decode()
        middle = len(pem_body) // 2
        material.append(pem_body[middle - 20 : middle + 20])
    return material


def _problems(
    attack: Attack,
    token: str,
    outcome: auth_pb2.VerifyTokenResponse | Refusal,
    key_material: list[str],
) -> list[str]:
    """Everything wrong with how `attack` was answered; empty when all is well."""
    if not isinstance(outcome, Refusal):
        return [f"accepted: sub={outcome.sub!r} algorithm={outcome.algorithm!r}"]

    problems = []
    seen = (outcome.code, outcome.reason)
    expected = (attack.code, attack.reason)
    if not seen == expected == TRANSPORT_REFUSAL:
        if outcome.reason not in DOCUMENTED_REFUSALS.get(outcome.code, ()):
            problems.append(f"{outcome.code.name}/{outcome.reason!r} is not documented")
        if outcome.domain != ERROR_DOMAIN:
            problems.append(f"ErrorInfo domain is {outcome.domain!r}")
    if seen != expected:
        problems.append(
            f"expected {attack.code.name}/{attack.reason}, "
            f"got {outcome.code.name}/{outcome.reason} ({outcome.message})"
        )
    for name, value in attack.metadata.items():
        if outcome.metadata.get(name) != value:
            problems.append(
                f"metadata {name}={outcome.metadata.get(name)!r}, not {value!r}"
            )

    shown = " ".join([outcome.message, *outcome.metadata.values()])
    segments = [s for s in token.split(".") if len(s) >= MIN_SEGMENT_CHARS_CHECKED]
    if any(segment in shown for segment in segments):
        problems.append("the refusal repeats part of the token")
    if any(material in shown for material in key_material):
        problems.append("the refusal repeats key material")
    return problems


@pytest.mark.parametrize(
    "attack", [pytest.param(attack, id=attack.name) for attack in ATTACKS]
)
async def test_hostile_token_is_refused_with_its_documented_reason(
    server: Running, keys: Keys, attack: Attack
) -> None:
    token = attack.build(keys)

    outcome = await _outcome(server, token)
    problems = _problems(attack, token, outcome, _key_material(keys))

    assert not problems, "; ".join(problems)


def test_the_corpus_holds_at_least_40_distinct_named_tokens(keys: Keys) -> None:
    tokens = {attack.name: attack.build(keys) for attack in ATTACKS}

    assert len(tokens) == len(ATTACKS), "two cases share a name"
    assert len(set(tokens.values())) == len(tokens) >= MIN_CORPUS_SIZE


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda k: es256(k.ec1), id="es256"),
        pytest.param(lambda k: rs256(k.rsa1), id="rs256"),
        pytest.param(lambda k: hs256(), id="hs256"),
    ],
)
async def test_control_the_harness_reports_a_genuine_token_as_accepted(
    server: Running, keys: Keys, build: Build
) -> None:
    """Without this, a server refusing everything would pass the corpus."""
    token = build(keys)
    control = Attack("control", build, Reason.BAD_SIGNATURE)

    outcome = await _outcome(server, token)
    problems = _problems(control, token, outcome, _key_material(keys))

    assert isinstance(outcome, auth_pb2.VerifyTokenResponse)
    assert [problem.split(":")[0] for problem in problems] == ["accepted"]

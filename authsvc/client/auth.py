"""`AuthClient.verify_token(s)`: users' access tokens in, typed `Claims` out."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format, struct_pb2

from authsvc.client.connection import Connection
from authsvc.client.errors import ClientError, error_from_token_error
from authsvc.v1 import auth_pb2, auth_pb2_grpc

# Struct numbers are doubles; whole ones up to 2^53 came from JSON integers.
_EXACT_INTEGER_LIMIT = 2**53


@dataclass(frozen=True)
class Claims:
    """A verified Supabase access token, as authsvc reports it.

    Strings the token may lack (`email`, `phone`, `org_id`, ...) are None when
    absent. `claims` holds every claim of the token, custom ones included;
    whole numbers in it are ints, like `jwt.decode` gives them.
    """

    sub: str
    role: str
    email: str | None
    phone: str | None
    aal: str
    session_id: str | None
    is_anonymous: bool
    issuer: str
    audience: tuple[str, ...]
    issued_at: datetime.datetime
    expires_at: datetime.datetime
    app_metadata: dict[str, Any]
    user_metadata: dict[str, Any]
    # From a custom access-token hook; None when absent or not a string.
    org_id: str | None
    user_role: str | None
    claims: dict[str, Any]
    # Which key and algorithm verified the token (key_id None for HS256).
    key_id: str | None
    algorithm: str

    @classmethod
    def from_response(cls, response: auth_pb2.VerifyTokenResponse) -> Claims:
        return cls(
            sub=response.sub,
            role=response.role,
            email=response.email or None,
            phone=response.phone or None,
            aal=response.aal,
            session_id=response.session_id or None,
            is_anonymous=response.is_anonymous,
            issuer=response.issuer,
            audience=tuple(response.audience),
            issued_at=response.issued_at.ToDatetime(tzinfo=datetime.UTC),
            expires_at=response.expires_at.ToDatetime(tzinfo=datetime.UTC),
            app_metadata=_struct(response.app_metadata),
            user_metadata=_struct(response.user_metadata),
            org_id=response.org_id or None,
            user_role=response.user_role or None,
            claims=_struct(response.claims),
            key_id=response.key_id or None,
            algorithm=response.algorithm,
        )


class AuthClient:
    """AuthService over a shared `Connection`."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._stub = auth_pb2_grpc.AuthServiceStub(connection.channel)

    async def verify_token(
        self,
        token: str,
        *,
        reject_anonymous: bool = False,
        timeout: float | None = None,
    ) -> Claims:
        """The token's claims; `ClientError` (UNAUTHENTICATED, ...) if refused.

        `token` is the raw JWT, without `Bearer `. With `reject_anonymous`, an
        anonymous sign-in is PERMISSION_DENIED / ANONYMOUS_NOT_ALLOWED.
        """
        request = auth_pb2.VerifyTokenRequest(
            token=token, reject_anonymous=reject_anonymous
        )
        response = await self._connection.call(self._stub.VerifyToken, request, timeout)
        return Claims.from_response(response)

    async def verify_tokens(
        self,
        tokens: Sequence[str],
        *,
        reject_anonymous: bool = False,
        timeout: float | None = None,
    ) -> list[Claims | ClientError]:
        """One result per token, in order: its `Claims`, or the `ClientError`
        `verify_token` would have raised for it (returned, not raised). The
        call itself raises only for the app's own problems (key, scope, a
        batch over the server's AUTHSVC_MAX_BATCH_TOKENS)."""
        request = auth_pb2.VerifyTokensRequest(
            tokens=tokens, reject_anonymous=reject_anonymous
        )
        response = await self._connection.call(
            self._stub.VerifyTokens, request, timeout
        )
        return [
            Claims.from_response(result.claims)
            if result.WhichOneof("result") == "claims"
            else error_from_token_error(result.error)
            for result in response.results
        ]


def _struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    value: dict[str, Any] = _whole_numbers(json_format.MessageToDict(struct))
    return value


def _whole_numbers(value: Any) -> Any:
    if (
        isinstance(value, float)
        and value.is_integer()
        and abs(value) <= _EXACT_INTEGER_LIMIT
    ):
        return int(value)
    if isinstance(value, dict):
        return {key: _whole_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(item) for item in value]
    return value

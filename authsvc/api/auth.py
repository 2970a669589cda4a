"""AuthService: VerifyToken over the shared TokenVerifier."""

from __future__ import annotations

from typing import Any

import grpc

from authsvc.access import Caller, Scope
from authsvc.tokens import TokenVerifier, VerifiedToken
from authsvc.v1 import auth_pb2

SERVICE = auth_pb2.DESCRIPTOR.services_by_name["AuthService"]
SERVICE_NAME = SERVICE.full_name


class AuthServicer:
    """AuthService's methods, registered by `api.registry` behind the gate."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self._verifier = verifier

    async def VerifyToken(
        self,
        request: auth_pb2.VerifyTokenRequest,
        context: grpc.aio.ServicerContext[Any, Any],
        caller: Caller,
    ) -> auth_pb2.VerifyTokenResponse:
        caller.require(Scope.TOKENS_VERIFY)
        verified = await self._verifier.verify(
            request.token, reject_anonymous=request.reject_anonymous
        )
        return to_response(verified)


def to_response(verified: VerifiedToken) -> auth_pb2.VerifyTokenResponse:
    response = auth_pb2.VerifyTokenResponse(
        sub=verified.sub,
        email=verified.string_claim("email"),
        phone=verified.string_claim("phone"),
        role=verified.string_claim("role"),
        aal=verified.string_claim("aal"),
        session_id=verified.string_claim("session_id"),
        is_anonymous=verified.is_anonymous,
        issuer=verified.issuer,
        audience=verified.audience,
        org_id=verified.string_claim("org_id"),
        user_role=verified.string_claim("user_role"),
        key_id=verified.key_id or "",
        algorithm=verified.algorithm,
    )
    response.issued_at.FromSeconds(verified.issued_at)
    response.expires_at.FromSeconds(verified.expires_at)
    response.app_metadata.update(verified.object_claim("app_metadata"))
    response.user_metadata.update(verified.object_claim("user_metadata"))
    response.claims.update(verified.claims)
    return response

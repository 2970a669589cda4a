"""AuthService: VerifyToken and VerifyTokens over the shared TokenVerifier."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from authsvc.access import Caller, Scope
from authsvc.errors import AuthsvcError, InvalidArgument, Reason
from authsvc.tokens import TokenVerifier, VerifiedToken
from authsvc.v1 import auth_pb2

SERVICE = auth_pb2.DESCRIPTOR.services_by_name["AuthService"]
# A batch gives the event loop a turn this often, so one large batch does not
# stall every other call of this worker (nor outlive its own deadline).
YIELD_EVERY_TOKENS = 16
# A repeated field's tag and length prefix, per result.
RESULT_FRAMING_BYTES = 6
SERVICE_NAME = SERVICE.full_name


class AuthServicer:
    """AuthService's methods, registered by `api.registry` behind the gate."""

    def __init__(
        self,
        verifier: TokenVerifier,
        *,
        max_batch_tokens: int,
        max_response_bytes: int,
    ) -> None:
        self._verifier = verifier
        self._max_batch_tokens = max_batch_tokens
        self._max_response_bytes = max_response_bytes

    async def VerifyToken(
        self,
        request: auth_pb2.VerifyTokenRequest,
        context: grpc.aio.ServicerContext[Any, Any],
        caller: Caller,
    ) -> bytes:
        caller.require(Scope.TOKENS_VERIFY)
        verified = await self._verifier.verify(
            request.token, reject_anonymous=request.reject_anonymous
        )
        return response_bytes(verified)

    async def VerifyTokens(
        self,
        request: auth_pb2.VerifyTokensRequest,
        context: grpc.aio.ServicerContext[Any, Any],
        caller: Caller,
    ) -> auth_pb2.VerifyTokensResponse:
        caller.require(Scope.TOKENS_VERIFY)
        if len(request.tokens) > self._max_batch_tokens:
            raise InvalidArgument(
                Reason.LIMIT_EXCEEDED,
                f"{len(request.tokens)} tokens in one batch: the limit is "
                f"{self._max_batch_tokens} (setting AUTHSVC_MAX_BATCH_TOKENS); "
                "split the batch",
                {"limit": "max_batch_tokens", "max": str(self._max_batch_tokens)},
            )
        results = []
        size = 0
        for index, token in enumerate(request.tokens):
            if index and not index % YIELD_EVERY_TOKENS:
                # Let other calls (and this one's cancellation) in.
                await asyncio.sleep(0)
            try:
                verified = await self._verifier.verify(
                    token, reject_anonymous=request.reject_anonymous
                )
            except AuthsvcError as exc:
                result = auth_pb2.TokenResult(error=to_token_error(exc))
            else:
                result = token_result(verified)
            size += result.ByteSize() + RESULT_FRAMING_BYTES
            if size > self._max_response_bytes:
                raise InvalidArgument(
                    Reason.LIMIT_EXCEEDED,
                    f"the results of the first {index + 1} tokens already exceed "
                    f"the {self._max_response_bytes}-byte response limit; send "
                    "fewer (or smaller) tokens per batch",
                    {"limit": "response_bytes", "max": str(self._max_response_bytes)},
                )
            results.append(result)
        return auth_pb2.VerifyTokensResponse(results=results)


def to_token_error(exc: AuthsvcError) -> auth_pb2.TokenError:
    return auth_pb2.TokenError(
        code=grpc.StatusCode[exc.status.value].value[0],
        reason=exc.reason.value,
        message=exc.message,
        metadata=exc.metadata,
    )


def response_bytes(verified: VerifiedToken) -> bytes:
    """The serialized response, built once per cached token: a cache hit
    sends these bytes again (`api.registry` passes bytes through). Only the
    bytes are kept: the message itself takes about 5 KiB more per token."""
    data: bytes | None = verified.memo.get(_RESPONSE_BYTES)
    if data is None:
        response = auth_pb2.VerifyTokenResponse()
        _fill_response(response, verified)
        data = response.SerializeToString()
        verified.memo[_RESPONSE_BYTES] = data
    return data


def token_result(verified: VerifiedToken) -> auth_pb2.TokenResult:
    """One batch result; built from the kept bytes when there are some."""
    result = auth_pb2.TokenResult()
    data: bytes | None = verified.memo.get(_RESPONSE_BYTES)
    if data is None:
        # Built in place: a finished message passed to TokenResult(claims=)
        # would be copied whole, claims Struct and all.
        _fill_response(result.claims, verified)
        verified.memo[_RESPONSE_BYTES] = result.claims.SerializeToString()
    else:
        result.claims.ParseFromString(data)
    return result


_RESPONSE_BYTES = "VerifyTokenResponse.bytes"


def _fill_response(
    response: auth_pb2.VerifyTokenResponse, verified: VerifiedToken
) -> None:
    """Fill an empty response; the scalar fields are set in one C call."""
    response.MergeFrom(
        auth_pb2.VerifyTokenResponse(
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
    )
    response.issued_at.FromSeconds(verified.issued_at)
    response.expires_at.FromSeconds(verified.expires_at)
    response.claims.update(verified.claims)
    # The two metadata objects are also in `claims`: copy them from there
    # (in C) rather than convert them from Python a second time.
    fields = response.claims.fields
    for name, target in (
        ("app_metadata", response.app_metadata),
        ("user_metadata", response.user_metadata),
    ):
        if verified.object_claim(name):
            target.CopyFrom(fields[name].struct_value)

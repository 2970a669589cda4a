"""What a failed call raises: `ClientError`, with a subclass per gRPC status.

Every error carries the gRPC code, authsvc's machine-readable reason and the
`ErrorInfo` metadata (read from the rich status details the server attaches),
so callers branch on `.reason`, never on the message. Failures that never
reached authsvc (no machine serving, deadline, transport) have no reason.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from authsvc.v1 import auth_pb2

ERROR_DOMAIN = "authsvc"

# Reasons about the calling app itself (its key, scopes, network, limits), not
# about the end user's token or request: see protos/authsvc/v1/auth.proto.
CALLER_REASONS = frozenset(
    {
        "CALLER_KEY_MISSING",
        "CALLER_KEY_INVALID",
        "SCOPE_MISSING",
        "NETWORK_NOT_ALLOWED",
        "TOO_MANY_CONCURRENT_CALLS",
        "RATE_LIMITED",
    }
)


class ClientError(Exception):
    """A call to authsvc failed.

    `code` is the gRPC status code; `reason` is authsvc's reason (for example
    `TOKEN_EXPIRED`), or None when the failure did not come from authsvc's own
    checks; `metadata` is the reason's extra keys (for example `expired_at`).
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})

    @property
    def from_caller(self) -> bool:
        """True when authsvc refused the calling app, not the user or request."""
        return self.reason in CALLER_REASONS

    def __str__(self) -> str:
        reason = f" {self.reason}" if self.reason else ""
        return f"{self.code.name}{reason}: {self.message}"


class InvalidArgument(ClientError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class Unauthenticated(ClientError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ClientError):
    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(ClientError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ClientError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ClientError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ClientError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ClientError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ClientError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Internal(ClientError):
    code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[ClientError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        Unauthenticated,
        PermissionDenied,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        Internal,
    )
}


def error_from_rpc(error: grpc.aio.AioRpcError) -> ClientError:
    """The `ClientError` for a failed call, with the reason from its details."""
    code = error.code()
    message = error.details() or code.name
    info = _error_info(error)
    cls = _BY_CODE.get(code, ClientError)
    if info is None:
        return cls(code, message)
    return cls(code, message, reason=info.reason, metadata=dict(info.metadata))


def error_from_token_error(error: auth_pb2.TokenError) -> ClientError:
    """The `ClientError` VerifyToken would have raised for one batch token."""
    try:
        code = next(c for c in grpc.StatusCode if c.value[0] == error.code)
    except StopIteration:
        code = grpc.StatusCode.UNKNOWN
    cls = _BY_CODE.get(code, ClientError)
    return cls(code, error.message, reason=error.reason, metadata=dict(error.metadata))


def _error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """authsvc's `ErrorInfo` from `grpc-status-details-bin`, if there is one."""
    try:
        status = rpc_status.from_call(error)
    except ValueError:
        # The details disagree with the status: not a status authsvc wrote.
        return None
    if status is None:
        return None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
            return info
    return None

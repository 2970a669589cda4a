"""The one place where our errors become gRPC statuses.

Every failure leaves as a `google.rpc.Status` with an `ErrorInfo` detail
(domain, reason, metadata), so clients in any language can branch on the
reason. An unexpected exception becomes INTERNAL with an error id that is
also logged with its traceback; nothing else about it reaches the client.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from authsvc.api.registry import UndecodableRequest
from authsvc.errors import ERROR_DOMAIN, AuthsvcError, InvalidArgument, Reason, Status

logger = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 1000
MAX_METADATA_VALUE_CHARS = 256

_CODES: dict[Status, grpc.StatusCode] = {
    status: getattr(grpc.StatusCode, status.value) for status in Status
}

Request = TypeVar("Request")
Response = TypeVar("Response")
Servicer = TypeVar("Servicer")
Handler = Callable[
    [Servicer, Request, grpc.aio.ServicerContext[Any, Any]], Awaitable[Response]
]


def grpc_code(status: Status) -> grpc.StatusCode:
    return _CODES[status]


def to_grpc_status(
    code: grpc.StatusCode, reason: str, message: str, metadata: dict[str, str]
) -> grpc.Status:
    """Build a rich status: code, message and one ErrorInfo detail."""
    # Trailers carry the message twice (status and details): keep them well
    # under the 8 KiB of metadata clients accept by default.
    metadata = {
        _valid_utf8(k): _shortened(_valid_utf8(v), MAX_METADATA_VALUE_CHARS)
        for k, v in metadata.items()
    }
    message = _shortened(_valid_utf8(message), MAX_MESSAGE_CHARS)
    info = error_details_pb2.ErrorInfo(
        reason=reason, domain=ERROR_DOMAIN, metadata=metadata
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(
        code=getattr(code_pb2, code.name), message=message, details=[detail]
    )
    return rpc_status.to_status(status)


def error_status(error: AuthsvcError) -> grpc.Status:
    return to_grpc_status(
        grpc_code(error.status), error.reason.value, error.message, error.metadata
    )


def unary_errors(
    method_name: str,
) -> Callable[
    [Handler[Servicer, Request, Response]], Handler[Servicer, Request, Response]
]:
    """Wrap a unary handler: translate errors once and log one access event."""

    def decorate(
        handler: Handler[Servicer, Request, Response],
    ) -> Handler[Servicer, Request, Response]:
        @functools.wraps(handler)
        async def wrapper(
            self: Servicer,
            request: Request,
            context: grpc.aio.ServicerContext[Any, Any],
        ) -> Response:
            started = time.perf_counter()
            try:
                if isinstance(request, UndecodableRequest):
                    raise InvalidArgument(
                        Reason.MALFORMED_REQUEST,
                        "the request message could not be decoded "
                        f"({request.problem}); send a valid protobuf message",
                    )
                response = await handler(self, request, context)
            except AuthsvcError as exc:
                _log_access(method_name, exc.status.value, exc.reason.value, started)
                await context.abort_with_status(error_status(exc))
                raise AssertionError("unreachable: abort raises") from exc
            except grpc.aio.AbortError:
                raise
            except asyncio.CancelledError:
                # The client gave up (deadline or cancel); nothing to send.
                _log_access(method_name, "CANCELLED", "", started)
                raise
            except Exception as exc:
                error_id = uuid.uuid4().hex
                logger.exception(
                    "unexpected error method=%s error_id=%s", method_name, error_id
                )
                _log_access(method_name, "INTERNAL", Reason.INTERNAL.value, started)
                await context.abort_with_status(
                    to_grpc_status(
                        grpc.StatusCode.INTERNAL,
                        Reason.INTERNAL.value,
                        f"internal error; quote error id {error_id} to the operator",
                        {"error_id": error_id},
                    )
                )
                raise AssertionError("unreachable: abort raises") from exc
            _log_access(method_name, "OK", "", started)
            return response

        return wrapper

    return decorate


def _shortened(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _valid_utf8(text: str) -> str:
    """Text that protobuf can encode: a lone surrogate would break the status."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _log_access(method: str, status: str, reason: str, started: float) -> None:
    logger.info(
        "rpc method=%s status=%s reason=%s duration_ms=%.2f",
        method,
        status,
        reason or "-",
        (time.perf_counter() - started) * 1000,
    )

"""The one place where our errors become gRPC statuses.

Every call but health passes `guarded_unary`: the gate admits the caller
(key, scopes are checked by the servicer, limits), then the handler runs.
Every failure leaves as a `google.rpc.Status` with an `ErrorInfo` detail
(domain, reason, metadata), so clients in any language can branch on the
reason. An unexpected exception becomes INTERNAL with an error id that is
also logged with its traceback; nothing else about it reaches the client.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from authsvc.access import Caller, Gate
from authsvc.errors import ERROR_DOMAIN, AuthsvcError, InvalidArgument, Reason, Status
from authsvc.ops.logging import bind_call, log_access, unbind_call
from authsvc.ops.metrics import Metrics

logger = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 1000
MAX_METADATA_VALUE_CHARS = 256

_CODES: dict[Status, grpc.StatusCode] = {
    status: getattr(grpc.StatusCode, status.value) for status in Status
}

AUTHORIZATION = "authorization"
REQUEST_ID = "x-request-id"
TRACEPARENT = "traceparent"
_READ_KEYS = frozenset({AUTHORIZATION, REQUEST_ID, TRACEPARENT})
# Generated ids are 32 hex digits: 64 random bits per process, then a
# counter. As unique as random ids across processes and restarts, without a
# call to the system's random source on every call (they need not be secret).
_request_id_prefix = secrets.token_hex(8)
_request_numbers = itertools.count(1)


def _new_request_id_prefix() -> None:
    global _request_id_prefix, _request_numbers
    _request_id_prefix = secrets.token_hex(8)
    _request_numbers = itertools.count(1)


os.register_at_fork(after_in_child=_new_request_id_prefix)
_REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_TRACEPARENT_PATTERN = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace>[0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}"
)

Request = TypeVar("Request")
Response = TypeVar("Response")
# A servicer method: the request, the call's context, and who is calling.
Handler = Callable[
    [Request, grpc.aio.ServicerContext[Any, Any], Caller], Awaitable[Response]
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


class _Status(
    collections.namedtuple("_Status", ("code", "details", "trailing_metadata")),
    grpc.Status,  # type: ignore[misc]
):
    """A status to abort with (grpc.Status is only an interface)."""


def _with_request_id(status: grpc.Status, request_id: str) -> grpc.Status:
    trailers = (*(status.trailing_metadata or ()), (REQUEST_ID, request_id))
    return _Status(status.code, status.details, trailers)


class UndecodableRequest:
    """Stands in for a request message that could not be parsed."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


def guarded_unary(
    method_name: str,
    handler: Handler[Request, Response],
    gate: Gate,
    metrics: Metrics,
    *,
    log_successes: bool = True,
) -> Callable[[Request, grpc.aio.ServicerContext[Any, Any]], Awaitable[Response]]:
    """Wrap one unary handler: admit the caller through the gate, translate
    errors once, and log and count one access event with method and caller
    (for a call that succeeded, only if `log_successes`)."""

    async def call(
        request: Request, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Response:
        started = time.perf_counter()
        metadata = _metadata(context)
        request_id = _request_id(metadata)
        peer = context.peer()
        trace_id = _trace_id(metadata)
        traced = () if trace_id is None else (("trace_id", trace_id),)
        log_context = bind_call(
            ("method", method_name),
            ("caller", "-"),
            ("request_id", request_id),
            *traced,
            ("peer", peer),
        )
        # The id goes out in the trailers, with the status, whatever the
        # outcome. Not in early headers: those cost an extra operation per
        # call (about 15% of a cache hit's CPU) and would make every error
        # final to gRPC's client retry policy, so an UNAVAILABLE (a database
        # or JWKS outage on this Machine) could never be retried on another.
        caller_name, code, reason = "-", "UNKNOWN", ""
        try:
            authorization = metadata.get(AUTHORIZATION, ())
            caller = gate.recognise(
                authorization=authorization,
                peer=peer,
                # A key, when sent, decides; the certificate is read otherwise.
                tls_names=() if authorization else _tls_names(context),
            )
            caller_name = caller.name
            bind_call(
                ("method", method_name),
                ("caller", caller_name),
                ("request_id", request_id),
                *traced,
                ("peer", peer),
            )
            limiter = gate.acquire(caller)
            try:
                if isinstance(request, UndecodableRequest):
                    raise InvalidArgument(
                        Reason.MALFORMED_REQUEST,
                        "the request message could not be decoded "
                        f"({request.problem}); send a valid protobuf message",
                    )
                response = await handler(request, context, caller)
            finally:
                limiter.release()
            code = "OK"
            context.set_trailing_metadata(((REQUEST_ID, request_id),))
            return response
        except AuthsvcError as exc:
            code, reason = exc.status.value, exc.reason.value
            await context.abort_with_status(
                _with_request_id(error_status(exc), request_id)
            )
            raise AssertionError("unreachable: abort raises") from exc
        except grpc.aio.AbortError:
            raise
        except asyncio.CancelledError:
            # The client gave up (deadline or cancel); nothing to send.
            code = "CANCELLED"
            raise
        except Exception as exc:
            code, reason = "INTERNAL", Reason.INTERNAL.value
            error_id = uuid.uuid4().hex
            logger.exception("unexpected error error_id=%s", error_id)
            await context.abort_with_status(
                _with_request_id(
                    to_grpc_status(
                        grpc.StatusCode.INTERNAL,
                        Reason.INTERNAL.value,
                        f"internal error; quote error id {error_id} to the operator",
                        {"error_id": error_id},
                    ),
                    request_id,
                )
            )
            raise AssertionError("unreachable: abort raises") from exc
        finally:
            seconds = time.perf_counter() - started
            if log_successes or code != "OK":
                log_access(code, reason, seconds)
            metrics.observe_rpc(method_name, caller_name, code, seconds)
            unbind_call(log_context)

    return call


def _metadata(
    context: grpc.aio.ServicerContext[Any, Any],
) -> dict[str, list[str]]:
    """The text metadata this wrapper reads, by key, read once per call."""
    found: dict[str, list[str]] = {}
    for name, value in context.invocation_metadata() or ():
        if name in _READ_KEYS and isinstance(value, str):
            found.setdefault(name, []).append(value)
    return found


def _request_id(metadata: dict[str, list[str]]) -> str:
    """The caller's x-request-id if it is a sane one, else a new one."""
    for value in metadata.get(REQUEST_ID, ()):
        if _REQUEST_ID_PATTERN.fullmatch(value):
            return value
    return f"{_request_id_prefix}{next(_request_numbers):016x}"


def _trace_id(metadata: dict[str, list[str]]) -> str | None:
    """The trace id of a W3C traceparent, when the caller sent a valid one."""
    for value in metadata.get(TRACEPARENT, ()):
        match = _TRACEPARENT_PATTERN.fullmatch(value.strip())
        if match and match["trace"] != "0" * 32 and match["version"] != "ff":
            return match["trace"]
    return None


def _tls_names(context: grpc.aio.ServicerContext[Any, Any]) -> list[str]:
    """Names of a verified client certificate (common name, then SANs)."""
    auth = context.auth_context()
    if auth.get("transport_security_type") != [b"ssl"]:
        return []
    names = [
        *auth.get("x509_common_name", ()),
        *auth.get("x509_subject_alternative_name", ()),
    ]
    return [name.decode("utf-8", "replace") for name in names]


def _shortened(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _valid_utf8(text: str) -> str:
    """Text that protobuf can encode: a lone surrogate would break the status."""
    return text.encode("utf-8", "replace").decode("utf-8")

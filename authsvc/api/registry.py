"""Registering servicers so that an undecodable request is the client's error.

The generated `add_*Servicer_to_server` functions pass protobuf's parser to
gRPC directly; when it raises (invalid UTF-8 in a string field, a truncated
message), gRPC answers UNKNOWN with the Python exception text. Here each
method's parser is wrapped: a message that cannot be decoded reaches the
handler as an `UndecodableRequest`, which `guarded_unary` turns into
INVALID_ARGUMENT (after the caller is admitted). A handler may return its
response already serialized, as bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass

from authsvc.access import Gate
from authsvc.api.status import UndecodableRequest, guarded_unary
from authsvc.ops.metrics import Metrics


def add_unary_service(
    server: grpc.aio.Server,
    servicer: object,
    service: ServiceDescriptor,
    gate: Gate,
    metrics: Metrics,
    *,
    log_successes: bool = True,
) -> None:
    """Register every (unary) method of `service` implemented by `servicer`,
    each behind the gate."""
    handlers = {}
    for method in service.methods:
        request_class = GetMessageClass(method.input_type)
        response_class = GetMessageClass(method.output_type)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            guarded_unary(
                method.name,
                getattr(servicer, method.name),
                gate,
                metrics,
                log_successes=log_successes,
            ),
            request_deserializer=_tolerant(request_class.FromString),
            response_serializer=_serializer(response_class.SerializeToString),
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)


def _serializer(serialize: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """Serialize a response message; a handler may also return the message
    already serialized (a cached response), which goes out as it is."""

    def serialize_response(response: Any) -> bytes:
        if type(response) is bytes:
            return response
        return serialize(response)

    return serialize_response


def _tolerant(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return UndecodableRequest(str(exc) or "invalid wire format")

    return deserialize

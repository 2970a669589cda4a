"""Python client for authsvc: token verification and data access over gRPC.

    async with Connection("dns:///myauth.internal:50051", key=key) as connection:
        claims = await AuthClient(connection).verify_token(token)
        rows = await (
            DataClient(connection)
            .as_user(token)
            .table("orders")
            .select("id,total")
            .eq("org_id", claims.org_id)
            .order("created_at", desc=True)
            .limit(50)
            .execute()
        )

Failures raise `ClientError` (a subclass per gRPC status) with `.code`,
`.reason` and `.metadata`. `authsvc.client.fastapi` has a FastAPI dependency
(install the `fastapi` extra).
"""

from authsvc.client.auth import AuthClient, Claims
from authsvc.client.connection import DEFAULT_TIMEOUT_SECONDS, Connection
from authsvc.client.data import DataClient, QueryClient
from authsvc.client.errors import (
    AlreadyExists,
    ClientError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from authsvc.client.query import (
    CallResult,
    DeleteQuery,
    InsertQuery,
    Rows,
    RpcQuery,
    SchemaReload,
    SelectQuery,
    Table,
    UpdateQuery,
    UpsertQuery,
)

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "AlreadyExists",
    "AuthClient",
    "CallResult",
    "Claims",
    "ClientError",
    "Connection",
    "DataClient",
    "DeadlineExceeded",
    "DeleteQuery",
    "FailedPrecondition",
    "InsertQuery",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "QueryClient",
    "ResourceExhausted",
    "Rows",
    "RpcQuery",
    "SchemaReload",
    "SelectQuery",
    "Table",
    "Unauthenticated",
    "Unavailable",
    "UpdateQuery",
    "UpsertQuery",
]

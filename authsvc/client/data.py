"""`DataClient`: DataService through the query builder, in an explicit mode.

A query runs as someone, and the server refuses a request that does not say
who. So there is no `DataClient.table()`: pick the mode first, then query.

    await data.as_user(token).table("notes").select("id,body").execute()
    await data.anon().table("notes").select("body").execute()
    await data.admin().table("notes").delete().eq("id", 7).execute()
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from authsvc.client.connection import Connection
from authsvc.client.query import RpcQuery, SchemaReload, Table, rpc_query
from authsvc.v1 import data_pb2, data_pb2_grpc


class DataClient:
    """DataService over a shared `Connection`."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._stub = data_pb2_grpc.DataServiceStub(connection.channel)

    def as_user(self, access_token: str) -> QueryClient:
        """Queries that run as the token's user, under row-level security."""
        if not access_token:
            raise ValueError("as_user needs the user's access token")
        return QueryClient(self, data_pb2.Mode(user_token=access_token))

    def anon(self) -> QueryClient:
        """Queries that run as Supabase's `anon` role, under row-level security."""
        return QueryClient(self, data_pb2.Mode(anon=data_pb2.Anon()))

    def admin(self) -> QueryClient:
        """Queries that run as `service_role`, bypassing row-level security.

        The server refuses them unless its operator enabled admin mode and
        gave this app the data:admin scope.
        """
        return QueryClient(self, data_pb2.Mode(admin=data_pb2.Admin()))

    async def _send(self, method: str, request: Any, timeout: float | None) -> Any:
        return await self._connection.call(
            getattr(self._stub, method), request, timeout
        )


class QueryClient:
    """A `DataClient` bound to one mode, in one schema (default "public")."""

    def __init__(
        self, client: DataClient, mode: data_pb2.Mode, schema_name: str = ""
    ) -> None:
        self._client = client
        self._mode = mode
        self._schema = schema_name

    def schema(self, name: str) -> QueryClient:
        """The same mode in another exposed schema."""
        return QueryClient(self._client, self._mode, name)

    def table(self, name: str) -> Table:
        """A table or view: continue with select, insert, upsert, update, delete."""
        return Table(
            _send=self._client._send,
            _mode=self._mode,
            _target=data_pb2.Target(schema=self._schema, table=name),
        )

    def rpc(self, function: str, params: Mapping[str, Any] | None = None) -> RpcQuery:
        """Call a Postgres function with named arguments, like supabase's `.rpc()`."""
        return rpc_query(self._client._send, self._mode, self._schema, function, params)

    async def reload_schema(self, *, timeout: float | None = None) -> SchemaReload:
        """Make the server reread the catalog now (after a migration); admin only."""
        response = await self._client._send(
            "ReloadSchema", data_pb2.ReloadSchemaRequest(mode=self._mode), timeout
        )
        return SchemaReload(tables=response.tables, functions=response.functions)

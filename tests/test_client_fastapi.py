"""authsvc.client.fastapi: a FastAPI app whose bearer tokens a real authsvc
server verifies, called over HTTP in process (httpx's ASGI transport).

No `from __future__ import annotations` here: FastAPI reads the routes'
annotations at run time, and they name a dependency local to `make_app`.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from authsvc.client import AuthClient, Claims, ClientError, Connection
from authsvc.client.fastapi import BearerAuth
from tests.conftest import Keys, Running
from tests.support.callers import TEST_CALLER_KEY
from tests.support.tokens import UID_A, es256, supabase_claims


def make_app(auth: AuthClient | None = None, **options: Any) -> FastAPI:
    """An app with one protected route; without `auth`, the client comes from
    `app.state.auth`, as when it is made in the app's lifespan."""
    app = FastAPI()
    require_user = BearerAuth(
        auth or (lambda request: request.app.state.auth), **options
    )

    @app.get("/me")
    async def me(
        request: Request, claims: Annotated[Claims, Depends(require_user)]
    ) -> dict[str, Any]:
        return {
            "sub": claims.sub,
            "org_id": claims.org_id,
            "token_kept": request.state.access_token is not None,
        }

    return app


@pytest.fixture
async def connection(server: Running) -> AsyncIterator[Connection]:
    async with Connection(server.target, key=TEST_CALLER_KEY) as connection:
        yield connection


async def get_me(app: FastAPI, headers: dict[str, str] | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        return await http.get("/me", headers=headers or {})


async def test_valid_token_gives_the_route_its_claims(
    connection: Connection, keys: Keys
) -> None:
    token = es256(keys.ec1, supabase_claims(org_id="org_42"))

    response = await get_me(
        make_app(AuthClient(connection)), {"Authorization": f"Bearer {token}"}
    )

    assert response.status_code == 200
    assert response.json() == {"sub": UID_A, "org_id": "org_42", "token_kept": True}


async def test_client_can_come_from_app_state(
    connection: Connection, keys: Keys
) -> None:
    app = make_app()
    app.state.auth = AuthClient(connection)

    response = await get_me(app, {"Authorization": f"bearer {es256(keys.ec1)}"})

    assert response.status_code == 200


@pytest.mark.parametrize(
    "header",
    [None, "Basic dXNlcjpwYXNz", "Bearer"],
    ids=["missing", "other-scheme", "empty-bearer"],
)
async def test_request_without_a_bearer_token_is_401_with_a_bare_challenge(
    connection: Connection, header: str | None
) -> None:
    headers = {"Authorization": header} if header is not None else {}

    response = await get_me(make_app(AuthClient(connection)), headers)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (supabase_claims(exp=1_000, iat=900), "TOKEN_EXPIRED"),
        (supabase_claims(iss="https://evil.example/auth/v1"), "BAD_ISSUER"),
    ],
    ids=["expired", "foreign-issuer"],
)
async def test_refused_token_is_401_invalid_token_with_the_reason(
    connection: Connection, keys: Keys, payload: dict[str, Any], reason: str
) -> None:
    token = es256(keys.ec1, payload)

    response = await get_me(
        make_app(AuthClient(connection)), {"Authorization": f"Bearer {token}"}
    )

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == (
        f'Bearer error="invalid_token", error_description="{reason}"'
    )


async def test_anonymous_user_is_403_when_refused(
    connection: Connection, keys: Keys
) -> None:
    token = es256(keys.ec1, supabase_claims(is_anonymous=True))
    app = make_app(AuthClient(connection), reject_anonymous=True)

    response = await get_me(app, {"Authorization": f"Bearer {token}"})

    assert response.status_code == 403
    assert response.headers["www-authenticate"] == (
        'Bearer error="insufficient_scope", error_description="ANONYMOUS_NOT_ALLOWED"'
    )


async def test_authsvc_unavailable_is_503(
    server: Running, connection: Connection, keys: Keys
) -> None:
    await server.server.stop()
    app = make_app(AuthClient(connection), timeout=0.5)

    response = await get_me(app, {"Authorization": f"Bearer {es256(keys.ec1)}"})

    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"


async def test_app_refused_by_authsvc_is_a_server_error_not_a_401(
    server: Running, keys: Keys
) -> None:
    """A wrong caller key is the deployment's fault: the ClientError propagates."""
    async with Connection(server.target, key="asvc_not-a-configured-key") as wrong:
        app = make_app(AuthClient(wrong))

        @app.exception_handler(ClientError)
        async def report(request: Request, exc: ClientError) -> JSONResponse:
            return JSONResponse({"reason": exc.reason}, status_code=500)

        response = await get_me(app, {"Authorization": f"Bearer {es256(keys.ec1)}"})

    assert response.status_code == 500
    assert response.json() == {"reason": "CALLER_KEY_INVALID"}


def readme_app(target: str, key: str) -> FastAPI:
    """The README's example app: the connection lives in the app's lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with Connection(target, key=key) as connection:
            app.state.auth = AuthClient(connection)
            yield

    app = FastAPI(lifespan=lifespan)
    require_user = BearerAuth(lambda request: request.app.state.auth)

    @app.get("/me")
    async def me(
        claims: Annotated[Claims, Depends(require_user)],
    ) -> dict[str, str | None]:
        return {"sub": claims.sub, "org_id": claims.org_id}

    return app


async def test_readme_app_verifies_tokens_with_a_lifespan_connection(
    server: Running, keys: Keys
) -> None:
    app = readme_app(server.target, TEST_CALLER_KEY)
    token = es256(keys.ec1, supabase_claims(org_id="org_1"))

    async with app.router.lifespan_context(app):
        response = await get_me(app, {"Authorization": f"Bearer {token}"})

    assert response.json() == {"sub": UID_A, "org_id": "org_1"}

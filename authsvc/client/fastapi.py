"""A FastAPI dependency that verifies `Authorization: Bearer` through authsvc.

    require_user = BearerAuth(lambda request: request.app.state.auth)

    @app.get("/orders")
    async def orders(claims: Annotated[Claims, Depends(require_user)]): ...

A refused token answers 401 with `WWW-Authenticate: Bearer error="invalid_token"`
(RFC 6750) and authsvc's reason as the description; a missing one answers 401
with a bare `WWW-Authenticate: Bearer`. An anonymous user refused by
`reject_anonymous` answers 403. authsvc down, slow or rate limiting this app
answers 503. A refusal of the app itself (its key, scopes or network) is a
deployment mistake, not the user's: the `ClientError` propagates (500).

The verified token is also kept as `request.state.access_token`, for
`DataClient.as_user(...)`. Needs the `fastapi` extra.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import grpc
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from authsvc.client.auth import AuthClient, Claims
from authsvc.client.errors import ClientError

UNAVAILABLE_RETRY_AFTER_SECONDS = 1
# authsvc could not answer now: the user should retry, not sign in again.
_UNAVAILABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
# The token (or its request) is unacceptable: sign in again.
_REFUSED_CODES = frozenset(
    {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT}
)

_bearer = HTTPBearer(auto_error=False)


class BearerAuth:
    """Depend on an instance to get the verified user's `Claims`.

    `client` is an `AuthClient`, or a function of the request that returns
    one (for a client made in the app's lifespan). `reject_anonymous` refuses
    anonymous sign-ins with 403; `timeout` overrides the connection's default
    deadline for this check.
    """

    def __init__(
        self,
        client: AuthClient | Callable[[Request], AuthClient],
        *,
        reject_anonymous: bool = False,
        timeout: float | None = None,
    ) -> None:
        self._client = client
        self._reject_anonymous = reject_anonymous
        self._timeout = timeout

    async def __call__(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Claims:
        if credentials is None or not credentials.credentials:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "an Authorization: Bearer <access token> header is required",
                headers={"WWW-Authenticate": "Bearer"},
            )
        token = credentials.credentials
        client = (
            self._client
            if isinstance(self._client, AuthClient)
            else self._client(request)
        )

        try:
            claims = await client.verify_token(
                token, reject_anonymous=self._reject_anonymous, timeout=self._timeout
            )
        except ClientError as exc:
            raise _http_error(exc) from exc

        request.state.access_token = token
        return claims


def _http_error(error: ClientError) -> Exception:
    """The HTTP answer for a failed verification; the error itself if ours."""
    if error.from_caller and error.code != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return error
    if error.code in _UNAVAILABLE_CODES:
        return HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "the authentication service is unavailable; retry shortly",
            headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_SECONDS)},
        )
    if error.code == grpc.StatusCode.PERMISSION_DENIED:
        return HTTPException(
            status.HTTP_403_FORBIDDEN,
            error.message,
            headers={"WWW-Authenticate": _challenge("insufficient_scope", error)},
        )
    if error.code in _REFUSED_CODES:
        return HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            error.message,
            headers={"WWW-Authenticate": _challenge("invalid_token", error)},
        )
    return error


def _challenge(code: str, error: ClientError) -> str:
    # Reasons are upper-case ASCII words, safe inside a quoted string.
    description = f', error_description="{error.reason}"' if error.reason else ""
    return f'Bearer error="{code}"{description}'

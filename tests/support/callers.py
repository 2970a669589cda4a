"""Caller keys for tests, and channels that present them."""

from __future__ import annotations

from typing import Any

import grpc

from authsvc.access.keys import hash_key

# Fixed, so that a failing test can be replayed by hand; never used outside tests.
TEST_CALLER_KEY = "asvc_tests-only-key-0123456789abcdefghijklmnopqrst"


def callers_toml(*callers: tuple[str, str, list[str]], **extra: str) -> str:
    """TOML for (name, key, scopes) callers; `extra` adds raw lines to each."""
    blocks = []
    for name, key, scopes in callers:
        lines = [
            f"[callers.{name}]",
            f'key_hashes = ["{hash_key(key)}"]',
            "scopes = [" + ", ".join(f'"{s}"' for s in scopes) + "]",
            *(f"{k} = {v}" for k, v in extra.items()),
        ]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


ALL_SCOPES = ["tokens:verify", "data:read", "data:write", "data:admin"]
# The default caller of every test server: every scope, no limits to trip over.
TEST_CALLERS = callers_toml(
    ("tests", TEST_CALLER_KEY, ALL_SCOPES),
    max_concurrent="100000",
    requests_per_second="0",
)


class _PresentKey(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds `authorization: Bearer <key>` unless the call sets its own."""

    def __init__(self, key: str) -> None:
        self._header = ("authorization", f"Bearer {key}")

    async def intercept_unary_unary(
        self, continuation: Any, details: Any, request: Any
    ) -> Any:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        if "authorization" not in metadata:
            metadata.add(*self._header)
        details = grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
        )
        return await continuation(details, request)


def caller_channel(target: str, key: str | None, **kwargs: Any) -> grpc.aio.Channel:
    """An insecure channel whose unary calls present `key` (None: no key)."""
    interceptors = [_PresentKey(key)] if key is not None else []
    return grpc.aio.insecure_channel(target, interceptors=interceptors, **kwargs)

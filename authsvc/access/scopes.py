"""What a caller may do: the scopes, and the narrowing of admin access."""

from __future__ import annotations

import enum


class Scope(enum.StrEnum):
    TOKENS_VERIFY = "tokens:verify"
    # As a user (or anon) under row-level security.
    DATA_READ = "data:read"
    DATA_WRITE = "data:write"
    # As the service role: row-level security bypassed.
    DATA_ADMIN = "data:admin"


DEFAULT_SCHEMA = "public"


def qualified(name: str) -> tuple[str, str]:
    """`schema.name` or `name` (in public) as a pair."""
    schema, sep, rest = name.partition(".")
    return (schema, rest) if sep else (DEFAULT_SCHEMA, name)

"""Request-size limits of DataService, checked before any SQL is built.

Each limit is a setting (`AUTHSVC_DB_MAX_*`) with a documented default; a
request over one is INVALID_ARGUMENT with reason LIMIT_EXCEEDED, naming the
limit and its value, so the caller can split the request.
"""

from __future__ import annotations

from dataclasses import dataclass

from authsvc.data.query import Filter, Group
from authsvc.errors import InvalidArgument, Reason


@dataclass(frozen=True)
class Limits:
    max_conditions: int
    max_filter_depth: int
    max_in_list: int
    max_insert_rows: int
    max_affected: int


def exceeded(limit: str, maximum: int, what: str) -> InvalidArgument:
    return InvalidArgument(
        Reason.LIMIT_EXCEEDED,
        f"{what}: the limit is {maximum} (setting AUTHSVC_DB_{limit.upper()})",
        {"limit": limit, "max": str(maximum)},
    )


def check_filter(node: Filter, limits: Limits) -> None:
    """Count conditions and group depth without recursing past the limits."""
    conditions = 0
    pending: list[tuple[Filter, int]] = [(node, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, Group):
            if depth > limits.max_filter_depth:
                raise exceeded(
                    "max_filter_depth",
                    limits.max_filter_depth,
                    "filter groups are nested too deeply",
                )
            pending.extend((child, depth + 1) for child in item.items)
            continue
        conditions += 1
        if conditions > limits.max_conditions:
            raise exceeded(
                "max_conditions",
                limits.max_conditions,
                "the filter has too many conditions",
            )

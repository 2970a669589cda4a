"""The checklist's rows: `Result` and its `Status`, and how they are printed.

`pass_`, `warn` and `fail` build one row each; `render_table` is the text the
command prints, `render_json` what it prints with `--json`, and `failed` is
what decides the exit code.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass


class Status(enum.StrEnum):
    # A row's outcome, not a password.
    PASS = "PASS"  # noqa: S105
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Result:
    """One row: `check` names it (`group.item`); WARN and FAIL carry a fix."""

    check: str
    status: Status
    detail: str
    fix: str = ""


def pass_(check: str, detail: str) -> Result:
    return Result(check, Status.PASS, detail)


def warn(check: str, detail: str, fix: str) -> Result:
    return Result(check, Status.WARN, detail, fix)


def fail(check: str, detail: str, fix: str) -> Result:
    return Result(check, Status.FAIL, detail, fix)


def failed(results: Sequence[Result]) -> bool:
    return any(result.status is Status.FAIL for result in results)


def render_table(results: Sequence[Result]) -> str:
    width = max((len(result.check) for result in results), default=0)
    lines = []
    for result in results:
        lines.append(f"{result.status:<4}  {result.check:<{width}}  {result.detail}")
        if result.fix:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {result.fix}")
    counts = (
        f"{sum(r.status is status for r in results)} {status}" for status in Status
    )
    lines.append("\n" + ", ".join(counts))
    return "\n".join(lines)


def render_json(results: Sequence[Result]) -> str:
    return json.dumps(
        {
            "ok": not failed(results),
            "results": [asdict(result) for result in results],
        },
        indent=2,
    )

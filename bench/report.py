"""The bench's printed tables and its JSON file.

A cell is a dict: what was measured (group, target, processes, alg, shape,
loader; `access_log` on the variant run with AUTHSVC_ACCESS_LOG=errors), why
it was skipped or failed if it was, and the medians from `loaders.median_of`.
The memory cell adds its RSS samples and their summary (`rss_*`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MB = 1024 * 1024
Cell = dict[str, Any]
ACCESS_LOG_ERRORS_LABEL = "reuse, access log errors only"


def find(cells: Iterable[Cell], **match: Any) -> Cell | None:
    for cell in cells:
        if all(cell.get(key) == value for key, value in match.items()):
            return cell
    return None


def _num(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _rps(cell: Cell | None) -> str:
    if cell is None:
        return "-"
    if cell.get("skipped"):
        return "skip"
    if cell.get("error"):
        return "ERROR"
    mark = "*" if cell.get("wrapped") else ""
    mark += "!" if cell.get("errors") else ""
    return _num(cell.get("requests_per_second")) + mark


def _latency(cell: Cell | None) -> str:
    if cell is None or cell.get("skipped") or cell.get("error"):
        return "-"
    return f"{_num(cell.get('p50_ms'), 1)}/{_num(cell.get('p99_ms'), 1)}"


def _cpu(cell: Cell | None) -> str:
    if cell is None or cell.get("skipped") or cell.get("error"):
        return "-"
    return _num(cell.get("cpu_seconds_per_1k"), 3)


def _ratio(
    top: Cell | None, bottom: Cell | None, key: str = "requests_per_second"
) -> str:
    if top is None or bottom is None:
        return "-"
    try:
        return f"{top[key] / bottom[key]:.2f}"
    except (KeyError, TypeError, ZeroDivisionError):
        return "-"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for index, row in enumerate([header, *rows]):
        cells = [
            value.ljust(width)
            if column < 2 or (column == len(header) - 1 and header[-1] == "note")
            else value.rjust(width)
            for column, (value, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _batch_row(alg: str, cell: Cell | None, meta: dict[str, Any]) -> list[str]:
    """Tokens/s through the batch RPC; its per-token CPU against raw
    `cryptography` verification on one core (the target is at least 0.5)."""
    if cell is None:
        return [alg, "batch", "", "", "-", "", "", "", "", "", "", ""]
    if cell.get("skipped"):
        return [alg, "batch", "", "", "skip", "", cell["skipped"], "", "", "", "", ""]
    crypto = meta.get("cryptography_es256_verify_per_core")
    cpu = cell.get("cpu_seconds_per_1k")
    versus = (
        f"{1000 / crypto / cpu:.2f} crypto" if alg == "ES256" and crypto and cpu else ""
    )
    shape = f"batch {cell.get('batch', '?')}"
    return [
        alg,
        shape,
        "",
        "",
        _rps(cell),
        versus,
        "",
        "",
        _latency(cell),
        "",
        "",
        _cpu(cell),
    ]


def _memory_section(cell: Cell) -> str:
    """The long run's RSS: first sample after warm-up, last, extremes, and
    whether every sample stayed within the bar of the first."""
    title = (
        f"Memory  (RSS of authsvc's supervisor + workers every "
        f"{cell['sample_every']:g} s over "
        f"{cell['seconds']:g} s of ES256 reuse load, after {cell['warmup']:g} s "
        f"warm-up; target: within {cell.get('rss_flat_within', 0.1):.0%} of the "
        f"first sample)"
    )
    if cell.get("error") or not cell.get("rss_samples"):
        return f"{title}\nerror: {cell.get('error', 'no samples')[:200]}"
    first = cell["rss_first"]
    header = [
        "what", "load", "first MB", "last MB", "min MB", "max MB", "last/first",
        "max/first", "within", "requests/s",
    ]  # fmt: skip
    row = [
        f"authsvc {cell['processes']}p", "ES256 reuse",
        f"{first / MB:.1f}", f"{cell['rss_last'] / MB:.1f}",
        f"{cell['rss_min'] / MB:.1f}", f"{cell['rss_max'] / MB:.1f}",
        f"{cell['rss_last_over_first']:.3f}", f"{cell['rss_max_over_first']:.3f}",
        "yes" if cell["rss_flat"] else "NO", _rps(cell),
    ]  # fmt: skip
    samples = " ".join(
        f"{sample['second']:g}s:{sample['bytes'] / MB:.1f}"
        for sample in cell["rss_samples"]
    )
    return f"{title}\n{_table(header, [row])}\nsamples (MB): {samples}"


def render(results: dict[str, Any]) -> str:
    cells: list[Cell] = results["cells"]
    meta = results["meta"]
    workers = meta["authsvc_workers"]
    out = [
        f"authsvc bench, {meta['machine']}; {meta['concurrency']} concurrent callers; "
        f"{meta['seconds']:g} s per cell after {meta['warmup']:g} s warm-up; "
        + (
            f"{meta['runs']} runs per cell (the table shows medians)"
            if meta["runs"] > 1
            else "1 run per cell"
        ),
        f"authsvc serve: {workers} process(es) ({meta['workers_note']}); "
        f"pyjwt {meta['pyjwt']}, cryptography {meta['cryptography']}, "
        f"grpcio {meta['grpcio']}, node {meta['node']}",
        "load average before/after: "
        + " / ".join(
            " ".join(f"{x:.2f}" for x in meta[k])
            for k in ("loadavg_before", "loadavg_after")
        )
        + " (the bench's own load raises the second; a high first one means"
        " other work that skews every figure)",
        "",
        "VerifyToken  (requests/s; latency p50/p99 ms; CPU s per 1,000 verifications, "
        "service processes only)",
    ]
    header = [
        "alg", "shape", "node 1p", "node 2p", f"authsvc {workers}p", f"vs node {workers}p",
        "p50/p99 node 1p", "node 2p", "authsvc", "CPU node 1p", "node 2p", "authsvc",
    ]  # fmt: skip
    rows = []
    for alg in ("ES256", "RS256", "HS256"):
        for shape in ("distinct", "reuse", "batch"):
            node1 = find(
                cells, group="verify", target="node", processes=1, alg=alg, shape=shape
            )
            node2 = find(
                cells, group="verify", target="node", processes=2, alg=alg, shape=shape
            )
            ours = find(
                cells,
                group="verify",
                target="authsvc",
                alg=alg,
                shape=shape,
                access_log=None,
            )
            same = node1 if workers == 1 else node2
            if shape == "batch":
                rows.append(_batch_row(alg, ours, meta))
                continue
            rows.append([
                alg, shape, _rps(node1), _rps(node2), _rps(ours), _ratio(ours, same),
                _latency(node1), _latency(node2), _latency(ours),
                _cpu(node1), _cpu(node2), _cpu(ours),
            ])  # fmt: skip
            variant = find(
                cells, group="verify", alg=alg, shape=shape, access_log="errors"
            )
            if variant is not None:
                rows.append([
                    alg, ACCESS_LOG_ERRORS_LABEL, "", "", _rps(variant),
                    _ratio(variant, same), "", "", _latency(variant), "", "",
                    _cpu(variant),
                ])  # fmt: skip
    out += [_table(header, rows), ""]

    out.append("Ceilings  (same 64 callers)")
    header = ["what", "loader", "requests/s", "p50/p99 ms", "CPU s/1k", "note"]
    rows = []
    crypto = meta.get("cryptography_es256_verify_per_core")
    rows.append(["cryptography ES256 verify, 1 core", "in-process", _num(crypto), "-", _num(1000 / crypto, 3) if crypto else "-", "ops/s, no JWT parsing"])  # fmt: skip
    for cell in cells:
        if cell["group"] != "ceiling":
            continue
        note = cell.get("note", "")
        if cell.get("error"):
            note = f"error: {cell['error'][:60]}"
        rows.append(
            [
                cell["label"],
                cell["loader"],
                _rps(cell),
                _latency(cell),
                _cpu(cell),
                note,
            ]
        )
    reuse = find(
        cells,
        group="verify",
        target="authsvc",
        alg="ES256",
        shape="reuse",
        access_log=None,
    )
    echo = find(
        cells, group="ceiling", target="echo", processes=workers, loader="h2client"
    )
    echo = echo or find(cells, group="ceiling", target="echo", processes=workers)
    rows.append([f"authsvc ES256 reuse / echo {workers}p", "", _ratio(reuse, echo), "", "", "target: at least 0.90"])  # fmt: skip
    variant = find(
        cells, group="verify", alg="ES256", shape="reuse", access_log="errors"
    )
    if variant is not None:
        rows.append([f"authsvc ES256 {ACCESS_LOG_ERRORS_LABEL} / echo {workers}p", "", _ratio(variant, echo), "", "", "target: at least 0.90"])  # fmt: skip
    out += [_table(header, rows), ""]

    out.append(
        "Data: Select through authsvc vs the same transaction from an app's own "
        "asyncpg pool, both via PgBouncer (transaction mode)"
    )
    header = [
        "query", "mode", "authsvc rps", "p50/p99 ms", "CPU s/1k", "direct rps",
        "p50/p99 ms", "app CPU s/1k", "p50 ratio", "p99 ratio",
    ]  # fmt: skip
    rows = []
    for query in ("pk", "filtered"):
        for mode in ("admin", "user"):
            ours = find(cells, group="data", target="authsvc", alg=mode, shape=query)
            direct = find(cells, group="data", target="direct", alg=mode, shape=query)
            rows.append([
                "by primary key" if query == "pk" else "50-row filter", mode,
                _rps(ours), _latency(ours), _cpu(ours),
                _rps(direct), _latency(direct), _cpu(direct),
                _ratio(ours, direct, "p50_ms"), _ratio(ours, direct, "p99_ms"),
            ])  # fmt: skip
    out += [_table(header, rows), ""]

    memory_cell = find(cells, group="memory")
    if memory_cell is not None:
        out += [_memory_section(memory_cell), ""]

    memory = meta.get("rss", {})
    parts = []
    for name, (before, after) in memory.items():
        change = (after - before) / before * 100 if before else 0.0
        parts.append(
            f"{name} {before / MB:.0f} -> {after / MB:.0f} MB ({change:+.0f}%)"
        )
    out.append(
        "RSS before -> after its cells (memory run excluded): " + "; ".join(parts)
    )
    out.append(
        "* tokens ran out and were reused in that cell; ! some requests failed "
        "(see the JSON). Ratios: authsvc / baseline (rps), authsvc / direct (latency)."
    )
    out.append(
        "Batch rows: tokens/s, latency per call of that many tokens, CPU per "
        "token; 'crypto' = raw cryptography CPU per ES256 verification / "
        "authsvc's CPU per token (1.00 would be no overhead at all)."
    )
    return "\n".join(out)


def write(results: dict[str, Any], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2, default=str)
    latest = directory / "latest.json"
    latest.write_text(text)
    stamp = results["meta"]["started"].replace(":", "").replace("-", "")
    (directory / f"run-{stamp}.json").write_text(text)
    return latest

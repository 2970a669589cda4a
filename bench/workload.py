"""What every cell sends: the tokens, and the files the load generators read.

- `distinct`: per algorithm and run, enough fresh tokens that each request of
  a cell can carry its own (TOKEN_RATES x the cell's length); a target that
  outruns them wraps around, and the table flags the cell.
- `pool`: per algorithm, one token for each of BENCH_USERS users, picked at
  random per request (realistic reuse within a token's lifetime).
- data users: DATA_USERS users with rows in the bench table and an ES256
  token each, for user-mode Selects.

The Node baseline and authsvc get the same tokens. A distinct run's tokens
are sent to each target once, and never to authsvc twice, so a token cache
cannot turn the distinct shape into reuse.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from authsvc.v1 import auth_pb2, data_pb2
from bench import database, tokens

# Most requests/s a target is expected to reach, per algorithm.
TOKEN_RATES = {"ES256": 20_000, "RS256": 12_000, "HS256": 30_000}
DATA_USERS = 200
PK_ROWS_PER_USER = 5


def _claims_json(token: str) -> str:
    """The token's payload as authsvc's runner passes it to Postgres."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return json.dumps(claims)


class Workload:
    def __init__(
        self, directory: Path, *, runs: int, users: int, cell_seconds: float
    ) -> None:
        self.directory = directory
        self.runs = runs
        self.users = users
        self.cell_seconds = cell_seconds
        self.keys = tokens.Keys.generate()
        self.distinct: dict[str, list[list[str]]] = {}
        self.pool: dict[str, list[str]] = {}
        self.data_tokens: dict[str, str] = {}
        self._files: dict[str, Path] = {}

    def sign(self) -> None:
        users = tokens.new_subjects(self.users)
        for alg in tokens.ALGORITHMS:
            count = int(self.cell_seconds * TOKEN_RATES[alg])
            started = time.perf_counter()
            signed = tokens.sign(self.keys, alg, tokens.new_subjects(count * self.runs))
            self.distinct[alg] = [
                signed[run * count : (run + 1) * count] for run in range(self.runs)
            ]
            self.pool[alg] = tokens.sign(self.keys, alg, users)
            print(
                f"bench: signed {len(signed) + len(users):,} {alg} tokens "
                f"in {time.perf_counter() - started:.1f} s",
                flush=True,
            )
        data_users = tokens.new_subjects(DATA_USERS)
        signed = tokens.sign(self.keys, "ES256", data_users)
        self.data_tokens = dict(zip(data_users, signed, strict=True))

    @property
    def data_users(self) -> list[str]:
        return list(self.data_tokens)

    def _file(self, name: str, make: Callable[[Path], Path]) -> Path:
        if name not in self._files:
            self._files[name] = make(self.directory / name)
        return self._files[name]

    # -- VerifyToken -----------------------------------------------------------

    def token_lines(
        self, alg: str, shape: str, run: int, part: str, warmup: float
    ) -> Path:
        """wrk's token files; a distinct run's warm-up and measurement use
        disjoint parts of that run's tokens."""
        if shape == "reuse":
            pool = self.pool[alg]
            return self._file(f"{alg}-reuse.txt", lambda p: tokens.write_lines(p, pool))
        signed = self.distinct[alg][run]
        split = int(warmup * TOKEN_RATES[alg])
        chosen = signed[:split] if part == "warmup" else signed[split:]
        return self._file(
            f"{alg}-distinct-{run}-{part}.txt", lambda p: tokens.write_lines(p, chosen)
        )

    def verify_bodies(self, alg: str, shape: str, run: int) -> Path:
        source = self.pool[alg] if shape == "reuse" else self.distinct[alg][run]
        name = f"{alg}-{shape}-{run if shape == 'distinct' else 0}.grpc"
        return self._file(
            name, lambda p: tokens.write_bodies(p, map(_verify_request, source))
        )

    def one_body(self, alg: str) -> Path:
        """One pool token: for h2load, and for checks (a distinct token would
        then be seen twice)."""
        token = self.pool[alg][0]
        return self._file(
            f"{alg}-one.grpc",
            lambda p: tokens.write_bodies(p, [_verify_request(token)]),
        )

    def batch_bodies(
        self, alg: str, run: int, size: int, message: Callable[[list[str]], bytes]
    ) -> Path:
        signed = self.distinct[alg][run]
        batches = (signed[i : i + size] for i in range(0, len(signed), size))
        return self._file(
            f"{alg}-batch-{run}.grpc",
            lambda p: tokens.write_bodies(p, map(message, batches)),
        )

    # -- data ------------------------------------------------------------------

    def data_work(
        self, query: str, bench_db: database.BenchDatabase
    ) -> list[tuple[str, int | None]]:
        """(user, primary key) pairs a data cell picks from."""
        if query == "filtered":
            return [(user, None) for user in self.data_users]
        step = database.ROWS_PER_USER // PK_ROWS_PER_USER
        return [
            (user, row)
            for user in self.data_users
            for row in bench_db.rows_by_user[user][::step]
        ]

    def select_bodies(
        self, mode: str, query: str, bench_db: database.BenchDatabase
    ) -> Path:
        def request(user: str, row: int | None) -> bytes:
            select = data_pb2.SelectRequest(
                target=data_pb2.Target(table=database.TABLE),
                columns=list(database.COLUMNS),
            )
            if mode == "admin":
                select.mode.admin.SetInParent()
            else:
                select.mode.user_token = self.data_tokens[user]
            condition = select.filter.condition
            condition.op = data_pb2.EQ
            if query == "pk":
                condition.column, condition.value_json = "id", str(row)
            else:
                condition.column, condition.value_json = "owner", json.dumps(user)
                select.order.add(column="id")
                select.limit = database.FILTERED_ROWS
            return select.SerializeToString()

        work = self.data_work(query, bench_db)
        return self._file(
            f"select-{mode}-{query}.grpc",
            lambda p: tokens.write_bodies(p, (request(u, r) for u, r in work)),
        )

    def direct_work(self, query: str, bench_db: database.BenchDatabase) -> Path:
        """The same picks for bench/direct_db.py, with each user's claims."""
        work: list[dict[str, Any]] = [
            {"id": row, "owner": user, "claims": _claims_json(self.data_tokens[user])}
            for user, row in self.data_work(query, bench_db)
        ]
        return self._file(
            f"direct-{query}.json", lambda p: _write_text(p, json.dumps(work))
        )


def _verify_request(token: str) -> bytes:
    return auth_pb2.VerifyTokenRequest(token=token).SerializeToString()


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path

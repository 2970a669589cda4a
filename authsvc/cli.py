"""The `authsvc` command: serve, dev, token, verify, caller-key, check."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import sys
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from authsvc.access import CallerConfigError, CallerSet, Scope
from authsvc.access.keys import generate_key, hash_key
from authsvc.config import ConfigError, Settings
from authsvc.dev import dev_directory
from authsvc.dev.issuer import (
    DEFAULT_TOKEN_LIFETIME_SECONDS,
    DEV_EMAIL,
    DEV_USER_ID,
    DevIssuer,
)
from authsvc.ops import check as checklist
from authsvc.ops.logging import configure_logging
from authsvc.server import BindError, serve
from authsvc.workers import Supervisor, WorkerFailed, check_worker_environment

logger = logging.getLogger(__name__)

EXIT_CONFIG = 2
EXIT_FAILED = 1
DEFAULT_VERIFY_TARGET = "localhost:50051"
DEFAULT_VERIFY_TIMEOUT_SECONDS = 5.0
CALLER_KEY_VARIABLE = "AUTHSVC_CALLER_KEY"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    handler = args.handler
    try:
        code = int(handler(args))
        sys.stdout.flush()  # here, where a closed pipe can still be handled
        return code
    except ConfigError as exc:
        print(f"authsvc: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BindError as exc:
        logger.error("start-up failed: %s", exc)
        print(f"authsvc: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        # The reader went away (`authsvc verify … | head`): nothing to say to
        # it, and nothing more to write at exit either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="authsvc",
        description="Supabase token verification over gRPC, for apps on Fly.io.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve_cmd = commands.add_parser(
        "serve", help="run the server, configured from the environment"
    )
    serve_cmd.add_argument(
        "--workers",
        type=int,
        help="server processes sharing the port; 0: one per CPU (default: "
        "AUTHSVC_WORKERS, else 0)",
    )
    serve_cmd.set_defaults(handler=_serve)

    dev_cmd = commands.add_parser(
        "dev", help="run the server with a local issuer; no Supabase project needed"
    )
    dev_cmd.set_defaults(handler=_dev)

    token_cmd = commands.add_parser(
        "token",
        help="mint a token signed by the dev issuer (for `authsvc dev`)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    token_cmd.add_argument("--sub", default=DEV_USER_ID, help="user id (sub)")
    token_cmd.add_argument("--email", default=DEV_EMAIL)
    token_cmd.add_argument("--role", default="authenticated")
    token_cmd.add_argument("--org-id", help="custom claim org_id")
    token_cmd.add_argument("--user-role", help="custom claim user_role")
    token_cmd.add_argument(
        "--expires-in",
        type=int,
        default=DEFAULT_TOKEN_LIFETIME_SECONDS,
        help="lifetime in seconds (negative for an expired token)",
    )
    token_cmd.add_argument("--anonymous", action="store_true", help="is_anonymous")
    token_cmd.add_argument(
        "--claim",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="any other claim, value as JSON (repeatable)",
    )
    token_cmd.set_defaults(handler=_token)

    verify_cmd = commands.add_parser(
        "verify",
        help="call VerifyToken on a running server and print the claims",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    verify_cmd.add_argument("token")
    verify_cmd.add_argument(
        "--reject-anonymous",
        action="store_true",
        help="refuse tokens of anonymous sign-ins",
    )
    verify_cmd.add_argument(
        "--target", default=DEFAULT_VERIFY_TARGET, help="the server's HOST:PORT"
    )
    verify_cmd.add_argument(
        "--key",
        default=os.environ.get(CALLER_KEY_VARIABLE),
        help=f"this app's caller key; by default ${CALLER_KEY_VARIABLE}",
    )
    verify_cmd.add_argument(
        "--timeout",
        dest="timeout_seconds",
        type=float,
        default=DEFAULT_VERIFY_TIMEOUT_SECONDS,
        help="seconds to wait for the answer",
    )
    verify_cmd.set_defaults(handler=_verify)

    key_cmd = commands.add_parser(
        "caller-key",
        help="make a new caller key and print it with the hash to configure",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    key_cmd.add_argument(
        "--name", default="my-app", help="the caller's name (a-z, 0-9, - _ .)"
    )
    key_cmd.add_argument(
        "--scope",
        action="append",
        choices=[scope.value for scope in Scope],
        help="a scope to grant (repeatable; default tokens:verify)",
    )
    key_cmd.add_argument(
        "--admin-table",
        action="append",
        metavar="SCHEMA.TABLE",
        help="narrow data:admin to this table (repeatable)",
    )
    key_cmd.add_argument(
        "--admin-function",
        action="append",
        metavar="SCHEMA.FUNCTION",
        help="narrow data:admin to this function (repeatable)",
    )
    key_cmd.set_defaults(handler=_caller_key)

    check_cmd = commands.add_parser(
        "check",
        help="check a deployment (region, pooler, secrets, keys, database, "
        "fly.toml); exit 1 if anything fails",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    check_cmd.add_argument(
        "--fly-toml",
        default="fly.toml",
        metavar="PATH",
        help="the app's fly.toml; if missing, its checks are skipped with a warning",
    )
    check_cmd.add_argument(
        "--machines",
        type=int,
        help=f"Machines running authsvc (by default {checklist.DEFAULT_MACHINES}, "
        "or fly.toml's min_machines_running if higher)",
    )
    check_cmd.add_argument(
        "--pool-budget",
        type=int,
        default=checklist.DEFAULT_POOL_BUDGET,
        help="server connections the pooler opens per user (Supabase's pool size)",
    )
    check_cmd.add_argument(
        "--json", action="store_true", help="print the results as JSON"
    )
    check_cmd.set_defaults(handler=_check)
    return parser


def _serve(args: argparse.Namespace) -> int:
    environ = dict(os.environ)
    if args.workers is not None:
        if args.workers < 0:
            raise ConfigError("--workers must be 0 (one per CPU) or more")
        environ["AUTHSVC_WORKERS"] = str(args.workers)
    settings = Settings.from_environ(environ)
    check_worker_environment(settings, environ)
    configure_logging(settings.log_level, settings.log_format, settings.worker_index)
    if settings.worker_index is None:
        # Said once per Machine, by the supervisor or the only process.
        logger.info(
            "starting %s",
            " ".join(f"{key}={value}" for key, value in settings.summary().items()),
        )
        for name in Settings.unknown_variables(environ):
            logger.warning("unknown setting ignored name=%s (misspelled?)", name)
        if settings.allow_unauthenticated:
            logger.warning(
                "AUTHSVC_ALLOW_UNAUTHENTICATED is on: any app that reaches the "
                "port can verify tokens and query as a user"
            )
    if settings.worker_count > 1:
        return asyncio.run(_supervise(settings, environ))
    # A serving process runs on uvloop; the supervisor, which only waits on
    # its workers, keeps asyncio's loop.
    with asyncio.Runner(loop_factory=serving_loop_factory()) as runner:
        runner.run(serve(settings))
    return 0


def serving_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # not installed (e.g. Windows): asyncio's own loop
        return None
    return uvloop.new_event_loop


async def _supervise(settings: Settings, environ: dict[str, str]) -> int:
    supervisor = Supervisor(settings, environ)
    try:
        await supervisor.start()
    except OSError as exc:
        raise BindError(
            f"cannot listen on {settings.listen_addr}: {exc.strerror or exc} "
            "(set AUTHSVC_LISTEN_ADDR)"
        ) from exc
    except WorkerFailed as exc:
        logger.error("start-up failed: %s", exc)
        print(f"authsvc: {exc}", file=sys.stderr)
        return exc.exit_code
    return await supervisor.run()


def _dev(_: argparse.Namespace) -> int:
    from authsvc.dev.mode import run_dev

    configure_logging(os.environ.get("AUTHSVC_LOG_LEVEL", "INFO"), "human")
    asyncio.run(run_dev(os.environ))
    return 0


def _token(args: argparse.Namespace) -> int:
    extra: dict[str, Any] = {}
    if args.org_id is not None:
        extra["org_id"] = args.org_id
    if args.user_role is not None:
        extra["user_role"] = args.user_role
    for item in args.claim:
        name, sep, value = item.partition("=")
        if not sep or not name:
            print(f"authsvc: --claim expects NAME=JSON, got {item!r}", file=sys.stderr)
            return EXIT_CONFIG
        try:
            extra[name] = json.loads(value, parse_constant=_refuse_constant)
        except ValueError:
            extra[name] = value
        if isinstance(extra[name], float) and not math.isfinite(extra[name]):
            print(f"authsvc: --claim {name} is not a finite number", file=sys.stderr)
            return EXIT_CONFIG

    issuer = DevIssuer(dev_directory(os.environ))
    if issuer.created:
        print(
            f"authsvc: created a new dev signing key in {issuer.directory}; "
            "an `authsvc dev` already running with another key will not accept "
            "this token",
            file=sys.stderr,
        )
    print(
        issuer.mint(
            sub=args.sub,
            email=args.email,
            role=args.role,
            expires_in=args.expires_in,
            is_anonymous=args.anonymous,
            extra=extra,
        )
    )
    return 0


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _verify(args: argparse.Namespace) -> int:
    from authsvc.v1 import auth_pb2

    request = auth_pb2.VerifyTokenRequest(
        token=args.token, reject_anonymous=args.reject_anonymous
    )
    metadata = (("authorization", f"Bearer {args.key}"),) if args.key else ()
    return asyncio.run(
        _verify_remote(args.target, request, metadata, args.timeout_seconds)
    )


async def _verify_remote(
    target: str,
    request: Any,
    metadata: tuple[tuple[str, str], ...],
    timeout_seconds: float,
) -> int:
    from authsvc.v1 import auth_pb2_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        try:
            response = await stub.VerifyToken(
                request, metadata=metadata, timeout=timeout_seconds
            )
        except grpc.aio.AioRpcError as exc:
            print(_describe_rpc_error(exc), file=sys.stderr)
            if not metadata and exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                print(
                    f"authsvc: pass --key or set {CALLER_KEY_VARIABLE}",
                    file=sys.stderr,
                )
            return EXIT_FAILED
    print(
        json_format.MessageToJson(response, indent=2, preserving_proto_field_name=True)
    )
    return 0


def _caller_key(args: argparse.Namespace) -> int:
    """The key on stderr, the TOML on stdout: `>> callers.toml` stores no key."""
    narrowed = args.admin_table is not None or args.admin_function is not None
    default = [Scope.DATA_ADMIN.value if narrowed else Scope.TOKENS_VERIFY.value]
    scopes = list(dict.fromkeys(args.scope or default))
    if narrowed and Scope.DATA_ADMIN.value not in scopes:
        scopes.append(Scope.DATA_ADMIN.value)
    key = generate_key()
    lines = [
        f"[callers.{json.dumps(args.name)}]",
        f'key_hashes = ["{hash_key(key)}"]',
        f"scopes = {json.dumps(scopes)}",
    ]
    if narrowed:
        lines.append(f"admin_tables = {json.dumps(args.admin_table or [])}")
        lines.append(f"admin_functions = {json.dumps(args.admin_function or [])}")
    # Parse what we print, so a bad name fails here, not at deploy.
    toml = "\n".join(lines) + "\n"
    try:
        CallerSet.parse(toml)
    except CallerConfigError as exc:
        print(f"authsvc: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    if Scope.DATA_ADMIN.value in scopes and not narrowed:
        print(
            "authsvc: warning: data:admin on every table and function bypasses "
            "row-level security; narrow it with --admin-table/--admin-function",
            file=sys.stderr,
        )
    # The key is the last line on stderr, alone when stderr is not a terminal,
    # so `2>key.txt` or `2>&1 >>callers.toml | tail -1` captures just the key.
    if sys.stderr.isatty():
        print(
            f"authsvc: the key for {args.name} (give it to that app, e.g. as a "
            "Fly secret; it sends 'authorization: Bearer <key>'):",
            file=sys.stderr,
        )
    print(key, file=sys.stderr)
    print(toml, end="")
    return 0


def _check(args: argparse.Namespace) -> int:
    """Every row printed; exit 1 if any FAILs (WARNs pass a release step)."""
    if (args.machines is not None and args.machines < 1) or args.pool_budget < 1:
        print(
            "authsvc: --machines and --pool-budget must be 1 or more", file=sys.stderr
        )
        return EXIT_CONFIG
    deployment = checklist.load_deployment(
        os.environ,
        fly_toml=args.fly_toml,
        machines=args.machines,
        pool_budget=args.pool_budget,
    )
    results = asyncio.run(checklist.run_checks(deployment))
    if args.json:
        print(checklist.render_json(results))
    else:
        print(checklist.render_table(results))
    return EXIT_FAILED if checklist.failed(results) else 0


def _describe_rpc_error(exc: grpc.aio.AioRpcError) -> str:
    reason = ""
    status = rpc_status.from_call(exc)
    if status is not None:
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                reason = f" reason={info.reason}"
    return f"{exc.code().name}{reason}: {exc.details()}"


if __name__ == "__main__":
    sys.exit(main())

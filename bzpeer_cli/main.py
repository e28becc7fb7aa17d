"""``bzpeer``: one entry point, one subcommand per job; ``bzpeer <command> --help`` for each."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys

from service_runtime.settings import RuntimeSettings

SERVICES = ("profile", "claims", "trust", "follow")


def _cmd_topics(args: argparse.Namespace) -> int:
    from service_runtime.kafka import ensure_topics

    settings = RuntimeSettings()
    created = asyncio.run(ensure_topics(settings.kafka_bootstrap_servers, prefix=settings.topic_prefix))
    print(f"created {len(created)} topics" + (": " + ", ".join(created) if created else " (all existed)"))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"services.{args.service}.app")
    module.main()
    return 0


def _cmd_token(args: argparse.Namespace) -> int:
    from service_runtime.auth import mint_token

    settings = RuntimeSettings()
    if settings.environment == "production":
        print("refusing to mint tokens in production", file=sys.stderr)
        return 2
    print(mint_token(settings, args.user, args.role, ttl_s=args.ttl))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bzpeer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("topics", help="create every topic of the registry (idempotent)")
    p.set_defaults(func=_cmd_topics)

    p = sub.add_parser("run", help="run one service (HTTP + consumers) in the foreground")
    p.add_argument("service", choices=SERVICES)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("token", help="mint a development JWT for trying the HTTP API by hand")
    p.add_argument("--user", required=True, help="the user id (the token's subject)")
    p.add_argument("--role", action="append", default=[], help="a role, e.g. reviewer (repeatable)")
    p.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (default 3600)")
    p.set_defaults(func=_cmd_token)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""``bzpeer``: one entry point, one subcommand per job; ``bzpeer <command> --help`` for each."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys

from bzpeer_cli.services import RUNNABLE, SERVICE_PORTS, WEB_PORT
from bzpeer_cli.services import SERVICE_NAMES as SERVICES
from service_runtime.settings import RuntimeSettings


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


def _cmd_status(args: argparse.Namespace) -> int:
    """Infra reachability, each service's readiness, and each consumer group's lag."""
    import httpx
    from aiokafka.admin import AIOKafkaAdminClient

    from service_runtime.offsets import group_progress

    settings = RuntimeSettings()

    async def gather() -> int:
        healthy = True
        for name, port in {**SERVICE_PORTS, "web": WEB_PORT}.items():
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2)
                state = "ready" if r.status_code == 200 else f"not ready {r.json()}"
            except httpx.HTTPError:
                state = "not running"
            healthy &= state == "ready"
            print(f"{name:8} 127.0.0.1:{port}  {state}")
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
        await admin.start()
        try:
            groups = sorted(
                g[0]
                for g in await admin.list_consumer_groups()
                if g[0].startswith(settings.consumer_group_prefix + ".")
            )
            described = {}
            for g in groups:
                offsets = await admin.list_consumer_group_offsets(g)
                described[g] = sorted({tp.topic for tp in offsets})
        finally:
            await admin.close()
        for group, topics in described.items():
            progress = await group_progress(settings.kafka_bootstrap_servers, group, topics)
            lag = sum(p.lag for p in progress)
            print(f"group {group}: lag {lag} over {len(progress)} partitions of {', '.join(topics)}")
        return 0 if healthy else 1

    return asyncio.run(gather())


def _cmd_import_openalex(args: argparse.Namespace) -> int:
    from importers.openalex import run_import_command

    return run_import_command(args.identifier, fresh=args.fresh)


def _cmd_seed(args: argparse.Namespace) -> int:
    from services.profile.seed import SEED_AUTHOR_ID, load_seed

    settings = RuntimeSettings()
    author_id = args.demo_copy or SEED_AUTHOR_ID
    n = asyncio.run(
        load_seed(
            settings.kafka_bootstrap_servers,
            author_id=author_id,
            demo_copy=bool(args.demo_copy),
            topic_prefix=settings.topic_prefix,
        )
    )
    what = "a demo copy of the seed record" if args.demo_copy else "the seed record"
    print(f"published {n} events of {what} (idempotent): http://127.0.0.1:{WEB_PORT}/authors/{author_id}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """Play the seed story against the running system (make up first)."""
    import httpx

    from bzpeer_cli.demo import Story, StoryStepFailed
    from service_runtime.auth import mint_token
    from service_runtime.kafka import make_broker
    from service_runtime.publishing import EventPublisher

    settings = RuntimeSettings()

    async def play() -> int:
        broker = make_broker(settings.kafka_bootstrap_servers, client_id="bzpeer-demo")
        await broker.connect()
        clients = {n: httpx.AsyncClient(base_url=f"http://127.0.0.1:{p}", timeout=10) for n, p in SERVICE_PORTS.items()}
        try:
            story = Story(
                EventPublisher(broker, "webapp", settings.topic_prefix),
                clients,
                token=lambda user, roles: mint_token(settings, user, roles),
                timeout_s=args.timeout,
            )
            await story.play()
            await story.collaborate()
            return 0
        except (StoryStepFailed, httpx.HTTPError) as exc:
            print(f"demo stopped: {exc}", file=sys.stderr)
            return 1
        finally:
            for c in clients.values():
                await c.aclose()
            await broker.stop()

    return asyncio.run(play())


def _cmd_trust_rescore(args: argparse.Namespace) -> int:
    from services.trust.rescore import main as rescore_main

    return rescore_main([] if args.chunk is None else ["--chunk", str(args.chunk)])


def _cmd_replay(args: argparse.Namespace) -> int:
    """Rebuild a service's projection from its topics (offset 0), with a progress bar."""
    import httpx

    from bzpeer_cli.services import build, settings_class
    from service_runtime.replay import compare_databases, rebuild

    settings = settings_class(args.service)()
    live_db = settings.database_name
    if args.replace:
        try:
            httpx.get(f"http://127.0.0.1:{SERVICE_PORTS[args.service]}/health", timeout=1)
            print(f"{args.service} is running: stop it before rebuilding its projection in place", file=sys.stderr)
            return 2
        except httpx.HTTPError:
            pass
    target = live_db if args.replace else f"{live_db}_replay"

    def progress(done: int, total: int) -> None:
        width = 40
        filled = width * done // total if total else width
        pct = 100 * done / total if total else 100.0
        print(
            f"\r{args.service} [{'#' * filled}{'.' * (width - filled)}] {pct:5.1f}% {done}/{total} records",
            end="",
            file=sys.stderr,
            flush=True,
        )

    result = asyncio.run(rebuild(lambda s: build(args.service, s), settings, database=target, progress=progress))
    print(f"\nrebuilt {target} from {result.records} records in {result.seconds:.1f}s", file=sys.stderr)
    if args.replace:
        return 0
    differences = asyncio.run(compare_databases(settings.mongodb_uri, live_db, target, result.projection))
    for line in differences:
        print(line)
    print(f"{'equal to' if not differences else 'DIFFERENT from'} the live projection {live_db}")
    return 0 if not differences else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bzpeer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("topics", help="create every topic of the registry (idempotent)")
    p.set_defaults(func=_cmd_topics)

    p = sub.add_parser("run", help="run one service (HTTP + consumers), or the web app, in the foreground")
    p.add_argument("service", choices=RUNNABLE)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("import", help="import works into publications.ingested")
    importers = p.add_subparsers(dest="source", required=True, metavar="SOURCE")
    q = importers.add_parser("openalex", help="an author's works from OpenAlex (resumable)")
    q.add_argument("identifier", help="ORCID iD (0000-0002-1825-0097) or OpenAlex author id (A5017898742)")
    q.add_argument("--fresh", action="store_true", help="forget the checkpoint and start from page 1")
    q.set_defaults(func=_cmd_import_openalex)

    p = sub.add_parser("seed", help="publish the seed profile (idempotent)")
    p.add_argument(
        "--demo-copy",
        metavar="AUTHOR_ID",
        help="publish a demo copy of it under this id instead (ORCID 0000-0002-1825-0097 on record, to try a claim)",
    )
    p.set_defaults(func=_cmd_seed)

    p = sub.add_parser("demo", help="play the seed story on a fresh demo copy (needs make up)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each step (default 60)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("replay", help="rebuild a service's projection from its topics (offset 0)")
    p.add_argument("service", choices=SERVICES)
    p.add_argument(
        "--replace",
        action="store_true",
        help="drop the live projection and rebuild it in place (the service must be stopped); "
        "default: rebuild beside it and compare",
    )
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser("trust", help="trust service maintenance")
    trust = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = trust.add_parser("rescore", help="rescore every author with the current formula (resumable)")
    q.add_argument("--chunk", type=int, default=None, help="authors per step (default 500)")
    q.set_defaults(func=_cmd_trust_rescore)

    p = sub.add_parser("status", help="show infra, service readiness and consumer lag")
    p.set_defaults(func=_cmd_status)

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

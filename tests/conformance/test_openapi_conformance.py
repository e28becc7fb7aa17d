"""Each service keeps the contract of its own OpenAPI document.

The five services run for real (one namespace of the real broker and store, each app served
by uvicorn on a free port) after the seed story has been played on them, so there are an
author, a claim, followers, notifications and an invitation to find. Schemathesis then runs
every check against each service's ``/openapi.json`` with a valid token, and must find
nothing: every status answered is documented with its body, error bodies are problem
details, schema-valid requests are accepted and schema-invalid ones refused.

The examples per operation are bounded and the seed is fixed, so the run takes about the
same time on every machine and a failure can be replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from bzpeer_cli.services import SERVICE_NAMES
from contracts.events.claims import Evidence
from service_runtime.auth import mint_token
from service_runtime.kafka import make_broker
from service_runtime.publishing import EventPublisher
from tests.conftest import Namespace, drop_namespace
from tests.service_process import REPO_ROOT, free_port
from tests.system import System

ST = Path(sys.executable).with_name("st")
MAX_EXAMPLES = int(os.environ.get("BZPEER_CONFORMANCE_EXAMPLES", "30"))
SEED = 17


@dataclass
class Served:
    urls: dict[str, str]
    tokens: dict[str, str]
    ids: dict[str, dict[str, str]]


async def _serve(app: FastAPI, port: int) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    # lifespan off: the services are already running (``System.running``).
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_config=None))
    task = asyncio.create_task(server.serve())
    deadline = asyncio.get_running_loop().time() + 30
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        assert asyncio.get_running_loop().time() < deadline, "uvicorn not started within 30 s"
        await asyncio.sleep(0.05)
    return server, task


@pytest.fixture(scope="module")
async def served(infra: dict[str, str], kafka_ready: None) -> AsyncIterator[Served]:
    ns = Namespace(infra)
    system = System(ns)
    broker = make_broker(infra["kafka"], client_id="webapp")
    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []
    try:
        async with system.running(), contextlib.AsyncExitStack() as stack:
            await broker.connect()
            stack.push_async_callback(broker.stop)
            webapp = EventPublisher(broker, "webapp", ns.topic_prefix)
            story = await stack.enter_async_context(system.story(webapp))
            await story.play()
            await story.collaborate()
            assert story.invitation_id is not None
            # A claim of the researcher's own to read (rejected: the record is claimed).
            async with system.http("claims") as claims:
                r = await claims.post(
                    "/claims",
                    json={"author_id": story.author_id, "evidence": Evidence().model_dump(mode="json")},
                    headers=system.token(story.impostor),
                )
                r.raise_for_status()
                claim_id = r.json()["claim_id"]
            urls = {}
            for name in SERVICE_NAMES:
                port = free_port()
                servers.append(await _serve(system.services[name].http, port))
                urls[name] = f"http://127.0.0.1:{port}"
            settings = system.settings["claims"]
            author = {"author_id": story.author_id}
            yield Served(
                urls=urls,
                # Each service's token: a user the story gave something to find. Profile:
                # no importer role, so the works drawn (up to 5,000 authors each) are checked
                # and refused (403), not imported into every service. Claims: a claimant, not a
                # reviewer: a claim is written when its command is consumed, so the claim a
                # POST just accepted is for a moment unknown, a 404 to a reviewer that
                # schemathesis' stateful phase takes for a lost resource (a claimant reads
                # the same 403 for a claim not found as for one not theirs).
                tokens={
                    "profile": mint_token(settings, story.researcher),
                    "claims": mint_token(settings, story.impostor),
                    "trust": mint_token(settings, story.follower),
                    "follow": mint_token(settings, story.follower),
                    "collab": mint_token(settings, story.researcher),
                },
                ids={
                    "profile": author,
                    "claims": {**author, "claim_id": claim_id},
                    "trust": author,
                    "follow": {**author, "user_id": story.follower},
                    "collab": {**author, "invitation_id": story.invitation_id, "user_id": story.researcher},
                },
            )
            for server, task in servers:
                server.should_exit = True
                await task
    finally:
        await drop_namespace(ns)


async def _schemathesis(url: str, token: str, ids: dict[str, str], workdir: Path) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        str(ST),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {token}",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        # No example database: every run is the same run.
        "--generation-database",
        "none",
        # One worker: schemathesis' threads parse Python source at once, which CPython 3.11
        # does not survive ("AST constructor recursion depth mismatch").
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--no-color",
        cwd=workdir,  # where schemathesis keeps its crash cache: not the work tree
        env={
            **os.environ,
            "SCHEMATHESIS_HOOKS": "tests.conformance.hooks",
            "BZPEER_CONFORMANCE_IDS": json.dumps(ids),
            "PYTHONPATH": str(REPO_ROOT),
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    return await process.wait(), output.decode(errors="replace")


@pytest.mark.parametrize("service", SERVICE_NAMES)
async def test_service_keeps_its_openapi_contract(served: Served, service: str, tmp_path: Path) -> None:
    async with httpx.AsyncClient(base_url=served.urls[service]) as http:
        assert (await http.get("/openapi.json")).status_code == 200
    started = time.monotonic()
    code, report = await _schemathesis(served.urls[service], served.tokens[service], served.ids[service], tmp_path)
    print(f"{service}: schemathesis ran {time.monotonic() - started:.0f} s\n{report}")
    assert code == 0, f"schemathesis found failures in the {service} service's API:\n{report}"

"""Every service's operational HTTP, shown on the runtime's minimal service against the
real broker and store: liveness, readiness, Prometheus metrics, OpenAPI and AsyncAPI."""

from __future__ import annotations

import os

import httpx

from tests.conftest import Namespace
from tests.integration.test_delivery import EchoService
from tests.tcp_proxy import TcpProxy


async def test_health_ready_metrics_openapi_asyncapi(ns: Namespace) -> None:
    echo = EchoService(ns)
    async with (
        echo.service.running(),
        httpx.AsyncClient(transport=httpx.ASGITransport(echo.service.http), base_url="http://svc") as http,
    ):
        assert (await http.get("/health")).json() == {"status": "ok", "service": "echo", "pid": os.getpid()}
        ready = await http.get("/ready")
        assert ready.status_code == 200 and ready.json() == {"status": "ready", "broker": True, "store": True}
        metrics = (await http.get("/metrics")).text
        assert "bzpeer_consumer_lag" in metrics and "bzpeer_dead_letters_total" in metrics
        assert "bzpeer_handler_batch_seconds" in metrics
        assert "/health" in (await http.get("/openapi.json")).json()["paths"]
        asyncapi = (await http.get("/asyncapi.json")).json()
        assert asyncapi["asyncapi"].startswith("3.")
        assert any("publications.ingested" in c.get("address", "") for c in asyncapi["channels"].values())


async def test_ready_reports_an_unreachable_store(ns: Namespace) -> None:
    host, port = ns.infra["mongodb"].split("//")[1].split(":")
    proxy = await TcpProxy(host, int(port.split("/")[0])).start()
    echo = EchoService(ns, mongodb_uri=f"mongodb://127.0.0.1:{proxy.port}/?directConnection=true")
    async with (
        echo.service.running(),
        httpx.AsyncClient(transport=httpx.ASGITransport(echo.service.http), base_url="http://svc") as http,
    ):
        assert (await http.get("/ready")).status_code == 200
        await proxy.cut()
        ready = await http.get("/ready")
        assert ready.status_code == 503 and ready.json()["store"] is False
        assert (await http.get("/health")).status_code == 200  # alive, just not ready
        await proxy.restore()
    await proxy.cut()

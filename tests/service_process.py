"""Run a bzpeer service as a separate OS process, the way it runs in production
(``python -m bzpeer_cli.main run <service>``), for tests that kill, restart or replicate it.

    proc = ServiceProcess("follow", settings)   # any RuntimeSettings (e.g. from ns.settings)
    await proc.start()                          # free port, waits for /ready
    proc.kill()                                 # SIGKILL: no shutdown hooks, no commits
    await proc.restart()
    await proc.stop()                           # SIGTERM, then SIGKILL if it lingers

Output goes to a temporary log file (``proc.log_path``, ``proc.log_text()``).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from service_runtime.settings import RuntimeSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
_PR_SET_PDEATHSIG = 1


def _end_with_parent() -> None:
    """In the child, before exec (Linux): SIGTERM when the test process dies. A test process
    that is killed runs no teardown, and its services would go on consuming."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings_env(settings: RuntimeSettings, **extra: Any) -> dict[str, str]:
    """Environment variables that reproduce ``settings`` in a child process (every field,
    so service-specific ones like FANOUT_CHUNK_SIZE travel too)."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        env[name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    env.update({k.upper(): str(v) for k, v in extra.items()})
    return env


class ServiceExited(RuntimeError):
    """The service's process ended before it was ready."""


class ServiceProcess:
    def __init__(
        self, service: str, settings: RuntimeSettings, *, ready_timeout_s: float = 60.0, **extra_env: Any
    ) -> None:
        self.service = service
        self.settings = settings
        self.ready_timeout_s = ready_timeout_s
        self.extra_env = extra_env
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        handle, name = tempfile.mkstemp(prefix=f"bzpeer-{service}-", suffix=".log")
        os.close(handle)
        self.log_path = Path(name)
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def start(self) -> ServiceProcess:
        """Start the process and wait until it is ready. A port taken between choosing and
        binding it (another test run on the machine) means another port and another try."""
        for attempt in range(1, 6):
            begins = len(self.log_text())
            try:
                await self._spawn()
                return self
            except ServiceExited:
                if attempt == 5 or "address already in use" not in self.log_text()[begins:]:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    async def _spawn(self) -> None:
        env = {
            **os.environ,
            **settings_env(self.settings, **self.extra_env),
            "HTTP_PORT": str(self.port),
            "HTTP_HOST": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
        }
        env.setdefault("ENVIRONMENT", "test")
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts + 1}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bzpeer_cli.main", "run", self.service],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_end_with_parent,
            )
        self.starts += 1
        await self.wait_ready()

    async def wait_ready(self) -> None:
        assert self.process is not None
        pid = self.process.pid
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                if not self.alive:
                    raise ServiceExited(
                        f"{self.service} exited with {self.process and self.process.returncode}; "
                        f"log:\n{self.log_text()[-3000:]}"
                    )
                try:
                    # Our process, not another one answering on this port.
                    ours = (await client.get(f"{self.url}/health")).json().get("pid") == pid
                    if ours and (await client.get(f"{self.url}/ready")).status_code == 200:
                        return
                except (httpx.HTTPError, ValueError):
                    pass
                if loop.time() > deadline:
                    raise TimeoutError(
                        f"{self.service} not ready after {self.ready_timeout_s}s; log:\n{self.log_text()[-3000:]}"
                    )
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to commit, flush or clean up."""
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    async def terminate(self, timeout_s: float = 15.0) -> None:
        """SIGTERM (graceful stop), SIGKILL if it is still there after ``timeout_s``."""
        if not self.alive:
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.process.poll() is None and loop.time() < deadline:
            await asyncio.sleep(0.05)
        self.kill()

    async def restart(self) -> ServiceProcess:
        await self.terminate()
        return await self.start()

    async def stop(self) -> None:
        await self.terminate()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def __aenter__(self) -> ServiceProcess:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def group_members(bootstrap_servers: str, group_id: str) -> tuple[str, int]:
    """(state, member count) of a consumer group, e.g. ("Stable", 2)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        described = await admin.describe_consumer_groups([group_id])
    finally:
        await admin.close()
    for response in described:
        for group in response.groups:
            _error, gid, state, *_rest, members = group[:6]
            if gid == group_id:
                return str(state), len(members)
    return "Dead", 0


async def wait_for_group(bootstrap_servers: str, group_id: str, members: int, timeout_s: float = 60.0) -> None:
    """Wait until ``members`` processes share the group and it is stable (partitions
    assigned): what a test needs before it can expect several replicas to take work."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last: tuple[str, int] = ("", 0)
    while loop.time() < deadline:
        last = await group_members(bootstrap_servers, group_id)
        if last == ("Stable", members):
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"group {group_id} not stable with {members} members after {timeout_s}s: {last}")

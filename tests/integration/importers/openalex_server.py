"""A local stand-in for api.openalex.org serving the real recorded responses in ./data.

A real HTTP server on 127.0.0.1 (a thread), so the importer's httpx client talks over a
real socket. Works lists page the recorded works with ``page``/``per_page`` like OpenAlex;
where a page was recorded as it is (page 1 of 50 and page 1 of 5), that recording is sent
byte for byte. Tests script faults (429, 5xx, malformed bodies) and hangs per request.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

DATA = Path(__file__).parent / "data"
MEARMAN = "A5017898742"  # the recorded works list belongs to him
PRIEM = "A5023888391"  # recorded with an ORCID iD; no works list recorded for him
PRIEM_ORCID = "0000-0001-6187-6610"


def load(name: str) -> bytes:
    return (DATA / name).read_bytes()


@dataclass
class Request:
    path: str
    query: dict[str, str]


@dataclass
class Canned:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


Match = Callable[[Request], bool]


class OpenAlexStub:
    def __init__(self) -> None:
        self.authors = {MEARMAN: load(f"author-{MEARMAN}.json"), PRIEM: load(f"author-{PRIEM}.json")}
        self.orcids = {PRIEM_ORCID: PRIEM}
        mearman_works = json.loads(load(f"works-author-{MEARMAN}-page-1.json"))["results"]
        # Priem's works list is served as the recorded empty list (a real count-0 response).
        self.works = {MEARMAN: mearman_works, PRIEM: []}
        self.verbatim = {
            (MEARMAN, 1, 50): load(f"works-author-{MEARMAN}-page-1.json"),
            (MEARMAN, 1, 5): load(f"works-authorships-{MEARMAN}-per-page-5-page-1.json"),
            (PRIEM, 1, 50): load("works-empty-cites-W3209445140.json"),
        }
        self.requests: list[Request] = []
        self._faults: list[tuple[Match, Canned]] = []
        self._hangs: list[tuple[Match, threading.Event]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        assert isinstance(host, str)  # an AF_INET server's bound address names its host as text
        return f"http://{host}:{port}"

    def __enter__(self) -> OpenAlexStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for _, released in self._hangs:
            released.set()
        self._server.shutdown()
        self._server.server_close()

    # --- scripting ------------------------------------------------------------------------

    def fail_next(self, match: Match, *responses: Canned) -> None:
        """The next requests matching ``match`` get these responses, one each, in order."""
        with self._lock:
            self._faults.extend((match, r) for r in responses)

    def hang(self, match: Match) -> threading.Event:
        """Requests matching ``match`` wait until the returned event is set."""
        released = threading.Event()
        with self._lock:
            self._hangs.append((match, released))
        return released

    def works_requests(self) -> list[Request]:
        return [r for r in self.requests if r.path == "/works"]

    # --- serving --------------------------------------------------------------------------

    def _respond(self, req: Request) -> Canned:
        with self._lock:
            self.requests.append(req)
            fault = next(((m, c) for m, c in self._faults if m(req)), None)
            if fault:
                self._faults.remove(fault)
            hang = next((e for m, e in self._hangs if m(req)), None)
        if hang is not None:
            hang.wait(timeout=60)
        if fault:
            return fault[1]
        if req.path.startswith("/authors/"):
            ident = req.path.removeprefix("/authors/")
            key = self.orcids.get(ident.removeprefix("https://orcid.org/"), ident)
            body = self.authors.get(key)
            return Canned(200, body) if body else Canned(404, b'{"error": "Not found"}')
        if req.path == "/works":
            return self._works(req)
        return Canned(404, b'{"error": "Not found"}')

    def _works(self, req: Request) -> Canned:
        key = req.query.get("filter", "").removeprefix("author.id:")
        page, per_page = int(req.query.get("page", 1)), int(req.query.get("per_page", 25))
        if key not in self.works:
            return Canned(400, b'{"error": "unknown author filter"}')
        if (key, page, per_page) in self.verbatim:
            return Canned(200, self.verbatim[(key, page, per_page)])
        works = self.works[key]
        meta = {"count": len(works), "db_response_time_ms": 1, "page": page, "per_page": per_page, "groups_count": None}
        body = {"meta": meta, "results": works[(page - 1) * per_page : page * per_page], "group_by": []}
        return Canned(200, json.dumps(body).encode())

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                canned = stub._respond(Request(url.path, query))
                try:
                    self.send_response(canned.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(canned.body)))
                    for name, value in canned.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(canned.body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a test cancelled it)
                    pass

            def log_message(self, *args: object) -> None:
                pass

        return Handler


def works_page(n: int) -> Match:
    return lambda r: r.path == "/works" and r.query.get("page") == str(n)


def any_works_page(r: Request) -> bool:
    return r.path == "/works"

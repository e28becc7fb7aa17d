"""Finding each service's settings class and composition root by name."""

from __future__ import annotations

import importlib
import inspect

from service_runtime.service import Service
from service_runtime.settings import RuntimeSettings

SERVICE_NAMES = ("profile", "claims", "trust", "follow", "collab")
SERVICE_PORTS = {"profile": 8001, "claims": 8002, "trust": 8003, "follow": 8004, "collab": 8005}
# The web app runs like a service (``bzpeer run web``) but is none: no store, no consumer
# group, no projection; it reads the services' HTTP APIs (services/web/README.md).
WEB_PORT = 8000
RUNNABLE = (*SERVICE_NAMES, "web")


def settings_class(name: str) -> type[RuntimeSettings]:
    module = importlib.import_module(f"services.{name}.settings")
    classes = [
        c
        for _, c in inspect.getmembers(module, inspect.isclass)
        if issubclass(c, RuntimeSettings) and c is not RuntimeSettings and c.__module__ == module.__name__
    ]
    if len(classes) != 1:
        raise LookupError(f"services.{name}.settings must define exactly one settings class")
    return classes[0]


def build(name: str, settings: RuntimeSettings) -> Service:
    service: Service = importlib.import_module(f"services.{name}.app").build_service(settings)
    return service

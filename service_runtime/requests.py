"""The base of every request body the services take."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class RequestBody(BaseModel):
    """Strict: an unknown field is refused (a token or secret sent by mistake is a 422,
    never stored; a misspelt field is not silently dropped), and a value must have its
    documented JSON type ("1" is no integer, "true" no boolean), so what the OpenAPI
    document calls invalid is refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

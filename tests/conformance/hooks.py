"""Schemathesis hooks of the conformance test (loaded through SCHEMATHESIS_HOOKS).

- ``orcid``: the format the contracts give ORCID iDs, whose check digit no pattern can say;
  values are drawn with a valid check digit, as the format demands.
- Positive cases sometimes aim at the resources the test created (BZPEER_CONFORMANCE_IDS,
  JSON: path parameter -> id), so the answers of found resources are checked as well as
  those of the random ids schemathesis draws (which are almost never found).
"""

from __future__ import annotations

import json
import os
from typing import Any

import schemathesis
from hypothesis import strategies as st

from contracts.events.common import orcid_checksum_ok

KNOWN: dict[str, str] = json.loads(os.environ.get("BZPEER_CONFORMANCE_IDS", "{}"))


def _with_check_digit(digits: str) -> str:
    body = f"{digits[0:4]}-{digits[4:8]}-{digits[8:12]}-{digits[12:15]}"
    return next(body + d for d in "0123456789X" if orcid_checksum_ok(body + d))


schemathesis.openapi.format("orcid", st.text(alphabet="0123456789", min_size=15, max_size=15).map(_with_check_digit))


@schemathesis.hook
def flatmap_case(context: schemathesis.HookContext, case: Any) -> Any:
    meta = case.meta
    known = {name: KNOWN[name] for name in case.path_parameters or {} if name in KNOWN}
    if not known or meta is None or not meta.generation.mode.is_positive:
        return st.just(case)
    aimed = case.derive(keep_auth=True)
    aimed.path_parameters = {**case.path_parameters, **known}
    return st.sampled_from([case, aimed])

"""Value types shared by several topics' payloads."""

from __future__ import annotations

import re
from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, WithJsonSchema

# Ids are opaque strings chosen by their source (e.g. "openalex:A5017898742"); a tight
# alphabet keeps them safe in URLs, keys and log lines.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$"
Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]

VerificationLevel = Literal["L0", "L1", "L2", "L3"]
TrustBand = Literal["Emerging", "Established", "Trusted", "Distinguished"]
# Both in rising order: L0 bare record .. L3 confirmed by a reviewer; Emerging .. Distinguished.
VERIFICATION_LEVELS: tuple[VerificationLevel, ...] = get_args(VerificationLevel)
TRUST_BANDS: tuple[TrustBand, ...] = get_args(TrustBand)


def level_rank(level: VerificationLevel) -> int:
    return VERIFICATION_LEVELS.index(level)


def band_rank(band: TrustBand) -> int:
    return TRUST_BANDS.index(band)


def is_newer(revision: int, held: int | None) -> bool:
    """The rule every consumer of a state-carrying event applies: per author and source,
    keep the state with the highest revision and ignore one not newer than what is held
    (a redelivery, or an older event read late), so the order of arrival never matters."""
    return held is None or revision > held


# The forms an ORCID iD is taken in: bare or as its orcid.org URL (as OpenAlex gives it),
# check digit X in either case. The JSON Schema says so, and names the check digit, which
# no pattern can say, as the format "orcid".
ORCID_PATTERN = r"^(https?://orcid\.org/)?[0-9]{4}-[0-9]{4}-[0-9]{4}-[0-9]{3}[0-9Xx]$"


def orcid_checksum_ok(orcid: str) -> bool:
    """ISO 7064 mod 11-2 check digit, as ORCID specifies."""
    digits = orcid.replace("-", "")
    total = 0
    for ch in digits[:-1]:
        total = (total + int(ch)) * 2
    check = (12 - total % 11) % 11
    return digits[-1] == ("X" if check == 10 else str(check))


def _valid_orcid(v: str) -> str:
    v = v.strip()
    if not re.fullmatch(ORCID_PATTERN, v):
        raise ValueError("ORCID iD must look like 0000-0002-1825-0097")
    v = v.removeprefix("https://orcid.org/").removeprefix("http://orcid.org/").upper()
    if not orcid_checksum_ok(v):
        raise ValueError("ORCID iD check digit is wrong (ISO 7064 mod 11-2)")
    return v


OrcidId = Annotated[
    str,
    AfterValidator(_valid_orcid),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": ORCID_PATTERN,
            "format": "orcid",
            "description": "an ORCID iD with its ISO 7064 mod 11-2 check digit",
            "examples": ["0000-0002-1825-0097"],
        }
    ),
]


def _json_integer(v: object) -> object:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError("must be an integer")  # "1" is text, true a boolean: never a number
    return v  # 2024.0 is the integer 2024 to JSON Schema; 2024.5 fails as no integer


# An integer as JSON Schema means it: a JSON number with no fraction (so 2024.0 too, which
# pydantic's strict mode refuses), and nothing else (no "2024", which its lax mode takes).
JsonInt = Annotated[int, BeforeValidator(_json_integer)]

# Text that must say something: the models strip surrounding whitespace before checking a
# minimum length, so "at least one character" is spelt "at least one that is not blank".
# Blank spelt out beyond \s, which differs between regex engines (Python's strip also
# takes \x1c-\x1f and \x85; ECMAScript's \s also \ufeff): one meaning in every engine.
NOT_BLANK = r"[^\s\x1c-\x1f\x85\ufeff]"


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Affiliation(Frozen):
    name: str = Field(min_length=1, max_length=300)
    # Email domains of the institution, used by the claims service for L2 evidence.
    domains: list[Annotated[str, StringConstraints(pattern=r"^[a-z0-9.-]+\.[a-z]{2,}$", to_lower=True)]] = []

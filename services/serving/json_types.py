"""Field types that follow JSON Schema rather than Python: the published OpenAPI schema is the
contract, so a value the schema allows must validate."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator


def _json_integer(v: object) -> object:
    """An integer as JSON Schema defines it: 3 and 3.0 are integers, `true` and "3" are not
    (strict models refuse 3.0, lax ones accept true: both disagree with the published schema)."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


# The validator alone, for integers with bounds: `Annotated[int, Interval(ge=1, le=9), JSON_INTEGER]`.
# The bounds must sit on the int under the validator. Put on the field (`Field(ge=...)`) of an
# optional JsonInt, pydantic publishes them as the unknown keywords `ge`/`le` instead of
# `minimum`/`maximum`, and the schema no longer says what is valid (schemathesis sent year_to=-699).
JSON_INTEGER = BeforeValidator(_json_integer)
JsonInt = Annotated[int, JSON_INTEGER]

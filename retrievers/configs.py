"""Model configs as JSON: the dataclass knobs a model writes into its artifact's meta.json and
reads back. Shared by XR-Linear and suggest (which builds on `retrievers`, never the reverse)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, fields, is_dataclass
from typing import Any, Protocol, TypeVar


class DataclassConfig(Protocol):
    __dataclass_fields__: dict[str, Any]


C = TypeVar("C", bound=DataclassConfig)


def config_to_dict(config: DataclassConfig) -> dict[str, Any]:
    return asdict(config)  # type: ignore[call-overload]


def config_from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
    """Keys the class does not know are dropped, so an artifact written by a newer or older version
    with other knobs still loads; JSON turned tuples into lists, which are turned back for fields
    typed as tuples (frozen configs must stay hashable)."""
    if not is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if isinstance(value, list) and "tuple" in str(f.type):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)

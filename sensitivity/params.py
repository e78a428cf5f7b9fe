"""Estimator parameters: frozen dataclasses built from the job's `method_params`,
with a clear error for names an estimator does not know."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, TypeVar

T = TypeVar("T")


def accepted_names(cls) -> list[str]:
    return [f.name for f in fields(cls)]


def build_params(cls: type[T], params: dict[str, Any], method: str) -> T:
    """cls(**params), raising ValueError that lists the accepted names when a
    parameter is unknown."""
    accepted = accepted_names(cls)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"{method}: unknown parameter(s) {', '.join(unknown)}; "
                         f"accepted: {', '.join(accepted)}")
    return cls(**params)


def split_params(params: dict[str, Any], names: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the entries named in `names`, the rest)."""
    return ({k: v for k, v in params.items() if k in names},
            {k: v for k, v in params.items() if k not in names})


def as_dict(obj) -> dict[str, Any]:
    return asdict(obj)


def check_positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_fraction(name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1:
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")

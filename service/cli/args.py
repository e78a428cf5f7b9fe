"""Reading the command line's values (budgets, LAYER=VALUE assignments, width
lists, method parameters, JSON files): the same rules for `run` and `submit`, and
one error, UsageError, that every command turns into exit status 2."""

from __future__ import annotations

import json
from pathlib import Path


class UsageError(Exception):
    """Bad command-line input; the message says what is allowed."""


def parse_budgets(items: list[str]) -> dict[str, float]:
    """`avg_bits=4` or `avg_bits=4,size_mb=1.5` (repeatable) → {kind: limit}."""
    budgets: dict[str, float] = {}
    for item in items:
        for part in filter(None, item.split(",")):
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise UsageError(f"malformed budget {part!r}: expected KIND=NUMBER, e.g. avg_bits=4")
            try:
                budgets[key.strip()] = float(value)
            except ValueError:
                raise UsageError(f"budget {key.strip()!r} needs a number, got {value!r}") from None
    return budgets


def parse_assignments(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise UsageError(f"malformed {what} {item!r}: expected LAYER=VALUE")
        out[name] = value
    return out


def parse_bits_list(text: str, what: str) -> list[int]:
    try:
        return [int(b) for b in text.split(",") if b]
    except ValueError:
        raise UsageError(f"{what} must be comma-separated integers, got {text!r}") from None


def parse_pins(items: list[str]) -> dict[str, int]:
    """`--pin LAYER=BITS` (repeatable) → {layer: bits}."""
    return {k: parse_bits_list(v, "pin")[0] for k, v in parse_assignments(items, "pin").items()}


def parse_allowed(items: list[str]) -> dict[str, list[int]]:
    """`--allow LAYER=B1/B2` (repeatable) → {layer: [widths]}."""
    return {k: parse_bits_list(v.replace("/", ","), "allowed widths")
            for k, v in parse_assignments(items, "allow").items()}


def parse_params(items: list[str]) -> dict[str, object]:
    """Method parameters `key=value`, the value read as JSON when it parses (numbers)."""
    params: dict[str, object] = {}
    for key, value in parse_assignments(items, "method parameter").items():
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def read_json(path: str, what: str):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{what}: cannot read JSON from {path}: {exc}") from None


def one_line(exc) -> str:
    """A pydantic ValidationError as one line: `where: what; where: what`."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        what = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {what}" if where else what)
    return "; ".join(parts)


QUANTIZER_HELP = ("the quantizer that picks the integers: rtn (round to nearest, default), gptq "
                  "(error-compensating column updates from the calibration inputs) or adaquant "
                  "(GPTQ refined by layer-wise calibration, BatchNorm re-estimated)")


def add_quantizer_option(parser, default: str | None = "rtn") -> None:
    """--quantizer, the job's quant.algorithm (kernels.scheme.ALGORITHMS)."""
    from kernels.scheme import ALGORITHMS

    parser.add_argument("--quantizer", choices=ALGORITHMS, default=default, help=QUANTIZER_HELP)


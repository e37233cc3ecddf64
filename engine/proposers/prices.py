"""What Claude's tokens cost: a per-model price table that users can change.

Prices are USD per million tokens, list prices of the Claude API (no batch discount), as
published on Anthropic's pricing and model pages; taken on PRICES_AS_OF. Prices change:
a user's own table (a TOML file, `--claude-prices FILE` or THREADLAB_PRICES) replaces
or adds models:

    [prices."claude-sonnet-5-5"]
    input = 2.0            # base input tokens
    output = 10.0
    cache_write_5m = 2.5   # prompt-cache writes with the 5-minute TTL
    cache_write_1h = 4.0   # ... with the 1-hour TTL
    cache_read = 0.1       # cache hits and refreshes

A request's cost is input x input + output x output + the cache writes of each TTL x
their price + cache reads x cache_read (the `usage` block of every response says how many
of each). Models priced by prompt length (Claude Haiku 5.5) are not in the default table.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.errors import ThreadlabError

PRICES_AS_OF = "2026-10-24"
PRICES_ENV = "THREADLAB_PRICES"


@dataclass(frozen=True)
class ModelPrice:
    input: float
    output: float
    cache_write_5m: float
    cache_write_1h: float
    cache_read: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


# USD per million tokens, taken on PRICES_AS_OF.
DEFAULT_PRICES: dict[str, ModelPrice] = {
    # Sonnet 5.5's cache hits were cut from $0.20 to $0.10 per MTok on 2026-10-07.
    "claude-sonnet-5-5": ModelPrice(2.0, 10.0, 2.5, 4.0, 0.10),
    "claude-sonnet-5": ModelPrice(2.0, 10.0, 2.5, 4.0, 0.20),
    "claude-opus-5-5": ModelPrice(4.0, 20.0, 5.0, 8.0, 0.20),
    "claude-opus-5": ModelPrice(5.0, 25.0, 6.25, 10.0, 0.50),
    "claude-opus-4-8": ModelPrice(5.0, 25.0, 6.25, 10.0, 0.50),
    "claude-opus-4-7": ModelPrice(5.0, 25.0, 6.25, 10.0, 0.50),
    "claude-opus-4-6": ModelPrice(5.0, 25.0, 6.25, 10.0, 0.50),
    "claude-opus-4-5": ModelPrice(5.0, 25.0, 6.25, 10.0, 0.50),
    "claude-sonnet-4-6": ModelPrice(3.0, 15.0, 3.75, 6.0, 0.30),
    "claude-sonnet-4-5": ModelPrice(3.0, 15.0, 3.75, 6.0, 0.30),
    "claude-haiku-4-5": ModelPrice(1.0, 5.0, 1.25, 2.0, 0.10),
    "claude-fable-5-1": ModelPrice(10.0, 50.0, 12.5, 20.0, 0.25),
}

_FIELDS = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")
_DATED = re.compile(r"^(?P<base>.+)-\d{8}$")  # claude-sonnet-4-5-20250929


def price_for(model: str, prices: dict[str, ModelPrice]) -> ModelPrice | None:
    """The price of model: its own entry, or its undated alias's."""
    if model in prices:
        return prices[model]
    m = _DATED.match(model)
    return prices.get(m.group("base")) if m else None


def usage_cost(usage: dict[str, int], price: ModelPrice) -> float:
    """USD for one usage total (input_tokens, output_tokens, cache_read_input_tokens,
    cache_write_5m_tokens, cache_write_1h_tokens)."""
    return (
        usage.get("input_tokens", 0) * price.input
        + usage.get("output_tokens", 0) * price.output
        + usage.get("cache_read_input_tokens", 0) * price.cache_read
        + usage.get("cache_write_5m_tokens", 0) * price.cache_write_5m
        + usage.get("cache_write_1h_tokens", 0) * price.cache_write_1h
    ) / 1_000_000


def parse_prices(doc: dict[str, Any], where: str) -> dict[str, ModelPrice]:
    """The [prices."MODEL"] tables of a TOML document; one clear error for a bad one."""
    table = doc.get("prices", {})
    if not isinstance(table, dict):
        raise ThreadlabError(f"{where}: 'prices' must be a table of models",
                             hint='write [prices."claude-sonnet-5-5"] with input, output, cache_write_5m, '
                                  'cache_write_1h and cache_read in USD per million tokens')
    out: dict[str, ModelPrice] = {}
    for model, entry in table.items():
        if not isinstance(entry, dict):
            raise ThreadlabError(f"{where}: prices.{model} must be a table", hint=f"fields: {', '.join(_FIELDS)}")
        unknown = sorted(set(entry) - set(_FIELDS))
        missing = [f for f in _FIELDS if f not in entry]
        if unknown or missing:
            raise ThreadlabError(
                f"{where}: prices.{model} " + (f"has unknown field(s) {', '.join(unknown)}" if unknown
                                               else f"lacks {', '.join(missing)}"),
                hint=f"each model needs exactly: {', '.join(_FIELDS)} (USD per million tokens)")
        values = {}
        for f in _FIELDS:
            v = entry[f]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ThreadlabError(f"{where}: prices.{model}.{f} must be a number >= 0, got {v!r}",
                                     hint="prices are USD per million tokens, e.g. 2.5")
            values[f] = float(v)
        out[model] = ModelPrice(**values)
    return out


def load_prices_file(path: str | os.PathLike) -> dict[str, ModelPrice]:
    p = Path(path).expanduser()
    try:
        doc = tomllib.loads(p.read_text())
    except OSError as exc:
        raise ThreadlabError(f"cannot read the price table {p}: {exc.strerror or exc}",
                             hint="check the path given to --claude-prices or THREADLAB_PRICES") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ThreadlabError(f"the price table {p} is not valid TOML: {exc}",
                             hint='write [prices."MODEL"] tables; see engine/proposers/prices.py') from exc
    return parse_prices(doc, str(p))


def merged_prices(overrides: dict[str, dict[str, float]] | None = None) -> dict[str, ModelPrice]:
    """The default table, then THREADLAB_PRICES's file, then overrides (model -> fields)."""
    prices = dict(DEFAULT_PRICES)
    env = os.environ.get(PRICES_ENV)
    if env:
        prices.update(load_prices_file(env))
    if overrides:
        prices.update(parse_prices({"prices": overrides}, "the session's price table"))
    return prices

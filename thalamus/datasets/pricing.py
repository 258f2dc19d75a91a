"""The RouterArena price table: public USD-per-1M-token prices used to estimate costs.

Several public datasets (RouteLLM, AlpacaEval) record quality but no cost; their loaders
price each call with this table (prices as of RouterArena's 2025 snapshot, not the
historical prices when the data was generated).
"""

from __future__ import annotations

from pathlib import Path

from thalamus.datasets.common import dataset_dir, read_json
from thalamus.datasets.schema import Price
from thalamus.errors import DataError, UnknownNameError

FOLDER = "pricing_routerarena"
_IN, _OUT = "input_token_price_per_million", "output_token_price_per_million"


def load_price_table(data_dir: Path) -> dict[str, Price]:
    """``{model name: Price}`` from ``pricing_routerarena/cost.json``."""
    path = dataset_dir(data_dir, FOLDER) / "cost.json"
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a JSON object of models, got {type(raw).__name__}")
    table: dict[str, Price] = {}
    for model, entry in raw.items():
        try:
            table[model] = Price(float(entry[_IN]), float(entry[_OUT]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: model {model!r}: needs numeric '{_IN}' and '{_OUT}' ({exc})") from exc
    return table


def price_of(table: dict[str, Price], name: str) -> Price:
    """One model's price, or UnknownNameError listing what the table has."""
    if name not in table:
        raise UnknownNameError(f"no price for model {name!r}; the price table has: {sorted(table)}")
    return table[name]

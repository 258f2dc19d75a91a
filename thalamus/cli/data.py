"""``thalamus data``: list the known datasets, describe one, import a user file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:  # pandas/pyarrow load only when a command runs, so `thalamus --help` stays fast
    from thalamus.datasets.schema import RoutingDataset


def _data_dir(data_dir: Path | None) -> Path:
    from thalamus.datasets.registry import default_data_dir

    return data_dir if data_dir is not None else default_data_dir()


def list_cmd(
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (default THALAMUS_DATA_DIR).")] = None,
) -> None:
    """Known dataset names and whether their folder is present."""
    from thalamus.datasets.registry import SPECS

    root = _data_dir(data_dir)
    table = Table(title=f"datasets under {root}")
    for col in ("name", "folder", "present", "description"):
        table.add_column(col)
    for spec in SPECS.values():
        present = (root / spec.folder).is_dir()
        table.add_row(spec.name, spec.folder, "yes" if present else "[red]no[/]", spec.description)
    Console().print(table)


def _model_table(ds: RoutingDataset) -> Table:
    table = Table(title=f"{ds.name}: {ds.n_prompts} prompts x {ds.n_models} models"
                  f" (cost {'estimated' if ds.cost_estimated else 'observed'})")
    for col in ("model", "mean quality", "mean cost (USD)", "missing"):
        table.add_column(col, justify="left" if col == "model" else "right", overflow="fold")
    for row in ds.summary().itertuples():
        table.add_row(str(row.model), f"{row.mean_quality:.4f}", f"{row.mean_cost_usd:.3g}",
                      f"{row.missing_share:.1%}")
    return table


def _counts_table(ds: RoutingDataset, column: str) -> Table:
    counts = ds.prompts[column].replace("", "(none)").value_counts()
    table = Table(title=f"{column} counts")
    table.add_column(column)
    table.add_column("prompts", justify="right")
    for key, n in counts.items():
        table.add_row(str(key), str(n))
    return table


def info_cmd(
    dataset: Annotated[str, typer.Argument(help="A dataset name (see `thalamus data list`) or a file path.")],
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (default THALAMUS_DATA_DIR).")] = None,
) -> None:
    """Rows, models, per-model mean quality and cost, missing share, task and split counts."""
    from thalamus.datasets.registry import load_dataset

    ds = load_dataset(dataset, data_dir)
    console = Console()
    console.print(_model_table(ds))
    console.print(_counts_table(ds, "task"))
    console.print(_counts_table(ds, "split"))


def import_cmd(
    file: Annotated[Path, typer.Argument(help="A CSV / JSONL / Parquet file in the wide or long layout.")],
    out: Annotated[Path, typer.Option("--out", help="The Parquet file to write.")],
    name: Annotated[str | None, typer.Option("--name", help="Dataset name (default: file stem).")] = None,
    cost_estimated: Annotated[bool, typer.Option(
        "--cost-estimated", help="Flag the file's costs as estimated (from prices and token estimates), "
        "not billed; a true `cost_estimated` column on any row does the same.")] = False,
) -> None:
    """Validate a user file and write it as a Thalamus dataset (atomically)."""
    from thalamus.datasets.user_format import import_file

    ds = import_file(file, out, name, cost_estimated)
    Console().print(f"wrote {out}: {ds.n_prompts} prompts x {ds.n_models} models ({ds.name}, "
                    f"cost {'estimated' if ds.cost_estimated else 'observed'})")


def register(app: typer.Typer) -> None:
    data = typer.Typer(no_args_is_help=True, help="Routing datasets: list, inspect, import.")
    data.command("list")(list_cmd)
    data.command("info")(info_cmd)
    data.command("import")(import_cmd)
    app.add_typer(data, name="data")

"""prune_report.json (what was kept, why, and what it costs) and its on-screen table."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from sanasr_cli.pruning.budget import format_params

REPORT_FILE = "prune_report.json"
PARAMETER_SCOPE = (
    "transformer only: parameters of the diffusers SanaTransformer2DModel (blocks + fixed part); "
    "the VAE and text encoder are not counted, as in the paper"
)


@dataclass
class BlockRecord:
    index: int
    params: int
    saliency: float
    kept: bool


@dataclass
class PruneReport:
    strategy: str
    budget: int
    budget_text: str
    steps: int  # K calibration steps (0 for strategies that need no calibration)
    seed: int
    kept: list[int]
    removed: list[int]
    blocks: list[BlockRecord]
    params_fixed: int
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    macs_input: dict  # image size, latent size, text tokens, how counted
    parameter_scope: str = PARAMETER_SCOPE
    eps_p: float | None = None
    fisher: dict | None = None  # fisher_statistics: share of F_i below eps_p, range, decades
    calibration: dict | None = None  # source, protocol, loss weights, per-step loss/t/omega summary
    validation: dict | None = None
    source_model: str | None = None

    @property
    def num_blocks_before(self) -> int:
        return len(self.blocks)

    @property
    def num_blocks_after(self) -> int:
        return len(self.kept)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["num_blocks_before"], d["num_blocks_after"] = self.num_blocks_before, self.num_blocks_after
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def summary_record(self) -> dict:
        """The short form stored in the model description's `pruning` field."""
        return {
            "strategy": self.strategy,
            "budget": self.budget,
            "kept": self.kept,
            "num_blocks_before": self.num_blocks_before,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "report": REPORT_FILE,
        }


def render_table(report: PruneReport):
    """Rich renderables: one row per block (params, saliency, kept), then a before/after totals table."""
    from rich.console import Group
    from rich.table import Table

    table = Table(title=f"prune: {report.strategy}, budget {format_params(report.budget)}")
    table.add_column("block", justify="right")
    table.add_column("params", justify="right")
    table.add_column("saliency", justify="right")
    table.add_column("kept", justify="center")
    for b in report.blocks:
        table.add_row(
            str(b.index),
            format_params(b.params),
            f"{b.saliency:.4g}",
            "[green]yes[/]" if b.kept else "[red]-[/]",
        )
    inp = report.macs_input
    totals = Table()
    totals.add_column("transformer")
    totals.add_column("before", justify="right")
    totals.add_column("after", justify="right")
    totals.add_row("blocks", str(report.num_blocks_before), str(report.num_blocks_after))
    totals.add_row("parameters", format_params(report.params_before), format_params(report.params_after))
    totals.add_row(
        f"GMACs ({inp['image'][0]}x{inp['image'][1]} image)",
        f"{report.macs_before / 1e9:.2f}",
        f"{report.macs_after / 1e9:.2f}",
    )
    return Group(table, totals)

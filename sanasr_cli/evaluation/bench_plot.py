"""The plot of `sanasr bench --plot`: end-to-end MACs and latency against the output size."""

from __future__ import annotations

from pathlib import Path


def plot_reports(reports: list[dict], path: str | Path) -> None:
    """PNG of MACs and latency against resolution, for SANA-SR and each compared pipeline (atomic write)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["size"] for r in reports]
    series = {"SANA-SR": [r["end_to_end"] for r in reports]}
    for name in reports[0]["compare"]:
        series[f"{name}-shaped"] = [r["compare"][name]["end_to_end"] for r in reports]
    fig, (ax_m, ax_l) = plt.subplots(1, 2, figsize=(10, 4))
    for label, points in series.items():
        ax_m.plot(sizes, [p["macs"] / 1e9 for p in points], marker="o", label=label)
        lat = [(s, p["latency_ms"]) for s, p in zip(sizes, points, strict=True) if p["latency_ms"] is not None]
        if lat:
            ax_l.plot([s for s, _ in lat], [v for _, v in lat], marker="o", label=label)
    ax_m.set(
        title="end-to-end GMACs (FlopCounterMode, meta)",
        xlabel="output size (px, square)",
        ylabel="GMACs",
        yscale="log",
    )
    ax_l.set(
        title=f"end-to-end latency (median)\n{reports[0]['device']}, {reports[0]['precision']}",
        xlabel="output size (px, square)",
        ylabel="ms",
        yscale="log",
    )
    if not ax_l.lines:
        ax_l.text(0.5, 0.5, "latency not measured", ha="center", va="center", transform=ax_l.transAxes)
    for ax in (ax_m, ax_l):
        ax.set_xticks(sizes)
        if ax.lines:
            ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    from sanasr_cli.safe_files import atomic_write

    buf = io.BytesIO()
    try:
        fig.savefig(buf, dpi=120, format="png")
    finally:
        plt.close(fig)
    atomic_write(path, buf.getvalue())  # atomic, through links, never replacing a special file

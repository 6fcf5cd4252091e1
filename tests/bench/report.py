"""The benchmark's table, as Markdown and as a PNG chart."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class Row:
    """One workload's figures. Units ending in ``/s`` are better higher, others lower."""

    workload: str
    unit: str
    idsync: float
    kinto: float | None = None
    ceiling: float | None = None
    size: int | None = None

    def ratio(self, other: float | None) -> float | None:
        """idsync divided by ``other``."""
        if other is None or other == 0:
            return None
        return self.idsync / other

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with the ratios."""
        data = asdict(self)
        data["idsync_over_kinto"] = self.ratio(self.kinto)
        data["idsync_over_ceiling"] = self.ratio(self.ceiling)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Row:
        """Back from :meth:`as_dict`."""
        return cls(
            data["workload"],
            data["unit"],
            data["idsync"],
            data.get("kinto"),
            data.get("ceiling"),
            data.get("size"),
        )


@dataclass
class BackendRow:
    """One workload on SQLite and on PostgreSQL behind one and three processes."""

    workload: str
    unit: str
    size: int
    sqlite: float | None
    pg1: float | None
    pg3: float | None
    kinto: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def _over(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else value / base


def render_backends(rows: list[BackendRow], kinto_n: int | None) -> str:
    """The PostgreSQL table in Markdown, with the ratios to SQLite."""
    lines = [
        "| workload | records | unit | SQLite, 1 process | PostgreSQL, 1 process |"
        " PostgreSQL, 3 processes | PG 1/SQLite | PG 3/SQLite | Kinto on PostgreSQL |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.workload} | {row.size:,} | {row.unit} | {_fmt(row.sqlite)} | "
            f"{_fmt(row.pg1)} | {_fmt(row.pg3)} | {_ratio(_over(row.pg1, row.sqlite))} | "
            f"{_ratio(_over(row.pg3, row.sqlite))} | {_fmt(row.kinto)} |"
        )
    lines.append("")
    lines.append(
        "Rates are better higher, latencies lower. "
        + (
            f"Kinto's figures are at {kinto_n:,} records."
            if kinto_n
            else "Kinto did not run on PostgreSQL."
        )
    )
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def render_markdown(rows: list[Row], machine: dict[str, Any], params: dict[str, Any]) -> str:
    """The results table in Markdown, with the machine it ran on."""
    lines = [
        "| workload | records | unit | idsync | Kinto | ceiling | idsync/Kinto | idsync/ceiling |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.workload} | {row.size or ''} | {row.unit} | {_fmt(row.idsync)} | "
            f"{_fmt(row.kinto)} | {_fmt(row.ceiling)} | {_ratio(row.ratio(row.kinto))} | "
            f"{_ratio(row.ratio(row.ceiling))} |"
        )
    lines.append("")
    lines.append(
        f"Machine: {machine['platform']}, {machine['cpus']} CPUs, Python "
        f"{machine['python']}, SQLite {machine['sqlite']}; {machine['when']}. "
        f"Kinto: {params['kinto_backend']} backend at {params['peer_n']:,} records."
    )
    return "\n".join(lines) + "\n"


def render_chart(rows: list[Row], path: Path) -> Path | None:
    """A bar chart of idsync against the ceiling and Kinto for the rate rows."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rates = [r for r in rows if r.unit == "/s"]
    labels = [f"{r.workload}\n({r.size:,})" if r.size else r.workload for r in rates]
    fig, ax = plt.subplots(figsize=(11, 0.6 * len(rates) + 1.5))
    y = range(len(rates))
    ax.barh([i - 0.27 for i in y], [r.idsync for r in rates], height=0.27, label="idsync")
    ax.barh(list(y), [r.ceiling or 0 for r in rates], height=0.27, label="ceiling (raw)")
    ax.barh([i + 0.27 for i in y], [r.kinto or 0 for r in rates], height=0.27, label="Kinto")
    ax.set_yticks(list(y), labels, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("records per second (log scale)")
    ax.invert_yaxis()
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path

"""The reliability suite's figures: one row per campaign, printed as a table.

Each campaign records what it did (kill points, faults injected, inputs
fuzzed) and what it found (lost, duplicated, unexpected 5xx). The rows are
printed at the end of the run and written to
``test-artifacts/reliability/figures.json`` and ``figures.md`` so that
docs/reliability.md can quote the last full run.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Where the table of the last run is written, relative to the repository.
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "reliability"


@dataclass
class CampaignFigures:
    """What one campaign did and found.

    ``injected`` counts the faults of the campaign's own kind (kill points,
    network faults, storage faults, fuzzed inputs); ``acknowledged`` counts
    writes acknowledged to the app (or changes acknowledged by the server);
    ``lost``, ``duplicated`` and ``unexpected_5xx`` must be zero for the
    campaign to pass; ``extra`` holds anything else worth printing.
    """

    campaign: str
    backend: str = "sqlite"
    injected: int = 0
    acknowledged: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected_5xx: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


_rows: list[CampaignFigures] = []
_lock = threading.Lock()


def record(row: CampaignFigures) -> CampaignFigures:
    """Keep ``row`` for the end-of-run table; returns it for chaining."""
    with _lock:
        _rows.append(row)
    return row


def rows() -> list[CampaignFigures]:
    """The rows recorded so far in this run."""
    with _lock:
        return list(_rows)


def table(recorded: list[CampaignFigures]) -> str:
    """A Markdown table of ``recorded``."""
    head = "| campaign | backend | injected | acknowledged | lost | duplicated | 5xx | s | notes |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in recorded:
        notes = ", ".join(f"{k}={v}" for k, v in sorted(r.extra.items()))
        lines.append(
            f"| {r.campaign} | {r.backend} | {r.injected:,} | {r.acknowledged:,} | {r.lost} "
            f"| {r.duplicated} | {r.unexpected_5xx} | {r.seconds:.1f} | {notes} |"
        )
    return "\n".join(lines)


def write(recorded: list[CampaignFigures], scale: str) -> Path:
    """Write the table as JSON and Markdown under ARTIFACTS; the Markdown path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "figures.json").write_text(
        json.dumps(
            {"scale": scale, "pid": os.getpid(), "rows": [asdict(r) for r in recorded]}, indent=2
        )
    )
    path = ARTIFACTS / "figures.md"
    path.write_text(f"Scale: {scale}\n\n{table(recorded)}\n")
    return path

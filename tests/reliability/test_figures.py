"""The figures table itself: rows are kept and printed as written."""

from __future__ import annotations

from .figures import CampaignFigures, table


def test_table_prints_every_row_with_its_counts() -> None:
    rows = [
        CampaignFigures("kill server", "sqlite", injected=1200, acknowledged=5000, seconds=3.25),
        CampaignFigures("proxy", "postgresql", injected=7, lost=1, extra={"cut": 3}),
    ]
    text = table(rows).splitlines()
    assert len(text) == 4
    assert "| kill server | sqlite | 1,200 | 5,000 | 0 | 0 | 0 | 3.2 |" in text[2]
    assert text[3].startswith("| proxy | postgresql | 7 | 0 | 1 |") and "cut=3" in text[3]

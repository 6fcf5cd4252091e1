"""The reliability suite: campaigns sized by ``--gauntlet`` (short by default).

``python -m pytest -m reliability --gauntlet full -s`` runs the full
campaigns; the default run (CI) includes the short ones.
"""

from __future__ import annotations

import pytest

from . import figures


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/reliability carries the ``reliability`` marker."""
    for item in items:
        if "tests/reliability/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.reliability)


@pytest.fixture(scope="session")
def gauntlet(request: pytest.FixtureRequest) -> str:
    """``"short"`` (default, CI) or ``"full"`` (``--gauntlet full``)."""
    return str(request.config.getoption("--gauntlet"))


@pytest.fixture(scope="session")
def full(gauntlet: str) -> bool:
    """True when the full campaigns were asked for."""
    return gauntlet == "full"


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    recorded = figures.rows()
    if not recorded:
        return
    scale = str(config.getoption("--gauntlet"))
    path = figures.write(recorded, scale)
    terminalreporter.section(f"reliability figures ({scale})")
    terminalreporter.write_line(figures.table(recorded))
    terminalreporter.write_line(f"written to {path}")

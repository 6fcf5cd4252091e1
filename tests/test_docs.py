"""The documents say what the code does: codes, limits, endpoints, commands."""

from __future__ import annotations

import re
from pathlib import Path

from idsync_client.protocol import ERRORS, REJECTION_CODES, Limits
from idsync_server_ref.api import ServerApp
from idsync_server_ref.config import ServerConfig

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = (ROOT / "docs" / "protocol.md").read_text()


def table_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 1 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_every_error_code_is_documented_with_its_status() -> None:
    rows = table_rows(PROTOCOL)
    for code, spec in ERRORS.items():
        assert code in rows, f"{code} is missing from docs/protocol.md"
        assert rows[code][0] == str(spec.status), code
        assert rows[code][1] == ("yes" if spec.retryable else "no"), code


def test_every_rejection_code_is_documented() -> None:
    rows = table_rows(PROTOCOL)
    for code in REJECTION_CODES:
        assert code in rows, code


def test_every_limit_is_documented() -> None:
    rows = table_rows(PROTOCOL)
    for name in Limits.__dataclass_fields__:
        assert name in rows, name


def test_every_endpoint_is_documented(tmp_path) -> None:
    from idsync_server_ref.storage import SqliteStorage

    app = ServerApp(SqliteStorage(tmp_path / "x.sqlite3"), ServerConfig())
    documented = set(re.findall(r"^### `([A-Z]+) (/v1/[^?`]*)", PROTOCOL, re.M))
    for pattern, methods in app._routes:
        path = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern.pattern)
        for method in methods:
            assert (method, path) in documented, f"{method} {path} is not documented"


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    match = re.search(r"```sh\n(.*pytest.*)\n```", readme)
    assert match, "README has no test command"
    assert match.group(1).strip() in ci


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_readme_example_runs(server, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    [example] = _python_blocks((ROOT / "README.md").read_text())
    exec(example.replace("http://127.0.0.1:8765", server.url), {})
    out = capsys.readouterr().out
    assert "[{'title': 'Buy milk'}]" in out and "SyncStatus(" in out


def test_client_doc_examples_run(server, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    blocks = _python_blocks((ROOT / "docs" / "client.md").read_text())
    first = blocks[0]
    [kit] = [block for block in blocks if "def test_my_app_survives_a_bad_network" in block]
    exec(first.replace("http://127.0.0.1:8765", server.url), {})
    namespace: dict = {}
    exec(kit, namespace)
    namespace["test_my_app_survives_a_bad_network"](tmp_path)


def test_every_client_exception_is_documented() -> None:
    import inspect

    import idsync_client
    from idsync_client import errors

    client_doc = (ROOT / "docs" / "client.md").read_text()
    section = client_doc.split("### Exceptions an app can see", 1)[1].split("\n## ", 1)[0]
    rows = table_rows(section)
    exceptions = [
        obj
        for obj in vars(errors).values()
        if inspect.isclass(obj)
        and issubclass(obj, BaseException)
        and obj.__module__ == errors.__name__
    ]
    assert len(exceptions) >= 9
    for exc in exceptions:
        assert exc.__name__ in rows, f"{exc.__name__} is missing from docs/client.md"
        assert rows[exc.__name__][0] == f"`{exc.__mro__[1].__name__}`", exc.__name__
        assert exc.__name__ in idsync_client.__all__, f"{exc.__name__} is not exported"


def test_readme_example_status_is_not_idle_after_start(server, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    [example] = _python_blocks((ROOT / "README.md").read_text())
    exec(example.replace("http://127.0.0.1:8765", server.url), {})
    out = capsys.readouterr().out
    assert "SyncStatus(state=" in out and "state='idle'" not in out


def _client_doc_block(defining: str) -> str:
    blocks = _python_blocks((ROOT / "docs" / "client.md").read_text())
    [block] = [block for block in blocks if defining in block]
    return block


def test_client_doc_waiting_example_runs(tmp_path) -> None:
    namespace: dict = {}
    exec(_client_doc_block("def test_two_devices_converge"), namespace)
    namespace["test_two_devices_converge"](tmp_path)


def test_client_doc_pytest_plugin_example_runs(tmp_path) -> None:
    from idsync_client.testing import server_and_client

    block = _client_doc_block("def test_my_app_syncs")
    namespace: dict = {}
    exec(block, namespace)
    assert namespace["pytest_plugins"] == ["idsync_client.pytest_plugin"]
    with server_and_client(tmp_path) as (server, client):
        namespace["test_my_app_syncs"](server, client)
        assert client.db.pending_count() == 0


def test_client_doc_session_example_runs(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(_client_doc_block('"my-app/2.0"'), namespace)
    session = namespace["session"]
    assert namespace["client"].transport.session is session
    assert session.headers["User-Agent"] == "my-app/2.0"


def test_the_architecture_map_names_every_module() -> None:
    """docs/architecture.md is the map of the code: each package's section
    names every module of that package, and only modules that exist (a new,
    renamed or removed module fails here)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    named: dict[str, set[str]] = {}
    for section in re.split(r"^#+ ", text, flags=re.M)[1:]:
        heading, _, body = section.partition("\n")
        package = re.search(r"`(idsync_client|idsync_server_ref(?:/storage)?|demo_app)`", heading)
        if package is None:
            continue
        # Table rows where there is a table: prose may mention another package's module.
        rows = [line for line in body.splitlines() if line.startswith("|")]
        listed = "\n".join(rows) if rows else body
        named.setdefault(package.group(1), set()).update(re.findall(r"`(\w+\.py)`", listed))
    assert set(named) == {
        "idsync_client",
        "idsync_server_ref",
        "idsync_server_ref/storage",
        "demo_app",
    }
    for package, names in named.items():
        modules = {m.name for m in (ROOT / package).glob("*.py") if m.name != "__init__.py"}
        assert names == modules, (package, sorted(modules - names), sorted(names - modules))

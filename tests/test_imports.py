"""Import direction: the server loads only the client's protocol layer; the client never the server."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import idsync_client


def loaded_after(code: str, watched: list[str]) -> list[str]:
    """The ``watched`` modules a fresh interpreter holds after running ``code``."""
    script = f"import json, sys\n{code}\nprint(json.dumps([m for m in {watched!r} if m in sys.modules]))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


CLIENT_RUNTIME = [
    "requests",
    "tenacity",
    "idsync_client.client",
    "idsync_client.transport",
    "idsync_client.background",
]


@pytest.mark.parametrize(
    "module", ["idsync_server_ref.api", "idsync_server_ref.cli", "idsync_server_ref.process"]
)
def test_the_server_does_not_load_the_client_runtime(module: str) -> None:
    assert loaded_after(f"import {module}", CLIENT_RUNTIME) == []


def test_the_protocol_layer_loads_only_the_standard_library() -> None:
    code = "import idsync_client.protocol, idsync_client.wire, idsync_client.jsoncodec"
    assert loaded_after(code, [*CLIENT_RUNTIME, "peewee", "idsync_client.localdb"]) == []


def test_the_client_and_its_testing_kit_do_not_load_the_server() -> None:
    code = "import idsync_client, idsync_client.testing\nfrom idsync_client import Client"
    assert loaded_after(code, ["idsync_server_ref", "idsync_server_ref.process"]) == []


def test_the_testing_kit_still_offers_server_process() -> None:
    from idsync_client.testing import ServerProcess
    from idsync_server_ref.process import ServerProcess as Original

    assert ServerProcess is Original


def test_every_public_name_resolves_lazily() -> None:
    for name in idsync_client.__all__:
        assert getattr(idsync_client, name).__name__ == name
    assert sorted(idsync_client.__all__) == sorted(idsync_client._HOMES)
    with pytest.raises(AttributeError):
        idsync_client.NoSuchName  # noqa: B018

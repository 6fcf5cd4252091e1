"""The notes app on a real X virtual framebuffer: two windows, one server, an outage.

Screenshots of both windows are saved under ``test-artifacts/gui/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import tkinter as tk
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from demo_app.model import NotesModel
from demo_app.ui import NotesWindow
from idsync_client import Client, RetryPolicy
from idsync_server_ref.process import ServerProcess

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "gui"

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def display() -> Iterator[str]:
    """A fresh Xvfb display; skipped where Xvfb is missing, except in CI."""
    if shutil.which("Xvfb") is None:
        if os.environ.get("CI"):
            pytest.fail("Xvfb is required in CI (apt-get install xvfb)")
        pytest.skip("Xvfb is not installed (apt-get install xvfb)")
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_end), "-screen", "0", "1600x600x24", "-nolisten", "tcp"],
        pass_fds=(write_end,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        number = pipe.readline().strip()
    name = f":{number}"
    old = os.environ.get("DISPLAY")
    os.environ["DISPLAY"] = name
    yield name
    if old is None:
        os.environ.pop("DISPLAY", None)
    else:
        os.environ["DISPLAY"] = old
    proc.terminate()
    proc.wait(timeout=10)


def pump(roots: list[tk.Tk], until: Callable[[], bool], seconds: float = 20.0) -> bool:
    """Run both windows' event loops until ``until()`` holds (bounded in time)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for root in roots:
            root.update()
        if until():
            return True
        time.sleep(0.01)
    return False


def screenshot(root: tk.Tk, display: str, name: str) -> Path:
    from PIL import ImageGrab

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    root.update()
    x, y = root.winfo_rootx(), root.winfo_rooty()
    box = (x, y, x + root.winfo_width(), y + root.winfo_height())
    path = ARTIFACTS / f"{name}.png"
    ImageGrab.grab(bbox=box, xdisplay=display).save(path)
    return path


def listed(window: NotesWindow) -> list[str]:
    return list(window.note_list.get(0, tk.END))


def test_two_windows_sync_and_survive_an_outage(display, tmp_path) -> None:
    server = ServerProcess(tmp_path / "server.db").start()
    windows: list[NotesWindow] = []
    try:
        for name, x in (("a", 0), ("b", 780)):
            policy = RetryPolicy(max_attempts=2, base_delay=0.05, max_delay=0.2)
            client = Client(tmp_path / f"{name}.db", server.url, retry=policy, long_poll=5)
            root = tk.Tk()
            window = NotesWindow(root, NotesModel(client), title=f"idsync notes ({name})")
            root.geometry(f"760x480+{x}+0")
            client.start()
            windows.append(window)
        a, b = windows
        roots = [a.root, b.root]

        # Create and edit a note in A through its widgets; it appears in B.
        a.new_button.invoke()
        a.title_entry.delete(0, tk.END)
        a.title_entry.insert(0, "Shopping list")
        a.body_text.insert("1.0", "milk")
        a.save_button.invoke()
        a.tag_entry.insert(0, "home")
        a.add_tag_button.invoke()
        assert pump(roots, lambda: listed(b) == ["Shopping list   [home]"]), listed(b)
        assert pump(roots, lambda: a.state_label.cget("text") == "Online")
        screenshot(a.root, display, "01-created-in-a")
        screenshot(b.root, display, "01-seen-in-b")

        # B opens it; A keeps it open too.
        b.note_list.selection_set(0)
        b.note_list.event_generate("<<ListboxSelect>>")
        assert pump(roots, lambda: b.body_text.get("1.0", "end-1c") == "milk")

        # The server goes away; B edits offline and says so.
        server.stop()
        b.body_text.insert("end", ", eggs (written offline)")
        b.save_button.invoke()
        assert pump(
            roots,
            lambda: (
                b.state_label.cget("text") == "Offline"
                and "waiting" in b.pending_label.cget("text")
            ),
        ), b.state_label.cget("text")
        assert "saved" in b.error_label.cget("text")
        screenshot(b.root, display, "02-offline-in-b")

        # The server comes back on the same port; the edit reaches A by itself.
        server.start()
        assert pump(
            roots,
            lambda: a.body_text.get("1.0", "end-1c") == "milk, eggs (written offline)",
            seconds=30,
        )
        assert pump(
            roots,
            lambda: (
                b.pending_label.cget("text") == "All changes synced"
                and b.state_label.cget("text") == "Online"
            ),
            seconds=30,
        )
        assert a.error_label.cget("text") == "" and b.error_label.cget("text") == ""
        first = screenshot(a.root, display, "03-caught-up-in-a")
        screenshot(b.root, display, "03-caught-up-in-b")
        assert first.stat().st_size > 5000  # a real picture, not an empty frame
    finally:
        for window in windows:
            window.model.close()
            window.root.destroy()
        server.stop()

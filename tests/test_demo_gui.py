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

from .test_server_auth import make_users

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
    return [line.strip() for line in window.note_list.get(0, tk.END)]


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
        assert a.note_list.get(0).startswith("• ")  # waiting to sync, until it is
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
            window.close()
        server.stop()


def open_window(path: Path, url: str | None, name: str, x: int, **kwargs) -> NotesWindow:
    policy = RetryPolicy(max_attempts=2, base_delay=0.05, max_delay=0.2)
    client = Client(path, url, retry=policy) if url else Client(path)
    root = tk.Tk()
    window = NotesWindow(root, NotesModel(client), title=f"idsync notes ({name})", **kwargs)
    root.geometry(f"760x480+{x}+0")
    root.update()
    return window


def type_into(widget: tk.Widget, text: str) -> None:
    """Type ``text`` as key presses into ``widget`` (Tk event generation)."""
    widget.focus_force()
    for ch in text:
        keysym = {" ": "space", ",": "comma", "!": "exclam"}.get(ch, ch)
        widget.event_generate("<KeyPress>", keysym=keysym, when="tail")
    widget.update()


def press(widget: tk.Widget, sequence: str) -> None:
    """A key press (``<Control-n>``) as the window system would send it to ``widget``."""
    widget.focus_force()
    widget.update()
    widget.event_generate(sequence, when="tail")
    widget.update()


def click_row(window: NotesWindow, index: int) -> None:
    window.note_list.selection_clear(0, tk.END)
    window.note_list.selection_set(index)
    window.note_list.event_generate("<<ListboxSelect>>")
    window.root.update()


def test_editing_safety_shortcuts_and_foreign_records(display, tmp_path) -> None:
    path = tmp_path / "local.db"
    with Client(path) as client:  # records another program put in the same store
        notes = client.store("notes")
        notes.add({"title": "Buy milk"}, index=["tag:home"])
        notes.add("not an object", index=["kind:note", "tag:Odd Tag"])
        notes.set_attr("note-1", "title", "Draft")
    log_lines = ["server: listening on http://127.0.0.1:1\n", "server: GET /v1/health 200\n"]
    window = open_window(path, None, "local", 0, server_log=lambda: log_lines)
    root = window.root
    try:
        assert listed(window) == ["Untitled"]  # the note of odd shape, shown sensibly
        assert "Odd Tag" in window.tag_filter.cget("values")

        # Ctrl+N makes a note; typed text is saved by Ctrl+S; long titles are cut.
        press(window.title_entry, "<Control-n>")
        assert len(listed(window)) == 2 and window.selected is not None
        first = window.selected
        long_title = ("A title far too long for the list " * 4).strip()
        window.title_entry.delete(0, tk.END)
        type_into(window.title_entry, long_title)
        type_into(window.body_text, "typed, then saved with Ctrl")
        press(window.body_text, "<Control-s>")
        assert window.model.note(first).title == long_title
        row = window.note_list.get(window._shown.index(first))
        assert row.endswith("…") and len(row) < len(long_title)
        assert window.title_entry.get() == long_title  # whole in the editor
        assert row.startswith("  ")  # local only: nothing waits for a server

        # Typed text survives a switch to another note without saving.
        other = window._shown.index(next(n for n in window._shown if n != first))
        window.body_text.insert("end", " and more, not saved")
        click_row(window, other)
        assert window.selected != first
        assert window.model.note(first).body == "typed, then saved with Ctrl and more, not saved"
        screenshot(root, display, "10-long-title-and-switch")

        # Delete asks first; Cancel keeps the note, Delete removes it.
        window.select(first)
        window.delete_button.invoke()
        assert window.confirm_dialog is not None and window.confirm_dialog.winfo_exists()
        root.update()
        window.cancel_delete_button.invoke()
        assert window.confirm_dialog is None and window.model.note(first) is not None
        window.delete_button.invoke()
        root.update()
        screenshot(window.confirm_dialog, display, "11-confirm-delete")  # type: ignore[arg-type]
        window.confirm_delete_button.invoke()
        assert window.model.note(first) is None and len(listed(window)) == 1

        # Scrollbars: a long list and a long text scroll.
        for n in range(40):
            window.model.create_note(f"note {n}")
        window.body_text.insert("end", "\n".join(f"line {n}" for n in range(200)))
        assert pump([root], lambda: window.list_scroll.get() != (0.0, 1.0))
        assert pump([root], lambda: window.body_scroll.get() != (0.0, 1.0))
        window.body_text.delete("1.0", tk.END)
        window._loaded = window._editor_text()

        # A refresh that fails is logged and shown; the loop goes on.
        real_notes = window.model.notes
        calls = []

        def broken(*args, **kwargs):
            calls.append(1)
            raise RuntimeError("disk on fire")

        window.model.notes = broken  # type: ignore[method-assign]
        window.model.updates.put("notes")
        assert pump([root], lambda: "disk on fire" in window.error_label.cget("text"))
        window.model.notes = real_notes  # type: ignore[method-assign]
        window.model.create_note("after the failure")
        assert pump([root], lambda: "after the failure" in listed(window))
        assert "disk on fire" not in window.error_label.cget("text")  # over, so no longer shown

        # The server's log, in a window of its own.
        window.log_button.invoke()
        assert pump([root], lambda: "GET /v1/health" in window.log_text.get("1.0", tk.END))
        log_lines.append("server: POST /v1/stores/notes/push 200\n")
        assert pump([root], lambda: "push 200" in window.log_text.get("1.0", tk.END))
    finally:
        window.close()


def test_a_lost_offline_edit_is_shown_and_restored(display, tmp_path) -> None:
    server = ServerProcess(tmp_path / "server.db").start()
    windows: list[NotesWindow] = []
    try:
        a = open_window(tmp_path / "a.db", server.url, "a", 0)
        b = open_window(tmp_path / "b.db", server.url, "b", 780)
        windows += [a, b]
        roots = [a.root, b.root]
        note = a.model.create_note("Trip", "plan")
        a.model.client.sync()
        b.model.client.sync()
        for window in (a, b):
            window.select(note)
        # Both edit the title offline; A uploads first, B's is logged last.
        for window, title in ((a, "Trip to Lyon"), (b, "Trip to Porto")):
            window.title_entry.delete(0, tk.END)
            type_into(window.title_entry, title)
            window.save_button.invoke()
        a.model.client.sync()
        b.model.client.sync()
        a.model.client.sync()  # A learns that its title lost
        assert pump(roots, lambda: a.conflict_bar.winfo_ismapped())
        text = a.conflict_label.cget("text")
        assert "Your edit of the title ('Trip to Lyon') was replaced by" in text
        assert "'Trip to Porto'" in text
        assert pump(roots, lambda: a.title_entry.get() == "Trip to Porto")
        assert not b.conflict_bar.winfo_ismapped()
        screenshot(a.root, display, "12-conflict-notice")
        a.restore_button.invoke()
        assert pump(roots, lambda: not a.conflict_bar.winfo_ismapped())
        assert pump(roots, lambda: a.title_entry.get() == "Trip to Lyon")
        a.model.client.sync()
        b.model.client.sync()
        assert pump(roots, lambda: b.title_entry.get() == "Trip to Lyon")
        assert not b.conflict_bar.winfo_ismapped()
        screenshot(a.root, display, "13-restored")
    finally:
        for window in windows:
            window.close()
        server.stop()


def test_the_app_opens_its_window_and_stops_cleanly_on_sigterm(display, tmp_path) -> None:
    """``python -m demo_app`` on the display: a titled window, then SIGTERM closes it."""
    import signal
    import sys

    if shutil.which("xdotool") is None:
        pytest.skip("xdotool is not installed")
    db = tmp_path / "laptop.sqlite3"
    proc = subprocess.Popen(
        [sys.executable, "-m", "demo_app", "--server", "none", "--db", str(db)],
        env=dict(os.environ, DISPLAY=display),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        found = ""
        while not found and time.monotonic() < deadline and proc.poll() is None:
            found = subprocess.run(  # xdotool's pattern is matched in bytes: ASCII only
                ["xdotool", "search", "--name", r"laptop\.sqlite3"],
                capture_output=True,
                text=True,
            ).stdout.strip()
            time.sleep(0.05)  # a poll interval, not a wait for success
        assert found, "no window titled with the local file's name"
        title = subprocess.run(
            ["xdotool", "getwindowname", found.split()[0]], capture_output=True, text=True
        ).stdout.strip()
        assert title == "idsync notes — laptop.sqlite3"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, proc.stdout.read() if proc.stdout else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    with Client(db) as client:  # closed cleanly: the file opens at once
        assert client.status.state == "local"


def test_a_first_sync_of_a_large_store_shows_a_progress_bar(display, tmp_path) -> None:
    import requests

    server = ServerProcess(tmp_path / "server.db").start()
    window: NotesWindow | None = None
    try:
        # 20,000 records: four pages of the client's 5,000.
        with requests.Session() as http:
            http.trust_env = False
            assert http.post(f"{server.url}/v1/stores", json={"name": "notes"}).ok
            for start in range(0, 20000, 1000):
                changes = [
                    {"n": n, "op": "add", "key": f"k{n}", "index": [], "value": {"n": n}}
                    for n in range(start + 1, start + 1001)
                ]
                body = {"client_id": "seed", "changes": changes}
                assert http.post(f"{server.url}/v1/stores/notes/push", json=body).ok
        window = open_window(tmp_path / "big.db", server.url, "first sync", 0)
        bar, row = window.progress_bar, window.progress_row
        assert not row.winfo_manager()  # nothing to show before sync starts
        window.model.client.start()
        assert pump(
            [window.root],
            lambda: bool(row.winfo_manager()) and 0 < float(bar.cget("value")) < 1,
        ), window.progress_label.cget("text")
        assert window.progress_label.cget("text").startswith("Downloading notes: ")
        assert " of 20,000 (" in window.progress_label.cget("text")
        shot = screenshot(window.root, display, "04-first-sync-progress")
        assert shot.stat().st_size > 5000
        assert pump(
            [window.root],
            lambda: not row.winfo_manager() and window.state_label.cget("text") == "Online",
        )
        assert window.model.client.db.count("notes") == 20000
    finally:
        if window is not None:
            window.close()
        server.stop()


def test_the_window_asks_to_sign_in_and_then_syncs(tmp_path, display) -> None:
    """A refused token shows "Sign in…"; signing in syncs the waiting note."""
    tokens = make_users(tmp_path / "server.sqlite3")
    with ServerProcess(tmp_path / "server.sqlite3", "--rate-limit", "0") as server:
        client = Client(tmp_path / "w.db", server.url, token=tokens["revoked"], long_poll=2)
        root = tk.Tk()
        window = NotesWindow(root, NotesModel(client, store="alice.notes"), title="signed out")
        try:
            client.start()
            window.model.create_note("Waiting for a sign-in")
            assert pump([root], lambda: window.sign_in_button.winfo_ismapped())
            assert "Sign in" in window.error_label.cget("text")
            screenshot(root, display, "20-sign-in-needed")
            window.sign_in(tokens["owner"])
            assert pump(
                [root],
                lambda: (
                    not window.sign_in_button.winfo_ismapped()
                    and window.pending_label.cget("text") == "All changes synced"
                ),
            ), window.error_label.cget("text")
        finally:
            window.close()  # closes the model, the client and the window
            client.close()

"""The notes app's logic, apart from any widget (a view-model).

A note is a record indexed ``kind:note`` (its key is the note's id); its
title and body are attribute records, so concurrent offline edits converge;
each tag is a record indexed ``tag:<name>`` and ``note:<id>``.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass
from typing import Any

from idsync_client import Client, RejectedChange, SyncStatus

NOTE_ITEM = "kind:note"
MAX_TAG_LENGTH = 40


def _tag_item(tag: str) -> str:
    return f"tag:{tag}"


def _note_item(note_id: str) -> str:
    return f"note:{note_id}"


def clean_tag(tag: str) -> str:
    """A tag as stored: trimmed and lower-case; ValueError if empty, too long or with spaces."""
    tag = tag.strip().lower()
    if not tag:
        raise ValueError("a tag cannot be empty")
    if len(tag) > MAX_TAG_LENGTH or any(ch.isspace() for ch in tag):
        raise ValueError(f"a tag is one word of at most {MAX_TAG_LENGTH} characters")
    return tag


@dataclass(frozen=True)
class NoteSummary:
    """A line of the notes list."""

    id: str
    title: str
    tags: tuple[str, ...]
    created: float


@dataclass(frozen=True)
class Note:
    """A whole note, for the editor."""

    id: str
    title: str
    body: str
    tags: tuple[str, ...]


@dataclass(frozen=True)
class StatusLine:
    """The status bar's texts, in words a user understands."""

    state: str
    pending: str
    error: str
    last_sync: str


_STATE_WORDS = {
    "local": "Local only",
    "idle": "Working offline",
    "syncing": "Syncing…",
    "online": "Online",
    "offline": "Offline",
    "auth_error": "Sign-in needed",
    "standby": "Another window syncs",
    "closed": "Closed",
}


def describe_error(error: str | None) -> str:
    """Turn a sync error into a sentence for the status bar."""
    if not error:
        return ""
    if "cannot reach" in error:
        return "Can't reach the server. Your changes are saved and will be sent later."
    if "in time" in error:
        return "The server is slow to answer. Retrying."
    if "HTTP 401" in error or "HTTP 403" in error:
        return "The server refused the access token. Check it and restart."
    if "HTTP 5" in error:
        return "The server has a problem. Retrying."
    return error


def describe_status(status: SyncStatus) -> StatusLine:
    """The status bar's texts for a sync status."""
    if status.state == "local":
        pending = "No server configured"
    elif status.pending == 0:
        pending = "All changes synced"
    elif status.pending == 1:
        pending = "1 change waiting"
    else:
        pending = f"{status.pending} changes waiting"
    last = (
        time.strftime("Last sync %H:%M:%S", time.localtime(status.last_sync))
        if status.last_sync
        else "Never synced"
    )
    return StatusLine(
        _STATE_WORDS.get(status.state, status.state),
        pending,
        describe_error(status.last_error),
        last,
    )


class NotesModel:
    """Notes on an idsync client: everything the window does, without the window.

    Change notifications (local, remote, status) are queued in
    :attr:`updates`; the UI drains that queue on its own thread.
    """

    def __init__(self, client: Client, store: str = "notes") -> None:
        self.client = client
        self.store = client.store(store)
        self.updates: queue.Queue[str] = queue.Queue()
        self._subscription = self.store.subscribe(lambda event: self.updates.put("notes"))
        self._stop_status = client.on_status(lambda status: self.updates.put("status"))
        self.working_offline = False

    # -- notes --------------------------------------------------------------

    def create_note(self, title: str = "Untitled", body: str = "") -> str:
        """Create a note; returns its id."""
        note_id = self.store.add({"created": time.time()}, index=[NOTE_ITEM])
        self.store.set_attr(note_id, "title", title)
        if body:
            self.store.set_attr(note_id, "body", body)
        return note_id

    def save(self, note_id: str, title: str, body: str) -> bool:
        """Save the editor's title and body; only what changed is written."""
        note = self.note(note_id)
        if note is None:
            raise KeyError("the note was deleted")
        changed = False
        if title != note.title:
            self.store.set_attr(note_id, "title", title)
            changed = True
        if body != note.body:
            self.store.set_attr(note_id, "body", body)
            changed = True
        return changed

    def delete_note(self, note_id: str) -> None:
        """Delete a note with its attributes and tags."""
        for record in list(self.store.find(_note_item(note_id))):
            self.store.delete(record.key)
        for name in ("title", "body"):
            self.store.delete_attr(note_id, name)
        if note_id in self.store:
            self.store.delete(note_id)

    def add_tag(self, note_id: str, tag: str) -> str:
        """Tag a note (no-op if it has the tag); returns the cleaned tag."""
        tag = clean_tag(tag)
        if tag not in self.tags(note_id):
            self.store.add(
                {"note": note_id, "tag": tag}, index=[_tag_item(tag), _note_item(note_id)]
            )
        return tag

    def remove_tag(self, note_id: str, tag: str) -> None:
        """Remove a tag from a note (no-op if it does not have it)."""
        tag = tag.strip().lower()
        for record in list(self.store.find(_note_item(note_id))):
            if record.value.get("tag") == tag:
                self.store.delete(record.key)

    def tags(self, note_id: str) -> tuple[str, ...]:
        """A note's tags, sorted."""
        return tuple(sorted({r.value["tag"] for r in self.store.find(_note_item(note_id))}))

    def note(self, note_id: str) -> Note | None:
        """The whole note, or None if it does not exist (any more)."""
        if note_id not in self.store:
            return None
        attrs = self.store.attrs(note_id)
        return Note(
            note_id, attrs.get("title") or "Untitled", attrs.get("body") or "", self.tags(note_id)
        )

    def notes(self, tag: str | None = None, search: str = "") -> list[NoteSummary]:
        """The notes list: newest first, filtered by tag and by text in the title."""
        records = {r.key: r for r in self.store.find(NOTE_ITEM)}
        if tag:
            tagged = {r.value["note"] for r in self.store.find(_tag_item(tag))}
            records = {k: r for k, r in records.items() if k in tagged}
        wanted = search.strip().lower()
        result = []
        for note_id, record in records.items():
            title = self.store.get_attr(note_id, "title") or "Untitled"
            if wanted and wanted not in title.lower():
                continue
            result.append(
                NoteSummary(
                    note_id, title, self.tags(note_id), float(record.value.get("created", 0))
                )
            )
        return sorted(result, key=lambda n: (-n.created, n.id))

    def all_tags(self) -> list[str]:
        """Every tag in use."""
        return sorted({r.value["tag"] for r in self.store.find("tag:", prefix=True)})

    # -- sync ---------------------------------------------------------------

    def status_line(self) -> StatusLine:
        """The status bar's texts now."""
        return describe_status(self.client.status)

    def set_working_offline(self, offline: bool) -> None:
        """The "work offline" toggle: stop or start background sync."""
        if self.client.transport is None:
            return
        self.working_offline = offline
        if offline:
            self.client.stop()
        else:
            self.client.start()
        self.updates.put("status")

    def rejected(self) -> list[RejectedChange]:
        """Changes the server refused."""
        return self.client.rejected()

    def dismiss(self, rejected_id: int) -> None:
        """Forget a refused change."""
        self.client.dismiss(rejected_id)
        self.updates.put("status")

    def drain_updates(self) -> set[str]:
        """What changed since last asked: ``notes`` and/or ``status``."""
        kinds: set[str] = set()
        while True:
            try:
                kinds.add(self.updates.get_nowait())
            except queue.Empty:
                return kinds

    def close(self) -> None:
        """Stop listening and close the client."""
        self._subscription.cancel()
        self._stop_status()
        self.client.close()


def describe_rejection(rejection: RejectedChange) -> str:
    """One line about a refused change."""
    what: Any = rejection.value
    if isinstance(what, dict) and "name" in what:
        what = f"{what['name']} = {what.get('value')!r}"
    return f"{rejection.op} {what!s:.60}: {rejection.message or rejection.code}"

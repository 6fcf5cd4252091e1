"""The notes app's logic, apart from any widget (a view-model).

A note is a record indexed ``kind:note`` (its key is the note's id); its
title and body are attribute records, so concurrent offline edits converge;
each tag is a record indexed ``tag:<name>`` and ``note:<id>``.

The store may also hold records other programs wrote (the README's example
writes to the same ``notes`` store): every read here accepts any value
shape and any index items, and skips or shows as text what it does not
understand, so such a record never breaks the app.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from idsync_client import Client, ConflictEvent, Record, RejectedChange, SyncStatus
from idsync_client.progress import SyncProgress

NOTE_ITEM = "kind:note"
MAX_TAG_LENGTH = 40
#: Titles longer than this are cut in the notes list (the editor shows them whole).
LIST_TITLE_LENGTH = 40
#: The attributes a note has; conflict notices about others are not shown.
NOTE_FIELDS = ("title", "body")


def as_text(value: Any) -> str:
    """An attribute value as editor text: strings as they are, other JSON as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def elide(text: str, length: int = LIST_TITLE_LENGTH) -> str:
    """``text`` on one line, cut to ``length`` characters with an ellipsis."""
    line = " ".join(text.split())
    return line if len(line) <= length else line[: length - 1].rstrip() + "…"


def _field(record: Record, name: str) -> Any:
    value = record.value
    return value.get(name) if isinstance(value, dict) else None


def _created(record: Record) -> float:
    created = _field(record, "created")
    try:
        return float(created) if isinstance(created, int | float) else 0.0
    except OverflowError:  # an integer too large for a float
        return 0.0


def _tags_of(record: Record) -> set[str]:
    # The index items say which tags a record carries, whatever its value.
    return {item[4:] for item in record.index if item.startswith("tag:") and item[4:].strip()}


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
    """A line of the notes list. ``pending``: some of its changes wait to be uploaded."""

    id: str
    title: str
    tags: tuple[str, ...]
    created: float
    pending: bool = False

    def label(self) -> str:
        """The line as the list shows it: a mark while waiting, the title cut short, tags."""
        mark = "• " if self.pending else "  "
        tags = f"   [{', '.join(elide(t, 20) for t in self.tags)}]" if self.tags else ""
        return mark + elide(self.title) + tags


@dataclass(frozen=True)
class ConflictNotice:
    """A value typed here that lost to another device's edit, as the app tells it.

    It says "your edit", not "your offline edit": the edit that loses may be
    the newer one, made online, when an older offline edit reaches the server
    after it.
    """

    id: int
    note_id: str
    field: str
    lost: Any
    kept: Any
    event: ConflictEvent

    def message(self) -> str:
        """One sentence for the notice bar."""
        return (
            f"Your edit of the {self.field} ({elide(as_text(self.lost), 40)!r}) was replaced"
            f" by {elide(as_text(self.kept), 40)!r}, written on another device that had not"
            " seen yours."
        )


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
    "connecting": "Connecting…",
    "syncing": "Syncing…",
    "online": "Online",
    "offline": "Offline",
    "auth_error": "Sign-in needed",
    "standby": "Another window syncs",
    "closed": "Closed",
}


OFFLINE_SENTENCE = "Can't reach the server. Your changes are saved and will be sent later."


def describe_error(error: str | None) -> str:
    """Turn a sync error into a sentence for the status bar."""
    if not error:
        return ""
    if "cannot reach" in error:
        return OFFLINE_SENTENCE
    if "in time" in error:
        return "The server is slow to answer. Retrying."
    if "HTTP 401" in error:
        return "The server refused the access token. Sign in again with a valid token."
    if "HTTP 403" in error:
        return "You have no access to this notes store (or may only read it)."
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
        # Offline, whatever the last error said (a server that stops first
        # answers its waiting clients "shutting down"), the point for the user
        # is that their changes are kept.
        OFFLINE_SENTENCE if status.state == "offline" else describe_error(status.last_error),
        last,
    )


@dataclass(frozen=True)
class ProgressLine:
    """The progress bar's text and fill (None: the total is not known yet)."""

    text: str
    fraction: float | None


def describe_progress(progress: SyncProgress) -> ProgressLine:
    """The progress bar's text for a download under way."""
    what = "Loading notes" if progress.phase == "snapshot" else "Downloading notes"
    if progress.total is None:
        return ProgressLine(f"{what}: {progress.received:,} received", None)
    percent = round(100 * (progress.fraction or 0.0))
    return ProgressLine(
        f"{what}: {progress.received:,} of {progress.total:,} ({percent}%)", progress.fraction
    )


class NotesModel:
    """Notes on an idsync client: everything the window does, without the window.

    Change notifications (local, remote, status, conflicts) are queued in
    :attr:`updates`; the UI drains that queue on its own thread.
    """

    def __init__(self, client: Client, store: str = "notes") -> None:
        self.client = client
        self.store = client.store(store)
        self.updates: queue.Queue[str] = queue.Queue()
        self._subscription = self.store.subscribe(lambda event: self.updates.put("notes"))
        self._stop_status = client.on_status(lambda status: self.updates.put("status"))
        self._stop_conflicts = self.store.on_conflict(self._on_conflict)
        self._progress: SyncProgress | None = None
        self._stop_progress = client.on_progress(self._on_progress)
        self._conflicts: list[ConflictNotice] = []
        self._conflict_lock = threading.Lock()
        self._conflict_ids = iter(range(1, 1 << 62))
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

    def keep_text(self, note_id: str | None, title: str, body: str) -> str | None:
        """Save what the editor holds before it shows something else; never drops text.

        Saves into ``note_id`` what differs from the stored note. If the note
        was deleted meanwhile (here or on another device) and the editor
        holds text, the text becomes a new note. Returns the id the text is
        in now, or None when there was nothing to keep.
        """
        title = title.strip() or "Untitled"
        if note_id is not None and self.note(note_id) is not None:
            self.save(note_id, title, body)
            return note_id
        if body.strip() or title != "Untitled":
            return self.create_note(title, body)
        return None

    def delete_note(self, note_id: str) -> None:
        """Delete a note with its attributes and tags."""
        for record in list(self.store.find(_note_item(note_id))):
            self.store.delete(record.key)
        for name in NOTE_FIELDS:
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
            if tag in _tags_of(record):
                self.store.delete(record.key)

    def tags(self, note_id: str) -> tuple[str, ...]:
        """A note's tags, sorted."""
        found: set[str] = set()
        for record in self.store.find(_note_item(note_id)):
            found |= _tags_of(record)
        return tuple(sorted(found))

    def note(self, note_id: str) -> Note | None:
        """The whole note, or None if it does not exist (any more) or cannot be one."""
        if note_id not in self.store or "/" in note_id:
            return None
        try:
            attrs = self.store.attrs(note_id)
        except ValueError:  # a key too long to name an attribute: not one of ours
            return None
        return Note(
            note_id,
            as_text(attrs.get("title")) or "Untitled",
            as_text(attrs.get("body")),
            self.tags(note_id),
        )

    def _pending(self, note_id: str, record: Record) -> bool:
        if self.client.transport is None:
            return False  # local only: nothing ever waits for a server
        if record.pending:
            return True
        for name in NOTE_FIELDS:
            if any(r.pending for r in self.store.find(f"@attr:{note_id}/{name}")):
                return True
        return any(r.pending for r in self.store.find(_note_item(note_id)))

    def notes(self, tag: str | None = None, search: str = "") -> list[NoteSummary]:
        """The notes list: newest first, filtered by tag and by text in the title."""
        records = {r.key: r for r in self.store.find(NOTE_ITEM) if "/" not in r.key}
        if tag:
            tagged = {
                item[len("note:") :]
                for r in self.store.find(_tag_item(tag))
                for item in r.index
                if item.startswith("note:")
            }
            records = {k: r for k, r in records.items() if k in tagged}
        wanted = search.strip().lower()
        result = []
        for note_id, record in records.items():
            try:
                title = as_text(self.store.get_attr(note_id, "title")) or "Untitled"
                summary = NoteSummary(
                    note_id, title, self.tags(note_id), _created(record), self._pending(note_id, record)
                )
            except ValueError:  # a key too long to name an attribute: not one of ours
                continue
            if wanted and wanted not in title.lower():
                continue
            result.append(summary)
        return sorted(result, key=lambda n: (-n.created, n.id))

    def all_tags(self) -> list[str]:
        """Every tag in use."""
        found: set[str] = set()
        for record in self.store.find("tag:", prefix=True):
            found |= _tags_of(record)
        return sorted(found)

    # -- conflicts ------------------------------------------------------------

    def _on_conflict(self, event: ConflictEvent) -> None:
        # On a sync thread: keep it and let the UI's thread show it.
        if event.name not in NOTE_FIELDS:
            return
        with self._conflict_lock:
            notice = ConflictNotice(
                next(self._conflict_ids),
                event.entity,
                event.name,
                event.losing_value,
                event.winning_value,
                event,
            )
            self._conflicts.append(notice)
        self.updates.put("conflicts")

    def conflicts(self) -> list[ConflictNotice]:
        """Conflict notices not yet restored or dismissed, oldest first."""
        with self._conflict_lock:
            return list(self._conflicts)

    def dismiss_conflict(self, notice_id: int) -> None:
        """Keep the other device's value; forget the notice."""
        with self._conflict_lock:
            self._conflicts = [c for c in self._conflicts if c.id != notice_id]
        self.updates.put("conflicts")

    def restore(self, notice_id: int) -> None:
        """Set the lost value again (it then wins, being written last); forget the notice.

        KeyError if there is no such notice or the note was deleted since.
        """
        with self._conflict_lock:
            notice = next((c for c in self._conflicts if c.id == notice_id), None)
        if notice is None:
            raise KeyError("no such conflict notice")
        if notice.note_id not in self.store:
            self.dismiss_conflict(notice_id)
            raise KeyError("the note was deleted")
        self.store.set_attr(notice.note_id, notice.field, notice.lost)
        self.dismiss_conflict(notice_id)

    # -- sync ---------------------------------------------------------------

    def status_line(self) -> StatusLine:
        """The status bar's texts now."""
        return describe_status(self.client.status)

    @property
    def needs_sign_in(self) -> bool:
        """True while the server refuses the token: sync waits for :meth:`sign_in`."""
        return self.client.status.state == "auth_error"

    def sign_in(self, token: str) -> None:
        """Use ``token`` from now on; sync paused by a refused token resumes."""
        token = token.strip()
        if not token:
            raise ValueError("enter the access token you were given")
        self.client.set_token(token)

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

    def _on_progress(self, progress: SyncProgress) -> None:
        # On the client's delivery thread: keep the latest, the UI reads it.
        if progress.store != self.store.name:
            return
        self._progress = None if progress.done else progress
        self.updates.put("progress")

    def progress_line(self) -> ProgressLine | None:
        """The download under way (a first sync of a large store), None when there is none."""
        progress = self._progress
        return None if progress is None else describe_progress(progress)

    def rejected(self) -> list[RejectedChange]:
        """Changes the server refused."""
        return self.client.rejected()

    def dismiss(self, rejected_id: int) -> None:
        """Forget a refused change."""
        self.client.dismiss(rejected_id)
        self.updates.put("status")

    def drain_updates(self) -> set[str]:
        """What changed since last asked: ``notes``, ``status``, ``conflicts``, ``progress``."""
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
        self._stop_conflicts()
        self._stop_progress()
        self.client.close()


def describe_rejection(rejection: RejectedChange) -> str:
    """One line about a refused change."""
    what: Any = rejection.value
    if isinstance(what, dict) and "name" in what:
        what = f"{what['name']} = {what.get('value')!r}"
    return f"{rejection.op} {what!s:.60}: {rejection.message or rejection.code}"

"""``POST /v1/wait``: its body, and a look at many stores at once.

A look tells, for each store named in the body, whether it has changes past
the client's cursor, or its error. When the client asks for pages
(``"pages": true``), a store with changes also gets the first page of them,
built by the same storage call as a pull page; pages are bounded per store
(:data:`STORE_PAGE_BYTES`) and in total (:data:`ANSWER_PAGE_BYTES`) so that
one answer stays small. A store past the total bound is listed as changed
without a page: the client pulls it. Everything here runs on a storage
thread except :func:`parse_wait_body`.

The pulls of a look go through a :data:`PagePuller`: straight to storage,
or through a :class:`PageMemo` that makes each distinct pull once for a
batch of looks (see :mod:`.look_batch`), its answer text built once too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from idsync_client.protocol import Cursor, Limits, ProtocolViolation, validate_store_name
from idsync_client.wire import PullAnswer

from .asgi import HttpError, error_envelope, error_for
from .auth import READ, Principal, require
from .storage import Page, Storage
from .storage.accounts import AccountStore
from .storage.json_text import utf8_size

#: About how much JSON of changes one store's page in a wait answer carries
#: (always at least one change).
STORE_PAGE_BYTES = 256 * 1024
#: About how much JSON of changes all the pages of one wait answer carry.
ANSWER_PAGE_BYTES = 1024 * 1024

_FIELDS = {"cursors", "wait", "pages", "limit"}
_SHAPE = '{"cursors": {...}, "wait": s, "pages": bool, "limit": n}'


@dataclass
class WaitRequest:
    """A checked wait body: the stores' cursors (a bad one is that store's error)."""

    cursors: dict[str, Cursor | None]
    errors: dict[str, Any]
    wait: float
    #: Changes per page when the client asked for pages; None: the old answer.
    page_limit: int | None


@dataclass
class Look:
    """What one look at the stores found."""

    #: Seq to wait past, per store with nothing new.
    heads: dict[str, int] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)
    errors: dict[str, Any] = field(default_factory=dict)
    #: Per changed store given a page: the page as pull-answer JSON text.
    pages: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SharedPage:
    """A pull page with its pull-answer JSON text and the UTF-8 size of its changes."""

    page: Page
    json: str
    size: int

    @classmethod
    def of(cls, page: Page) -> SharedPage:
        """Encode ``page`` once."""
        size = sum(map(utf8_size, page.items_json))
        return cls(page, PullAnswer.to_json(page.items_json, page.cursor, page.more), size)


#: ``(store, cursor, limit, max_bytes)`` -> the page :meth:`Storage.pull` gives.
PagePuller = Callable[[str, "Cursor | None", int, int], SharedPage]


def direct_puller(storage: Storage) -> PagePuller:
    """A puller that asks storage every time."""

    def pull(store: str, cursor: Cursor | None, limit: int, max_bytes: int) -> SharedPage:
        return SharedPage.of(storage.pull(store, cursor, limit, max_bytes))

    return pull


class PageMemo:
    """A puller that pulls each distinct (store, cursor, limit, max_bytes) once.

    For looks made at the same moment (one batch on one storage thread):
    the same inputs give the same page, so every look shares it. A failed
    pull is remembered too, and raised again for each look that asks it.
    Access is not its business: each look checks its caller's first.
    """

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        #: Storage pulls made.
        self.pulls = 0
        self._made: dict[tuple[str, str | None, int, int], SharedPage | Exception] = {}

    def __call__(self, store: str, cursor: Cursor | None, limit: int, max_bytes: int) -> SharedPage:
        key = (store, cursor.encode() if cursor is not None else None, limit, max_bytes)
        made = self._made.get(key)
        if made is None:
            self.pulls += 1
            try:
                made = SharedPage.of(self.storage.pull(store, cursor, limit, max_bytes))
            except Exception as exc:  # every look asking this pull gets it
                made = exc
            self._made[key] = made
        if isinstance(made, Exception):
            raise made.with_traceback(None)
        return made


def parse_wait_body(body: object, limits: Limits) -> WaitRequest:
    """Check a wait body; a clear ``400 invalid_request`` when it is wrong.

    Unknown fields are refused, as they always were: a client that sends
    ``pages`` to a server that does not know it hears so.
    """
    if not isinstance(body, dict) or not set(body) <= _FIELDS:
        raise HttpError("invalid_request", f"the body must be {_SHAPE}")
    cursors = body.get("cursors")
    if not isinstance(cursors, dict) or not cursors:
        raise HttpError("invalid_request", "cursors must map one or more store names to cursors")
    if len(cursors) > limits.max_wait_stores:
        raise HttpError(
            "invalid_request",
            f"{len(cursors)} stores is over the limit of {limits.max_wait_stores}",
        )
    wait = body.get("wait", 0)
    if isinstance(wait, bool) or not isinstance(wait, int | float):
        raise HttpError("invalid_request", "wait must be a number of seconds")
    if not 0 <= wait <= limits.max_wait_seconds:
        raise HttpError(
            "invalid_request", f"wait must be between 0 and {limits.max_wait_seconds:g}"
        )
    pages = body.get("pages", False)
    if not isinstance(pages, bool):
        raise HttpError("invalid_request", "pages must be true or false")
    limit = body.get("limit")
    if limit is not None:
        if not pages:
            raise HttpError("invalid_request", "limit is the size of pages: give it with pages")
        if not isinstance(limit, int) or isinstance(limit, bool):
            raise HttpError("invalid_request", "limit must be a whole number")
        if not 1 <= limit <= limits.max_page:
            raise HttpError("invalid_request", f"limit must be between 1 and {limits.max_page}")
    errors: dict[str, Any] = {}
    parsed: dict[str, Cursor | None] = {}
    for store, text in cursors.items():
        try:
            validate_store_name(store)
            if text is not None and not isinstance(text, str):
                raise HttpError("invalid_cursor", "a cursor is a string (or null)")
            parsed[store] = Cursor.decode(text) if text else None
        except (HttpError, ProtocolViolation) as exc:
            errors[store] = error_envelope(error_for(exc))["error"]
    page_limit = (limit or limits.default_page) if pages else None
    return WaitRequest(parsed, errors, float(wait), page_limit)


def look(
    storage: Storage,
    accounts: AccountStore,
    principal: Principal,
    cursors: dict[str, Cursor | None],
    limits: Limits,
    page_limit: int | None,
    pull: PagePuller | None = None,
) -> Look:
    """Per store: the seq to wait past, or changed now (with a page when
    ``page_limit`` is set and the store has a cursor), or its error.

    A store without a cursor gets no page: its first sync may load a
    snapshot instead of replaying the log. The caller's read access is
    checked for every store before its pull. ``pull``: how pages are
    pulled (default: from storage, each time).
    """
    pull = pull or direct_puller(storage)
    found = Look()
    budget = ANSWER_PAGE_BYTES
    per_store = min(STORE_PAGE_BYTES, limits.max_page_bytes)
    for store, cursor in cursors.items():
        paged = page_limit is not None and cursor is not None and budget > 0
        try:
            require(accounts, principal, store, READ)
            if paged:
                assert page_limit is not None
                shared = pull(store, cursor, page_limit, min(per_store, budget))
            else:
                shared = pull(store, cursor, 1, limits.max_page_bytes)
        except Exception as exc:  # reported for this store alone
            found.errors[store] = error_envelope(error_for(exc))["error"]
            continue
        if not shared.page.items_json:
            found.heads[store] = shared.page.cursor.seq
            continue
        found.changed.add(store)
        if paged:
            budget -= shared.size
            found.pages[store] = shared.json
    return found

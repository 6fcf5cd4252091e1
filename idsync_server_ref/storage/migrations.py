"""Numbered schema migrations, one transaction per step.

A server database records its schema version. Opening it runs, in order,
every step numbered above that version; each step runs in one transaction
together with the bump of the version, so a crash leaves the database at the
last version completed and opening it again resumes from there. A fresh
database is created at the latest version directly. A database newer than
the code is refused and left untouched.

The runner knows nothing of SQL: a backend hands it a :class:`SchemaTarget`
(how to open a transaction, read and write the version, create the latest
schema) and its list of :class:`Migration` steps. Version 1 is the schema of
release 0.1.0; step N turns version N-1 into version N. A backend added
later starts its history at a later ``base`` (PostgreSQL at version 2): it
has no steps below it, and its steps continue from there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from .base import SchemaTooNew, StorageFailure

#: The version of the first released schema; steps start above it.
BASE_VERSION = 1

H = TypeVar("H")
H_contra = TypeVar("H_contra", contravariant=True)


@dataclass(frozen=True)
class Migration(Generic[H]):
    """One numbered step: ``apply`` turns schema ``version - 1`` into ``version``.

    ``apply`` gets the backend's handle on the open transaction and must not
    commit: the runner commits the step with its version bump, or neither.
    """

    version: int
    description: str
    apply: Callable[[H], None]


class SchemaTarget(Protocol[H]):
    """What the runner needs from a backend's database."""

    def transaction(self) -> AbstractContextManager[H]:
        """A write transaction (exclusive of other migrating processes) and its handle."""

    def read_version(self, handle: H) -> int | None:
        """The stored schema version, or None for a fresh, empty database."""

    def create_latest(self, handle: H) -> None:
        """Create every table and index of the latest schema in a fresh database."""

    def write_version(self, handle: H, version: int) -> None:
        """Record ``version`` as the database's schema version."""


def latest_version(steps: Sequence[Migration[H]], base: int = BASE_VERSION) -> int:
    """The version the code knows: that of the last step, or the base one."""
    expected = list(range(base + 1, base + 1 + len(steps)))
    if [step.version for step in steps] != expected:
        raise ValueError(f"migration steps must be numbered {expected}")
    return steps[-1].version if steps else base


def refuse_unknown_version(version: int, latest: int, name: str, base: int = BASE_VERSION) -> None:
    """Raise SchemaTooNew above ``latest``, StorageFailure below ``base``; else nothing."""
    if version > latest:
        raise SchemaTooNew(
            f"{name} has schema version {version}, newer than this server's "
            f"{latest}: run a release that knows it (the file was not changed)"
        )
    if version < base:
        raise StorageFailure(f"{name} has an unknown schema version {version}")


def migrate(
    target: SchemaTarget[H], steps: Sequence[Migration[H]], name: str, base: int = BASE_VERSION
) -> list[int]:
    """Bring the database to the latest version; return the versions applied.

    ``name`` says which database in error messages. Raises
    :class:`SchemaTooNew` (changing nothing) when the database is newer than
    ``steps`` know; ``base`` is the first version of this backend's history.
    Each step is re-checked against the stored version
    inside its own transaction, so two processes opening the same old file
    at once apply each step once.
    """
    latest = latest_version(steps, base)
    applied: list[int] = []
    for _ in range(len(steps) + 1):  # one pass per step at most, plus the last check
        with target.transaction() as handle:
            version = target.read_version(handle)
            if version is None:
                target.create_latest(handle)
                target.write_version(handle, latest)
                return applied
            refuse_unknown_version(version, latest, name, base)
            if version == latest:
                return applied
            step = steps[version - base]
            step.apply(handle)
            target.write_version(handle, step.version)
            applied.append(step.version)
    raise AssertionError("unreachable: every pass applies a step or returns")

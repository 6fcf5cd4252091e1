"""A client process for the kill campaigns: adds, deletes and syncs until killed.

Usage: ``python worker.py DB URL STORE ACKS LANE SEED [ROUNDS [MODE]]``, or
``python worker.py --fork-server``: a process that has imported the client
and forks a worker for each line it reads (see :class:`Forker`), so that a
campaign restarts a killed client in milliseconds, not in the half second
an interpreter takes to import the client.

Every add and delete whose call returned (the app was told it is saved) is
appended to ACKS in the :meth:`~tests.reliability.setcheck.Ledger.merge_file`
format, one whole line per write, flushed before the next call. Before each
phase it prints the phase's name (``ready``, ``write``, ``sync``), so that a
campaign knows where a kill landed. MODE ``sync`` (the default) syncs
after each round of writes, on the worker's thread; ``background`` runs
the client's background sync and only writes, at a user's pace. It stops
by itself after ROUNDS rounds (exit 0); any error other than the library's
own is a crash (exit 1).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from idsync_client import Client, IdsyncError, RetryPolicy, killpoint
from idsync_client.jsoncodec import canonical

#: Seconds a worker may run before it stops by itself, killed or not.
LIFETIME = 600.0


def acknowledged(acks: Path) -> tuple[list[str], int]:
    """This lane's live acknowledged keys (added, not deleted) and its count of adds.

    A last line cut by a kill was never acknowledged: it is cut off here,
    so that the next line starts on a line of its own.
    """
    text = acks.read_text() if acks.exists() else ""
    whole = text[: text.rfind("\n") + 1]
    if whole != text:
        acks.write_text(whole)
    live: dict[str, None] = {}
    adds = 0
    for line in whole.splitlines():
        op, _, rest = line.partition(" ")
        if op == "add":
            live[rest.partition(" ")[0]] = None
            adds += 1
        else:
            live.pop(rest, None)
    return list(live), adds


def main(argv: list[str]) -> int:
    db, url, store, ack_path, lane, seed = argv[:6]
    rounds = int(argv[6]) if len(argv) > 6 else 10_000
    background = len(argv) > 7 and argv[7] == "background"
    rng = random.Random(seed)
    acks = Path(ack_path)
    live, i = acknowledged(acks)
    policy = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.1, rng=rng)
    with Client(db, url, retry=policy) as client, acks.open("a") as out:
        notes = client.store(store)
        if background:
            client.start()
        pace = threading.Event()  # never set: its wait is the pause between a user's writes
        print("ready", flush=True)
        deadline = time.monotonic() + LIFETIME
        for _ in range(rounds):
            if time.monotonic() > deadline:
                break
            print("write", flush=True)
            for _ in range(rng.randint(1, 4)):
                if live and rng.random() < 0.3:
                    key = live.pop(rng.randrange(len(live)))
                    try:
                        notes.delete(key)
                    except KeyError:
                        continue  # deleted before a kill cut its acknowledgement
                    out.write(f"delete {key}\n")
                else:
                    value = {"lane": lane, "i": i, "pad": "x" * rng.randint(0, 200)}
                    key = notes.add(value, index=[f"lane:{lane}", f"i:{i % 7}"])
                    out.write(f"add {key} {canonical(value)}\n")
                    live.append(key)
                    i += 1
                out.flush()
            if background:
                pace.wait(rng.uniform(0.0, 0.02))
                continue
            print("sync", flush=True)
            try:
                client.sync()
            except IdsyncError as exc:  # the server is down or restarting: write on
                print(f"offline {type(exc).__name__}", flush=True)
    return 0


def _child(order: dict) -> None:
    """In a forked child: write to the order's files, arm its kill point, run."""
    code = 1
    try:
        out = os.open(order["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err = os.open(order["err"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(out, 1)
        os.dup2(err, 2)
        # Fresh file objects: the parent's may hold a lock another thread took.
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        killpoint.arm(order.get("kill_at"))
        code = main(order["args"])
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def fork_server() -> None:
    """Fork a worker for each JSON order on stdin (``{"kill": PID}``: SIGKILL
    that worker); report ``start PID`` and ``exit PID CODE`` (CODE as
    subprocess gives it: -9 for SIGKILL) on stdout.

    Only this process kills its workers, and only those it has not reaped:
    a pid it reaped may belong to another process already. Reaping and
    forking take turns, so ``exit PID`` is told before a new ``start PID``.
    """
    live: set[int] = set()
    turns = threading.Lock()

    def say(text: str) -> None:
        os.write(1, (text + "\n").encode())  # no Python lock: a fork may come at any time

    def reap() -> None:
        while True:
            try:
                # Wait without reaping: the pid stays this worker's until reaped below.
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:
                if done.wait(0.05):
                    return
                continue
            if info is None:
                continue
            with turns:
                pid, status = os.waitpid(info.si_pid, 0)
                live.discard(pid)
                code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
                say(f"exit {pid} {code}")

    done = threading.Event()
    reaper = threading.Thread(target=reap, daemon=True)
    reaper.start()
    say("ready")
    for line in sys.stdin:
        order = json.loads(line)
        with turns:
            if "kill" in order:
                if order["kill"] in live:
                    os.kill(order["kill"], 9)
                continue
            pid = os.fork()
            if pid == 0:
                _child(order)
            live.add(pid)
            say(f"start {pid}")
    done.set()


class Forker:
    """A fork server (``worker.py --fork-server``) and the workers it started.

    :meth:`start` returns a worker's pid; :meth:`wait` waits (with a deadline)
    for its exit code; :meth:`kill` SIGKILLs it. Closing the fork server's
    input ends it once its workers have ended.
    """

    def __init__(self) -> None:
        env = dict(os.environ)
        env.pop("IDSYNC_KILL_AT", None)
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--fork-server"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._cond = threading.Condition()
        self._started: list[int] = []
        self._exits: dict[int, int] = {}
        self._order_lock = threading.Lock()  # one start at a time: "start PID" answers it
        self._write_lock = threading.Lock()
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if first.strip() != "ready":
            raise RuntimeError(f"the fork server did not start: {first!r}")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            what, pid, *rest = line.split()
            with self._cond:
                if what == "start":
                    self._exits.pop(int(pid), None)  # a pid used before, now reused
                    self._started.append(int(pid))
                else:
                    self._exits[int(pid)] = int(rest[0])
                self._cond.notify_all()

    def start(self, args: list[str], out: Path, err: Path, kill_at: str | None) -> int:
        """Fork a worker running ``main(args)``; its pid."""
        order = {"args": args, "out": str(out), "err": str(err), "kill_at": kill_at}
        with self._order_lock:
            self._order(order)
            with self._cond:
                if not self._cond.wait_for(lambda: self._started, timeout=30):
                    raise RuntimeError("the fork server did not fork")
                return self._started.pop(0)

    def _order(self, order: dict[str, Any]) -> None:
        with self._write_lock:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(order) + "\n")
            self.proc.stdin.flush()

    def wait(self, pid: int, timeout: float) -> int | None:
        """The worker's exit code, or None if it still runs after ``timeout`` seconds."""
        with self._cond:
            self._cond.wait_for(lambda: pid in self._exits, timeout=timeout)
            return self._exits.get(pid)

    def kill(self, pid: int) -> int:
        """SIGKILL the worker (if it still runs); its exit code."""
        if self.wait(pid, 0) is None:
            self._order({"kill": pid})
        code = self.wait(pid, 30)
        if code is None:
            raise RuntimeError(f"worker {pid} did not end")
        return code

    def close(self) -> None:
        """End the fork server (its workers must have ended)."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":
    if sys.argv[1:] == ["--fork-server"]:
        fork_server()
    else:
        sys.exit(main(sys.argv[1:]))

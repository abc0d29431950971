"""One writer at a time per ATOM tree: a lock file in the tree's git dir.

Made the way git makes ``index.lock``: created with O_CREAT|O_EXCL, so of two runs
exactly one gets it, and removed when the run ends. It holds who took it (pid, host,
verb, start time), so a second run can name the holder, and a lock whose holder died
(its pid is gone on this host) is recognised as stale and removed.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import FaultError
from .workspace import git_dir

LOCK_NAME = "ckfree.lock"
# A lock is written within microseconds of its creation; one still unreadable after
# this long was left by a run killed in between.
UNREADABLE_GRACE_S = 10

_held: set[Path] = set()  # locks this process holds, so a nested take is a no-op


class Busy(FaultError):
    """Another run holds the lock."""


def lock_path(tree: Path) -> Path:
    return git_dir(tree) / LOCK_NAME


@dataclass(frozen=True)
class Holder:
    pid: int
    host: str
    verb: str
    started: str

    def __str__(self) -> str:
        return f"{self.verb} (pid {self.pid} on {self.host}, since {self.started})"

    def gone(self) -> bool:
        """True only when it surely died: same host, and no such process (or it is
        this very process, which did not take the lock: a killed earlier run)."""
        if self.host != socket.gethostname():
            return False
        if self.pid == os.getpid():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False


def holder(lock: Path) -> Holder | None:
    """Who holds ``lock``; None when there is no lock or it cannot be read."""
    try:
        return Holder(**json.loads(lock.read_text()))
    except (OSError, ValueError, TypeError):
        return None


@contextmanager
def held(
    tree: Path, verb: str, notice: Callable[[str], None] = lambda m: None
) -> Iterator[None]:
    """Hold the lock of ``tree`` for ``verb``; refuse (FaultError) when another run
    holds it. ``notice`` hears about a stale lock that was removed."""
    lock = lock_path(tree)
    if lock in _held:
        yield
        return
    mine = _take(tree, lock, verb, notice)
    _held.add(lock)
    try:
        yield
    finally:
        _held.discard(lock)
        if holder(lock) == mine:
            lock.unlink(missing_ok=True)


def _take(tree: Path, lock: Path, verb: str, notice: Callable[[str], None]) -> Holder:
    me = Holder(
        os.getpid(),
        socket.gethostname(),
        verb,
        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    )
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            other = holder(lock)
            if other is None and _age(lock) < UNREADABLE_GRACE_S:
                raise _busy(tree, lock, "a run that is just starting") from None
            if other is not None and not other.gone():
                raise _busy(tree, lock, str(other)) from None
            _break(lock, other, notice)
            continue
        except OSError as error:
            raise FaultError(
                f"cannot create the lock {lock}: {error.strerror}",
                "check the permissions of that folder and the disk",
            ) from error
        try:
            os.write(fd, json.dumps(asdict(me)).encode())
        finally:
            os.close(fd)
        return me
    raise _busy(tree, lock, "another run that took it just now")


def _busy(tree: Path, lock: Path, who: str) -> Busy:
    return Busy(
        f"{tree} is in use: {who} holds {lock}",
        "wait for it to finish; if no such run is going, delete that file",
    )


def _age(lock: Path) -> float:
    try:
        return time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _break(lock: Path, stale: Holder | None, notice: Callable[[str], None]) -> None:
    """Remove a stale lock. It is first renamed aside, which takes exactly the file
    that is there: if another run replaced the stale lock with its own meanwhile,
    that one is put back untouched."""
    aside = lock.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
    try:
        os.replace(lock, aside)
    except FileNotFoundError:  # another run removed it first
        return
    taken = holder(aside)
    if taken != stale:
        try:
            os.link(aside, lock)
        except FileExistsError:
            pass  # a third run took the lock meanwhile: it holds it now
        aside.unlink(missing_ok=True)
        return
    aside.unlink(missing_ok=True)
    notice(f"removed the stale lock {lock}: {stale or 'its holder'} is gone")

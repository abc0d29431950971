"""What a series is about to change, kept durably in the tree's git dir until the
series is complete, so that a run that fails or dies at any instant can be undone.

``GIT_DIR/ckfree-journal/journal.json`` holds the original bytes and mode of every
file the series writes (or that it did not exist), the folders it creates and, for
``--commit``, HEAD, its branch and the index file's bytes. It is written, fsync'd,
renamed into place and its folder fsync'd before the first byte of the tree changes,
and removed once the series is complete: while it exists the tree may be half-written,
and ``roll_back`` puts back exactly what it recorded. The new contents are written in
the same folder (the same filesystem as the tree, as a rule) and renamed over their
targets, so a dead run's temp files are always found: they go with the folder.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import shutil
import signal
import stat
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .workspace import git, git_dir

FOLDER = "ckfree-journal"
RECORD = "journal.json"
TREE_TEMP = ".{}.ckfree-tmp"  # next to the target, when the git dir is on another disk


def folder_of(tree: Path) -> Path:
    return git_dir(tree) / FOLDER


def pending(tree: Path) -> bool:
    """Whether an earlier run left a journal (or the start of one) behind."""
    return folder_of(tree).exists()


class Journal:
    """The journal of one series being written; ``close`` once it is complete."""

    def __init__(self, tree: Path, folder: Path, record: dict):
        self.tree = tree
        self.folder = folder
        self.record = record
        self._index = {entry["path"]: n for n, entry in enumerate(record["files"])}

    def temp(self, path: str) -> Path:
        """Where the new content of ``path`` is written before it is renamed over it."""
        if self.record["temps_in_tree"]:
            target = self.tree / path
            return target.with_name(TREE_TEMP.format(target.name))
        return self.folder / f"new-{self._index[path]}"

    def mode(self, path: str) -> int | None:
        """The mode ``path`` had (a rewritten file keeps it), None for a new file."""
        return self.record["files"][self._index[path]]["mode"]

    def close(self) -> None:
        (self.folder / RECORD).unlink()
        shutil.rmtree(self.folder)


def begin(tree: Path, what: str, paths: list[str], with_git: bool) -> Journal:
    """Record durably what writing ``paths`` (and committing them) will change."""
    folder = folder_of(tree)
    if folder.exists():  # left by a run that died: undo it first
        roll_back(tree)
    folder.mkdir()
    _fsync(folder.parent)
    files = []
    for path in paths:
        target = tree / path
        try:
            mode = stat.S_IMODE(target.lstat().st_mode)
            data = _b64(target.read_bytes())
        except FileNotFoundError:
            mode = data = None
        files.append({"path": path, "mode": mode, "data": data})
    record = {
        "what": what,
        "pid": os.getpid(),
        "files": files,
        "folders": _new_folders(tree, paths),
        "temps_in_tree": _other_disk(folder, tree),
        "git": _git_state(tree) if with_git else None,
    }
    temp = folder / f"{RECORD}.tmp"
    _write(temp, json.dumps(record).encode())
    os.replace(temp, folder / RECORD)
    _fsync(folder)
    return Journal(tree, folder, record)


@dataclass
class Undone:
    what: str  # the series, as ``begin`` was told
    pid: int  # of the run that wrote it
    kept: list[str]  # folders it created that are not empty now, so were left


def roll_back(tree: Path) -> Undone | None:
    """Put back what the journal of ``tree`` recorded and remove it; None when there
    was nothing to undo. Safe to repeat when a crash stopped an earlier undo."""
    folder = folder_of(tree)
    try:
        record = json.loads((folder / RECORD).read_bytes())
    except FileNotFoundError:
        if folder.exists():  # no record: the tree was never touched
            shutil.rmtree(folder)
        return None
    restored = Journal(tree, folder, record)
    for entry in record["files"]:
        target, temp = tree / entry["path"], restored.temp(entry["path"])
        temp.unlink(missing_ok=True)
        if entry["data"] is None:
            target.unlink(missing_ok=True)
        else:
            _put(target, base64.b64decode(entry["data"]), entry["mode"], temp)
    kept = []
    for name in reversed(record["folders"]):
        try:
            (tree / name).rmdir()
        except FileNotFoundError:
            pass
        except OSError as error:
            if error.errno != errno.ENOTEMPTY:
                raise
            kept.append(name)
    if record["git"]:
        _restore_git(tree, record["git"], folder, record["what"])
    restored.close()
    return Undone(record["what"], record["pid"], kept)


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl-C is ignored while an undo runs, so it cannot stop half-way (the journal
    would still cover it, but the user asked to stop, not to be left with it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _other_disk(folder: Path, tree: Path) -> bool:
    """Whether a rename from ``folder`` into ``tree`` would cross filesystems."""
    return os.stat(folder).st_dev != os.stat(tree).st_dev


def _new_folders(tree: Path, paths: list[str]) -> list[str]:
    """The folders writing ``paths`` creates, parents before children."""
    new: list[str] = []
    for path in paths:
        for parent in reversed(Path(path).parents[:-1]):
            if str(parent) not in new and not (tree / parent).exists():
                new.append(str(parent))
    return new


def _git_state(tree: Path) -> dict:
    index = Path(
        git(tree, "rev-parse", "--path-format=absolute", "--git-path", "index")
    )
    return {
        "branch": git(tree, "symbolic-ref", "-q", "HEAD", check=False) or None,
        "head": git(tree, "rev-parse", "-q", "--verify", "HEAD", check=False) or None,
        "index_path": str(index),
        "index": _b64(index.read_bytes()) if index.exists() else None,
    }


def _restore_git(tree: Path, state: dict, folder: Path, what: str) -> None:
    index = Path(state["index_path"])
    if state["index"] is None:
        index.unlink(missing_ok=True)
    else:
        _put(index, base64.b64decode(state["index"]), None, folder / "index")
    head = git(tree, "rev-parse", "-q", "--verify", "HEAD", check=False) or None
    if head == state["head"]:
        return
    ref = state["branch"] or "HEAD"
    deref = [] if state["branch"] else ["--no-deref"]
    if state["head"] is None:
        git(tree, "update-ref", *deref, "-d", ref)
    else:
        git(
            tree,
            "update-ref",
            *deref,
            "-m",
            f"apply-patches: undo {what}",
            ref,
            state["head"],
        )


def _put(target: Path, data: bytes, mode: int | None, temp: Path) -> None:
    """Make ``target`` hold ``data`` (and ``mode``), unless it already does."""
    try:
        same = target.read_bytes() == data and (
            mode is None or stat.S_IMODE(target.lstat().st_mode) == mode
        )
    except FileNotFoundError:
        same = False
    if same:
        return
    _write(temp, data)
    if mode is not None:
        os.chmod(temp, mode)
    os.replace(temp, target)


def sync(paths: list[Path]) -> None:
    """fsync files all at once (in threads: the disk commits them together, several
    times faster than one after the other)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(_fsync, paths))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as error:  # the error of an fd names no file: name it
        raise OSError(error.errno, error.strerror, str(path)) from error
    finally:
        os.close(fd)


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")

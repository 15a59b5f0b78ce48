"""One process per scratch folder: an exclusive flock on `<scratch>/.r2i-lock`, held from Replay() to close().

Two copies of one job on one node (a requeue racing a lingering step, a duplicated submission) used to share the
scratch folder: the newer copy's restore swept shard files the older one was reading, so the older copy died of a
missing file instead of failing cleanly at the writer fence. The kernel drops the lock when its holder dies, so a
SIGKILLed job leaves no stale lock. A copy that finds the folder locked works in a sibling of its own,
`<scratch>.r2i-copy-<n>`, removed on close, or by the next holder of the main folder after a crash.

flock belongs to the open file description, not the process: a second Replay on the same folder in one process,
before the first is closed, is refused the lock like another process would be and gets a sibling too; after
close() the folder can be opened again. Processes forked while a Replay is open inherit the lock and hold it
until they exit (the training loop starts its env workers before its Replay).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import shutil

from .errors import ScratchError

LOCK_NAME = ".r2i-lock"
SIBLING = ".r2i-copy-"
MAX_SIBLINGS = 64
log = logging.getLogger(__name__)


class ScratchLock:
    """The lock on the scratch folder this Replay works in; `path` is `requested` or a sibling of it."""

    def __init__(self, requested: str):
        self.requested = os.path.abspath(requested)
        self._fd: int | None = None
        try:
            self.path = self._acquire()
        except OSError as e:
            raise ScratchError(f"scratch {self.requested}: cannot lock it: {e}") from e
        if self.path != self.requested:
            log.warning("scratch %s is locked by another live process (another copy of this job?); working in "
                        "%s until close", self.requested, self.path)

    @property
    def sibling(self) -> bool:
        return self.path != self.requested

    def _acquire(self) -> str:
        for n in range(MAX_SIBLINGS + 1):
            folder = self.requested if n == 0 else f"{self.requested}{SIBLING}{n}"
            fd = _try_lock(folder)
            if fd is not None:
                self._fd = fd
                if n == 0:
                    self._sweep_siblings()
                return folder
        raise ScratchError(f"scratch {self.requested} and its {MAX_SIBLINGS} siblings {self.requested}{SIBLING}<n> "
                           "are all locked by live processes")

    def _sweep_siblings(self) -> None:
        """Remove the siblings no live process holds (left by a copy that was killed)."""
        parent, base = os.path.split(self.requested)
        pattern = re.compile(re.escape(base + SIBLING) + r"\d+")
        for name in os.listdir(parent):
            folder = os.path.join(parent, name)
            if pattern.fullmatch(name) and os.path.exists(os.path.join(folder, LOCK_NAME)):
                fd = _try_lock(folder, create=False)
                if fd is not None:
                    shutil.rmtree(folder, ignore_errors=True)
                    os.close(fd)

    def release(self) -> None:
        """Give the folder up; a sibling is removed first, while still held, so nobody else is working in it."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self.sibling:
            shutil.rmtree(self.path, ignore_errors=True)
        os.close(fd)


def _try_lock(folder: str, create: bool = True) -> int | None:
    """An fd holding the exclusive lock of `folder`, or None when a live process holds it."""
    while True:
        if create:
            os.makedirs(folder, exist_ok=True)
        lock = os.path.join(folder, LOCK_NAME)
        try:
            fd = os.open(lock, os.O_RDWR | (os.O_CREAT if create else 0) | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            if not create:
                return None
            continue  # removed between makedirs and open by the holder sweeping it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        # The holder of a sibling removes it before unlocking: a lock taken on a file that is no longer at its
        # path guards nothing, so look again.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)
        if not create:
            return None

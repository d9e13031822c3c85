"""Exclusive locks on open files: ``flock`` on Linux and macOS, ``msvcrt.locking`` on Windows.

Either lock belongs to the open file, so the operating system drops it when the process
holding it dies: a killed sweep never leaves a stale lock behind. ``fcntl`` is imported
when a lock is taken, not with the package, because Windows has no ``fcntl`` and the
package must still import there. On Windows a lock is not shared with child processes
that inherit the descriptor (``flock`` locks are), so a sweep's kernels do not co-hold
their config's lock there.
"""

from __future__ import annotations

import errno
import os
import time

_BUSY = (errno.EAGAIN, errno.EACCES, getattr(errno, "EWOULDBLOCK", errno.EAGAIN), getattr(errno, "EDEADLOCK", errno.EDEADLK))


def _backend():
    try:
        import fcntl  # here, not at the top: the platform decides which of the two exists

        return fcntl, None
    except ImportError:
        pass
    try:
        import msvcrt  # Windows

        return None, msvcrt
    except ImportError:
        raise OSError("no file locking on this platform (neither fcntl nor msvcrt)") from None


def lock(fd: int, *, blocking: bool) -> bool:
    """Take an exclusive lock on the open file ``fd``. Blocking, wait for it; otherwise
    return False at once when another process holds it. True when taken."""
    fcntl, msvcrt = _backend()
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            return True
        except OSError as exc:
            if not blocking and exc.errno in _BUSY:
                return False
            raise
    while True:  # msvcrt locks byte 0; its own blocking mode gives up after 10 s
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError as exc:
            if exc.errno not in _BUSY:
                raise
            if not blocking:
                return False
            time.sleep(0.1)


def unlock(fd: int) -> None:
    fcntl, msvcrt = _backend()
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return
    os.lseek(fd, 0, os.SEEK_SET)
    msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

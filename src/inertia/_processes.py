"""Whether a process still runs: temporary files of a process that is gone may be removed."""

from __future__ import annotations

import os

__all__ = ["process_exists"]


def process_exists(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (another user's counts). Off POSIX the
    answer is always True: there, ``os.kill(pid, 0)`` would end the process, not probe it."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True

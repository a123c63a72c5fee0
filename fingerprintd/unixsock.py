"""Unix-socket paths shared by the edges (gRPC, p0f API, milter, policy service)."""

from __future__ import annotations

import os
import stat


def remove_stale_socket(path: str) -> None:
    """Remove the socket an earlier run left at `path`; refuse to remove anything else.

    A daemon that simply unlinks its configured path would delete whatever a
    typo points it at (a Postfix map, a config file).
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket")
    os.unlink(path)

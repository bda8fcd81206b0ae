"""Processes of a local cluster: started in sessions of their own, found and stopped by session.

Each service of :mod:`dakd.cluster.local` (PostgreSQL, the MLflow server, each Ray node) is
started as the leader of a new session (``setsid``), so everything it spawns -- a Ray node's
GCS, raylet, agents and worker processes, the MLflow server's workers -- belongs to that session
unless it leaves it. Stopping a service is then stopping its session: the processes whose
session id (``/proc/PID/stat``, field 6) is the leader's pid. Nothing else on the machine is
touched, which is what ``down`` promises, and it is how a node is "lost": SIGKILL to every
process of its session at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = [
    "PortTakenError",
    "alive",
    "check_port_free",
    "free_port",
    "session_members",
    "start_session",
    "stop_session",
    "wait_until",
]


class PortTakenError(RuntimeError):
    """A port a service of the cluster must listen on is already in use."""


def check_port_free(port: int, what: str, host: str = "127.0.0.1") -> None:
    """Raise :class:`PortTakenError` naming ``what`` when ``host:port`` cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # as servers bind: a port whose last connections linger in TIME_WAIT is free to them
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise PortTakenError(
                f"port {port} on {host} ({what}) is taken ({err.strerror}); stop what holds it "
                "or choose another port"
            ) from None


def free_port(host: str = "127.0.0.1", avoid: Sequence[int] = ()) -> int:
    """A port no process listens on now (the kernel's pick, not one of ``avoid``)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
        if port not in avoid:
            return port


def start_session(
    command: Sequence[str],
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> int:
    """Start ``command`` as the leader of a new session, its output appended to ``log``; its pid
    (which is also the session id of everything it starts). ``user``: run as that user (the
    caller is root and the program refuses root, as PostgreSQL does)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            user=user,
            group=_group_of(user) if user else None,
        )
    _children.append(process)  # reaped by the interpreter, never a zombie in `alive`
    return process.pid


_children: list[subprocess.Popen] = []


def _group_of(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_gid


def _reap() -> None:
    for process in list(_children):
        if process.poll() is not None:
            _children.remove(process)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    _reap()
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def session_members(session: int) -> list[int]:
    """The pids of the running processes of session ``session`` (Linux ``/proc``)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError, PermissionError):
            continue
        # after the command: state, ppid, pgrp, session, ...
        if int(fields[3]) == session and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def stop_session(session: int, grace: float = 10.0, first: int = signal.SIGTERM) -> None:
    """Send ``first`` to the leader, wait up to ``grace`` seconds for the whole session to end,
    then SIGKILL whatever of it is left. ``grace`` 0: SIGKILL to every member at once."""
    if grace > 0 and alive(session):
        with contextlib.suppress(ProcessLookupError):
            os.kill(session, first)
        wait_until(lambda: not session_members(session), grace, what=None)
    for pid in session_members(session):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not session_members(session), 10.0, what=None)
    _reap()


def wait_until(
    ready: Callable[[], bool], timeout: float, what: str | None, interval: float = 0.2
) -> bool:
    """Poll ``ready`` until it holds or ``timeout`` seconds pass. On timeout: raise a
    ``TimeoutError`` saying ``what`` did not happen, or return False when ``what`` is None."""
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return True
        if time.monotonic() > deadline:
            if what is None:
                return False
            raise TimeoutError(f"{what} within {timeout:.0f} s")
        time.sleep(interval)

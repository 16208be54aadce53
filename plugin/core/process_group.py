"""Process groups: the local engine runs in one of its own, so vLLM's API server, engine core and workers
stop together (SIGTERM, then SIGKILL) and nothing is orphaned."""

from __future__ import annotations

import os
import signal
import subprocess
import time


def group_alive(pgid: int) -> bool:
    """Whether process group `pgid` has a process left; False where the system has no process groups (Windows),
    as no engine of this plugin runs there."""
    killpg = getattr(os, "killpg", None)
    if killpg is None:
        return False
    try:
        killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the process group led by `proc`, SIGKILL what is left after `grace`, reap the leader."""
    if os.name != "posix":
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return
    pgid = proc.pid  # start_new_session: the leader's pid is the group id
    if group_alive(pgid):
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader, or its zombie keeps the group "alive"
        if not group_alive(pgid):
            break
        time.sleep(0.1)
    else:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILLed processes always end
        pass
    for _ in range(50):  # orphans are reaped by init; wait for them briefly
        if not group_alive(pgid):
            break
        time.sleep(0.1)


def kill_foreign_group(pgid: int, grace: float) -> None:
    """Stop a process group this process did not start (a kept engine another run started): SIGTERM, SIGKILL
    after `grace`; its leader is reaped by its own parent or by init."""
    if os.name != "posix" or pgid <= 0:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:  # this process's own child after all (started here, then left running): reap it
                os.waitpid(pgid, os.WNOHANG)
            except ChildProcessError:
                pass
            if not group_alive(pgid):
                return
            time.sleep(0.1)

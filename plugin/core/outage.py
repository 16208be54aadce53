"""Riding out a server that went away during a job: the requests that failed wait, cancellably and for at
most the retry wait, until the server answers /health again, and are then sent again.

A CPU run of a whole Sentinel-2 tile takes half an hour; one refused connection must not throw that away.
What waiting can fix is only what the server's absence causes (FloodMapperError.transient: refused, reset,
502/503/504, an engine that stopped); anything else stops the job at once. The local engine, which nobody
else restarts, is started again here, once per job.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

from .errors import Cancelled, FloodMapperError

_ANSWERED: set[str] = set()  # servers that answered a job in this process
_ANSWERED_LOCK = threading.Lock()

POLL_S = 1.0  # /health while waiting: cheap, and a restarted server is seen within a second
TICK = 0.1  # cancel is looked at this often


def remember_answered(url: str) -> None:
    with _ANSWERED_LOCK:
        _ANSWERED.add(url.rstrip("/"))


def answered_before(url: str) -> bool:
    """This server answered a job in this process: when it is away now, it is away for a while (a restart)."""
    with _ANSWERED_LOCK:
        return url.rstrip("/") in _ANSWERED


class Outage:
    """The state of one job's server: up, or away since when. Shared by the job's worker threads."""

    def __init__(self, client, retry_wait: float, should_stop: Callable[[], bool],
                 revive: Optional[Callable[[], bool]] = None) -> None:
        self.client = client
        self.retry_wait = float(retry_wait)
        self.should_stop = should_stop
        self.revive = revive  # starts the local engine again if it died; True when it did
        self.since: Optional[float] = None
        self.reason = ""
        self.outages = 0  # how many times the server went away and came back
        self._lock = threading.Lock()
        self._revive_lock = threading.Lock()

    @property
    def waited(self) -> float:
        since = self.since
        return 0.0 if since is None else time.monotonic() - since

    def ride_out(self, error: FloodMapperError) -> None:
        """Return once the server answers /health again, so the failed request can be sent again; raise
        `error` when waiting cannot help (not transient, no retry wait, the wait is over: counted from the
        first failure until a request goes through again) and Cancelled on cancel."""
        if not error.transient or self.retry_wait <= 0:
            raise error
        with self._lock:
            if self.since is None:
                self.since = time.monotonic()
                self.reason = error.message
        while True:
            self._pause(POLL_S)  # never a tight loop, even while /health answers and the request does not
            self._revive()
            with self._lock:
                deadline = (self.since or time.monotonic()) + self.retry_wait
            if time.monotonic() > deadline:
                error.message += (f" The server did not answer again within the retry wait of "
                                  f"{self.retry_wait:.0f} s.")
                error.hint += " A longer retry wait (Flood Mapper options) rides out a slower restart."
                raise error
            if self.client.health():
                return

    def answered(self) -> None:
        """A request went through: the server is back (the next failure starts a new wait)."""
        if self.since is not None:
            with self._lock:
                if self.since is not None:
                    self.since = None
                    self.outages += 1

    def _pause(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            if self.should_stop():
                raise Cancelled()
            time.sleep(TICK)

    def _revive(self) -> None:
        """Start the local engine again if it died; its own start-up wait applies, not the retry wait."""
        if self.revive is None:
            return
        with self._revive_lock:  # one thread starts it; the others wait here, then find it up
            if self.revive():
                with self._lock:
                    if self.since is not None:
                        self.since = time.monotonic()  # the retry wait starts again once the engine is up

    def note(self) -> str:
        """What to tell the user while the server is away ("" while it is up)."""
        since = self.since
        if since is None:
            return ""
        return (f"The server is unreachable ({self.reason.split('. ')[0].rstrip('.')}); waiting for it: "
                f"{time.monotonic() - since:.0f} s of {self.retry_wait:.0f} s")

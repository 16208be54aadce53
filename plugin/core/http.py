"""HTTP sessions for vLLM servers: pooled connections, a retry policy, and a cancel token per request.

One pooled `requests.Session` per server: QGIS users run many jobs against one server, and reusing the
connection saves the TCP/TLS set-up every time. urllib3's `Retry` retries only what is safe and useful to
retry: a connection that could not be made, and 502/503/504 (a proxy or a server that is starting). A 400 or
404 will not change on a second try, and a read timeout means the server is busy with our request.

Cancel: a vLLM request can run for minutes, and a QGIS task must stop within a second. Closing a Session only
closes idle connections; the one a blocked `recv` waits on is checked out of the pool. A `CancelToken` bound
to a request learns which connections it uses, and `cancel()` shuts their sockets down: the `recv` wakes at
once and vLLM sees the client go away, which makes it drop the request. The `Watchdog` cancels a request's
token when the user cancels or when the request's wall-clock budget is spent (a server or proxy that trickles
a byte now and then would otherwise hold a job forever): one mechanism for both.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ReadTimeoutError
from urllib3.util.retry import Retry
from urllib3.util.util import reraise

log = logging.getLogger("floodmapper.http")

USER_AGENT = "floodmapper-qgis/0.1"
RETRY_STATUSES = (502, 503, 504)
MAX_RETRY_AFTER = 30.0  # seconds; a proxy asking for longer must not freeze a job without cancel
TICK = 0.1  # seconds between the watchdog's looks at cancel flags and budgets

CANCELLED = "cancelled"
EXPIRED = "expired"


class Aborted(Exception):
    """Raised inside a request whose token was cancelled before it got a connection (no further attempt)."""


# ------------------------------------------------------------------------------------------- cancel token
_BOUND = threading.local()


class CancelToken:
    """One request's way out: `cancel()` shuts down the sockets the request uses (or is about to use)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conns: list[Any] = []
        self._done = False
        self.reason = ""  # "" while running; CANCELLED or EXPIRED once cancelled

    @property
    def cancelled(self) -> bool:
        return bool(self.reason)

    def cancel(self, reason: str = CANCELLED) -> None:
        """Stop the request; safe from any thread, and repeatable (a socket may not be connected yet)."""
        with self._lock:
            if not self.reason:
                self.reason = reason
            conns = [] if self._done else list(self._conns)
        for conn in conns:
            sock = getattr(conn, "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed by the other side: nothing left to stop

    def finish(self) -> None:
        """The answer is read: its connection goes back to the pool and must not be shut down any more."""
        with self._lock:
            self._done = True
            self._conns.clear()

    @contextlib.contextmanager
    def bound(self) -> Iterator[CancelToken]:
        """Requests made by this thread inside the block belong to this token."""
        previous = getattr(_BOUND, "token", None)
        _BOUND.token = self
        try:
            yield self
        finally:
            _BOUND.token = previous

    def _attach(self, conn: Any) -> None:
        with self._lock:
            if self.reason:
                raise Aborted(self.reason)
            self._conns.append(conn)


class _TrackedPoolMixin:
    """Hands each connection a request checks out to the request's token."""

    def _get_conn(self, timeout: Optional[float] = None) -> Any:
        token: Optional[CancelToken] = getattr(_BOUND, "token", None)
        if token is not None and token.cancelled:
            raise Aborted(token.reason)
        conn = super()._get_conn(timeout)  # type: ignore[misc]
        if token is not None:
            try:
                token._attach(conn)
            except Aborted:
                self._put_conn(conn)  # type: ignore[attr-defined]
                raise
        return conn


class _TrackedHTTPPool(_TrackedPoolMixin, HTTPConnectionPool):
    pass


class _TrackedHTTPSPool(_TrackedPoolMixin, HTTPSConnectionPool):
    pass


def _tracked_socks_pools() -> dict[str, type]:
    """SOCKS pools that hand their connections to tokens too (PySocks is imported only for a SOCKS proxy)."""
    from urllib3.contrib.socks import SOCKSHTTPConnectionPool, SOCKSHTTPSConnectionPool

    class TrackedSocksHTTP(_TrackedPoolMixin, SOCKSHTTPConnectionPool):
        pass

    class TrackedSocksHTTPS(_TrackedPoolMixin, SOCKSHTTPSConnectionPool):
        pass

    return {"http": TrackedSocksHTTP, "https": TrackedSocksHTTPS}


class _TrackingAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _TrackedHTTPPool, "https": _TrackedHTTPSPool}

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = _tracked_socks_pools()
        else:
            manager.pool_classes_by_scheme = {"http": _TrackedHTTPPool, "https": _TrackedHTTPSPool}
        return manager


# ------------------------------------------------------------------------------------------------ session
class _Session(requests.Session):
    """A Session whose own proxies (QGIS's proxy settings) win over the HTTP(S)_PROXY environment variables,
    and which reads the environment once per server rather than on every request.

    requests lets the environment override `Session.proxies` (psf/requests#2018); QGIS's settings, and a
    "no proxy" ("" = direct) decision made from them, must not be overridden that way.

    requests reads the proxy variables on every request, walking the whole environment twice: ~0.1 ms of
    Python that holds the GIL, on each of the hundreds of tile requests of a run. A client serves one job, so
    the environment's part of the settings (proxies, no_proxy, REQUESTS_CA_BUNDLE) is kept per server and
    per the request's own settings, as it was at the client's first request to that server.
    """

    def __init__(self) -> None:
        super().__init__()
        self._environment: dict[tuple, dict[str, Any]] = {}

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> Any:
        merged = dict(self.proxies)
        merged.update(proxies or {})
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc, tuple(sorted(merged.items())), stream, verify, cert, self.stream,
               self.verify, self.cert, self.trust_env)
        settings = self._environment.get(key)
        if settings is None:
            settings = super().merge_environment_settings(url, merged, stream, verify, cert)
            self._environment[key] = settings
        return {**settings, "proxies": dict(settings["proxies"])}  # a copy: the caller may change it


class _Retry(Retry):
    """urllib3's Retry, but a read timeout is never retried and Retry-After is capped.

    A read timeout means the server is working on our request: asking again doubles the wait. A connection
    dropped before any answer *is* retried once (read=1): uvicorn closes the connection after an unhandled
    exception (vLLM's empty 500s), and the next request on that pooled keep-alive connection fails at once
    with "Remote end closed connection" although the server is fine.
    """

    def increment(self, method: Optional[str] = None, url: Optional[str] = None, response: Any = None,
                  error: Optional[Exception] = None, _pool: Any = None, _stacktrace: Any = None) -> Retry:
        if isinstance(error, ReadTimeoutError):
            raise reraise(type(error), error, _stacktrace)
        return super().increment(method, url, response=response, error=error, _pool=_pool,
                                 _stacktrace=_stacktrace)

    def get_retry_after(self, response: Any) -> Optional[float]:
        value = super().get_retry_after(response)
        return None if value is None else min(value, MAX_RETRY_AFTER)


def make_session(headers: dict[str, str], verify: Union[bool, str], proxies: Optional[dict[str, str]],
                 retries: int, backoff: float, pool_size: int) -> requests.Session:
    retry = _Retry(
        total=None,  # each kind of failure has its own budget below
        connect=retries,
        read=1,  # one re-send after a dropped keep-alive connection; never after a read timeout
        status=retries,
        other=0,  # TLS failures and the like are configuration problems
        redirect=0,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET", "POST", "HEAD"}),  # /pooling is idempotent
        backoff_factor=backoff,
        raise_on_status=False,
        respect_retry_after_header=True,
    )
    adapter = _TrackingAdapter(max_retries=retry, pool_connections=2, pool_maxsize=max(1, pool_size))
    session = _Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers.update({"User-Agent": USER_AGENT, "Accept": "application/json"})
    session.headers.update(headers)
    session.verify = verify
    if proxies:
        session.proxies.update(proxies)
    return session


# ----------------------------------------------------------------------------------------------- watchdog
@dataclass(eq=False)
class _Watch:
    token: CancelToken
    deadline: Optional[float]
    should_cancel: Optional[Callable[[], bool]]
    on_tick: Optional[Callable[[float], None]]
    started: float = field(default_factory=time.monotonic)


class Watchdog:
    """One thread that cancels watched requests when the user cancels or their wall-clock budget is spent,
    and reports how long each has waited (for progress)."""

    def __init__(self, interval: float = TICK) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._watches: list[_Watch] = []
        self._thread: Optional[threading.Thread] = None

    @contextlib.contextmanager
    def watch(self, token: CancelToken, *, budget: Optional[float] = None,
              should_cancel: Optional[Callable[[], bool]] = None,
              on_tick: Optional[Callable[[float], None]] = None) -> Iterator[CancelToken]:
        entry = _Watch(token, None if budget is None else time.monotonic() + budget, should_cancel, on_tick)
        with self._lock:
            self._watches.append(entry)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="floodmapper-watchdog", daemon=True)
                self._thread.start()
        try:
            yield token
        finally:
            with self._lock:
                self._watches.remove(entry)

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            with self._lock:
                watches = list(self._watches)
            for entry in watches:
                try:
                    self._look(entry)
                except Exception:  # noqa: BLE001 - a broken callback must not stop every other request's watch
                    log.exception("watchdog callback failed")

    @staticmethod
    def _look(entry: _Watch) -> None:
        token = entry.token
        if not token.cancelled:
            if entry.should_cancel is not None and entry.should_cancel():
                token.cancel(CANCELLED)
            elif entry.deadline is not None and time.monotonic() > entry.deadline:
                token.cancel(EXPIRED)
        if token.cancelled:
            token.cancel(token.reason)  # again: the socket may have connected since the last look
        elif entry.on_tick is not None:
            entry.on_tick(time.monotonic() - entry.started)


WATCHDOG = Watchdog()

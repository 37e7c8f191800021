"""The uvicorn server of ``facephi serve``, with limits on connections and on slow requests.

uvicorn bounds a request's headers in size but not in time, and accepts connections until the process
runs out of file descriptors. :func:`make_server` adds both bounds to its HTTP protocol: a connection
whose request headers are not complete within ``header_timeout_s`` is closed, and connections beyond
``max_connections`` are closed as soon as they are accepted; uvicorn's own ``limit_concurrency``
answers 503 beyond ``limit_concurrency`` connections or requests, and ``timeout_keep_alive`` closes
idle kept-alive connections. The body's own time limit is the app's (408).
"""

from __future__ import annotations

import socket
from typing import Any

from facephi.utils.errors import FacePhiError

HEADER_TIMEOUT_S = 10.0
"""Longest time a new connection may take to send its request headers."""
MAX_CONNECTIONS = 512
"""Open connections at once; more are closed when accepted (no file-descriptor exhaustion)."""
LIMIT_CONCURRENCY = 256
"""uvicorn's limit: beyond this many connections or running requests, new requests get 503."""
KEEP_ALIVE_S = 5


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not yet listening), so that a wrong ``--host`` or a port in
    use fails at once, before the model loads; :class:`FacePhiError` naming the flag and the address."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise FacePhiError(f"--host {host}: cannot listen on this address ({reason})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise FacePhiError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None
    return sock


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type:
    """uvicorn's h11 HTTP protocol with a time limit on request headers and a cap on connections."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._header_timer = None
            if len(self.connections) > max_connections:
                transport.abort()  # over the cap: closed at once, nothing read or answered
                return
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _headers_too_slow(self) -> None:
            if self.cycle is None and not self.transport.is_closing():
                self.transport.abort()  # no complete request line and headers in time

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

    return GuardedH11Protocol


def make_server(app: Any, *, header_timeout_s: float = HEADER_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS,
                limit_concurrency: int = LIMIT_CONCURRENCY, log_level: str = "warning") -> Any:
    """A ``uvicorn.Server`` for ``app`` with the limits above; its ``interrupted`` tells whether a signal
    (Ctrl+C, SIGTERM) stopped it. Run it with ``server.run(sockets=[bind(host, port)])``."""
    import uvicorn

    class Server(uvicorn.Server):
        interrupted = False

        def handle_exit(self, sig: int, frame: Any) -> None:
            self.interrupted = True
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, http=guarded_protocol(header_timeout_s, max_connections), log_level=log_level,
                            access_log=False, timeout_keep_alive=KEEP_ALIVE_S, limit_concurrency=limit_concurrency,
                            h11_max_incomplete_event_size=16 * 1024)
    return Server(config)

"""The HTTP server under the service: uvicorn with connection limits, timeouts and a redacted access log.

uvicorn alone keeps a connection that never finishes its request open for
ever: it has a keep-alive timeout for idle connections between requests,
but no limit on how long a client may take to send a request's line and
headers, and none on the body. A client that opens connections and drips
one byte at a time holds them indefinitely. So:

- :class:`HeaderDeadline` (the HTTP protocol, uvicorn's h11 one with a
  timer): a request's line and headers must arrive within
  ``header_timeout`` seconds of the connection opening or of the previous
  response, else the connection is closed. Bytes arriving do not restart
  the timer (uvicorn's keep-alive timer restarts on every byte);
- the body's deadline is an ASGI middleware of the app
  (:class:`imgclass.serve.app.BodyLimits`: 408 after ``deploy_bodyTimeoutSeconds``);
- uvicorn's own ``limit_concurrency`` (503 beyond ``deploy_maxConnections``
  open connections) and ``timeout_keep_alive``;
- the access log shows paths without their query strings
  (:class:`RedactQueryStrings`): a key pasted into a URL must not end up in a
  log file. The service reads its key from the ``Authorization`` header only.

A reverse proxy in front (docs/deployment.md) adds TLS and its own limits.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

#: What the access log shows instead of a query string.
REDACTED_QUERY = "?<redacted>"


class RedactQueryStrings(logging.Filter):
    """Access-log filter: ``GET /labels?key=secret`` is logged as ``GET /labels?<redacted>``.

    uvicorn logs each request with the arguments ``(client, method, path
    with query string, HTTP version, status)``; only the third changes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0] + REDACTED_QUERY, *args[3:])
        return True


def log_config() -> dict[str, Any]:
    """uvicorn's default logging configuration with :class:`RedactQueryStrings` on the access log."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_query_strings"] = {"()": f"{__name__}.RedactQueryStrings"}
    config["handlers"]["access"].setdefault("filters", []).append("redact_query_strings")
    return config


def header_deadline_protocol(header_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 HTTP protocol with a deadline for each request's line and headers (see :class:`HeaderDeadline`).

    A class per timeout, because uvicorn builds its protocol objects itself
    (``Config(http=<class>)``).
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadline(H11Protocol):
        """Closes a connection whose next request's head has not arrived ``header_timeout`` seconds after the
        connection opened or the previous response was sent; a request being read or answered is not timed."""

        timeout = header_timeout
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._start_head_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._stop_head_timer_once_a_request_started()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._start_head_timer()
                self._stop_head_timer_once_a_request_started()  # a pipelined request may have started already

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def _start_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(self.timeout, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _stop_head_timer_once_a_request_started(self) -> None:
            if self.conn.their_state is not h11.IDLE:  # the request line and headers are in
                self._cancel_head_timer()

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self.logger.debug("closed a connection that sent no complete request head in %s s", self.timeout)
                self.transport.close()

    return HeaderDeadline


def uvicorn_options(host: str, port: int, *, max_connections: int, keep_alive_seconds: int,
                    header_timeout_seconds: float, log_level: str = "info", lifespan: str = "auto") -> dict[str, Any]:
    """The keyword arguments of ``uvicorn.run`` / ``uvicorn.Config`` for the service: its limits, its protocol
    with the header deadline, its redacted access log.

    Parameters
    ----------
    max_connections:
        Connections served at once: a request on one more is answered 503
        (uvicorn's ``limit_concurrency``, which counts the new connection
        too, is one more).
    keep_alive_seconds:
        An idle connection between two requests is closed after this long.
    header_timeout_seconds:
        A request's line and headers must arrive within this long (see
        :func:`header_deadline_protocol`).
    """
    return {"host": host, "port": port, "log_level": log_level, "lifespan": lifespan, "server_header": False,
            "http": header_deadline_protocol(header_timeout_seconds), "limit_concurrency": max_connections + 1,
            "timeout_keep_alive": keep_alive_seconds, "log_config": log_config()}


__all__ = ["REDACTED_QUERY", "RedactQueryStrings", "header_deadline_protocol", "log_config", "uvicorn_options"]

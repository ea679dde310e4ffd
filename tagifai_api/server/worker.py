"""Gunicorn's ``gthread`` worker with fewer system calls per keep-alive request.

Under load, a single-text request spent more of a worker's time in Gunicorn's system calls (each
one gives up the GIL and waits to get it back) than in Flask or the model. This worker sends each
response in one write, serves a kept-alive connection's next request in the thread that answered
the last one, and spreads new connections over the workers by how busy they are; README,
Performance, "The Gunicorn worker" has the measurements. It reproduces parts of Gunicorn's own
classes, so it refuses any other Gunicorn version; standard library and Gunicorn only (the master
imports it).
"""

from __future__ import annotations

import mmap
import select
import struct
import sys
import threading
import time
from datetime import datetime

import gunicorn
from gunicorn import util
from gunicorn.http import wsgi
from gunicorn.http.body import LengthReader
from gunicorn.workers import gthread

#: The Gunicorn release this worker reproduces parts of; any other is refused.
GUNICORN_VERSION = (27, 0, 1)

#: How long a thread waits on its kept-alive connection for the next request before handing the
#: connection back to the main loop. Short: it only has to cover a client that answers at once.
LINGER_S = 0.002


#: A worker with more busy connections than another leaves a new connection to it this long...
BALANCE_WAIT_S = 0.005
#: ...and accepts it anyway once it has waited this long (the other may be busy or stuck).
BALANCE_MAX_WAIT_S = 0.05
#: A worker's slot not updated for this long is a worker that is gone (its loop turns every second).
_FRESH_S = 2.0

# One slot per worker: pid, busy connections (-1 when not accepting), monotonic time of the update.
# An anonymous shared mapping made when the master imports this module, so every forked worker
# sees the others'. A torn read only skews one accept decision.
_SLOT = struct.Struct("=iid")
_SLOTS = 64
_BOARD = mmap.mmap(-1, _SLOT.size * _SLOTS)


class GunicornVersionError(RuntimeError):
    """The installed Gunicorn is not the one this worker was written for."""


def check_gunicorn_version(found: tuple = tuple(gunicorn.version_info)) -> None:
    """Refuse any Gunicorn but :data:`GUNICORN_VERSION`."""
    if tuple(found) != GUNICORN_VERSION:
        want, got = ".".join(map(str, GUNICORN_VERSION)), ".".join(map(str, found))
        raise GunicornVersionError(
            f"tagifai_api.server.worker.ThreadWorker is written for gunicorn=={want}, found {got}: "
            f"install gunicorn=={want} (requirements.txt) or set GUNICORN_WORKER_CLASS=gthread")


check_gunicorn_version()


class OneWriteResponse(wsgi.Response):
    """A response whose headers go out with the first body chunk, in one ``sendall``.

    Gunicorn sent them in two (headers, then body). Later chunks of a streamed response, bodiless
    answers (HEAD, 204, 304) and ``sendfile`` responses go out as Gunicorn writes them.
    """

    _head: bytes | None = None

    def write(self, arg):
        if self.headers_sent or self._omits_body or not isinstance(arg, bytes):
            return super().write(arg)  # later chunks, HEAD/204/304, bad input: Gunicorn's own path
        tosend = self.default_headers()
        tosend.extend(f"{name}: {value}\r\n" for name, value in self.headers)
        tosend.append("\r\n")
        self._head = "".join(tosend).encode("latin-1")
        self.headers_sent = True  # from here Gunicorn's write() frames the body and calls _emit_body
        try:
            return super().write(arg)
        finally:
            if self._head is not None:  # no body bytes went out with it (an empty first chunk)
                head, self._head = self._head, None
                util.write(self.sock, head)

    def _emit_body(self, data):
        head = self._head
        if head is None:
            return super()._emit_body(data)
        self._head = None
        if self.chunked:
            data = b"%X\r\n%s\r\n" % (len(data), data)
        self.sock.sendall(head + data)


def settle_config(cfg) -> None:
    """Every setting's value as a plain attribute of ``cfg``, in a worker after the fork.

    Gunicorn's ``Config`` answers ``cfg.keepalive`` and the like through ``__getattr__`` (a
    dictionary look-up and a method call), a few dozen times a request between the parser, the
    WSGI environ and the worker; a worker's settings never change (a reload starts new workers).
    Names the class itself defines (``worker_class``, ``env`` and other computed ones) are left alone.
    """
    for name, setting in cfg.settings.items():
        if not hasattr(type(cfg), name):
            cfg.__dict__[name] = setting.get()


class ThreadWorker(gthread.ThreadWorker):
    """``gthread`` with one write per response, kept-alive connections served in place and new
    connections spread over the workers."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._waiting = 0  # connections submitted to the thread pool and not yet picked up
        self._waiting_lock = threading.Lock()
        self._slot = self.age % _SLOTS
        self._paused_until = 0.0  # accepting is paused until then, for a less loaded worker
        self._deferring_since = 0.0
        self._last_deferral = 0.0

    def init_process(self):
        settle_config(self.cfg)
        super().init_process()

    # --- accepting: new connections go to the worker with the fewest busy ones -----------------
    # Workers share the listening socket and whichever wakes first accepts, so a burst of new
    # connections (a client opening its pool, nginx its upstream keep-alives) can all land on one
    # worker, leaving the other cores idle for as long as those connections live. Each worker
    # publishes its busy count in _BOARD; a busier one leaves a new connection to a less busy one
    # for up to BALANCE_MAX_WAIT_S, then takes it anyway.

    def _busy_conns(self) -> int:
        """Connections being served or waiting for a thread: idle kept-alive ones cost nothing."""
        return self.nr_conns - len(self.keepalived_conns) - len(self.pending_conns)

    def _publish(self, now: float) -> None:
        busy = self._busy_conns() if self.alive and self.nr_conns < self.worker_connections else -1
        _SLOT.pack_into(_BOARD, self._slot * _SLOT.size, self.pid, busy, now)

    def _leave_to_another(self, now: float) -> bool:
        """Whether a live worker with fewer busy connections should take the next one."""
        if now - self._last_deferral > 2 * BALANCE_WAIT_S + 0.01:
            self._deferring_since = now  # a new connection, not the one deferred a moment ago
        elif now - self._deferring_since >= BALANCE_MAX_WAIT_S:
            return False
        mine = self._busy_conns()
        for slot in range(_SLOTS):
            if slot == self._slot:
                continue
            pid, busy, updated = _SLOT.unpack_from(_BOARD, slot * _SLOT.size)
            if pid and pid != self.pid and 0 <= busy < mine and now - updated < _FRESH_S:
                self._last_deferral = now
                return True
        return False

    def run(self):
        try:
            super().run()
        finally:
            _SLOT.pack_into(_BOARD, self._slot * _SLOT.size, 0, -1, 0.0)  # gone: nobody waits for this worker

    def accept(self, listener):
        now = time.monotonic()
        if self.alive and self._leave_to_another(now):
            self._paused_until = now + BALANCE_WAIT_S
            self.set_accept_enabled(False)
            return
        super().accept(listener)

    def set_accept_enabled(self, enabled):
        if enabled and self._paused_until:
            return  # run() asks every turn; the pause ends in wait_for_and_dispatch_events
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout):
        now = time.monotonic()
        self._publish(now)
        if self._paused_until:
            if now >= self._paused_until:
                self._paused_until = 0.0
                if self.alive and self.nr_conns < self.worker_connections:
                    self.set_accept_enabled(True)
            else:
                timeout = min(timeout, self._paused_until - now)
        super().wait_for_and_dispatch_events(timeout)

    # --- kept-alive connections served in place ---------------------------------------------
    # gthread sends every kept-alive connection back to the main loop between requests (a pipe
    # write and a wake-up, fcntl and epoll_ctl calls, a thread-pool hand-off); this thread serves
    # the next request itself when it is there already or within LINGER_S, and no other
    # connection is waiting for a thread.

    def enqueue_req(self, conn):
        with self._waiting_lock:
            self._waiting += 1
        super().enqueue_req(conn)

    def handle(self, conn):
        with self._waiting_lock:
            self._waiting -= 1
        keepalive = super().handle(conn)
        while keepalive is True and self._next_request_ready(conn):
            keepalive = super().handle(conn)
        return keepalive

    def _next_request_ready(self, conn) -> bool:
        """Whether this thread should serve the connection's next request itself, now."""
        if not self.alive or self._waiting > 0 or conn.is_http2:
            return False  # stopping (the main loop closes it politely), or others need the thread
        if conn.parser.unreader.buf.getvalue():
            return True  # pipelined: already read
        poller = select.poll()
        poller.register(conn.sock, select.POLLIN)
        try:
            return bool(poller.poll(LINGER_S * 1000.0))
        except OSError:
            return False

    def _keepalive_after(self, conn, keepalive):
        """Gunicorn drains an unread body under a timeout (two ``fcntl`` calls) after every
        request; a body the app read to its end needs none of that."""
        body = getattr(conn.parser.mesg, "body", None)
        if (keepalive and body is not None and not body.failed and isinstance(body.reader, LengthReader)
                and body.reader.length == 0 and not body.buf.tell()):
            return True
        return super()._keepalive_after(conn, keepalive)

    def handle_request(self, req, conn):
        """``gthread``'s request handling, with :class:`OneWriteResponse` as the response."""
        environ, resp = {}, None
        try:
            self.cfg.pre_request(self, req)
            started = datetime.now()
            resp, environ = wsgi.create(req, conn.sock, conn.client, conn.server, self.cfg,
                                        response_class=OneWriteResponse)
            environ["wsgi.multithread"] = True
            self.nr += 1
            if self.nr >= self.max_requests and self.alive:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False
            if not self.alive or not self.cfg.keepalive or len(self.keepalived_conns) >= self.max_keepalived:
                resp.force_close()
            respiter = self.wsgi(environ, resp.start_response)
            try:
                if isinstance(respiter, environ["wsgi.file_wrapper"]):
                    resp.write_file(respiter)
                else:
                    for item in respiter:
                        resp.write(item)
                resp.close()
            finally:
                self.log.access(resp, req, environ, datetime.now() - started)
                if hasattr(respiter, "close"):
                    respiter.close()
            if resp.should_close():
                self.log.debug("Closing connection.")
                return False
            return True
        except OSError:
            util.reraise(*sys.exc_info())
        except (Exception, SystemExit):
            if resp is not None and resp.headers_sent:
                # part of the answer is on the wire: a 500 now would corrupt it
                self.log.exception("Error handling request")
                util.close_graceful(conn.sock)
                raise StopIteration() from None
            raise
        finally:
            try:
                self.cfg.post_request(self, req, environ, resp)
            except Exception:  # noqa: BLE001 - a hook's failure must not fail the request
                self.log.exception("Exception in post_request hook")

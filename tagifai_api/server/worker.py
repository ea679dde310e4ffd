"""Gunicorn's ``gthread`` worker that slow clients cannot starve, with fewer system calls per
keep-alive request.

A thread never waits for a client: it takes only what has arrived, and a request not yet whole is
held by the worker's event loop, which reads the rest as it comes (within deadlines and size limits)
and hands the request to a thread once it is all there. A client that sends slowly holds a socket
and a buffer, never a thread. Under load, a single-text request spent more of a worker's time in
Gunicorn's system calls (each one gives up the GIL and waits to get it back) than in Flask or the
model: this worker also sends each response in one write, serves a kept-alive connection's next
request in the thread that answered the last one, and spreads new connections over the workers by
how busy they are. README, Performance, "The Gunicorn worker" has the design and the measurements.
It reproduces parts of Gunicorn's own classes, so it refuses any other Gunicorn version; standard
library, Gunicorn and (after the fork) prometheus_client only: the master imports it.
"""

from __future__ import annotations

import errno
import io
import math
import mmap
import os
import re
import select
import selectors
import socket
import struct
import sys
import threading
import time
from collections import Counter
from datetime import datetime
from functools import partial

import gunicorn
from gunicorn import http, util
from gunicorn.http import wsgi
from gunicorn.http.body import LengthReader
from gunicorn.http.errors import LimitRequestHeaders, ParseException
from gunicorn.http.message import DEFAULT_MAX_HEADERFIELD_SIZE, MAX_HEADERS, MAX_REQUEST_LINE, Request
from gunicorn.http.parser import RequestParser
from gunicorn.http.unreader import Unreader
from gunicorn.workers import gthread

from tagifai_api import settings

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


# --- reading a request without waiting for it ---------------------------------------------------
# A thread used to parse each request straight off its blocking socket, so a client sending its
# request slowly held that thread for as long as it liked: workers x threads such clients stopped the
# service. Now bytes are received only once they have arrived (MSG_DONTWAIT), into a buffer that
# Gunicorn's own parser reads the request line and headers from once they are there; the body is
# buffered to its end by Content-Length, or chunk by chunk. A thread serves only a whole request.

#: A phase of a request still arriving, as ``tagifai_slow_clients_total{phase}`` names it.
HEADERS, BODY = "headers", "body"
#: The label of a connection closed as the oldest incomplete one beyond the worker's bound.
EVICTED = "evicted"

_HEAD_END = re.compile(rb"\r\n\r\n")
_CRLF = re.compile(rb"\r\n")
_BARE_LF = re.compile(rb"(?<!\r)\n")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_RECV = 65536  # one recv of a request line and headers; a body's may be larger, up to _RECV_MAX
_RECV_MAX = 1 << 20


class NeedMore(Exception):
    """The buffered bytes end before the request does."""


class BodyTooLarge(ParseException):
    """A chunked body past the service's body limit (a declared length is the app's to refuse)."""

    def __str__(self):
        return "the request body is larger than this service accepts"


class _Buffered(Unreader):
    """What Gunicorn's parser reads from: the bytes received so far, and never the socket."""

    def chunk(self, size_hint=None):
        raise NeedMore()


class ReadLimits:
    """The bounds a request is read within: Gunicorn's own, as its ``Message`` computes them from the
    settings, and the service's body limit (``TAGIFAI_MAX_CONTENT_LENGTH``)."""

    def __init__(self, cfg, max_body: int) -> None:
        fields = cfg.limit_request_fields
        if fields <= 0 or fields > MAX_HEADERS:
            fields = MAX_HEADERS
        field_size = cfg.limit_request_field_size
        if field_size <= 0:
            field_size = DEFAULT_MAX_HEADERFIELD_SIZE
        line = cfg.limit_request_line
        if line < 0 or line >= MAX_REQUEST_LINE:
            line = MAX_REQUEST_LINE
        self.line = line  # 0: no limit, as in Gunicorn's parser
        self.headers = fields * (field_size + 2) + 4  # Gunicorn's max_buffer_headers
        self.head = self.headers + (line or MAX_REQUEST_LINE) + 4  # a head longer than this is refused
        self.chunk_line = field_size  # a chunk-size line, as Gunicorn's ChunkedReader bounds it
        self.max_body = max_body
        # chunk framing costs a few bytes a chunk; a body needing more than this is not one to buffer
        self.chunked_raw = 2 * max_body + _RECV


class RequestReader:
    """A connection's next request, read from its bytes as they arrive and never waiting for more.

    ``feed`` adds what a ``recv`` returned (in a thread for a request's first bytes, in the event loop
    for the rest); ``advance`` says whether the request is whole (it raises
    Gunicorn's parse errors, and :class:`BodyTooLarge`); ``take`` hands it over. The request line and
    headers are parsed by Gunicorn's own parser, from the buffer, once they are complete (or once the
    first line is, so a bad one is refused at once); the body is then buffered to the end its
    ``Content-Length`` or its last chunk gives. A body longer than the service accepts is not waited
    for: the request goes to the app as soon as its headers are there (the app refuses it with 413
    without reading it) and the connection closes after the answer. Handed over whole, a request's
    body is read by the app, and drained after the answer, from memory only.
    """

    def __init__(self, limits: ReadLimits, client, cfg, now: float) -> None:
        self.limits = limits
        self.client = client
        self.cfg = cfg
        self.parser = RequestParser(cfg, (), client)
        self.unreader = self.parser.unreader = _Buffered()
        self.phase = HEADERS
        self.pending = bytearray()  # the request line and headers received so far
        self.scanned = 0  # pending[:scanned] holds no end of the headers
        self.line_tried = False  # a parse was tried when the first line ended
        self.started: float | None = now  # when the request began to arrive (a new connection: accepted)
        self.progress = now  # when its body last grew
        self.request = None  # its head, parsed
        self.body_held = 0  # body bytes buffered (in the unreader)
        self.length: int | None = None  # Content-Length; None: chunked
        self.must_close = False  # the body is not read: the connection cannot carry another request
        self._chunk_pos = 0  # chunked: where the next chunk-size line (or the trailers) starts
        self._chunk_left: int | None = None  # chunked: bytes of the current chunk's data still to come
        self._chunk_total = 0  # chunked: declared data so far
        self._trailers = False

    # -- the loop's side --------------------------------------------------------------------------

    @property
    def held(self) -> int:
        """Bytes of this request buffered so far."""
        return len(self.pending) + (self.body_held if self.phase is BODY else 0)

    @property
    def recv_size(self) -> int:
        if self.phase is BODY and self.length is not None:
            return min(max(_RECV, self.length - self.body_held), _RECV_MAX)
        return _RECV

    def deadline(self, header_timeout: float, body_timeout: float) -> tuple[float, str]:
        """When the request is too slow, and in which phase: its request line and headers count
        from when it began, its body from when it last grew."""
        if self.phase is HEADERS:
            return (self.started if self.started is not None else self.progress) + header_timeout, HEADERS
        return self.progress + body_timeout, BODY

    def feed(self, data: bytes, now: float) -> None:
        if self.started is None:
            self.started = now
        if self.phase is HEADERS:
            if not self.pending:
                self._leftovers(now)
            self.pending += data
        else:
            buf = self.unreader.buf
            buf.seek(0, os.SEEK_END)
            buf.write(data)
            self.body_held += len(data)
            self.progress = now

    def advance(self, now: float) -> bool:
        """Whether the whole request is buffered now."""
        if self.phase is HEADERS and not self._head(now):
            return False
        if self.must_close:
            return True
        if self.length is not None:
            return self.body_held >= self.length
        return self._chunks_complete()

    def wants_continue(self) -> bool:
        """A client waiting for ``100 Continue`` before it sends its body: true once (the caller
        sends it; Gunicorn will not send it again)."""
        req = self.request
        if self.phase is BODY and req is not None and req._expected_100_continue:
            req._expected_100_continue = False
            return True
        return False

    # -- the thread's side ------------------------------------------------------------------------

    def take(self):
        """The whole request; the reader then waits for the next one."""
        req, self.request = self.request, None
        self.phase = HEADERS
        self.started = None
        self.length = None
        self.body_held = 0
        return req

    def has_bytes(self) -> bool:
        """Bytes of a next request already received (pipelined, or read ahead)."""
        return bool(self.pending) or self.unreader.buf.seek(0, os.SEEK_END) > 0

    @property
    def idle(self) -> bool:
        """Nothing of a next request received yet (after an answer)."""
        return self.phase is HEADERS and not self.has_bytes()

    # -- inside -----------------------------------------------------------------------------------

    def _leftovers(self, now: float) -> None:
        """Bytes received after the previous request's body are the start of this one."""
        buf = self.unreader.buf
        if buf.seek(0, os.SEEK_END):
            self.pending += buf.getvalue()
            self.unreader.buf = io.BytesIO()
            if self.started is None:
                self.started = now

    def _head(self, now: float) -> bool:
        """Parse the request line and headers once they are all there."""
        if not self.pending:
            self._leftovers(now)
        pending = self.pending
        if not pending:
            return False
        new = self.scanned
        if _HEAD_END.search(pending, max(0, new - 3)) is None:
            self.scanned = len(pending)
            if len(pending) > self.limits.head:
                raise LimitRequestHeaders("max buffer headers")
            if not self._worth_a_parse(pending, new):
                return False
        unreader = self.unreader
        unreader.buf = io.BytesIO(pending)
        try:
            req = Request(self.cfg, unreader, self.client, self.parser.req_count + 1)
        except NeedMore:  # more of the head is still to come: its bytes stay in pending
            unreader.buf = io.BytesIO()
            return False
        self.pending = bytearray()
        self.scanned = 0
        self.line_tried = False
        self.parser.req_count += 1
        self.parser.mesg = self.request = req
        self.phase = BODY
        self.progress = now
        self.body_held = unreader.buf.seek(0, os.SEEK_END)
        reader = req.body.reader
        if isinstance(reader, LengthReader):
            self.length = reader.length
            if self.length > self.limits.max_body and self.body_held < self.length:
                self._unread_body()
        else:  # chunked (Gunicorn refuses any other framing of a request body)
            self._chunk_pos, self._chunk_left, self._chunk_total, self._trailers = 0, None, 0, False
        return True

    def _worth_a_parse(self, pending: bytearray, new: int) -> bool:
        """Whether Gunicorn's parser would refuse this incomplete head already: a complete first
        line may be a bad one, a bare LF ends no line, a first line can be too long."""
        if not self.line_tried:
            if pending.find(b"\n", new) >= 0:
                self.line_tried = True
                return True
            return 0 < self.limits.line < len(pending) - 2
        return _BARE_LF.search(pending, new) is not None

    def _unread_body(self) -> None:
        """A body over the limit: the app answers 413 without reading it, and the connection closes."""
        self.must_close = True
        self.request.force_close()
        self.request._expected_100_continue = False  # the client need not send what will not be read

    def _chunks_complete(self) -> bool:
        """Whether the chunked body has arrived to its last chunk and trailers. A malformed chunk
        counts as the end: Gunicorn's parser refuses it when the app reads that far."""
        limits = self.limits
        end = self.body_held
        if end > limits.chunked_raw:
            raise BodyTooLarge()
        with self.unreader.buf.getbuffer() as view:
            pos = self._chunk_pos
            while True:
                if self._chunk_left is None:
                    if self._trailers:
                        if view[pos:pos + 2] == b"\r\n" or _HEAD_END.search(view, pos):
                            return True
                        return end - pos > self.request.max_buffer_headers  # Gunicorn refuses those
                    eol = _CRLF.search(view, pos, pos + limits.chunk_line + 2)
                    if eol is None:
                        self._chunk_pos = pos
                        return end - pos > limits.chunk_line
                    size, *ext = bytes(view[pos:eol.start()]).split(b";", 1)
                    if ext:  # whitespace may come before an extension, and only then
                        size = size.rstrip(b" \t")
                    if not size or not _HEX.issuperset(size):
                        return True
                    pos = eol.end()
                    size = int(size, 16)
                    if size == 0:
                        self._trailers = True
                        continue
                    self._chunk_total += size
                    if self._chunk_total > limits.max_body:
                        raise BodyTooLarge()
                    self._chunk_left = size
                after = pos + self._chunk_left + 2
                if after > end:
                    self._chunk_pos = pos
                    return False
                if view[after - 2:after] != b"\r\n":
                    return True
                pos, self._chunk_left = after, None


class Conn(gthread.TConn):
    """gthread's connection with its :class:`RequestReader`. Its socket stays blocking (every read is
    ``MSG_DONTWAIT``; a thread writes the answer), so nothing switches its mode between requests:
    gthread made two ``fcntl`` calls a request for that."""

    def __init__(self, cfg, sock, client, server, reader: RequestReader) -> None:  # noqa: D107 - TConn's own
        self.cfg, self.sock, self.client, self.server = cfg, sock, client, server
        self.timeout = None
        self.initialized, self.is_http2, self.data_ready = True, False, True
        self.reader = reader
        self.parser = reader.parser
        self.state = None  # where the loop holds it: "idle", "incomplete", "closing", or None (a thread has it)


#: What ``handle`` returns for a connection whose request had not all arrived (not read by the loop).
_INCOMPLETE = object()
#: A connection answered and closing keeps its socket this long, draining what the client still sends,
#: so the answer is not cut by a reset (Gunicorn's ``close_graceful``, without blocking the loop).
CLOSE_LINGER_S = 2.0
CLOSE_DRAIN_BYTES = 65536


def _max_body() -> int:
    try:
        return int(settings.resolve()["MAX_CONTENT_LENGTH"])
    except Exception:  # noqa: BLE001 - the master refused bad settings already; the default is safe
        return int(settings.SETTINGS["MAX_CONTENT_LENGTH"][0])


def _slow_clients_counter():
    """``tagifai_slow_clients_total{phase}``, written to the multiprocess directory like the app's
    own metrics (so ``/metrics`` sums every worker), or kept in the process outside Gunicorn. Created
    after the fork: prometheus_client picks its storage when first imported."""
    from prometheus_client import Counter as PromCounter

    counter = PromCounter("tagifai_slow_clients", "Connections closed while their request was still "
                          "arriving: past the header or body deadline, or the oldest beyond the "
                          "worker's bound on incomplete requests.", ["phase"], registry=None)
    return {phase: counter.labels(phase) for phase in (HEADERS, BODY, EVICTED)}


class ThreadWorker(gthread.ThreadWorker):
    """``gthread`` whose threads never wait for a client (they serve whole requests only), with one
    write per response, kept-alive connections served in place and new connections spread over the
    workers."""

    #: Seconds a request line and headers may take to arrive, from the request's first byte (from
    #: the accept for a new connection); ``GUNICORN_HEADER_TIMEOUT``.
    header_timeout = 10.0
    #: Seconds a body may go without a byte arriving; ``GUNICORN_BODY_TIMEOUT``.
    body_timeout = 30.0
    #: Most connections a worker holds with a request still arriving (new ones that have sent
    #: nothing yet included); beyond it the oldest is closed. ``GUNICORN_MAX_INCOMPLETE``.
    max_incomplete = 128
    #: Most bytes of such requests a worker buffers; beyond it the oldest are closed.
    #: ``GUNICORN_MAX_INCOMPLETE_MB``.
    max_incomplete_bytes = 64 << 20

    @classmethod
    def configure(cls, header_timeout: float, body_timeout: float, max_incomplete: int,
                  max_incomplete_bytes: int) -> None:
        """Set the slow-client bounds (``gunicorn.conf.py`` does, in the master: every worker forked
        afterwards has them)."""
        cls.header_timeout, cls.body_timeout = float(header_timeout), float(body_timeout)
        cls.max_incomplete, cls.max_incomplete_bytes = int(max_incomplete), int(max_incomplete_bytes)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._waiting = 0  # connections submitted to the thread pool and not yet picked up
        self._waiting_lock = threading.Lock()
        self._slot = self.age % _SLOTS
        self._paused_until = 0.0  # accepting is paused until then, for a less loaded worker
        self._deferring_since = 0.0
        self._last_deferral = 0.0
        cfg = self.cfg
        # TLS, HTTP/2 and uwsgi keep gthread's reading in threads (this service uses none of them)
        self._reads_in_loop = (getattr(cfg, "protocol", "http") == "http" and not cfg.is_ssl
                               and "h2" not in cfg.http_protocols)
        self._limits = ReadLimits(cfg, _max_body())
        self._incomplete: dict = {}  # connection -> its bytes counted in _incomplete_bytes; oldest first
        self._incomplete_bytes = 0
        self._closing: dict = {}  # connection -> when to stop draining it and close
        self._next_sweep = math.inf  # the earliest deadline of an incomplete or closing connection
        self._stopping_since: float | None = None
        self._server_names: dict = {}
        self.slow_clients: Counter = Counter()  # phase -> connections closed (also in Prometheus)
        self._slow_metric: dict | None = None

    def init_process(self):
        settle_config(self.cfg)
        try:
            self._slow_metric = _slow_clients_counter()
        except Exception:  # noqa: BLE001 - a worker without the counter still serves
            self.log.exception("tagifai_slow_clients_total is not recorded")
        super().init_process()

    # --- accepting: new connections go to the worker with the fewest busy ones -----------------
    # Workers share the listening socket and whichever wakes first accepts, so a burst of new
    # connections (a client opening its pool, nginx its upstream keep-alives) can all land on one
    # worker, leaving the other cores idle for as long as those connections live. Each worker
    # publishes its busy count in _BOARD; a busier one leaves a new connection to a less busy one
    # for up to BALANCE_MAX_WAIT_S, then takes it anyway.

    def _busy_conns(self) -> int:
        """Connections being served, waiting for a thread, or with a request on its way (a new one
        included): idle kept-alive ones, and those closing, cost nothing."""
        return self.nr_conns - len(self.keepalived_conns) - len(self.pending_conns) - len(self._closing)

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
        if not self._reads_in_loop:
            return super().accept(listener)
        try:
            sock, client = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        server = self._server_names.get(listener)
        if server is None:
            server = self._server_names[listener] = listener.getsockname()
        # held until its first bytes arrive; the header deadline runs from now
        conn = Conn(self.cfg, sock, client, server, RequestReader(self._limits, client, self.cfg, now))
        self._watch(conn, now)

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
        if self._next_sweep < math.inf:
            timeout = min(timeout, max(self._next_sweep - now, 0.0))
        super().wait_for_and_dispatch_events(timeout)

    # --- the event loop: requests still arriving are held here, not in a thread --------------------
    # A connection the loop holds is in one of three places: idle between requests (gthread's
    # keepalived_conns, under the keepalive limit), incomplete (a request arriving, under the header
    # and body deadlines and the worker's bounds; a new connection starts here), or closing
    # (answered, draining before the close).

    def _readable(self, conn, _sock=None):
        """Bytes (or the end) arrived on a connection the loop holds. The first bytes of a request go
        to a thread, which reads what is there without waiting: it serves a whole request (the usual
        case, with no more system calls than gthread) and hands anything less straight back. The rest
        of a request still arriving is read here, and goes to a thread once whole."""
        reader = conn.reader
        if reader.idle:
            self._unwatch(conn)
            self.enqueue_req(conn)
            return
        try:
            data = conn.sock.recv(reader.recv_size, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away, maybe mid-request: nothing to answer
            self._unwatch(conn)
            self._close(conn)
            return
        now = time.monotonic()
        reader.feed(data, now)
        self._step(conn, now)

    def _step(self, conn, now: float) -> None:
        """A whole request goes to a thread; a partial one is held; a bad one is refused."""
        reader = conn.reader
        try:
            whole = reader.advance(now)
        except Exception as exc:  # noqa: BLE001 - Gunicorn's parse errors, BodyTooLarge: answered
            self._unwatch(conn)
            self._refuse(conn, exc)
            self._close_gracefully(conn)
            return
        if whole:
            self._unwatch(conn)
            self.enqueue_req(conn)
            return
        if reader.wants_continue():
            try:
                conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n", socket.MSG_DONTWAIT)
            except OSError:
                pass  # the client sends its body after a while anyway
        self._watch(conn, now)

    def _watch(self, conn, now: float) -> None:
        """Hold a connection whose request is still arriving; beyond the bounds, close the oldest."""
        held = conn.reader.held
        incomplete = self._incomplete
        if conn.state == "incomplete":
            self._incomplete_bytes += held - incomplete[conn]
        else:
            if conn.state == "idle":
                self.keepalived_conns.remove(conn)  # registered already
            else:
                self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._readable, conn))
            conn.state = "incomplete"
            self._incomplete_bytes += held
            self._next_sweep = min(self._next_sweep, conn.reader.deadline(self.header_timeout, self.body_timeout)[0])
        incomplete[conn] = held
        while len(incomplete) > self.max_incomplete or self._incomplete_bytes > self.max_incomplete_bytes:
            oldest = next(iter(incomplete))
            self._unwatch(oldest)
            self._count_slow(EVICTED, oldest)
            self._close(oldest)

    def _keep_idle(self, conn) -> None:
        """gthread's keep-alive: wait for the next request under the ``keepalive`` limit."""
        conn.set_timeout()
        if not self.alive:
            conn.timeout = min(conn.timeout, time.monotonic() + gthread.STOP_KEEPALIVE_LINGER)
        self.keepalived_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._readable, conn))
        conn.state = "idle"

    def _unwatch(self, conn) -> None:
        """The loop stops holding the connection (a thread takes it, or it closes)."""
        state = conn.state
        if state is None:
            return
        conn.state = None
        try:
            self.poller.unregister(conn.sock)
        except (OSError, KeyError, ValueError):
            pass
        if state == "incomplete":
            self._incomplete_bytes -= self._incomplete.pop(conn)
        elif state == "idle":
            self.keepalived_conns.remove(conn)
        else:
            del self._closing[conn]

    def _close(self, conn) -> None:
        """Close now, reading first what is already there, up to CLOSE_DRAIN_BYTES (unread bytes
        make the close a reset, which can cut an answer just sent)."""
        self.nr_conns -= 1
        try:
            drained = 0
            while drained < CLOSE_DRAIN_BYTES:
                data = conn.sock.recv(_RECV, socket.MSG_DONTWAIT)
                if not data:
                    break
                drained += len(data)
        except OSError:
            pass
        util.close(conn.sock)

    def _close_gracefully(self, conn) -> None:
        """Gunicorn's ``close_graceful`` (send FIN, drain what the client still sends, then close)
        without waiting in the loop: the draining is done as the bytes arrive, for CLOSE_LINGER_S."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        if self._drained(conn) or len(self._closing) >= self.max_incomplete:
            self._close(conn)
            return
        conn.drained = 0
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._drain, conn))
        conn.state = "closing"
        until = time.monotonic() + CLOSE_LINGER_S
        self._closing[conn] = until
        self._next_sweep = min(self._next_sweep, until)

    def _drained(self, conn) -> bool:
        """Read what is there; true at the client's end (or an error, or enough bytes)."""
        try:
            while True:
                data = conn.sock.recv(_RECV, socket.MSG_DONTWAIT)
                if not data:
                    return True
                conn.drained = getattr(conn, "drained", 0) + len(data)
                if conn.drained >= CLOSE_DRAIN_BYTES:
                    return True
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

    def _drain(self, conn, _sock=None) -> None:
        if self._drained(conn):
            self._unwatch(conn)
            self.nr_conns -= 1
            util.close(conn.sock)

    def _refuse(self, conn, exc: Exception) -> None:
        """Answer a request that cannot be served (Gunicorn's answers, in the service's envelope)."""
        if isinstance(exc, BodyTooLarge):
            self.log.warning("Invalid request from ip=%s: %s", conn.client[0] if conn.client else "", exc)
            try:
                util.write_error(conn.sock, 413, "Request Entity Too Large", str(exc))
            except Exception:  # noqa: BLE001 - as Gunicorn's handle_error: the client may be gone
                self.log.debug("Failed to send error message.")
            return
        self.handle_error(conn.reader.request, conn.sock, conn.client, exc)

    def _count_slow(self, phase: str, conn) -> None:
        self.slow_clients[phase] += 1
        if self._slow_metric is not None:
            self._slow_metric[phase].inc()
        self.log.debug("Closed a slow client from %s (%s, %d bytes received)", conn.client, phase, conn.reader.held)

    def _too_slow(self, conn, phase: str) -> None:
        """A request past its deadline: 408 in the envelope if the client has begun one (a connection
        that never sent a byte is closed as an idle one would be), then close."""
        self._count_slow(phase, conn)
        if phase == BODY or conn.reader.held:
            what = "request line and headers" if phase == HEADERS else "request body"
            try:
                util.write_error(conn.sock, 408, "Request Timeout", f"the {what} did not arrive in time")
            except Exception:  # noqa: BLE001 - a client that stopped reading, or is gone
                pass
        self._close(conn)

    def murder_pending(self):
        """Close what is past its deadline (gthread's pending connections are this worker's
        incomplete ones). Looked at when the earliest deadline is due, not on every turn."""
        if not self._reads_in_loop:
            return super().murder_pending()
        now = time.monotonic()
        if not self.alive and self._stopping_since is None:
            self._stopping_since = now  # stopping: a connection that has sent nothing goes soon
            self._next_sweep = now
        if now < self._next_sweep:
            return None
        soonest = math.inf
        for conn in list(self._incomplete):
            when, phase = conn.reader.deadline(self.header_timeout, self.body_timeout)
            if self._stopping_since is not None and not conn.reader.held:
                when = min(when, self._stopping_since + gthread.STOP_KEEPALIVE_LINGER)
            if when <= now:
                self._unwatch(conn)
                self._too_slow(conn, phase)
            else:
                soonest = min(soonest, when)
        for conn, until in list(self._closing.items()):
            if until <= now:
                self._unwatch(conn)
                self.nr_conns -= 1
                util.close(conn.sock)
            else:
                soonest = min(soonest, until)
        self._next_sweep = soonest
        return None

    def finish_request(self, conn, fs):
        """A thread is done with the connection: hold it for its next request, or close it."""
        if not self._reads_in_loop:
            return super().finish_request(conn, fs)
        try:
            result = fs.result() if not fs.cancelled() else False
            if result is True:
                if conn.reader.idle:
                    self._keep_idle(conn)
                else:  # the next request began to arrive already
                    self._step(conn, time.monotonic())
            elif result is _INCOMPLETE:
                self._watch(conn, time.monotonic())
            else:
                self._close_gracefully(conn)
        except Exception:  # noqa: BLE001 - as gthread: whatever went wrong, the connection goes
            self.log.exception("Closing a connection after an error")
            self._unwatch(conn)
            self._close(conn)
        return None

    # --- threads: whole requests only, and the next one served in place ---------------------------
    # gthread sends every kept-alive connection back to the main loop between requests (a pipe
    # write and a wake-up, fcntl and epoll_ctl calls, a thread-pool hand-off); this thread serves
    # the next request itself when it is whole already or within LINGER_S, and no other
    # connection is waiting for a thread.

    def enqueue_req(self, conn):
        with self._waiting_lock:
            self._waiting += 1
        super().enqueue_req(conn)

    def handle(self, conn):
        with self._waiting_lock:
            self._waiting -= 1
        if not self._reads_in_loop:
            keepalive = super().handle(conn)
            while keepalive is True and self._next_request_ready(conn):
                keepalive = super().handle(conn)
            return keepalive
        if getattr(conn, "reader", None) is None:
            self._adopt(conn)
        if conn.reader.request is None:  # not read by the loop: read what is there now, never wait
            whole = self._read_available(conn)
            if not whole:
                return _INCOMPLETE if whole is False else False
        keepalive = self._serve(conn)
        while keepalive is True:
            whole = self._next_request(conn)
            if whole is None:
                return False
            if not whole:
                break
            keepalive = self._serve(conn)
        return keepalive

    def _adopt(self, conn) -> None:
        """A gthread connection handed to ``handle`` directly, as gthread does: read it this way."""
        conn.sock.setblocking(True)
        conn.initialized = True
        conn.reader = RequestReader(self._limits, conn.client, self.cfg, time.monotonic())
        conn.parser = conn.reader.parser
        conn.state = None

    def _read_available(self, conn):
        """Read what has arrived: True when a whole request is there, False when not yet, None when
        the connection is done (closed by the client, or refused)."""
        reader = conn.reader
        try:
            now = time.monotonic()
            while not reader.advance(now):
                data = conn.sock.recv(reader.recv_size, socket.MSG_DONTWAIT)
                if not data:
                    return None
                reader.feed(data, now)
            return True
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return None
        except Exception as exc:  # noqa: BLE001 - Gunicorn's parse errors, BodyTooLarge: answered
            self._refuse(conn, exc)
            return None

    def _next_request(self, conn):
        """After an answer on a kept-alive connection: True to serve its next request in this thread
        now (it is whole), False to hand the connection back to the loop, None to close it."""
        if not self.alive or self._waiting > 0:
            return False  # stopping (the loop closes it politely), or others need the thread
        if not conn.reader.has_bytes():
            poller = select.poll()
            poller.register(conn.sock, select.POLLIN)
            try:
                if not poller.poll(LINGER_S * 1000.0):
                    return False
            except OSError:
                return None
        whole = self._read_available(conn)
        return True if whole else whole  # False (partial: the loop holds it) or None

    def _serve(self, conn):
        """gthread's ``handle`` for a request that is all there: answer it, and say whether the
        connection is kept."""
        req = None
        try:
            req = conn.reader.take()
            return self._keepalive_after(conn, self.handle_request(req, conn))
        except http.errors.NoMoreData as e:
            self.log.debug("Ignored premature client disconnection. %s", e)
        except StopIteration as e:
            self.log.debug("Closing connection. %s", e)
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("Socket error processing request.")
            else:
                self.log.debug("Ignoring socket error %s", e)
        except Exception as e:  # noqa: BLE001 - as gthread: answered 500 (or 400 for a bad body)
            self.handle_error(req, conn.sock, conn.client, e)
        return False

    def _next_request_ready(self, conn) -> bool:
        """Without loop reads (TLS, HTTP/2): whether this thread should serve the connection's next
        request itself, now."""
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
        """Whether the connection can carry another request. gthread drains an unread body under a
        timeout (two ``fcntl`` calls) after every request; here every byte of the body is in memory,
        so the drain never reads the socket, and a body the app read to its end needs none."""
        if not self._reads_in_loop:
            return self._keepalive_after_reading_in_threads(conn, keepalive)
        if not keepalive or conn.reader.must_close:
            return False
        body = conn.parser.mesg.body
        if body.failed:
            return False
        if isinstance(body.reader, LengthReader) and body.reader.length == 0 and not body.buf.tell():
            return True
        try:
            return bool(conn.parser.finish_body())
        except NeedMore:
            return False

    def _keepalive_after_reading_in_threads(self, conn, keepalive):
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

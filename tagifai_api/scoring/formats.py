"""Input and output formats: CSV or JSON Lines (plain or gzip, files or standard input) and Parquet.

The reading side only splits the input into records (with their line numbers) and groups them in
chunks; decoding JSON, checking fields and formatting output rows happen in the workers
(:mod:`tagifai_api.scoring.chunks`), so the main process does little more than I/O.

Parquet goes through pyarrow, which only ``requirements-spark.txt`` installs (it is not needed to
serve): :func:`pyarrow_parquet` says so in one line when it is missing.
"""

from __future__ import annotations

import csv
import gzip
import io
import operator
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

CSV = "csv"
JSONL = "jsonl"
PARQUET = "parquet"
FORMATS = (CSV, JSONL, PARQUET)
_EXTENSIONS = {".csv": CSV, ".jsonl": JSONL, ".ndjson": JSONL, ".parquet": PARQUET}
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"
# a field may be long (it is rejected by the text-length rule with a clear reason), but a stray
# quote must not swallow the rest of a large file into one field
_CSV_FIELD_LIMIT = 16 << 20
# how much an unread JSON Lines input is searched for a first object to check the columns against
_PEEK_LINES = 1000
# rows pyarrow decodes at a time from a Parquet input (the columns read are only those scored)
_PARQUET_BATCH_ROWS = 10_000


class FormatError(ValueError):
    """The input cannot be read as the format asked for (a usage error, not a bad row)."""


def pyarrow_parquet():
    """``pyarrow.parquet``, or a :class:`FormatError` saying how to install it."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise FormatError("Parquet needs pyarrow, which is not installed: "
                          "pip install -r requirements-spark.txt") from None
    return pq


def format_of(path: str, explicit: str | None, what: str) -> str:
    """The format of ``path`` from its extension (``.gz`` looked through), unless ``explicit``."""
    if explicit:
        return explicit
    gz = path.endswith(".gz")
    name = path[:-3] if gz else path
    fmt = _EXTENSIONS.get(Path(name.rstrip("/")).suffix.lower())
    if fmt is None:
        if path == "-":
            raise FormatError("reading standard input needs --format csv or --format jsonl")
        raise FormatError(f"cannot tell the format of {what} {path!r} from its extension; use .csv, .jsonl "
                          f"or .ndjson (optionally .gz), or .parquet{' or --format' if what == 'input' else ''}")
    if fmt == PARQUET and gz:
        raise FormatError(f"{path}: a Parquet file compresses its own pages; drop the .gz")
    return fmt


def is_gzip_name(path: str) -> bool:
    """True if an output path asks for gzip compression."""
    return path.endswith(".gz")


@dataclass
class Source:
    """An opened input: the (decompressed) byte stream and what progress can be measured on."""

    stream: BinaryIO
    raw: BinaryIO  # the file as stored, whose position is the progress
    size: int | None  # bytes of ``raw``, when known (not for pipes)
    identity: dict  # what a resumed run checks to be the same input

    def position(self) -> int | None:
        """Bytes of the stored input read so far (the decompressor reads ahead a little)."""
        if self.size is None:
            return None
        try:
            return self.raw.tell()
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        if self.stream is not self.raw:
            self.stream.close()
        if self.raw is not sys.stdin.buffer:
            self.raw.close()


def open_input(path: str, fmt: str | None = None) -> Source:
    """Open a file, or standard input for ``-``; gzip is recognised by its magic bytes."""
    if path == "-":
        if fmt == PARQUET:
            raise FormatError("Parquet cannot be read from standard input (its index is at the end); give a file")
        raw = sys.stdin.buffer
        size = None
        identity = {"path": "-"}
    else:
        try:
            raw = open(path, "rb")  # noqa: SIM115 - closed by Source.close
            st = os.fstat(raw.fileno())
        except OSError as exc:
            raise FormatError(f"cannot read {path}: {exc.strerror or exc}") from None
        if not os.path.isfile(path):
            raw.close()
            raise FormatError(f"{path} is not a regular file")
        size = st.st_size
        identity = {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    buffered = raw if hasattr(raw, "peek") else io.BufferedReader(raw)
    stream: BinaryIO = buffered
    if fmt != PARQUET and buffered.peek(2)[:2] == _GZIP_MAGIC:
        stream = gzip.GzipFile(fileobj=buffered, mode="rb")  # type: ignore[assignment]
    return Source(stream=stream, raw=raw, size=size, identity=identity)


@dataclass
class Chunk:
    """Consecutive input records, scored and committed together.

    ``items`` holds one ``(line, payload, error)`` per record: ``payload`` is the CSV fields, the
    raw JSON line or the Parquet values (of the kept columns); ``error`` is set instead when the
    record could not even be split out. Parquet has no lines: ``line`` is ``None``.
    """

    index: int
    first_row: int
    items: list[tuple[int, object, str | None]] = field(default_factory=list)
    position: int | None = None


class Reader:
    """Records of one input, with the line each starts on, grouped into chunks.

    Args:
        source: the opened input.
        fmt: ``csv``, ``jsonl`` or ``parquet``.
    """

    def __init__(self, source: Source, fmt: str) -> None:
        self.source = source
        self.fmt = fmt
        self.header: list[str] | None = None  # CSV and Parquet: the column names
        self.first_object: dict | None = None  # JSON Lines: the first object, to check columns against
        self.types: dict[str, object] = {}  # Parquet: each column's Arrow type
        self._keep: tuple[int, ...] = ()
        self._rows_read = 0
        if fmt == PARQUET:
            pq = pyarrow_parquet()
            try:
                self._parquet = pq.ParquetFile(source.raw)
            except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for a file that is not Parquet
                raise FormatError(f"the input is not a Parquet file ({exc})") from None
            schema = self._parquet.schema_arrow
            self.header = list(schema.names)
            self.types = {f.name: f.type for f in schema}
            self._records = self._parquet_records()
        elif fmt == CSV:
            self._text = io.TextIOWrapper(source.stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
            csv.field_size_limit(_CSV_FIELD_LIMIT)
            self._csv = csv.reader(self._text, strict=True)
            try:
                self.header = next(self._csv)
            except StopIteration:
                raise FormatError("the input is empty: a CSV input needs a header row") from None
            except (csv.Error, UnicodeDecodeError) as exc:
                raise FormatError(f"the CSV header cannot be read ({exc})") from None
            except (OSError, EOFError) as exc:
                raise FormatError(f"cannot read the input ({exc})") from None
            self._records = self._csv_records()
        else:
            self._peeked: list[bytes] = []
            self._peek_first_object()
            self._records = self._jsonl_records()

    def _peek_first_object(self) -> None:
        import orjson

        for _ in range(_PEEK_LINES):
            line = self.source.stream.readline()
            if not line:
                return
            self._peeked.append(line)
            if not self._peeked[1:] and line.startswith(_BOM):
                line = line[len(_BOM):]
                self._peeked[0] = line
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                self.first_object = obj
                return

    def keep(self, positions: tuple[int, ...]) -> None:
        """CSV and Parquet: keep only these fields of each row, in this order (the others are dropped
        at once, or never read from Parquet, so they cost no memory and are never sent to a worker)."""
        self._keep = positions

    def position(self) -> int | None:
        """Bytes of the stored input read so far; for Parquet, in proportion to the rows read."""
        if self.fmt != PARQUET:
            return self.source.position()
        rows = self._parquet.metadata.num_rows
        if self.source.size is None or not rows:
            return None
        return self.source.size * self._rows_read // rows

    def _parquet_records(self) -> Iterator[tuple[int | None, object, str | None]]:
        names = [self.header[i] for i in self._keep]  # type: ignore[index]
        try:
            for batch in self._parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=list(dict.fromkeys(names)),
                                                     use_threads=False):
                columns = [batch.column(n).to_pylist() for n in names]
                self._rows_read += batch.num_rows
                for values in zip(*columns, strict=True):
                    yield None, values, None
        except OSError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged file surfaces as one of several pyarrow errors
            raise FormatError(f"the Parquet input cannot be read ({type(exc).__name__}: {exc})") from None

    def _csv_records(self) -> Iterator[tuple[int, object, str | None]]:
        reader = self._csv
        width = len(self.header or ())
        keep = self._keep
        pick = (lambda f: (f[keep[0]],)) if len(keep) == 1 else operator.itemgetter(*keep)
        while True:
            start = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield start, None, f"not valid CSV: {exc}"
                continue
            if len(fields) == width:
                yield start, pick(fields), None
            elif fields:  # a blank line is no record
                yield start, None, f"not valid CSV: expected {width} fields, found {len(fields)}"

    def _jsonl_records(self) -> Iterator[tuple[int, object, str | None]]:
        line_no = 0
        for line in self._peeked:
            line_no += 1
            if line.strip():
                yield line_no, line, None
        self._peeked = []
        for line in self.source.stream:
            line_no += 1
            if line.strip():
                yield line_no, line, None

    def chunks(self, chunk_rows: int, chunk_bytes: int, skip_rows: int = 0) -> Iterator[Chunk]:
        """Chunks of at most ``chunk_rows`` records and about ``chunk_bytes`` of payload, after
        the first ``skip_rows`` records (those an interrupted run already committed).

        Chunk boundaries depend only on the input and these limits, so a resumed run cuts the
        rest of the input exactly as the interrupted one would have.
        """
        records = self._records
        row = 0
        for _ in range(skip_rows):
            if next(records, None) is None:
                raise FormatError(f"the input has fewer rows ({row}) than the interrupted run committed "
                                  f"({skip_rows}); it is not the same input")
            row += 1
        csv_input = self.fmt == CSV
        parquet_input = self.fmt == PARQUET
        index = 0
        chunk = Chunk(index=index, first_row=row + 1)
        size = 0
        for item in records:
            chunk.items.append(item)
            payload = item[1]
            if payload is not None:
                if csv_input:
                    size += sum(map(len, payload))
                elif parquet_input:
                    size += sum(len(v) for v in payload if v.__class__ is str)
                else:
                    size += len(payload)
            if len(chunk.items) >= chunk_rows or size >= chunk_bytes:
                row += len(chunk.items)
                chunk.position = self.position()
                yield chunk
                index += 1
                chunk = Chunk(index=index, first_row=row + 1)
                size = 0
        if chunk.items:
            chunk.position = self.position()
            yield chunk

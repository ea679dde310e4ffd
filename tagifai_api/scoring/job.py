"""One scoring run: check the options, resume or start the output, score chunks in order, commit.

Chunks are scored in worker processes (one per core by default), at most two per worker in
flight so memory stays flat, and written in input order as they complete. Every second (and at
the end, and on Ctrl-C) the written chunks are fsync'ed and the progress file records them; a
resumed run truncates anything written after that and carries on from the next chunk, cutting the
input exactly as the first run did, so the finished file is byte for byte the same.

A Parquet output is the exception: its footer, which indexes the whole file, is written last, so a
partial file cannot be continued. It is written beside the output under a hidden name and renamed
into place when the run completes; a failed run leaves nothing to resume.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from tagifai_api.ml import artifacts
from tagifai_api.ml.predict import Predictor
from tagifai_api.scoring import journal
from tagifai_api.scoring.chunks import (
    ChunkResult,
    ChunkScorer,
    Columns,
    ScorerConfig,
    id_arrow_type,
    init_worker,
    score_in_worker,
    tune_malloc,
)
from tagifai_api.scoring.formats import (
    PARQUET,
    FormatError,
    Reader,
    format_of,
    is_gzip_name,
    open_input,
    pyarrow_parquet,
)
from tagifai_api.scoring.progress import Progress
from tagifai_api.store import files

log = logging.getLogger("tagifai_api.scoring")

COMMIT_INTERVAL_S = 1.0  # fsync + progress file at most this often (and at the end)
IN_FLIGHT_PER_WORKER = 2  # one chunk being scored, one waiting: workers never idle, memory bounded


class UsageError(Exception):
    """The command cannot run as asked (exit code 2); the message is one line."""


class ScoreError(Exception):
    """The run stopped on an error after committing what it had (exit code 1; resumable unless the
    output is Parquet)."""

    def __init__(self, message: str, resumable: bool = True) -> None:
        super().__init__(message)
        self.resumable = resumable


class OutputError(Exception):
    """The output, errors or progress file could not be written (disk full, permissions)."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: committed work is kept and ``--resume`` continues (exit 128 + signal),
    except for a Parquet output (``resumable`` false), of which nothing is kept."""

    def __init__(self, signum: int, committed_rows: int, resumable: bool = True) -> None:
        super().__init__(signum, committed_rows)
        self.signum = signum
        self.committed_rows = committed_rows
        self.resumable = resumable


def default_workers() -> int:
    """One per core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@dataclass
class ScoreOptions:
    """What the ``score`` command was asked to do."""

    input: str
    output: Path
    artifacts_dir: Path
    max_text_length: int
    version: str = "default"
    #: the name ``"default"`` stands for (the registry's default when the run starts)
    default_version: str | None = None
    input_format: str | None = None
    #: the text's column; else title and description (``title`` and ``description`` unless named), or a
    #: ``text`` column found in an input that has neither
    text_column: str | None = None
    title_column: str | None = None
    description_column: str | None = None
    id_column: str | None = None
    batch_size: int = 100
    chunk_rows: int = 5000
    chunk_bytes: int = 8 << 20
    workers: int = field(default_factory=default_workers)
    explain: int = 0
    quiet: bool = False
    resume: bool = False
    force: bool = False
    progress_interval: float = 10.0


@dataclass
class Summary:
    """The outcome of a finished run."""

    rows: int
    scored: int
    rejected: int
    resumed_from: int
    seconds: float
    output: Path
    errors: Path | str | None

    @property
    def rate(self) -> float:
        """Rows per second in this run."""
        return (self.rows - self.resumed_from) / self.seconds if self.seconds > 0 else 0.0


class _Signals:
    """SIGINT and SIGTERM stop the run once, but never in the middle of writing a chunk; a second
    signal during the clean-up is only noted, so the clean-up (a commit) completes."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._protected = 0
        self._raised = False
        self._previous: dict[int, object] = {}

    def _raise_once(self) -> None:
        if self.received is not None and not self._protected and not self._raised:
            self._raised = True
            raise KeyboardInterrupt

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum
        self._raise_once()

    @contextlib.contextmanager
    def protected(self):
        """No interruption inside; one that arrived meanwhile is raised on the way out."""
        self._protected += 1
        try:
            yield
        finally:
            self._protected -= 1
        self._raise_once()

    def __enter__(self) -> _Signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _Output:
    """The output and errors files and the progress file that commits them."""

    def __init__(self, path: Path, identity: dict, committed: journal.Committed | None, header: bytes) -> None:
        self.path = path
        self.errors_path = path.with_name(path.name + ".errors.jsonl")
        self.journal_path = journal.path_for(path)
        self.identity = identity
        fresh = committed is None
        self.committed = committed = committed or journal.Committed()
        self._pending = journal.Committed(**vars(committed))  # written, not yet fsync'ed
        self._last_commit = time.monotonic()
        self._errors = None
        self._out = None
        with self._writing(path):
            if fresh:  # the progress file exists before any output does
                journal.write(self.journal_path, identity, committed)
                self._out = open(path, "wb")  # noqa: SIM115 - closed in close()
                self._write(ChunkResult(index=-1, rows=0, data=header, errors=b"", scored=0, rejected=0,
                                        position=committed.position))
                self.commit()
            else:
                self._out = open(path, "r+b")  # noqa: SIM115
                self._out.truncate(committed.output_bytes)
                self._out.seek(0, os.SEEK_END)
                if self.errors_path.exists():
                    with open(self.errors_path, "r+b") as fh:
                        fh.truncate(committed.errors_bytes)

    @staticmethod
    @contextlib.contextmanager
    def _writing(path: Path):
        """An OSError while writing becomes one clear :class:`OutputError`."""
        try:
            yield
        except OSError as exc:
            raise OutputError(f"cannot write {exc.filename or path}: {exc.strerror or exc}") from None

    def _write(self, result: ChunkResult) -> None:
        with self._writing(self.path):
            self._out.write(result.data)
            if result.errors:
                if self._errors is None:
                    self._errors = open(self.errors_path, "ab")  # noqa: SIM115
                self._errors.write(result.errors)
        p = self._pending
        p.rows += result.rows
        p.output_bytes += len(result.data)
        p.errors_bytes += len(result.errors)
        p.scored += result.scored
        p.rejected += result.rejected
        if result.position is not None:
            p.position = result.position

    def add(self, result: ChunkResult) -> None:
        """Write a chunk; commit if the last commit is a second old."""
        self._write(result)
        if time.monotonic() - self._last_commit >= COMMIT_INTERVAL_S:
            self.commit()

    def commit(self) -> None:
        """Make every written chunk durable, then record it in the progress file."""
        with self._writing(self.path):
            for fh in (self._out, self._errors):
                if fh is not None:
                    fh.flush()
                    os.fsync(fh.fileno())
            committed = journal.Committed(**vars(self._pending))
            journal.write(self.journal_path, self.identity, committed)
        self.committed = committed
        self._last_commit = time.monotonic()

    def commit_if_possible(self) -> None:
        """Commit on the way out of a failed run; if even that fails, the last commit stands."""
        try:
            self.commit()
        except OutputError:
            pass

    def close(self) -> None:
        for fh in (self._out, self._errors):
            if fh is not None:
                try:
                    fh.close()
                except OSError:
                    pass  # bytes past the last commit; a resumed run truncates them anyway

    def finish(self) -> None:
        """The run is complete: no progress file, and no errors file when nothing was rejected."""
        self.commit()
        self.close()
        with self._writing(self.journal_path):
            journal.remove(self.journal_path)
            if self.committed.errors_bytes == 0:
                self.errors_path.unlink(missing_ok=True)


class _ParquetOutput(_Output):
    """A Parquet output, written under a hidden name beside ``path`` and renamed into place by
    :meth:`finish`; :meth:`close` before that removes it (and the errors file): nothing is resumable.

    Chunks are gathered into row groups of about ``ROW_GROUP_ROWS`` rows (a chunk is only 5,000).
    """

    ROW_GROUP_ROWS = 100_000

    def __init__(self, path: Path, schema) -> None:  # noqa: D107 - no journal, so none of _Output's set-up
        self.path = path
        self.errors_path = path.with_name(path.name + ".errors.jsonl")
        self.journal_path = None
        self.committed = journal.Committed()
        self._pending = journal.Committed()
        self._partial = path.with_name(f".{path.name}.partial")
        self._errors = None
        self._out = None
        self._batches: list = []
        self._buffered = 0
        self._finished = False
        self._last_commit = time.monotonic()
        pq = pyarrow_parquet()
        with self._writing(path):
            self._writer = pq.ParquetWriter(self._partial, schema)

    def _write(self, result: ChunkResult) -> None:
        import pyarrow as pa

        batch = pa.ipc.open_stream(result.data).read_next_batch()
        self._batches.append(batch)
        self._buffered += batch.num_rows
        if self._buffered >= self.ROW_GROUP_ROWS:
            self._flush_row_group()
        with self._writing(self.errors_path):
            if result.errors:
                if self._errors is None:
                    self._errors = open(self.errors_path, "wb")  # noqa: SIM115
                self._errors.write(result.errors)
        p = self._pending
        p.rows += result.rows
        p.scored += result.scored
        p.rejected += result.rejected
        if result.position is not None:
            p.position = result.position

    def _flush_row_group(self) -> None:
        import pyarrow as pa

        if self._batches:
            with self._writing(self.path):
                self._writer.write_table(pa.Table.from_batches(self._batches), row_group_size=max(self._buffered, 1))
        self._batches, self._buffered = [], 0

    def commit(self) -> None:
        """Count what was written (nothing becomes durable before :meth:`finish`)."""
        self.committed = journal.Committed(**vars(self._pending))
        self._last_commit = time.monotonic()

    def close(self) -> None:
        if self._finished:
            return
        for fh in (self._writer, self._errors):
            try:
                if fh is not None:
                    fh.close()
            except OSError:
                pass
        for path in (self._partial, self.errors_path):
            path.unlink(missing_ok=True)

    def finish(self) -> None:
        """Write the footer, make the file durable, rename it into place."""
        self._flush_row_group()
        self.commit()
        with self._writing(self.path):
            self._writer.close()
            with open(self._partial, "rb") as fh:
                os.fsync(fh.fileno())
            if self._errors is not None:
                self._errors.flush()
                os.fsync(self._errors.fileno())
                self._errors.close()
            os.replace(self._partial, self.path)
            files.fsync_dir(self.path.parent)
        self._finished = True
        if self.committed.rejected == 0:
            self.errors_path.unlink(missing_ok=True)


def text_columns(available: list[str] | None, opts: ScoreOptions) -> tuple[str, ...]:
    """The column (or title and description columns) a text is read from; see ``ScoreOptions.text_column``."""
    if opts.text_column:
        return (opts.text_column,)
    if (opts.title_column is None and opts.description_column is None and available is not None
            and "text" in available and "title" not in available and "description" not in available):
        return ("text",)
    return (opts.title_column or "title", opts.description_column or "description")


def resolve_columns(available: list[str] | None, opts: ScoreOptions, positional: bool) -> Columns:
    """Where the text and id are, checked against the input's columns when they are known.

    Args:
        available: the input's columns (``None``: not known, as for an empty JSON Lines input).
        positional: the records are rows of ``available`` (CSV, Parquet) rather than JSON objects.
    """
    names = text_columns(available, opts)
    wanted = [*names, *([opts.id_column] if opts.id_column else [])]
    if available is not None:
        missing = [n for n in wanted if n not in available]
        if missing:
            hint = "" if opts.text_column else "; use --text-column, or --title-column and --description-column"
            raise UsageError(f"unknown column {missing[0]!r}: the input has {', '.join(map(repr, available))}{hint}")
    if positional:
        # the reader keeps only these fields of each row, text columns first, then the id
        return Columns(text=tuple(range(len(names))), id=len(names) if opts.id_column else None, names=names,
                       id_name=opts.id_column, header_positions=tuple(available.index(n) for n in wanted))
    return Columns(text=names, id=opts.id_column, names=names, id_name=opts.id_column)


def _columns(reader: Reader, opts: ScoreOptions) -> Columns:
    if reader.header is not None:
        return resolve_columns(reader.header, opts, positional=True)
    available = list(reader.first_object) if reader.first_object is not None else None
    return resolve_columns(available, opts, positional=False)


def _prepare(opts: ScoreOptions) -> tuple[str | None, tuple[dict, journal.Committed] | None]:
    """Check the output paths; return the output format and an interrupted run's record."""
    if opts.resume and opts.force:
        raise UsageError("--resume and --force exclude each other")
    output = opts.output
    if opts.input != "-" and Path(opts.input).resolve() == output.resolve():
        raise UsageError("the output would overwrite the input")
    if output.exists() and not output.is_file():
        raise UsageError(f"{output} is not a regular file")
    if not output.parent.is_dir():
        raise UsageError(f"the output's directory {output.parent} does not exist")
    try:
        out_format = format_of(str(output), None, "output")
    except FormatError as exc:
        raise UsageError(str(exc)) from None
    if out_format == PARQUET and opts.resume:
        raise UsageError("--resume is for CSV and JSON Lines outputs: a Parquet output is written whole, "
                         "when the run completes, so an interrupted one left nothing to continue")
    errors_path = output.with_name(output.name + ".errors.jsonl")
    journal_path = journal.path_for(output)
    existing = [p for p in (output, errors_path, journal_path) if p.exists()]
    if opts.force:
        return out_format, None  # the old files go once the new run is known to be able to start
    if opts.resume and journal_path.exists():
        try:
            return out_format, journal.read(journal_path)
        except journal.JournalError as exc:
            raise UsageError(str(exc)) from None
    if opts.resume and output.exists():
        raise UsageError(f"nothing to resume: {output} has no progress file, so it is complete "
                         "(or was not written by score); use --force to score again")
    if existing:
        if out_format == PARQUET:
            raise UsageError(f"{existing[0]} exists; use --force to overwrite")
        raise UsageError(f"{existing[0]} exists; use --resume to continue an interrupted run, "
                         "or --force to overwrite")
    return out_format, None


def load_version(opts: ScoreOptions, version: str) -> artifacts.ModelVersion:
    """The verified version a run scores with (``default``: the one the registry named when it began)."""
    if version == "default":
        if opts.default_version is None:
            raise UsageError("no default model version is recorded: train one with `python -m tagifai_api train`")
        version = opts.default_version
    try:
        return artifacts.load(opts.artifacts_dir, version)
    except artifacts.ArtifactError as exc:
        raise UsageError(str(exc)) from None


def run(opts: ScoreOptions) -> Summary:
    """Score ``opts.input`` into ``opts.output``.

    Raises:
        UsageError: nothing was written (bad option, missing file, unknown column or version).
        ScoreError: a read or worker failure; committed output is kept for ``--resume``.
        Interrupted: SIGINT or SIGTERM; committed output is kept for ``--resume``.
    """
    started = time.monotonic()
    out_format, recorded = _prepare(opts)
    version = opts.version
    if recorded is not None:
        previous = recorded[0].get("model_version")
        if version not in ("default", previous):
            raise UsageError(f"cannot resume with --version {version}: the interrupted run used {previous}")
        version = previous
    predictor = Predictor(load_version(opts, version))
    try:
        in_format = format_of(opts.input, opts.input_format, "input")
        if PARQUET in (in_format, out_format):
            pyarrow_parquet()
        source = open_input(opts.input, in_format)
    except FormatError as exc:
        raise UsageError(str(exc)) from None
    try:
        return _score(opts, source, in_format, out_format, predictor, recorded, started)
    finally:
        source.close()


def _score(opts, source, in_format, out_format, predictor, recorded, started) -> Summary:
    try:
        reader = Reader(source, in_format)
    except FormatError as exc:
        raise UsageError(str(exc)) from None
    columns = _columns(reader, opts)
    config = ScorerConfig(
        artifacts_dir=str(opts.artifacts_dir), version=predictor.version, input_format=in_format,
        output_format=out_format, gzip_output=is_gzip_name(str(opts.output)), columns=columns,
        max_text_length=opts.max_text_length, batch_size=opts.batch_size, explain=opts.explain,
        id_type=id_arrow_type(in_format, opts.id_column, reader.types.get(opts.id_column)))
    identity = {
        "input": source.identity, "input_format": in_format, "output_format": out_format,
        "gzip_output": config.gzip_output, "columns": list(config.columns.names), "id_column": opts.id_column,
        "batch_size": opts.batch_size, "chunk_size": opts.chunk_rows, "chunk_bytes": opts.chunk_bytes,
        "explain": opts.explain, "max_text_length": opts.max_text_length, "model_version": predictor.version,
    }
    committed = None
    if recorded is not None:
        changed = journal.differences(recorded[0], identity)
        if changed:
            raise UsageError(f"cannot resume: {', '.join(changed)} differ from the interrupted run "
                             "(use the same input and options, or --force to start over)")
        committed = recorded[1]
        size = opts.output.stat().st_size if opts.output.exists() else -1
        if size < committed.output_bytes:
            raise UsageError(f"cannot resume: {opts.output} is shorter than its committed "
                             f"{committed.output_bytes} bytes; use --force to start over")
        errors_path = opts.output.with_name(opts.output.name + ".errors.jsonl")
        errors_size = errors_path.stat().st_size if errors_path.exists() else 0
        if errors_size < committed.errors_bytes:
            raise UsageError(f"cannot resume: {errors_path} is shorter than its committed "
                             f"{committed.errors_bytes} bytes; use --force to start over")
    local = ChunkScorer(config, predictor)
    try:
        if opts.force:
            for path in (opts.output, opts.output.with_name(opts.output.name + ".errors.jsonl"),
                         journal.path_for(opts.output)):
                path.unlink(missing_ok=True)
        if out_format == PARQUET:
            output = _ParquetOutput(opts.output, local.arrow_schema())
        else:
            output = _Output(opts.output, identity, committed, local.header())
    except OutputError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot remove {exc.filename}: {exc.strerror or exc}") from None
    resumed_from = output.committed.rows
    resumable = out_format != PARQUET

    def kept() -> str:
        return f"{output.committed.rows} rows are committed" if resumable else "no output is kept"

    progress = Progress(source.size, output.committed.position or 0, resumed_from,
                        Progress.mode_for(opts.quiet), opts.progress_interval)
    reader.keep(config.columns.header_positions)
    chunks = reader.chunks(opts.chunk_rows, opts.chunk_bytes, skip_rows=resumed_from)
    try:
        with _Signals() as signals:
            try:
                if opts.workers == 1:
                    tune_malloc()
                    for chunk in chunks:
                        result = local.score(chunk)
                        with signals.protected():
                            output.add(result)
                        progress.update(result.rows, result.position)
                else:
                    _score_in_pool(opts.workers, config, chunks, output, progress, signals)
            except KeyboardInterrupt:
                output.commit_if_possible()
                raise Interrupted(signals.received or signal.SIGINT, output.committed.rows, resumable) from None
            except OutputError as exc:
                raise ScoreError(f"{exc}; {kept()}", resumable) from None
            except (OSError, EOFError, FormatError) as exc:
                output.commit_if_possible()
                raise ScoreError(f"cannot read the input after row {output.committed.rows}: {exc}", resumable) \
                    from None
            except BrokenProcessPool as exc:
                output.commit_if_possible()
                raise ScoreError(f"a worker process died ({exc}); {kept()}", resumable) from None
            except Exception as exc:  # noqa: BLE001 - any failure inside scoring keeps the committed rows
                output.commit_if_possible()
                log.debug("scoring failed", exc_info=True)
                raise ScoreError(f"scoring failed after row {output.committed.rows}: "
                                 f"{type(exc).__name__}: {exc}", resumable) from None
            try:
                output.finish()
            except OutputError as exc:
                raise ScoreError(f"{exc}; {kept()}", resumable) from None
    finally:
        progress.close()
        output.close()
    committed = output.committed
    return Summary(rows=committed.rows, scored=committed.scored, rejected=committed.rejected,
                   resumed_from=resumed_from, seconds=time.monotonic() - started, output=opts.output,
                   errors=output.errors_path if committed.rejected else None)


def _score_in_pool(workers: int, config: ScorerConfig, chunks, output: _Output, progress: Progress,
                   signals: _Signals) -> None:
    """Chunks to a pool of processes, results written back in input order."""
    methods = mp.get_all_start_methods()
    # fork: workers start at once and share the imported code; they load the model themselves
    ctx = mp.get_context("fork" if "fork" in methods else None)
    pending: deque = deque()

    def write_oldest() -> None:
        result = pending.popleft().result()
        with signals.protected():
            output.add(result)
        progress.update(result.rows, result.position)

    executor = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init_worker, initargs=(config,))
    try:
        for chunk in chunks:
            pending.append(executor.submit(score_in_worker, chunk))
            if len(pending) >= workers * IN_FLIGHT_PER_WORKER:
                write_oldest()
            while pending and pending[0].done():  # a slow input (a pipe) still sees output move on
                write_oldest()
        while pending:
            write_oldest()
    finally:
        for future in pending:
            future.cancel()
        executor.shutdown(wait=True, cancel_futures=True)

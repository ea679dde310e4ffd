"""Progress of a run: a tqdm bar on a terminal, periodic log lines otherwise, nothing when quiet.

The bar measures bytes of the stored input (known in advance for files, compressed or not), which
gives an honest ETA without counting the rows first; rows and rows/s are shown beside it.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("tagifai_api.scoring")


class Progress:
    """Reports committed rows.

    Args:
        total_bytes: size of the input, if known (no ETA without it).
        start_bytes, start_rows: what an interrupted run had already committed.
        mode: ``"bar"``, ``"log"`` or ``"quiet"``.
        interval: seconds between log lines.
    """

    def __init__(self, total_bytes: int | None, start_bytes: int, start_rows: int, mode: str,
                 interval: float = 10.0) -> None:
        self.total = total_bytes
        self.mode = mode
        self.interval = interval
        self.rows = start_rows
        self.start_rows = start_rows
        self.start_bytes = start_bytes or 0
        self.started = time.monotonic()
        self._last_log = self.started
        self._bar = None
        if mode == "bar":
            import tqdm

            tqdm.tqdm.monitor_interval = 0  # no monitor thread: worker processes are forked
            self._bar = tqdm.tqdm(total=total_bytes, initial=start_bytes or 0, unit="B", unit_scale=True,
                                  unit_divisor=1024, file=sys.stderr, dynamic_ncols=True, smoothing=0.1,
                                  bar_format="{percentage:3.0f}%|{bar}| {postfix} [{elapsed}<{remaining}]"
                                  if total_bytes else "{postfix} [{elapsed}]")
            self._bar.set_postfix_str(self._rows_text(), refresh=False)

    @staticmethod
    def mode_for(quiet: bool, stream=None) -> str:
        """``quiet`` wins; a terminal gets the bar; anything else (a log file, CI) log lines."""
        stream = stream or sys.stderr
        if quiet:
            return "quiet"
        return "bar" if stream.isatty() else "log"

    def rate(self) -> float:
        """Rows per second in this run (rows committed before a resume do not count)."""
        elapsed = time.monotonic() - self.started
        return (self.rows - self.start_rows) / elapsed if elapsed > 0 else 0.0

    def _rows_text(self) -> str:
        return f"{self.rows:,} rows, {self.rate():,.0f} rows/s"

    def update(self, rows: int, position: int | None) -> None:
        """``rows`` more rows are committed; the input has been read up to ``position``."""
        self.rows += rows
        if self._bar is not None:
            if position is not None and self.total:
                self._bar.update(max(0, position - self._bar.n))
            self._bar.set_postfix_str(self._rows_text())
        elif self.mode == "log":
            now = time.monotonic()
            if now - self._last_log >= self.interval:
                self._last_log = now
                log.info("%s%s", self._rows_text(), self._eta(position, now))

    def _eta(self, position: int | None, now: float) -> str:
        if not self.total or position is None:
            return ""
        done = position / self.total
        progressed = position - self.start_bytes
        if progressed <= 0:
            return f", {done:.0%} of the input"
        remaining = (now - self.started) * (self.total - position) / progressed
        return f", {done:.0%} of the input, about {remaining:,.0f} s left"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

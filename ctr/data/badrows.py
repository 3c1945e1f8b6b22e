"""The bad-row policy: raise on the first malformed row, or drop malformed rows and say how many.

A tiny policy object in the style of Ray's failure policies: a config value (``data.on_bad_row``),
a :meth:`BadRowPolicy.decide` that returns a :class:`Decision`, and one log line saying why.
"""

import enum
import logging
from dataclasses import dataclass

from ctr.errors import DataError

log = logging.getLogger("ctr.data")


class Decision(enum.Enum):
    """What a reader does with a file's malformed rows."""

    KEEP_ALL = "keep_all"  # nothing was malformed
    RAISE = "raise"
    SKIP = "skip"


@dataclass
class ReadReport:
    """What reading one file found.

    Args:
        file (str): the file read.
        rows_read (int): data rows seen (header and blank lines excluded), malformed ones included.
        rows_skipped (int): malformed rows dropped under ``on_bad_row: skip``.
        first_bad_line (int | None): 1-based line (Parquet: row) number of the first malformed row.
        first_bad_reason (str): why that row is malformed.
    """

    file: str
    rows_read: int = 0
    rows_skipped: int = 0
    first_bad_line: int | None = None
    first_bad_reason: str = ""

    @property
    def rows_kept(self) -> int:
        return self.rows_read - self.rows_skipped


@dataclass(frozen=True)
class BadRow:
    """The first malformed row of a file and its diagnosis.

    Args:
        line (int): 1-based line (Parquet: row) number.
        reason (str): what is wrong with it.
        column (str): the offending column, when one is to blame.
    """

    line: int
    reason: str
    column: str = ""


class BadRowPolicy:
    """Decide what to do with the malformed rows of one file.

    Args:
        mode (str): ``error`` (raise :class:`~ctr.errors.DataError` naming file and line) or
            ``skip`` (drop the rows, log one WARNING with the count and the first line). A file
            whose rows are all malformed (more than one) raises in both modes: its format is wrong.

    Example::

        >>> BadRowPolicy("skip").decide(ReadReport("a.csv", 10), 0, None) is Decision.KEEP_ALL
        True
    """

    def __init__(self, mode: str) -> None:
        if mode not in ("error", "skip"):
            raise ValueError(f"on_bad_row must be 'error' or 'skip', got {mode!r}")
        self.mode = mode

    def decide(self, report: ReadReport, n_bad: int, first: BadRow | None) -> Decision:
        """Record ``n_bad`` malformed rows in ``report``; raise (mode ``error``) or return the decision."""
        if n_bad == 0 or first is None:
            return Decision.KEEP_ALL
        report.first_bad_line, report.first_bad_reason = first.line, first.reason
        if n_bad == report.rows_read and n_bad > 1:
            raise DataError(f"all {n_bad} rows are malformed, first: {first.reason}; is data.format right?",
                            file=report.file, line=first.line, column=first.column)
        if self.mode == "error":
            more = f" ({n_bad - 1} more malformed row(s) follow)" if n_bad > 1 else ""
            raise DataError(f"{first.reason}{more}; fix the file or set data.on_bad_row: skip to drop "
                            "malformed rows", file=report.file, line=first.line, column=first.column)
        report.rows_skipped = n_bad
        log.warning("%s: skipped %d malformed row(s) of %d (data.on_bad_row: skip); first at line %d: %s",
                    report.file, n_bad, report.rows_read, first.line, first.reason)
        return Decision.SKIP

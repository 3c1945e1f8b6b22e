"""Line-oriented text formats (Criteo TSV, Avazu CSV, plain CSV, libFM) parsed with lazy polars queries.

Each file is scanned as one String column of lines (a separator that never occurs, no quoting) with
a 1-based ``_line`` number, so every malformed row can be reported by line. Fields come from
``str.split``; a row is malformed when its field count is wrong, its label is not 0/1/-1, a numeric
column holds text, a libFM token has no ``:``, or (Avazu) ``hour`` is not ``YYMMDDHH``. Blank lines
are ignored. Fields are not unquoted: use Parquet for data whose values contain the separator.
"""

import gzip
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

LINE = "_line"
TEXT = "_text"
PARTS = "_parts"
BAD = "_bad"
LABEL_VALUES = (0.0, 1.0, -1.0)
AVAZU_TIME = ("weekday", "is_weekend")


@dataclass(frozen=True)
class LineFormat:
    """How to cut one line into named raw columns.

    Args:
        names (tuple[str, ...]): positional column names (libFM: the label, then one name per token).
        separator (str): field separator (libFM: ignored, tokens are separated by blanks).
        label (str | None): label column: validated (0, 1, -1, 1.0 ...) and emitted as Float32 0/1.
        header_line (int): line number of a header to skip (0 = no header).
        libfm (bool): tokens are ``index:value``; the column value is the index string.
        avazu_time (bool): replace ``hour`` (YYMMDDHH) by hour of day and add ``weekday``, ``is_weekend``.
    """

    names: tuple[str, ...]
    separator: str
    label: str | None
    header_line: int = 0
    libfm: bool = False
    avazu_time: bool = False

    @property
    def available(self) -> list[str]:
        return list(self.names) + (list(AVAZU_TIME) if self.avazu_time else [])

    def describe(self) -> str:
        if self.libfm:
            return f"{len(self.names)} blank-separated tokens (label + {len(self.names) - 1} index:value)"
        return f"{len(self.names)} fields separated by {self.separator!r}"


def open_text(path: str | Path):
    """Open a plain or ``.gz`` text file for reading (undecodable bytes replaced)."""
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="")
    return open(path, encoding="utf-8", errors="replace", newline="")


def first_line(path: str | Path) -> tuple[int, str] | None:
    """(line number, text) of the first non-blank line, or ``None`` for a file without one."""
    with open_text(path) as f:
        for n, raw in enumerate(f, start=1):
            text = raw.rstrip("\r\n")
            if text.strip():
                return n, text
    return None


def line_text(path: str | Path, line: int) -> str:
    """The text of one line (1-based), without its line end."""
    with open_text(path) as f:
        for n, raw in enumerate(f, start=1):
            if n == line:
                return raw.rstrip("\r\n")
    return ""


def scan_lines(path: str | Path) -> pl.LazyFrame:
    """Lazy frame of (``_line`` Int64, ``_text`` String) for the non-blank lines of a text file."""
    lf = pl.scan_csv(path, has_header=False, separator="\x1f", quote_char=None, schema={TEXT: pl.String},
                     encoding="utf8-lossy", truncate_ragged_lines=True)
    lf = lf.with_row_index(LINE, offset=1).with_columns(pl.col(LINE).cast(pl.Int64))
    return lf.filter(pl.col(TEXT).is_not_null() & (pl.col(TEXT).str.strip_chars() != ""))


def parse_lines(path: str | Path, fmt: LineFormat, wanted: list[str], numeric: Iterable[str]) -> pl.LazyFrame:
    """Lazy frame with the ``wanted`` raw columns (String), the label (Float32), ``_line`` and ``_bad``.

    ``numeric`` names the columns whose non-empty values must parse as numbers.
    """
    lf = scan_lines(path).filter(pl.col(LINE) > fmt.header_line)
    parts = (pl.col(TEXT).str.replace_all(r"[ \t]+", " ").str.strip_chars(" ").str.split(" ") if fmt.libfm
             else pl.col(TEXT).str.split(fmt.separator))
    lf = lf.select(LINE, parts.alias(PARTS))
    checks = [pl.col(PARTS).list.len() != len(fmt.names)]
    out = {}
    label = fmt.label if fmt.label in fmt.names else None
    if label is not None:
        value = _field(fmt, fmt.names.index(label)).str.strip_chars().cast(pl.Float64, strict=False)
        checks.append((value.is_null() | ~value.is_in(LABEL_VALUES)).fill_null(True))
        out[label] = pl.when(value == -1.0).then(0.0).otherwise(value).cast(pl.Float32)
    for name in sorted(set(numeric) & set(fmt.names)):
        raw = _field(fmt, fmt.names.index(name)).str.strip_chars()
        checks.append((raw.is_not_null() & (raw != "") & raw.cast(pl.Float64, strict=False).is_null()).fill_null(False))
    if fmt.libfm:
        no_colon = pl.element().str.contains(":", literal=True).not_()
        checks.append(pl.col(PARTS).list.slice(1).list.eval(no_colon).list.any().fill_null(True))
    if fmt.avazu_time:
        checks.append(_hour_is_bad())
        out.update(_avazu_time_columns())
    columns = [out[c] if c in out else _field(fmt, fmt.names.index(c)) for c in wanted]
    if label is not None and label not in wanted:
        columns.append(out[label])
    bad = pl.any_horizontal(checks).fill_null(True).alias(BAD)
    return lf.select([c.alias(n) for c, n in zip(columns, _names(wanted, label), strict=True)] + [LINE, bad])


def _names(wanted: list[str], label: str | None) -> list[str]:
    return list(wanted) + ([label] if label is not None and label not in wanted else [])


def _field(fmt: LineFormat, i: int) -> pl.Expr:
    value = pl.col(PARTS).list.get(i, null_on_oob=True)
    if fmt.libfm and i > 0:
        value = value.str.splitn(":", 2).struct.field("field_0")
    return pl.when(value != "").then(value)


def _hour_expr() -> pl.Expr:
    return pl.col(PARTS).list.get(2, null_on_oob=True)


def _hour_is_bad() -> pl.Expr:
    hour = _hour_expr()
    date = hour.str.slice(0, 6).str.to_date("%y%m%d", strict=False)
    hh = hour.str.slice(6, 2).cast(pl.Int32, strict=False)
    return (~hour.str.contains(r"^\d{8}$") | date.is_null() | (hh > 23)).fill_null(True)


def _avazu_time_columns() -> dict[str, pl.Expr]:
    hour = _hour_expr()
    weekday = hour.str.slice(0, 6).str.to_date("%y%m%d", strict=False).dt.weekday()  # 1 = Monday
    return {"hour": hour.str.slice(6, 2), "weekday": weekday.cast(pl.String),
            "is_weekend": (weekday >= 6).cast(pl.Int8).cast(pl.String)}


def diagnose(fmt: LineFormat, text: str, numeric: Iterable[str]) -> tuple[str, str]:
    """Why one line is malformed, as (reason, column); mirrors the checks of :func:`parse_lines`."""
    parts = text.split() if fmt.libfm else text.split(fmt.separator)
    if len(parts) != len(fmt.names):
        return f"expected {fmt.describe()}, found {len(parts)}", ""
    row = dict(zip(fmt.names, parts, strict=True))
    if fmt.label in row and not _is_label(row[fmt.label]):
        return f"label {row[fmt.label]!r} is not 0, 1 or -1", fmt.label
    for name in fmt.names:
        value = row[name].strip()
        if name in set(numeric) and value and _float(value) is None:
            return f"expected a number, got {value[:40]!r}", name
    if fmt.libfm:
        bad = [t for t in parts[1:] if ":" not in t]
        if bad:
            return f"token {bad[0][:40]!r} has no ':' (libFM tokens are index:value)", ""
    if fmt.avazu_time:
        return f"hour {row.get('hour', '')[:40]!r} is not a YYMMDDHH timestamp", "hour"
    return "malformed row", ""


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _is_label(text: str) -> bool:
    return _float(text.strip()) in LABEL_VALUES

"""Raw readers: one file (Criteo TSV, Avazu CSV, CSV, libFM, Parquet; ``.gz`` text too) → raw String columns.

Every reader returns the requested raw columns as **String** (numbers keep their text, empty
fields are null), the label as Float32 0/1 (``-1`` → 0) and ``_line``, the 1-based source line
(Parquet: row) number. Malformed rows follow ``data.on_bad_row`` (see :mod:`ctr.data.badrows`);
user mistakes (missing file, empty file, missing column) raise :class:`~ctr.errors.DataError`.
"""

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import polars as pl
from pydantic import field_validator, model_validator

from ctr.config import StrictConfig
from ctr.data.badrows import BadRow, BadRowPolicy, Decision, ReadReport
from ctr.data.events import EventsConfig, din_samples
from ctr.data.textfmt import BAD, LINE, LineFormat, diagnose, first_line, line_text, parse_lines
from ctr.errors import DataError

CRITEO_COLUMNS = tuple(["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)])
AVAZU_COLUMNS = ("id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id",
                 "app_domain", "app_category", "device_id", "device_ip", "device_model", "device_type",
                 "device_conn_type", "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21")
DEFAULT_LABEL = {"criteo": "label", "avazu": "click", "libfm": "label"}
SPLITS = ("train", "valid", "test")
STAGE_ROW_GROUP = 100_000


class SplitConfig(StrictConfig):
    """How missing valid/test splits are carved out of the train rows.

    Args:
        ratios (tuple[float, float, float]): train:valid:test proportions (renormalised over the
            splits that are carved, so a given test file with 8:1:1 leaves train:valid = 8:1).
        seed (int): seed of the numpy permutation behind a ratio split.
        column (str | None): split by this raw column's values instead of by ratio.
        train (list[str] | None): column split: values that go to train (``None``: all values not
            listed for valid or test).
        valid (list[str] | None): column split: values that go to valid.
        test (list[str] | None): column split: values that go to test.
    """

    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 2021
    column: str | None = None
    train: list[str] | None = None
    valid: list[str] | None = None
    test: list[str] | None = None

    @field_validator("train", "valid", "test", mode="before")
    @classmethod
    def _as_strings(cls, v):
        return [str(x) for x in v] if isinstance(v, list) else v

    @model_validator(mode="after")
    def _check(self) -> "SplitConfig":
        if any(r < 0 for r in self.ratios) or self.ratios[0] <= 0:
            raise ValueError(f"ratios must be >= 0 with a positive train ratio, got {list(self.ratios)}")
        lists = [s for s in SPLITS if getattr(self, s) is not None]
        if self.column is None and lists:
            raise ValueError(f"split values for {lists} need split.column")
        if self.column is not None and not lists:
            raise ValueError("a column split needs value lists (split.train / split.valid / split.test)")
        seen: dict[str, str] = {}
        for s in lists:
            for v in getattr(self, s):
                if seen.setdefault(v, s) != s:
                    raise ValueError(f"value {v!r} is listed for both {seen[v]} and {s}")
        return self


class DataConfig(StrictConfig):
    """The ``data:`` section of a pipeline: where the raw rows are and how to read and split them.

    Args:
        format (str): ``criteo`` (TSV, no header), ``avazu`` (CSV, header optional), ``libfm``,
            ``csv`` or ``parquet``.
        train (str | list[str]): train file(s).
        valid (str | list[str] | None): valid file(s); carved out of train when absent.
        test (str | list[str] | None): test file(s); carved out of train when absent.
        split (SplitConfig): ratios + seed, or a column split, for the carved splits.
        on_bad_row (str): ``error`` (raise naming file and line) or ``skip`` (drop and count).
        separator (str): csv only: field separator.
        has_header (bool): csv only: the first line holds the column names.
        columns (list[str] | None): csv without header: column names; libfm: one name per
            ``index:value`` token position (default ``f0 .. f{k-1}``).
        cache_dir (str): where prepared (encoded) data is cached.
        avazu_time_features (bool): avazu: ``hour`` becomes the hour of day and ``weekday`` and
            ``is_weekend`` are added.
        events (EventsConfig | None): ``format: events``: ``train`` is an event log turned into DIN
            samples (histories, label rule, sampled negatives, per-user time split in column
            ``split``) by :mod:`ctr.data.events`.
    """

    format: Literal["criteo", "avazu", "libfm", "csv", "parquet", "events"]
    train: str | list[str]
    valid: str | list[str] | None = None
    test: str | list[str] | None = None
    split: SplitConfig = SplitConfig()
    on_bad_row: Literal["error", "skip"] = "error"
    separator: str = ","
    has_header: bool = True
    columns: list[str] | None = None
    cache_dir: str = ".ctr_cache"
    avazu_time_features: bool = True
    events: EventsConfig | None = None

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        if (self.format == "events") != (self.events is not None):
            raise ValueError("format: events needs an events: section (and events: needs format: events)")
        if self.format == "csv" and not self.has_header and not self.columns:
            raise ValueError("csv without a header (has_header: false) needs columns: [names ...]")
        if self.columns is not None and len(set(self.columns)) != len(self.columns):
            raise ValueError(f"duplicate names in columns: {self.columns}")
        if not self.separator:
            raise ValueError("separator must not be empty")
        if self.columns is not None and self.format not in ("csv", "libfm"):
            raise ValueError(f"columns applies to csv and libfm only, not to format {self.format!r}")
        stray = sorted({"separator", "has_header"} & self.model_fields_set)
        if stray and self.format != "csv":
            raise ValueError(f"{', '.join(stray)} applies to csv only, not to format {self.format!r}")
        for split in SPLITS:
            if self.files(split) == [] and getattr(self, split) is not None:
                raise ValueError(f"{split}: empty file list")
        return self

    def files(self, split: str) -> list[str] | None:
        """The file list of a split, or ``None`` when it is not given."""
        value = getattr(self, split)
        return [value] if isinstance(value, str) else (list(value) if value is not None else None)


def read_file(path: str | Path, cfg: DataConfig, wanted_columns: Iterable[str] | None = None, *,
              label: str | None = None, numeric: Iterable[str] = (), limit: int | None = None) -> pl.DataFrame:
    """Raw columns of one file (see :func:`read_source`), without the read report."""
    return read_source(path, cfg, wanted_columns, label=label, numeric=numeric, limit=limit)[0]


def read_files(paths: Iterable[str | Path], cfg: DataConfig, wanted_columns: Iterable[str] | None = None, *,
               label: str | None = None, numeric: Iterable[str] = ()) -> tuple[pl.DataFrame, list[ReadReport]]:
    """Read several files with the same columns and concatenate them (``_line`` stays per file)."""
    frames, reports = [], []
    for path in paths:
        frame, report = read_source(path, cfg, wanted_columns, label=label, numeric=numeric)
        frames.append(frame)
        reports.append(report)
    return pl.concat(frames, how="vertical"), reports


def read_source(path: str | Path, cfg: DataConfig, wanted_columns: Iterable[str] | None = None, *,
                label: str | None = None, numeric: Iterable[str] = (),
                limit: int | None = None) -> tuple[pl.DataFrame, ReadReport]:
    """Read one file into raw String columns plus the label and ``_line``, applying the bad-row policy.

    Args:
        path: the file (``.gz`` allowed for text formats).
        cfg: the data config (format, separator, header, bad-row policy ...).
        wanted_columns: raw columns to return (default: all); a missing one raises DataError.
        label: label column (default: ``label`` for criteo/libfm, ``click`` for avazu, none for
            csv/parquet); validated as 0/1/-1 and returned as Float32 0/1.
        numeric: columns whose non-empty values must be numbers (the schema's numeric fields).
        limit: read only the first ``limit`` data rows (the scan stops there; the rest of the file
            is neither read nor checked).
    """
    path = str(path)
    if not Path(path).is_file():
        where = "" if Path(path).is_absolute() else f" (resolved against {Path.cwd()})"
        raise DataError(f"file not found{where}; check the data section of the pipeline", file=path)
    label = label if label is not None else DEFAULT_LABEL.get(cfg.format)
    if cfg.format == "events":
        frame = din_samples(cfg.events, path)
        wanted = _wanted(path, wanted_columns, frame.columns)
        frame = frame if limit is None else frame.head(limit)
        return frame.select(*wanted, *([LINE] if LINE not in wanted else [])), ReadReport(path, frame.height)
    if cfg.format == "parquet":
        return _read_parquet(path, cfg, wanted_columns, label, numeric, limit)
    fmt = _line_format(path, cfg, label)
    wanted = _wanted(path, wanted_columns, fmt.available)
    checked = set(numeric) & set(wanted)
    lines = parse_lines(path, fmt, wanted, checked)
    frame = _collect(path, lines if limit is None else lines.head(limit))
    report = ReadReport(path, frame.height)
    if frame.height == 0:
        raise DataError("file has a header but no data rows", file=path)
    bad = frame.filter(pl.col(BAD))
    first = None
    if bad.height:
        line = int(bad[LINE][0])
        first = BadRow(line, *diagnose(fmt, line_text(path, line), checked))
    if BadRowPolicy(cfg.on_bad_row).decide(report, bad.height, first) is Decision.SKIP:
        frame = frame.filter(~pl.col(BAD))
    return frame.drop(BAD), report


def stage_source(path: str | Path, cfg: DataConfig, out: str | Path, wanted_columns: Iterable[str] | None = None,
                 *, label: str | None = None, numeric: Iterable[str] = ()) -> ReadReport:
    """Streaming :func:`read_source`: write the file's raw columns to the Parquet file ``out`` in bounded memory.

    The parsed rows are sunk to ``out`` with polars' streaming engine (row groups of
    :data:`STAGE_ROW_GROUP` rows), malformed rows flagged in the ``_bad`` column; then the bad-row
    policy is applied on the staged file (a column scan). Read the kept rows back with
    :func:`scan_staged`. Same columns, checks and errors as :func:`read_source`.
    """
    path = str(path)
    if not Path(path).is_file():
        where = "" if Path(path).is_absolute() else f" (resolved against {Path.cwd()})"
        raise DataError(f"file not found{where}; check the data section of the pipeline", file=path)
    label = label if label is not None else DEFAULT_LABEL.get(cfg.format)
    if cfg.format in ("events", "parquet"):
        lf, fmt, checked = _staged_query(path, cfg, wanted_columns, label, numeric)
    else:
        fmt = _line_format(path, cfg, label)
        wanted = _wanted(path, wanted_columns, fmt.available)
        checked = set(numeric) & set(wanted)
        lf = parse_lines(path, fmt, wanted, checked)
    try:
        lf.sink_parquet(str(out), row_group_size=STAGE_ROW_GROUP, engine="streaming")
    except (pl.exceptions.PolarsError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"could not read the file: {first}", file=path) from None
    staged = pl.scan_parquet(str(out))
    counts = staged.select(pl.len().alias("rows"), pl.col(BAD).sum().alias("bad")).collect().row(0, named=True)
    report = ReadReport(path, int(counts["rows"]))
    if report.rows_read == 0:
        raise DataError("file has a header but no data rows" if fmt is not None else "file is empty", file=path)
    first = None
    if counts["bad"]:
        row = staged.filter(pl.col(BAD)).head(1).collect()
        line = int(row[LINE][0])
        if fmt is not None:
            first = BadRow(line, *diagnose(fmt, line_text(path, line), checked))
        else:
            first = _parquet_diagnosis(row, label, checked)
    BadRowPolicy(cfg.on_bad_row).decide(report, int(counts["bad"]), first)
    return report


def scan_staged(path: str | Path) -> pl.LazyFrame:
    """The kept rows of a file written by :func:`stage_source` (raw columns, label and ``_line``)."""
    lf = pl.scan_parquet(str(path))
    drop = [BAD] + [c for c in lf.collect_schema().names() if c.startswith("_raw_")]
    return lf.filter(~pl.col(BAD)).drop(drop)


def _staged_query(path: str, cfg: DataConfig, wanted_columns: Iterable[str] | None, label: str | None,
                  numeric: Iterable[str]) -> tuple[pl.LazyFrame, None, set[str]]:
    if cfg.format == "events":  # DIN samples are built in memory (per-user histories)
        frame = din_samples(cfg.events, path)
        wanted = _wanted(path, wanted_columns, frame.columns)
        cols = [*wanted, *([LINE] if LINE not in wanted else [])]
        return frame.lazy().select(*cols, pl.lit(False).alias(BAD)), None, set()
    lf = pl.scan_parquet(path)
    try:
        schema = lf.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataError(f"not a readable Parquet file ({str(exc).splitlines()[0]})", file=path) from None
    wanted = _wanted(path, wanted_columns, list(schema.names()))
    checked = set(numeric) & set(wanted)
    exprs = _parquet_columns(schema, wanted, label, set(numeric))
    return lf.with_row_index(LINE, offset=1).select(*exprs, pl.col(LINE).cast(pl.Int64)), None, checked


def _line_format(path: str, cfg: DataConfig, label: str | None) -> LineFormat:
    head = first_line(path)
    if head is None:
        raise DataError("file is empty", file=path)
    line_no, text = head
    if cfg.format == "criteo":
        return LineFormat((label or "label",) + CRITEO_COLUMNS[1:], "\t", label)
    if cfg.format == "avazu":
        header = line_no if text.split(",")[0].strip() == "id" else 0
        names = tuple(label if n == "click" and label else n for n in AVAZU_COLUMNS)
        return LineFormat(names, ",", label, header, avazu_time=cfg.avazu_time_features)
    if cfg.format == "libfm":
        names = cfg.columns or [f"f{k}" for k in range(len(text.split()) - 1)]
        return LineFormat((label or "label", *names), " ", label, libfm=True)
    if cfg.has_header:
        names = tuple(n.strip() for n in text.removeprefix("\ufeff").split(cfg.separator))
        _check_unique(path, names)
        return LineFormat(names, cfg.separator, label, line_no)
    return LineFormat(tuple(cfg.columns or ()), cfg.separator, label)


def _check_unique(path: str, names: tuple[str, ...]) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"duplicate column names in the header: {dupes}", file=path, line=1)


def _wanted(path: str, wanted: Iterable[str] | None, available: list[str]) -> list[str]:
    cols = list(dict.fromkeys(wanted)) if wanted is not None else list(available)
    missing = [c for c in cols if c not in available]
    if missing:
        raise DataError(f"column {missing[0]!r} is not in the file (missing: {missing}); available columns: "
                        f"{available}", file=path, column=missing[0])
    return cols


def _collect(path: str, lf: pl.LazyFrame) -> pl.DataFrame:
    try:
        return lf.collect()
    except (pl.exceptions.PolarsError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"could not read the file: {first}", file=path) from None


def _read_parquet(path: str, cfg: DataConfig, wanted_columns: Iterable[str] | None, label: str | None,
                  numeric: Iterable[str], limit: int | None = None) -> tuple[pl.DataFrame, ReadReport]:
    lf = pl.scan_parquet(path)
    lf = lf if limit is None else lf.head(limit)
    try:
        schema = lf.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataError(f"not a readable Parquet file ({str(exc).splitlines()[0]})", file=path) from None
    wanted = _wanted(path, wanted_columns, list(schema.names()))
    frame = _collect(path, lf.with_row_index(LINE, offset=1).select(
        *_parquet_columns(schema, wanted, label, set(numeric)), pl.col(LINE).cast(pl.Int64)))
    if frame.height == 0:
        raise DataError("file is empty", file=path)
    report = ReadReport(path, frame.height)
    bad = frame.filter(pl.col(BAD))
    first = _parquet_diagnosis(bad, label, set(numeric) & set(wanted)) if bad.height else None
    if BadRowPolicy(cfg.on_bad_row).decide(report, bad.height, first) is Decision.SKIP:
        frame = frame.filter(~pl.col(BAD))
    return frame.drop(BAD, *[c for c in frame.columns if c.startswith("_raw_")]), report


def _parquet_columns(schema: pl.Schema, wanted: list[str], label: str | None, numeric: set[str]) -> list[pl.Expr]:
    exprs, checks = [], []
    for name in wanted:
        dtype = schema[name]
        if name == label:
            continue
        as_text = pl.List(pl.String) if isinstance(dtype, pl.List) else pl.String
        exprs.append(pl.col(name).cast(as_text).alias(name))
        if name in numeric and dtype == pl.String:
            raw = pl.col(name).str.strip_chars()
            checks.append(raw.is_not_null() & (raw != "") & raw.cast(pl.Float64, strict=False).is_null())
            exprs.append(pl.col(name).alias(f"_raw_{name}"))
    if label is not None and label in schema.names():
        value = (pl.col(label).str.strip_chars() if schema[label] == pl.String else pl.col(label))
        value = value.cast(pl.Float64, strict=False)
        checks.append((value.is_null() | ~value.is_in([0.0, 1.0, -1.0])).fill_null(True))
        exprs.append(pl.when(value == -1.0).then(0.0).otherwise(value).cast(pl.Float32).alias(label))
        exprs.append(pl.col(label).cast(pl.String).alias(f"_raw_{label}"))
    exprs.append(pl.any_horizontal(checks).fill_null(True).alias(BAD) if checks else pl.lit(False).alias(BAD))
    return exprs


def _parquet_diagnosis(bad: pl.DataFrame, label: str | None, numeric: set[str]) -> BadRow:
    row = bad.row(0, named=True)
    line = int(row[LINE])
    if label is not None and f"_raw_{label}" in row:
        raw = row[f"_raw_{label}"]
        if raw is None or row[label] is None or row[label] not in (0.0, 1.0):
            return BadRow(line, f"label {raw!r} is not 0, 1 or -1", label)
    for name in sorted(numeric):
        raw = row.get(f"_raw_{name}")
        if raw is not None and raw.strip():
            try:
                float(raw)
            except ValueError:
                return BadRow(line, f"expected a number, got {raw[:40]!r}", name)
    return BadRow(line, "malformed row")

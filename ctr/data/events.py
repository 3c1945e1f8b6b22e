"""Event log → DIN samples: one sample per event, its history = the same user's strictly earlier events.

Input: a table of events with a user, an item and a timestamp column (plus the columns a label rule
reads, e.g. ``rating``), optionally joined with an item table for item side features (e.g. genres)
and with a user table for user attributes (e.g. age, gender, occupation).
Output (one row per event, plus ``negatives`` sampled rows per event when asked):

* ``user``, ``item`` and every side column (String): the candidate and its side features,
* every ``user_side`` column: the user's attributes (one value per user, not part of the history),
* ``hist_<item>``, ``hist_<side>`` (List(String)): the user's events with a timestamp strictly
  before this event's, oldest first, the last ``max_len`` kept, aligned position by position,
* ``label`` (Float32 0/1) from the rule (e.g. ``rating >= 4``; sampled negatives are 0),
* ``split`` (``train`` / ``valid`` / ``test``): per user by time, the latest ``test_per_user`` events
  go to test, the ``valid_per_user`` before them to valid, the rest to train, so no split sees a later
  event of the same user as history,
* ``_line`` (Int64): the event's line in the events file (1-based, header counted), for errors.

Sampled negatives (seeded) are items the user never touched anywhere in the log, with the event's
user, history, timestamp and split. Everything here is generic: MovieLens is one such log.
"""

import io
import re
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
from pydantic import Field

from ctr.config import StrictConfig
from ctr.errors import ConfigError, DataError

SPLIT_COLUMN = "split"
LINE = "_line"
_RULE = re.compile(r"^\s*([A-Za-z_][\w]*)\s*(>=|<=|==|!=|>|<)\s*(-?\d+(?:\.\d+)?|'[^']*'|\"[^\"]*\")\s*$")
_OPS = {">=": "__ge__", "<=": "__le__", "==": "__eq__", "!=": "__ne__", ">": "__gt__", "<": "__lt__"}


class TableFile(StrictConfig):
    """A delimited text file, optionally a member of a ``.zip``.

    Args:
        path (str | None): the file (for the events table: defaults to ``data.train``).
        member (str | None): file inside the zip at ``path``.
        separator (str): field separator.
        has_header (bool): first line holds the column names.
        columns (list[str] | None): names of the columns when there is no header.
        flags (dict[str, list[str]] | None): one-hot column groups turned into one token column,
            e.g. ``{genres: [unknown, Action, ...]}`` → ``genres`` = the set flag names joined by ``|``.
    """

    path: str | None = None
    member: str | None = None
    separator: str = ","
    has_header: bool = True
    columns: list[str] | None = None
    flags: dict[str, list[str]] | None = None


class EventsConfig(StrictConfig):
    """The ``data.events`` section (``data.format: events``).

    Args:
        events (TableFile): how to read the events file (``data.train``).
        items (TableFile | None): item table joined on ``item_key`` for side columns.
        item_key (str | None): item id column of the item table (default: ``item``).
        users (TableFile | None): user table joined on ``user_key`` for the ``user_side`` columns.
        user_key (str | None): user id column of the user table (default: ``user``).
        user_side (list[str]): user attribute columns (from the events or the user table); a user missing
            from the user table gets nulls (read as missing values).
        user (str): user column. item (str): item column. timestamp (str): event time (integer or date text).
        side (list[str]): item side columns (from the events or the item table), aligned with the history.
        label (str): rule ``column op value`` with op in ``>= <= == != > <``, e.g. ``rating >= 4``.
        max_len (int): keep the last ``max_len`` earlier events.
        negatives (int): sampled negatives per event (0 = none). negative_seed (int): their seed.
        valid_per_user (int): latest events per user (before the test ones) that go to valid.
        test_per_user (int): latest events per user that go to test.
    """

    events: TableFile = TableFile()
    items: TableFile | None = None
    item_key: str | None = None
    users: TableFile | None = None
    user_key: str | None = None
    user_side: list[str] = []
    user: str = "user"
    item: str = "item"
    timestamp: str = "timestamp"
    side: list[str] = []
    label: str
    max_len: int = Field(50, ge=1)
    negatives: int = Field(0, ge=0)
    negative_seed: int = 0
    valid_per_user: int = Field(1, ge=0)
    test_per_user: int = Field(1, ge=0)

    def label_expr(self) -> tuple[str, pl.Expr]:
        m = _RULE.match(self.label)
        if m is None:
            raise ConfigError(f"label rule {self.label!r} is not 'column op value' (op: >= <= == != > <)",
                              "data.events.label")
        col, op, raw = m.groups()
        value = raw[1:-1] if raw[0] in "'\"" else float(raw)
        lhs = pl.col(col).cast(pl.Float64, strict=False) if isinstance(value, float) else pl.col(col).cast(pl.String)
        return col, getattr(lhs, _OPS[op])(value)


def read_table(spec: TableFile, path: str) -> pl.DataFrame:
    """All columns of a delimited file (or zip member) as String, plus ``_line``."""
    try:
        if path.endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                if spec.member is None or spec.member not in zf.namelist():
                    raise DataError(f"zip member {spec.member!r} not found; members: {zf.namelist()}", file=path)
                raw = zf.read(spec.member)
        else:
            raw = Path(path).read_bytes()
        df = pl.read_csv(io.BytesIO(raw), separator=spec.separator, has_header=spec.has_header,
                         new_columns=spec.columns, infer_schema=False, encoding="utf8-lossy", quote_char='"')
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read the file: {exc}", file=path) from None
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"cannot parse the file: {str(exc).strip().splitlines()[0]}", file=path) from None
    df = df.with_row_index(LINE, offset=2 if spec.has_header else 1).with_columns(pl.col(LINE).cast(pl.Int64))
    for name, cols in (spec.flags or {}).items():
        _require(df, cols, path)
        df = df.with_columns(pl.concat_list([pl.when(pl.col(c) == "1").then(pl.lit(c)) for c in cols])
                             .list.drop_nulls().list.join("|").alias(name))
    return df


def _require(df: pl.DataFrame, cols: list[str], path: str) -> None:
    for c in cols:
        if c not in df.columns:
            raise DataError(f"column {c!r} is missing; columns: {[x for x in df.columns if x != LINE]}",
                            file=path, column=c)


def _timestamps(df: pl.DataFrame, col: str, path: str) -> pl.Series:
    text = df.get_column(col).str.strip_chars()
    ts = text.cast(pl.Int64, strict=False)
    if ts.null_count():  # not integers: try date/time text
        try:
            ts = ts.fill_null(text.str.to_datetime(strict=False).dt.epoch("us"))
        except pl.exceptions.PolarsError:  # no date format fits: the non-integers stay null
            pass
    if ts.null_count():
        row = int(ts.is_null().arg_true()[0])
        raise DataError(f"timestamp {df[col][row]!r} does not parse (integer or date/time text)",
                        file=path, line=int(df[LINE][row]), column=col)
    return ts


def din_samples(cfg: EventsConfig, path: str) -> pl.DataFrame:
    """The DIN sample frame of the events file at ``path`` (see the module docstring)."""
    label_col, label = cfg.label_expr()
    events = read_table(cfg.events, path)
    _require(events, [cfg.user, cfg.item, cfg.timestamp, label_col], path)
    events = events.with_columns(_timestamps(events, cfg.timestamp, path).alias("_ts"))
    if cfg.items is not None:
        events = _join_side(events, cfg.items, cfg.item_key or cfg.item, cfg.item, cfg.side, "item", path)
    if cfg.users is not None:
        events = _join_side(events, cfg.users, cfg.user_key or cfg.user, cfg.user, cfg.user_side, "user", path)
    _require(events, [*cfg.side, *cfg.user_side], path)
    overlap = sorted(set(cfg.side) & set(cfg.user_side))
    if overlap:
        raise ConfigError(f"columns {overlap} are both item side and user side columns: name each once",
                          "data.events.user_side")
    bad = events.select(pl.col(label_col).cast(pl.Float64, strict=False).is_null() & pl.lit(label_col != "")).to_series()
    if cfg.label.split()[-1][0] not in "'\"" and bad.any():
        row = int(bad.arg_true()[0])
        raise DataError(f"label column value {events[label_col][row]!r} is not a number", file=path,
                        line=int(events[LINE][row]), column=label_col)
    events = events.with_columns(label.cast(pl.Float32).alias("label"))
    events = events.sort([cfg.user, "_ts", LINE])
    return _build(events, cfg)


def _join_side(events: pl.DataFrame, spec: TableFile, key: str, on: str, columns: list[str], what: str,
               path: str) -> pl.DataFrame:
    """Left-join the ``columns`` of a side table (one row per ``what``, keyed by ``key``) onto the events."""
    table_path = spec.path or path
    table = read_table(spec, table_path)
    wanted = [c for c in columns if c not in events.columns]
    _require(table, [key, *wanted], table_path)
    dup = table.get_column(key).cast(pl.String).is_duplicated()
    if dup.any():
        row = int(dup.arg_true()[1] if dup.sum() > 1 else dup.arg_true()[0])
        raise DataError(f"{what} {table[key][row]!r} appears twice in the {what} table (side features must be "
                        f"one value per {what})", file=table_path, line=int(table[LINE][row]), column=key)
    table = table.select(pl.col(key).cast(events.schema[on]).alias(on), *wanted)
    return events.join(table, on=on, how="left").sort(LINE)


def _build(ev: pl.DataFrame, cfg: EventsConfig) -> pl.DataFrame:
    n = ev.height
    user = ev.get_column(cfg.user).to_numpy()
    ts = ev.get_column("_ts").to_numpy()
    pos = np.arange(n)
    new_user = np.r_[True, user[1:] != user[:-1]]
    new_tie = new_user | np.r_[True, ts[1:] != ts[:-1]]
    user_start = np.maximum.accumulate(np.where(new_user, pos, 0))
    tie_start = np.maximum.accumulate(np.where(new_tie, pos, 0))  # first event of this user at this time
    hist_start = np.maximum(user_start, tie_start - cfg.max_len)
    lengths = tie_start - hist_start  # strictly earlier events only
    user_end = np.r_[pos[new_user][1:], n]
    from_end = np.repeat(user_end, np.diff(np.r_[pos[new_user], n])) - pos  # 1 = the user's latest event
    split = np.where(from_end <= cfg.test_per_user, "test",
                     np.where(from_end <= cfg.test_per_user + cfg.valid_per_user, "valid", "train"))
    idx = np.arange(int(lengths.sum())) + np.repeat(hist_start - (np.cumsum(lengths) - lengths), lengths)
    seq_cols = [cfg.item, *cfg.side]
    hists = {f"hist_{c}": _lists(ev.get_column(c).fill_null("").to_numpy()[idx], lengths) for c in seq_cols}
    out = pl.DataFrame({cfg.user: ev.get_column(cfg.user), **{c: ev.get_column(c) for c in cfg.user_side},
                        **{c: ev.get_column(c) for c in seq_cols},
                        **hists, "label": ev.get_column("label"), SPLIT_COLUMN: split, LINE: ev.get_column(LINE)})
    if cfg.negatives:
        out = pl.concat([out, _negatives(out, ev, cfg)], how="vertical")
    return out


def _lists(values: np.ndarray, lengths: np.ndarray) -> pl.Series:
    """Flat ``values`` cut into ``len(lengths)`` lists (empty lists where a length is 0)."""
    rows = pl.DataFrame({"r": np.repeat(np.arange(len(lengths)), lengths), "v": pl.Series(values, dtype=pl.String)})
    grouped = rows.group_by("r", maintain_order=True).agg(pl.col("v"))
    full = pl.DataFrame({"r": np.arange(len(lengths))}).join(grouped, on="r", how="left", maintain_order="left")
    return full.get_column("v").fill_null(pl.lit([], dtype=pl.List(pl.String)))


def _negatives(out: pl.DataFrame, ev: pl.DataFrame, cfg: EventsConfig) -> pl.DataFrame:
    """``negatives`` rows per event: a random item the user never touched, with its side features."""
    rng = np.random.default_rng(cfg.negative_seed)
    items = ev.unique(cfg.item, keep="first", maintain_order=True).select(cfg.item, *cfg.side)
    codes = {v: i for i, v in enumerate(items.get_column(cfg.item).to_list())}
    touched = ev.group_by(cfg.user).agg(pl.col(cfg.item)).rows()
    seen = {u: {codes[i] for i in its} for u, its in touched}
    users = out.get_column(cfg.user).to_list()
    picks = []
    for u in np.repeat(np.array(users, dtype=object), cfg.negatives):
        s = seen[u]
        if len(s) >= len(codes):
            raise DataError(f"user {u!r} touched every item: no negative can be sampled", column=cfg.user)
        j = int(rng.integers(len(codes)))
        while j in s:
            j = int(rng.integers(len(codes)))
        picks.append(j)
    cand = items[picks]
    base = out[np.repeat(np.arange(out.height), cfg.negatives)]
    return base.with_columns(*[cand.get_column(c).alias(c) for c in [cfg.item, *cfg.side]],
                             pl.lit(0.0, dtype=pl.Float32).alias("label"))

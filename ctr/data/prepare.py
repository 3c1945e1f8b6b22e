"""prepare: raw files → split → fit on train → encoded Parquet shards + FeatureArtifact, cached by content.

Cache layout (``out_root/prepared/<key>/``)::

    features/                 the FeatureArtifact (see ctr.features.artifact)
    train/part-00000.parquet  encoded rows (ctr.features.transform layout), SHARD_ROWS per part
    valid/ test/              the same for the other splits
    prepared.json             row counts, skipped rows per file, the cache key

The key is a sha256 over the input files (absolute path, size, mtime), the data config, the schema
and :data:`PREPARE_FORMAT`; a rerun with the same inputs reuses the folder.
"""

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from ctr.data.badrows import ReadReport
from ctr.data.readers import SPLITS, DataConfig, scan_staged, stage_source
from ctr.data.split import column_code_expr, ratio_codes
from ctr.errors import ArtifactError, DataError
from ctr.features.artifact import FeatureArtifact
from ctr.features.schema import Schema
from ctr.features.tensorize import EncodedColumns
from ctr.features.transform import FeatureTransform

log = logging.getLogger("ctr.data")
PREPARE_FORMAT = "ctr-prepared/2"
ROW_GROUP_ROWS = 65_536
SPLIT_CODE = "_split_code"


@dataclass
class PreparedData:
    """Where a prepared dataset lives and what it holds.

    Args:
        root (Path): the cache folder of this dataset.
        artifact (FeatureArtifact): vocabularies and statistics fit on the train split.
        split_paths (dict[str, Path]): split → folder of ``part-*.parquet`` encoded shards.
        rows (dict[str, int]): split → encoded rows.
        skipped (dict[str, int]): source file → malformed rows skipped (``on_bad_row: skip``).
        cache_hit (bool): the folder was reused rather than built.
    """

    root: Path
    artifact: FeatureArtifact
    split_paths: dict[str, Path]
    rows: dict[str, int]
    skipped: dict[str, int] = field(default_factory=dict)
    cache_hit: bool = False

    @property
    def artifact_dir(self) -> Path:
        return self.root / "features"


def prepare(data_cfg: DataConfig, schema: Schema, out_root: str | Path) -> PreparedData:
    """Prepare (or reuse) the encoded splits and feature artifact for ``data_cfg`` + ``schema``.

    Args:
        data_cfg: the ``data:`` section (files, format, split, bad-row policy).
        schema: the ``features:`` section.
        out_root: cache root (usually ``data_cfg.cache_dir``); data goes to ``out_root/prepared/<key>``.
    """
    sources = {s: data_cfg.files(s) for s in SPLITS if data_cfg.files(s) is not None}
    key = cache_key(data_cfg, schema, sources)
    root = Path(out_root).resolve() / "prepared" / key[:20]  # absolute: workers may run elsewhere
    cached = _load_cached(root)
    if cached is not None:
        log.info("reusing prepared data at %s", root)
        return cached
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _build(data_cfg, schema, sources, tmp, key)
        try:
            tmp.rename(root)
        except OSError:  # another process finished first: use its folder
            log.info("prepared data appeared at %s meanwhile; using it", root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    prepared = _load_cached(root)
    if prepared is None:
        raise ArtifactError(f"{root}: prepared data is incomplete right after writing it; check the disk")
    prepared.cache_hit = False
    return prepared


def cache_key(data_cfg: DataConfig, schema: Schema, sources: dict[str, list[str]]) -> str:
    """sha256 over input file stats, the data config (minus ``cache_dir``), the schema and the format."""
    files = {split: [_stat(p) for p in paths] for split, paths in sources.items()}
    doc = {"format": PREPARE_FORMAT, "files": files,
           "data": data_cfg.model_dump(mode="json", exclude={"cache_dir"}),
           "schema": schema.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _stat(path: str) -> list:
    p = Path(path)
    if not p.is_file():
        where = "" if p.is_absolute() else f" (resolved against {Path.cwd()})"
        raise DataError(f"file not found{where}; check the data section of the pipeline", file=path)
    st = p.stat()
    return [str(p.resolve()), st.st_size, st.st_mtime_ns]


def _build(data_cfg: DataConfig, schema: Schema, sources: dict[str, list[str]], out: Path, key: str) -> None:
    start = time.perf_counter()
    staging = out / "_staged"
    staging.mkdir(parents=True)
    staged, reports = _stage_all(data_cfg, schema, sources, staging)
    splits = split_scans(staged, data_cfg)
    artifact = FeatureArtifact.fit(splits["train"], schema)
    artifact.save(out / "features")
    log.info("prepare [3/4] fit on train: table sizes %s", _short(artifact.table_sizes()))
    transform = FeatureTransform(artifact)
    rows = {}
    for split, lf in splits.items():
        rows[split] = _write_split(transform.encode_lazy(lf), out / split)
    shutil.rmtree(staging)
    log.info("prepare [4/4] encoded %s in %.1fs", rows, time.perf_counter() - start)
    for split, n in rows.items():
        if n == 0:
            log.warning("split %s is empty", split)
    meta = {"format": PREPARE_FORMAT, "key": key, "rows": rows,
            "skipped": {r.file: r.rows_skipped for r in reports},
            "reports": [r.__dict__ for r in reports], "feature_hash": artifact.content_hash}
    (out / "prepared.json").write_text(json.dumps(meta, indent=2))


def _stage_all(data_cfg: DataConfig, schema: Schema, sources: dict[str, list[str]],
               staging: Path) -> tuple[dict[str, list[tuple[Path, int]]], list[ReadReport]]:
    """Stream every source file to a staged Parquet file; split → [(staged file, kept rows)]."""
    wanted = schema.raw_columns + ([data_cfg.split.column] if data_cfg.split.column else [])
    numeric = {f.column for f in schema.numeric_fields}
    staged, reports = {}, []
    for split, paths in sources.items():
        got = []
        for i, path in enumerate(paths):
            target = staging / f"{split}-{i:05d}.parquet"
            got.append(stage_source(path, data_cfg, target, wanted, label=schema.label, numeric=numeric))
            staged.setdefault(split, []).append((target, got[-1].rows_kept))
        reports += got
        log.info("prepare [1/4] read %s: %d rows from %d file(s)%s", split, sum(r.rows_kept for r in got),
                 len(paths), _skip_note(got))
    return staged, reports


def split_scans(staged: dict[str, list[tuple[Path, int]]], cfg: DataConfig) -> dict[str, pl.LazyFrame]:
    """Split → lazy scan of its raw rows in source order; missing splits carved out of train.

    The same assignment as :func:`ctr.data.split.split_frames` (identical rows and order), computed
    from 1 byte per train row (ratio split) or from the split column, never holding the rows.
    """
    scans = {s: pl.concat([scan_staged(p) for p, _ in files]) for s, files in staged.items()}
    missing = [s for s in SPLITS[1:] if s not in scans]
    out = dict(scans)
    if missing:
        train = scans["train"]
        if cfg.split.column is not None:
            col = cfg.split.column
            names = train.collect_schema().names()
            if col not in names:
                raise DataError(f"split.column {col!r} is not among the columns read: {names}", column=col)
            code = column_code_expr(cfg, missing)
            coded = train.with_columns(code.alias(SPLIT_CODE))
        else:
            n = sum(rows for _, rows in staged["train"])
            codes = ratio_codes(n, cfg.split.ratios, cfg.split.seed, missing)
            coded = pl.concat([train, pl.LazyFrame({SPLIT_CODE: codes})], how="horizontal")
        for s in ["train", *missing]:
            out[s] = coded.filter(pl.col(SPLIT_CODE) == SPLITS.index(s)).drop(SPLIT_CODE)
    log.info("prepare [2/4] split: %s", ", ".join(f"{s}" + (" (carved)" if s in missing else "") for s in SPLITS))
    return {s: out[s] for s in SPLITS}


def _skip_note(reports: list[ReadReport]) -> str:
    skipped = sum(r.rows_skipped for r in reports)
    return f", {skipped} malformed row(s) skipped" if skipped else ""


def _short(sizes: dict[str, int], n: int = 8) -> str:
    items = list(sizes.items())
    text = ", ".join(f"{k}={v}" for k, v in items[:n])
    return text + (f", ... ({len(items)} tables)" if len(items) > n else "")


def _write_split(encoded: pl.LazyFrame, folder: Path) -> int:
    """Sink one encoded split to ``folder/part-00000.parquet`` in row groups of :data:`ROW_GROUP_ROWS`."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "part-00000.parquet"
    try:
        encoded.sink_parquet(str(target), row_group_size=ROW_GROUP_ROWS, engine="streaming")
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"cannot encode these rows: {str(exc).strip().splitlines()[0]}") from None
    return int(pl.scan_parquet(str(target)).select(pl.len()).collect().item())


def _load_cached(root: Path) -> PreparedData | None:
    meta_path = root / "prepared.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != PREPARE_FORMAT:
            raise ArtifactError(f"format {meta.get('format')!r} is not {PREPARE_FORMAT!r}")
        artifact = FeatureArtifact.load(root / "features")
    except (ArtifactError, ValueError) as exc:
        log.warning("ignoring unusable prepared data at %s (%s); preparing again", root, exc)
        shutil.rmtree(root, ignore_errors=True)
        return None
    paths = {s: root / s for s in SPLITS}
    return PreparedData(root, artifact, paths, meta["rows"], meta["skipped"], cache_hit=True)


def load_split(prepared: PreparedData, split: str) -> EncodedColumns:
    """Read one encoded split into memory as :class:`~ctr.features.tensorize.EncodedColumns`."""
    if split not in prepared.split_paths:
        raise DataError(f"unknown split {split!r}; prepared splits: {sorted(prepared.split_paths)}")
    return read_encoded(prepared.split_paths[split], prepared.artifact.schema)


def _encoded_source(path: str | Path) -> str:
    p = Path(path)
    return str(p / "*.parquet") if p.is_dir() else str(p)


def count_encoded(path: str | Path) -> int:
    """Rows of an encoded split, from the Parquet footers (no row is read)."""
    return int(pl.scan_parquet(_encoded_source(path)).select(pl.len()).collect().item())


def read_encoded(path: str | Path, schema: Schema, rows: tuple[int, int] | None = None) -> EncodedColumns:
    """Read an encoded split (a ``part-*.parquet`` folder or one Parquet file) into memory.

    ``rows=(lo, hi)`` reads only that row range (a rank's share, ``ctr.data.loader.rank_rows``):
    polars skips the row groups outside it, so memory holds the range, not the split.
    """
    if rows is None:
        return EncodedColumns.from_frame(pl.read_parquet(_encoded_source(path)), schema)
    lo, hi = rows
    frame = pl.scan_parquet(_encoded_source(path)).slice(lo, hi - lo).collect()
    return EncodedColumns.from_frame(frame, schema)

"""FeatureArtifact: everything fit on train that encoding needs, saved as JSON + Parquet (never pickle).

Folder layout::

    schema.json     the feature Schema
    vocab.parquet   columns table, id, value, count (id 0 = OOV, its value null, its count = rare values)
    numeric.json    numeric field → {"mean", "std"} (raw value after fill_value, fit on train)
    hashing.json    only when some table is hash-encoded: {"spec", "seed", "tables", "cardinality"}
                    (the hash spec of :mod:`ctr.features.hashing`, the hashed tables and their number of
                    distinct train values seen ``min_count`` times, i.e. the rows a vocabulary would have:
                    the collisionless reference of embedding budgets; no values are stored)
    manifest.json   format version, sha256 of each file above and their combined content hash

:meth:`FeatureArtifact.load` verifies every checksum and raises :class:`~ctr.errors.ArtifactError`
on a missing, modified or incompatible file.
"""

import hashlib
import io
import json
from functools import cached_property
from pathlib import Path

import polars as pl
from pydantic import ValidationError

from ctr.errors import ArtifactError
from ctr.features.hashing import SPEC as HASH_SPEC
from ctr.features.layout import FieldLayout
from ctr.features.schema import Schema
from ctr.features.vocab import VOCAB_SCHEMA, fit_cardinality, fit_numeric_stats, fit_vocab

FORMAT = "ctr-features/1"
FILES = ("schema.json", "vocab.parquet", "numeric.json")
HASHING_FILE = "hashing.json"


class FeatureArtifact:
    """Schema + per-table vocabularies (with train counts) + numeric statistics.

    Args:
        schema (Schema): the feature schema the rest was fit for.
        vocab (pl.DataFrame): ``table, id, value, count`` rows for every table (id 0 = OOV).
        numeric (dict[str, dict[str, float]]): numeric field name → ``{"mean", "std"}``.
        hashing (dict | None): ``{"spec", "seed", "tables", "cardinality"}`` when tables are hash-encoded.

    Example::

        >>> schema = Schema.model_validate({"fields": [{"name": "c"}]})
        >>> art = FeatureArtifact.fit(pl.DataFrame({"c": ["x", "y", "x"]}), schema)
        >>> art.table_sizes(), art.table_counts()
        ({'c': 3}, {'c': [0, 2, 1]})
    """

    def __init__(self, schema: Schema, vocab: pl.DataFrame, numeric: dict[str, dict[str, float]],
                 content_hash: str | None = None, hashing: dict | None = None) -> None:
        self.schema = schema
        self.hashing = hashing if hashing and hashing.get("tables") else None
        self.vocab = vocab.cast(VOCAB_SCHEMA).select(list(VOCAB_SCHEMA)).sort(["table", "id"])
        self.numeric = {k: dict(v) for k, v in numeric.items()}
        self._hash = content_hash

    @classmethod
    def fit(cls, train: pl.DataFrame | pl.LazyFrame, schema: Schema) -> "FeatureArtifact":
        """Fit vocabularies and numeric statistics on the train split's raw columns."""
        hashing = None
        candidates = schema.hash_candidates()
        if candidates:
            cards = fit_cardinality(train, schema, candidates)
            hashed = [t for t in candidates if cards[t] >= schema.hash_min_cardinality]
            hashing = {"spec": HASH_SPEC, "seed": schema.hash_seed, "tables": hashed,
                       "cardinality": {t: cards[t] for t in hashed}}
        skip = set(hashing["tables"]) if hashing else set()
        return cls(schema, fit_vocab(train, schema, skip), fit_numeric_stats(train, schema), hashing=hashing)

    @property
    def hashed_tables(self) -> list[str]:
        """Tables encoded by hashing (no vocabulary), in schema order."""
        return list(self.hashing["tables"]) if self.hashing else []

    @property
    def hash_seed(self) -> int:
        return int(self.hashing["seed"]) if self.hashing else self.schema.hash_seed

    @cached_property
    def _tables(self) -> dict[str, pl.DataFrame]:
        parts = self.vocab.partition_by("table", as_dict=True, maintain_order=True)
        return {key[0]: frame.drop("table") for key, frame in parts.items()}

    def vocabularies(self) -> dict[str, pl.DataFrame]:
        """Table → ``id, value, count`` of its in-vocabulary values (ids ≥ 1, frequency order)."""
        return {t: f.filter(pl.col("id") > 0) for t, f in self._tables.items()}

    def table_sizes(self) -> dict[str, int]:
        """Table → embedding rows (vocabulary size + 1 for OOV id 0), in schema order."""
        cards = self.hashing["cardinality"] if self.hashing else {}
        return {t: int(cards[t]) + 1 if t in cards else int(self._tables[t]["id"].max()) + 1
                if t in self._tables else 1 for t in self.schema.tables}

    def table_counts(self) -> dict[str, list[int]]:
        """Table → train count of every id (index = id; index 0 = values below min_count)."""
        return {t: self._tables[t]["count"].to_list() if t in self._tables else [0] for t in self.schema.tables}

    def layout(self) -> FieldLayout:
        """The :class:`~ctr.features.layout.FieldLayout` model and embedding builders take."""
        return FieldLayout(self.schema, self.table_sizes(), self.table_counts(), tuple(self.hashed_tables),
                           self.hash_seed)

    @property
    def content_hash(self) -> str:
        """sha256 over the artifact's files (stable for the same content and library versions)."""
        if self._hash is None:
            self._hash = _combined(_file_hashes(self._payload()))
        return self._hash

    def _payload(self) -> dict[str, bytes]:
        buf = io.BytesIO()
        self.vocab.write_parquet(buf, statistics=False)
        out = {"schema.json": self.schema.model_dump_json(indent=2).encode(),
               "vocab.parquet": buf.getvalue(),
               "numeric.json": json.dumps(self.numeric, indent=2, sort_keys=True).encode()}
        if self.hashing:
            out[HASHING_FILE] = json.dumps(self.hashing, indent=2, sort_keys=True).encode()
        return out

    def save(self, directory: str | Path) -> Path:
        """Write the folder (files first, manifest last) and return its path."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        payload = self._payload()
        for name, data in payload.items():
            (out / name).write_bytes(data)
        hashes = _file_hashes(payload)
        self._hash = _combined(hashes)
        manifest = {"format": FORMAT, "content_sha256": _combined(hashes), "files": hashes,
                    "table_sizes": self.table_sizes()}
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
        return out

    @classmethod
    def load(cls, directory: str | Path) -> "FeatureArtifact":
        """Read and verify a folder written by :meth:`save`."""
        root = Path(directory)
        manifest = _read_manifest(root)
        payload = {}
        for name in FILES + ((HASHING_FILE,) if HASHING_FILE in manifest["files"] else ()):
            path = root / name
            if not path.is_file():
                raise ArtifactError(f"{path}: missing; the feature artifact is incomplete, run prepare again")
            payload[name] = path.read_bytes()
            if _sha256(payload[name]) != manifest["files"].get(name):
                raise ArtifactError(f"{path}: checksum differs from manifest.json; the artifact was modified "
                                    "after it was written, run prepare again")
        hashing = _parse_hashing(root, payload)
        return cls(*_parse(root, payload), content_hash=manifest["content_sha256"], hashing=hashing)


def _read_manifest(root: Path) -> dict:
    path = root / "manifest.json"
    if not path.is_file():
        raise ArtifactError(f"{root} is not a feature artifact: manifest.json is missing")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise ArtifactError(f"{path}: format {got!r} is not {FORMAT!r}; prepare the data with this version")
    if not isinstance(manifest.get("files"), dict) or _combined(manifest["files"]) != manifest.get("content_sha256"):
        raise ArtifactError(f"{path}: file list and content hash disagree; the manifest was modified")
    return manifest


def _parse(root: Path, payload: dict[str, bytes]) -> tuple[Schema, pl.DataFrame, dict]:
    try:
        schema = Schema.model_validate_json(payload["schema.json"])
        vocab = pl.read_parquet(io.BytesIO(payload["vocab.parquet"]))
        numeric = json.loads(payload["numeric.json"])
    except (ValidationError, ValueError, pl.exceptions.PolarsError) as exc:
        raise ArtifactError(f"{root}: unreadable feature artifact ({str(exc).splitlines()[0]})") from None
    if dict(vocab.schema) != VOCAB_SCHEMA:
        raise ArtifactError(f"{root / 'vocab.parquet'}: columns {dict(vocab.schema)} are not {VOCAB_SCHEMA}")
    missing = [f.name for f in schema.numeric_fields if f.name not in numeric]
    if missing:
        raise ArtifactError(f"{root / 'numeric.json'}: no statistics for numeric fields {missing}")
    return schema, vocab, numeric


def _parse_hashing(root: Path, payload: dict[str, bytes]) -> dict | None:
    if HASHING_FILE not in payload:
        return None
    try:
        hashing = json.loads(payload[HASHING_FILE])
    except ValueError as exc:
        raise ArtifactError(f"{root / HASHING_FILE}: unreadable ({exc})") from None
    if not isinstance(hashing, dict) or hashing.get("spec") != HASH_SPEC:
        got = hashing.get("spec") if isinstance(hashing, dict) else None
        raise ArtifactError(f"{root / HASHING_FILE}: hash spec {got!r} is not {HASH_SPEC!r}; this version cannot "
                            "reproduce the ids the model was trained on, prepare and train again")
    return hashing


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_hashes(payload: dict[str, bytes]) -> dict[str, str]:
    return {name: _sha256(data) for name, data in sorted(payload.items())}


def _combined(hashes: dict[str, str]) -> str:
    text = "".join(f"{name}\0{digest}\n" for name, digest in sorted(hashes.items()))
    return _sha256(text.encode())

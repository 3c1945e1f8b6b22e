"""FeatureArtifact: everything fit on train that encoding needs, saved as JSON + Parquet (never pickle).

Folder layout::

    schema.json     the feature Schema
    vocab.parquet   columns table, id, value, count (id 0 = OOV, its value null, its count = rare values)
    numeric.json    numeric field → {"mean", "std"} (raw value after fill_value, fit on train)
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
from ctr.features.layout import FieldLayout
from ctr.features.schema import Schema
from ctr.features.vocab import VOCAB_SCHEMA, fit_numeric_stats, fit_vocab

FORMAT = "ctr-features/1"
FILES = ("schema.json", "vocab.parquet", "numeric.json")


class FeatureArtifact:
    """Schema + per-table vocabularies (with train counts) + numeric statistics.

    Args:
        schema (Schema): the feature schema the rest was fit for.
        vocab (pl.DataFrame): ``table, id, value, count`` rows for every table (id 0 = OOV).
        numeric (dict[str, dict[str, float]]): numeric field name → ``{"mean", "std"}``.

    Example::

        >>> schema = Schema.model_validate({"fields": [{"name": "c"}]})
        >>> art = FeatureArtifact.fit(pl.DataFrame({"c": ["x", "y", "x"]}), schema)
        >>> art.table_sizes(), art.table_counts()
        ({'c': 3}, {'c': [0, 2, 1]})
    """

    def __init__(self, schema: Schema, vocab: pl.DataFrame, numeric: dict[str, dict[str, float]],
                 content_hash: str | None = None) -> None:
        self.schema = schema
        self.vocab = vocab.cast(VOCAB_SCHEMA).select(list(VOCAB_SCHEMA)).sort(["table", "id"])
        self.numeric = {k: dict(v) for k, v in numeric.items()}
        self._hash = content_hash

    @classmethod
    def fit(cls, train: pl.DataFrame | pl.LazyFrame, schema: Schema) -> "FeatureArtifact":
        """Fit vocabularies and numeric statistics on the train split's raw columns."""
        return cls(schema, fit_vocab(train, schema), fit_numeric_stats(train, schema))

    @cached_property
    def _tables(self) -> dict[str, pl.DataFrame]:
        parts = self.vocab.partition_by("table", as_dict=True, maintain_order=True)
        return {key[0]: frame.drop("table") for key, frame in parts.items()}

    def vocabularies(self) -> dict[str, pl.DataFrame]:
        """Table → ``id, value, count`` of its in-vocabulary values (ids ≥ 1, frequency order)."""
        return {t: f.filter(pl.col("id") > 0) for t, f in self._tables.items()}

    def table_sizes(self) -> dict[str, int]:
        """Table → embedding rows (vocabulary size + 1 for OOV id 0), in schema order."""
        return {t: int(self._tables[t]["id"].max()) + 1 if t in self._tables else 1 for t in self.schema.tables}

    def table_counts(self) -> dict[str, list[int]]:
        """Table → train count of every id (index = id; index 0 = values below min_count)."""
        return {t: self._tables[t]["count"].to_list() if t in self._tables else [0] for t in self.schema.tables}

    def layout(self) -> FieldLayout:
        """The :class:`~ctr.features.layout.FieldLayout` model and embedding builders take."""
        return FieldLayout(self.schema, self.table_sizes(), self.table_counts())

    @property
    def content_hash(self) -> str:
        """sha256 over the artifact's files (stable for the same content and library versions)."""
        if self._hash is None:
            self._hash = _combined(_file_hashes(self._payload()))
        return self._hash

    def _payload(self) -> dict[str, bytes]:
        buf = io.BytesIO()
        self.vocab.write_parquet(buf, statistics=False)
        return {"schema.json": self.schema.model_dump_json(indent=2).encode(),
                "vocab.parquet": buf.getvalue(),
                "numeric.json": json.dumps(self.numeric, indent=2, sort_keys=True).encode()}

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
        for name in FILES:
            path = root / name
            if not path.is_file():
                raise ArtifactError(f"{path}: missing; the feature artifact is incomplete, run prepare again")
            payload[name] = path.read_bytes()
            if _sha256(payload[name]) != manifest["files"].get(name):
                raise ArtifactError(f"{path}: checksum differs from manifest.json; the artifact was modified "
                                    "after it was written, run prepare again")
        return cls(*_parse(root, payload), content_hash=manifest["content_sha256"])


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


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_hashes(payload: dict[str, bytes]) -> dict[str, str]:
    return {name: _sha256(data) for name, data in sorted(payload.items())}


def _combined(hashes: dict[str, str]) -> str:
    text = "".join(f"{name}\0{digest}\n" for name, digest in sorted(hashes.items()))
    return _sha256(text.encode())

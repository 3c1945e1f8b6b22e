import json

import polars as pl
import pytest

from ctr.errors import ArtifactError
from ctr.features.artifact import FeatureArtifact
from ctr.features.layout import FieldLayout
from ctr.features.schema import Schema
from ctr.features.transform import FeatureTransform

SCHEMA = Schema.model_validate({"min_count": 2, "fields": [
    {"name": "a"}, {"name": "b"}, {"name": "s", "kind": "sequence", "table": "a"},
    {"name": "n", "kind": "numeric", "transform": "standardize"}]})
TRAIN = pl.DataFrame({"a": ["x", "y", "x", "z"], "b": ["p", "p", "q", "p"], "s": ["x|y", "w", "", "y"],
                      "n": ["1", "2", "3", "4"]})


@pytest.fixture
def artifact() -> FeatureArtifact:
    return FeatureArtifact.fit(TRAIN, SCHEMA)


def test_sizes_counts_and_layout(artifact):
    # table a counts fields a and s: x 3, y 3 (tie → by value), z and w once each → OOV count 2
    assert artifact.table_sizes() == {"a": 3, "b": 2}
    assert artifact.table_counts() == {"a": [2, 3, 3], "b": [1, 3]}
    assert artifact.vocabularies()["a"]["value"].to_list() == ["x", "y"]
    layout = artifact.layout()
    assert isinstance(layout, FieldLayout) and layout.num_fields == 4 and layout.table_sizes["a"] == 3


def test_save_load_round_trip(artifact, tmp_path):
    artifact.save(tmp_path / "f")
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == [
        "manifest.json", "numeric.json", "schema.json", "vocab.parquet"]
    back = FeatureArtifact.load(tmp_path / "f")
    assert back.schema == artifact.schema and back.vocab.equals(artifact.vocab)
    assert back.numeric == artifact.numeric and back.content_hash == artifact.content_hash
    assert back.table_counts() == artifact.table_counts()
    assert FeatureTransform(back).apply(TRAIN).equals(FeatureTransform(artifact).apply(TRAIN))
    vocab = pl.read_parquet(tmp_path / "f" / "vocab.parquet")
    assert vocab.columns == ["table", "id", "value", "count"]


def test_content_hash_depends_on_content(artifact):
    again = FeatureArtifact.fit(TRAIN, SCHEMA)
    assert again.content_hash == artifact.content_hash
    other = FeatureArtifact.fit(TRAIN.with_columns(pl.lit("k").alias("b")), SCHEMA)
    assert other.content_hash != artifact.content_hash


@pytest.mark.parametrize("name", ["vocab.parquet", "numeric.json", "schema.json"])
def test_tampered_file_is_refused(artifact, tmp_path, name):
    root = artifact.save(tmp_path / "f")
    path = root / name
    if name == "numeric.json":
        path.write_text(json.dumps({"n": {"mean": 0.0, "std": 1.0}}))
    elif name == "schema.json":
        path.write_text(path.read_text().replace('"min_count": 2', '"min_count": 1'))
    else:
        pl.read_parquet(path).with_columns(pl.col("count") + 1).write_parquet(path)
    with pytest.raises(ArtifactError, match=f"{name}: checksum differs"):
        FeatureArtifact.load(root)


def test_missing_files_and_bad_manifest(artifact, tmp_path):
    root = artifact.save(tmp_path / "f")
    (root / "numeric.json").unlink()
    with pytest.raises(ArtifactError, match="numeric.json: missing"):
        FeatureArtifact.load(root)
    root = artifact.save(tmp_path / "g")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"]["vocab.parquet"] = "0" * 64
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="manifest was modified"):
        FeatureArtifact.load(root)
    (root / "manifest.json").write_text(json.dumps({**manifest, "format": "ctr-features/0"}))
    with pytest.raises(ArtifactError, match="format"):
        FeatureArtifact.load(root)
    with pytest.raises(ArtifactError, match="manifest.json is missing"):
        FeatureArtifact.load(tmp_path / "nothing")

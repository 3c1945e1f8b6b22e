"""The register stage takes its example rows from the head of the test file without reading the rest."""

from pipelines.spec import build_spec
from pipelines.stages.register import EXAMPLE_ROWS, example_rows
from tests.conftest import TINY_FIELDS


def _criteo_line(i: int) -> str:
    return "\t".join([str(i % 2), *[str(i + k) for k in range(13)], *[f"{i * 31 + k:08x}" for k in range(26)]])


def test_example_rows_read_only_the_head_of_the_test_file(tmp_path):
    lines = [_criteo_line(i) for i in range(200)]
    lines[150] = "not a criteo row"  # a full read with on_bad_row: error would refuse the file here
    test = tmp_path / "test.txt"
    test.write_text("\n".join(lines) + "\n")
    spec = build_spec({"data": {"format": "criteo", "train": str(test), "test": str(test), "on_bad_row": "error"},
                       "features": {"label": "label", "fields": TINY_FIELDS},
                       "model": {"name": "lr"}}, "t", "t.yaml")
    rows = example_rows(spec)
    assert len(rows) == EXAMPLE_ROWS
    assert rows[1]["C1"] == f"{31:08x}" and rows[3]["I2"] == "4"

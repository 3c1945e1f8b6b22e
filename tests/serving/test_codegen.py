"""The committed gRPC stubs must be exactly what grpcio-tools generates from protos/ today."""

from serving import codegen


def test_stubs_are_fresh(tmp_path):
    written = codegen.generate(tmp_path)
    assert {p.name for p in written} == {"__init__.py", "scorer_pb2.py", "scorer_pb2.pyi", "scorer_pb2_grpc.py"}
    stale = [p.name for p in written if p.read_text() != (codegen.OUT / p.name).read_text()]
    assert not stale, f"serving/_proto is stale ({stale}); run `make protos` and commit the result"


def test_generated_package_is_the_versioned_api():
    from serving._proto import scorer_pb2

    assert scorer_pb2.DESCRIPTOR.package == "ctr.scoring.v1"
    value = scorer_pb2.DESCRIPTOR.message_types_by_name["Value"]
    assert [f.name for f in value.oneofs_by_name["kind"].fields] == [
        "int64_value", "double_value", "string_value", "int64_list", "double_list", "string_list"]

import pickle

import pytest

import ctr._stack as stack
from ctr.errors import ConfigError, CtrError, DataError, StackError


def test_errors_pickle_round_trip_with_context():
    err = DataError("expected 40 fields, found 39", file="a.tsv", line=17)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is DataError and str(back) == str(err)
    assert "a.tsv line 17" in str(back) and back.context["line"] == 17
    assert isinstance(back, CtrError) and back.grpc_status == "INVALID_ARGUMENT"


def test_config_error_names_path():
    assert str(ConfigError("unknown key", "model.dnn_hiden")) == "model.dnn_hiden: unknown key"


def test_installed_stack_is_known_good():
    stack.check_stack()  # the venv built by `make install` must pass


def test_bad_stack_fails_with_one_sentence_naming_versions(monkeypatch):
    fake = {"torch": "2.13.0+cpu", "fbgemm-gpu-cpu": None, "fbgemm-gpu": "1.9.0", "torchrec": "1.8.0"}
    monkeypatch.setattr(stack, "installed_stack", lambda: fake)
    monkeypatch.delenv("CTR_SKIP_STACK_CHECK", raising=False)
    with pytest.raises(StackError) as info:
        stack.check_stack()
    msg = str(info.value)
    assert "fbgemm-gpu 1.9.0" in msg and "torchrec 1.8.0" in msg and "fbgemm-gpu-cpu 1.8.0" in msg
    assert "\n" not in msg

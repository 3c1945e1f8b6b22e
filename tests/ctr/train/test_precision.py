"""``train.precision: bf16``: the training forward under bfloat16 autocast, everything stored stays float32."""

import dataclasses

import numpy as np
import polars as pl
import pytest
import torch

from ctr.data.loader import BatchIterator
from ctr.errors import ConfigError
from ctr.features.schema import Schema
from ctr.features.tensorize import EncodedColumns
from ctr.models.layers import field_attention as fa
from ctr.train.loop import TrainConfig, fit, training_precision
from ctr.train.objective import Objective


class Tower(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
        self.seen: list[torch.dtype] = []

    def forward(self, dense, sparse):
        out = self.net(dense).squeeze(-1)
        self.seen.append(out.dtype)
        return out


def _fit(precision: str):
    schema = Schema.model_validate({"fields": [{"name": "c"}] + [{"name": f"x{i}", "kind": "numeric"} for i in range(4)]})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype(np.float32)
    frame = pl.DataFrame({"c": np.zeros(256, dtype=np.int64), **{f"x{i}": x[:, i] for i in range(4)},
                          "_label": (x @ np.array([1.0, -2.0, 0.5, 0.0]) > 0).astype(np.float32)})
    model = Tower()
    cfg = TrainConfig(epochs=2, patience=2, progress=False, precision=precision)
    result = fit(model, torch.optim.Adam(model.parameters(), lr=0.01), Objective(),
                 BatchIterator(EncodedColumns.from_frame(frame, schema), 32, shuffle=True, seed=0),
                 lambda: {"auc": 0.5, "logloss": 0.7}, cfg)
    return model, np.array(result.step_losses)


def test_bf16_runs_the_forward_in_bfloat16_and_keeps_float32_weights():
    model32, loss32 = _fit("fp32")
    model16, loss16 = _fit("bf16")
    assert set(model32.seen) == {torch.float32} and set(model16.seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model16.parameters())
    assert np.isfinite(loss16).all() and not np.array_equal(loss16, loss32)  # autocast changed the arithmetic
    np.testing.assert_allclose(loss16, loss32, atol=0.03)  # ... by bfloat16's rounding, not more
    assert loss16[-4:].mean() < 0.6 * loss16[:4].mean()  # and it learns


def test_precision_is_validated_and_off_by_default():
    assert TrainConfig().precision == "fp32"
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig.parse({"precision": "fp16"}, "train")
    with training_precision(TrainConfig(), "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with training_precision(TrainConfig(precision="bf16"), "cpu"):
        assert torch.is_autocast_enabled("cpu")


def test_attention_under_autocast_runs_the_fused_kernel_in_float32():
    torch.manual_seed(0)
    proj = torch.nn.Linear(8, 3 * 2 * 4, bias=False)
    x = torch.randn(6, 5, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        qkv = proj(x).view(6, 5, 3, 2, 4)
        assert qkv.dtype == torch.bfloat16
        out = fa.packed_field_attention(qkv, 0.5)
    assert out.dtype == torch.float32
    if fa.kernel() is None:
        pytest.skip(f"fused kernel unavailable: {fa.unavailable_reason()}")
    ref = fa.packed_field_attention(qkv.detach().float(), 0.5)  # the same bf16-rounded inputs, in float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert proj.weight.grad is not None and proj.weight.grad.dtype == torch.float32


@pytest.mark.slow
def test_bf16_autoint_plus_trains_through_dmp_like_fp32(tiny_prepared, tmp_path):
    from ctr.distributed.worker import run_worker
    from ctr.models import parse_model_config
    from pipelines.stages.train import make_job

    spec, prepared = tiny_prepared
    spec = dataclasses.replace(spec, model=parse_model_config(
        {"name": "autoint_plus", "embedding_dim": 8, "attention_layers": 1, "num_heads": 2, "attention_dim": 4,
         "dnn_hidden": [32]}))
    runs = {}
    for precision in ("fp32", "bf16"):
        job_spec = dataclasses.replace(spec, train=spec.train.model_copy(update={"precision": precision}))
        runs[precision] = run_worker(make_job(job_spec, prepared, tmp_path / precision))
    a, b = (np.array(runs[p].fit.step_losses) for p in ("fp32", "bf16"))
    assert len(a) == len(b) > 20 and np.isfinite(b).all() and not np.array_equal(a, b)
    np.testing.assert_allclose(b, a, atol=0.05)
    assert runs["bf16"].valid["auc"] == pytest.approx(runs["fp32"].valid["auc"], abs=0.02)
    assert runs["bf16"].valid["auc"] > 0.55

"""The fused field-attention kernel against float64 attention written out by hand, and its fallbacks."""

import os
import subprocess
import sys

import pytest
import torch

from ctr.models.layers import field_attention as fa


def reference(q, k, v, scale):
    """``softmax(q kᵀ · scale) v`` per (example, head) in float64, ``[B, L, H, d]``."""
    q, k, v = (t.double().transpose(1, 2) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)
    return (weights @ v).transpose(1, 2)


def test_the_kernel_builds_on_this_machine():
    assert fa.kernel() is not None, fa.unavailable_reason()


@pytest.mark.parametrize(("batch", "tokens", "heads", "width"), [
    (3, 1, 1, 8),     # one token: the weight is exactly 1
    (5, 7, 2, 4),     # fewer tokens than a vector
    (4, 16, 3, 8),    # exactly one vector of queries
    (6, 17, 2, 16),   # one past a vector
    (9, 39, 2, 8),    # AutoInt on Criteo-like data (the benchmark's shape)
    (2, 39, 2, 32),   # the reference block's d' = 32
    (3, 10, 2, 6),    # a width without a compiled specialisation (the generic loop)
    (2, 50, 1, 12),   # generic width, several query blocks
])
def test_forward_and_gradients_match_float64(batch, tokens, heads, width):
    torch.manual_seed(batch * 100 + tokens)
    scale = width ** -0.5
    q, k, v = (torch.randn(batch, tokens, heads, width, requires_grad=True) for _ in range(3))
    grad = torch.randn(batch, tokens, heads, width)
    assert fa.fused_applies(torch.stack((q, k, v), dim=2), 0.0)
    out = fa.field_attention(q, k, v, scale)
    out.backward(grad)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    expected = reference(*leaves, scale)
    expected.backward(grad.double())
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    for name, got, want in zip("qkv", (q.grad, k.grad, v.grad), leaves, strict=True):
        torch.testing.assert_close(got.double(), want.grad, rtol=1e-4, atol=1e-5, msg=f"d{name}")


def test_large_scores_stay_finite_and_pick_the_best_key():
    q = torch.zeros(1, 4, 1, 8)
    k = torch.zeros(1, 4, 1, 8)
    q[..., 0], k[0, 2, 0, 0] = 100.0, 100.0  # score 10^4 for key 2, 0 for the others
    v = torch.arange(4.0).repeat_interleave(8).view(1, 4, 1, 8)
    out = fa.field_attention(q, k, v, scale=1.0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.full_like(out, 2.0))


def test_packed_projection_output_matches_and_gets_one_gradient():
    torch.manual_seed(0)
    y = torch.randn(4, 9, 3 * 16, requires_grad=True)  # q | k | v of one matmul, each [B, L, H=2, d=8]
    out = fa.packed_field_attention(y.view(4, 9, 3, 2, 8), 0.3)
    leaf = y.detach().double().requires_grad_()
    q, k, v = (leaf[..., i * 16:(i + 1) * 16].unflatten(-1, (2, 8)) for i in range(3))
    expected = reference(q, k, v, 0.3)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad.double())
    torch.testing.assert_close(y.grad.double(), leaf.grad, rtol=1e-4, atol=1e-5)


def test_dropout_and_float64_fall_back_to_sdpa():
    q = torch.randn(2, 5, 2, 4)
    assert not fa.fused_applies(torch.stack((q, q, q), dim=2), dropout_p=0.1)
    assert not fa.fused_applies(torch.stack((q, q, q), dim=2).double(), dropout_p=0.0)
    torch.manual_seed(0)
    out = fa.field_attention(q.double(), q.double(), q.double(), 0.5)
    torch.testing.assert_close(out, reference(q, q, q, 0.5))
    dropped = fa.field_attention(q, q, q, 0.5, dropout_p=0.5)
    assert dropped.shape == q.shape and not torch.allclose(dropped.double(), reference(q, q, q, 0.5))


def test_the_op_is_registered_for_torch_compile():
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 6, 2, 8) for _ in range(3))
    compiled = torch.compile(lambda a, b, c: fa.field_attention(a, b, c, 0.35), fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v).double(), reference(q, k, v, 0.35), rtol=1e-5, atol=1e-5)


def run_fresh(code: str, **env: str) -> str:
    """stdout of ``code`` run in a fresh interpreter with ``env`` added (the kernel state is per process)."""
    done = subprocess.run([sys.executable, "-c", "import torch; from ctr.models.layers import field_attention as fa\n"
                           + code], check=False, capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_switching_the_kernel_off_uses_sdpa_with_the_same_result():
    out = run_fresh("torch.manual_seed(0); q = torch.randn(2, 7, 2, 8)\n"
                    "assert fa.kernel() is None and fa.unavailable_reason() == 'CTR_FUSED_ATTENTION=0'\n"
                    "assert not fa.fused_applies(torch.stack((q, q, q), dim=2), 0.0)\n"
                    "print(repr(fa.field_attention(q, q, q, 0.5).sum().item()))\n", CTR_FUSED_ATTENTION="0")
    torch.manual_seed(0)
    q = torch.randn(2, 7, 2, 8)
    assert float(out) == pytest.approx(fa.field_attention(q, q, q, 0.5).sum().item(), abs=1e-4)


def test_an_unwritable_cache_falls_back_with_a_reason():
    out = run_fresh("q = torch.randn(2, 7, 2, 8)\n"
                    "assert fa.kernel() is None, 'built anyway'\n"
                    "print(fa.unavailable_reason())\n"
                    "assert fa.field_attention(q, q, q, 0.5).shape == q.shape\n", CTR_KERNEL_CACHE="/proc/no-such-dir")
    assert "no writable kernel cache" in out and "CTR_KERNEL_CACHE" in out


def test_flop_counter_counts_the_attention():
    from torch.utils.flop_counter import FlopCounterMode

    qkv = torch.randn(4, 10, 3, 2, 8, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        fa.packed_field_attention(qkv, 0.3).sum().backward()
    # forward q kᵀ and weights·v: 2 · (2 · B·H·L²·d); backward twice that
    assert counter.get_total_flops() == 3 * 4 * 4 * 2 * 10 * 10 * 8


def test_a_lock_left_by_a_killed_build_is_removed_under_our_own_lock(tmp_path):
    # torch's build waits for `lock` to disappear: left by a build killed mid-way, it used to hang every later run
    (tmp_path / "lock").write_text("")
    with fa._build_lock(tmp_path):
        assert not (tmp_path / "lock").exists()
        import fcntl

        with open(tmp_path / "ctr-build.flock") as other:  # held: a second builder would wait, not race
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(tmp_path / "ctr-build.flock") as other:  # released on exit
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)

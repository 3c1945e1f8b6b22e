// Fused multi-head self-attention over a few dozen field tokens (AutoInt's interacting block), forward
// and backward, for float32 CPU tensors. Built and loaded by ctr/models/layers/field_attention.py.
//
// q, k and v come packed as [B, L, 3, H, d]: one projection matmul's [B, L, 3*H*d] output viewed per
// head, so no transpose copies; their gradient comes back in the same layout. out is [B, L, H, d].
// One (example, head) pair is one task whose operands and L x L weights stay in L1; the stock kernels
// pay per-matrix overhead on 39 x 8 matmuls (batched GEMM, or flash attention tiled for long
// sequences). Within a task the queries go in blocks of kLanes, one vector lane per query: the softmax
// over keys is then element-wise across key rows (no horizontal reductions), and the loops over the
// head width keep their accumulators in registers (the width is a compile-time constant for d in
// {4, 8, 16, 32}). The backward recomputes the weights rather than reading a saved [B, H, L, L]
// tensor back from memory.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t kLanes = 16;
constexpr int64_t kJ = 4;  // keys per block in the backward's dk/dv loop
constexpr int64_t kW = 8;  // floats per vector over the head width
constexpr int64_t kC = 16;  // head-width accumulators (vectors of kLanes queries) held in registers at once
typedef float vec __attribute__((vector_size(kLanes * sizeof(float))));  // GCC/Clang vector extension
typedef float wvec __attribute__((vector_size(kW * sizeof(float))));
typedef int32_t ivec __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline vec load(const float* p) { vec v; __builtin_memcpy(&v, p, sizeof v); return v; }
inline void store(float* p, vec v) { __builtin_memcpy(p, &v, sizeof v); }
inline vec splat(float x) { return vec{} + x; }

// exp(x) for x <= 0 (softmax arguments minus their maximum): 2^n p(r) with x = n ln2 + r, |r| <= ln2/2,
// p the degree-7 Taylor polynomial (relative error about 1e-7); x below -87 is clamped (exp ~ 1.6e-38).
inline vec exp_nonpositive(vec x) {
  x = x < splat(-87.f) ? splat(-87.f) : x;
  const ivec n = __builtin_convertvector(x * 1.44269504f - 0.5f, ivec);  // round half down; x <= 0
  const vec nf = __builtin_convertvector(n, vec);
  const vec r = (x - nf * 0.693145752f) - nf * 1.42860677e-6f;  // ln2 split in two for accuracy
  vec p = splat(1.f / 5040);
  p = p * r + 1.f / 720; p = p * r + 1.f / 120; p = p * r + 1.f / 24; p = p * r + 1.f / 6;
  p = p * r + 0.5f; p = p * r + 1.f; p = p * r + 1.f;
  const ivec bits = (n + 127) << 23;
  vec two_n; __builtin_memcpy(&two_n, &bits, sizeof two_n);
  return p * two_n;
}

// Pull the next example's rows into cache while this one computes (each task's first touch of its
// q/k/v rows would otherwise stall on memory); ``n`` floats from ``p``.
inline void prefetch(const float* p, int64_t n) {
  for (int64_t x = 0; x < n; x += 64 / sizeof(float)) __builtin_prefetch(p + x);
}

// Widths handled in the pass starting at c0: kC at most, a compile-time constant when DC is.
template <int64_t DC>
inline int64_t chunk(int64_t D, int64_t c0) {
  if constexpr (DC > 0) return DC < kC ? DC : kC;
  return std::min(kC, D - c0);
}

struct Shape {
  int64_t L, P, D;  // tokens, tokens padded to a multiple of kLanes, head width
  int64_t row, orow;  // token strides of q/k/v (and their gradients) and of out (and its gradient)
};

// The Shape of packed qkv [B, L, 3, H, d]; D is the compile-time width DC when there is one.
template <int64_t DC>
Shape shape_of(const torch::Tensor& qkv) {
  const int64_t L = qkv.size(1), H = qkv.size(3), D = DC > 0 ? DC : qkv.size(4);
  return {L, (L + kLanes - 1) / kLanes * kLanes, D, 3 * H * D, H * D};
}

// xt[c * P + i] = x[i, c], zero for the padding i >= L, for one (example, head).
inline void transpose(const float* __restrict__ x, int64_t stride, const Shape& s, float* __restrict__ xt) {
  for (int64_t c = 0; c < s.D; ++c)
    for (int64_t i = s.L; i < s.P; ++i) xt[c * s.P + i] = 0.f;
  for (int64_t i = 0; i < s.L; ++i)
    for (int64_t c = 0; c < s.D; ++c) xt[c * s.P + i] = x[i * stride + c];
}

// a[j * P + i] = softmax_j(<q_i, k_j> * scale) for the query block starting at i (lanes past L get
// finite weights nothing reads). qt is q transposed ([D, P]); k rows are read in place.
template <int64_t DC>
inline void weights_block(const float* __restrict__ qt, const float* __restrict__ k, const Shape& s,
                          float scale, int64_t i, float* __restrict__ a) {
  const int64_t D = DC > 0 ? DC : s.D;
  vec mx = splat(-3e38f);
  for (int64_t j = 0; j < s.L; ++j) {
    const float* __restrict__ kj = k + j * s.row;
    vec x{};
    for (int64_t c = 0; c < D; ++c) x += kj[c] * load(qt + c * s.P + i);
    x *= scale;
    store(a + j * s.P + i, x);
    mx = mx > x ? mx : x;
  }
  vec sum{};
  for (int64_t j = 0; j < s.L; ++j) {
    const vec e = exp_nonpositive(load(a + j * s.P + i) - mx);
    store(a + j * s.P + i, e);
    sum += e;
  }
  const vec inv = 1.f / sum;
  for (int64_t j = 0; j < s.L; ++j) store(a + j * s.P + i, load(a + j * s.P + i) * inv);
}

template <int64_t DC>
void forward_kernel(const torch::Tensor& qkv, float scale, torch::Tensor& out) {
  const Shape s = shape_of<DC>(qkv);
  const int64_t L = s.L, H = qkv.size(3), D = s.D;
  const float* qp = qkv.data_ptr<float>();
  const float* kp = qp + H * D;
  const float* vp = qp + 2 * H * D;
  float* op = out.data_ptr<float>();
  at::parallel_for(0, qkv.size(0) * H, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> qt(D * s.P), a(L * s.P), ot(D * s.P);
    vec acc[kC];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t base = (task / H) * L * s.row + (task % H) * D;
      const int64_t obase = (task / H) * L * s.orow + (task % H) * D;
      if (task % H == 0 && task + H < end) prefetch(qp + base + L * s.row, L * s.row);
      transpose(qp + base, s.row, s, qt.data());
      for (int64_t i = 0; i < s.P; i += kLanes) {
        weights_block<DC>(qt.data(), kp + base, s, scale, i, a.data());
        for (int64_t c0 = 0; c0 < D; c0 += kC) {  // out_i = sum_j a_ij v_j, kC widths at a time
          const int64_t nc = chunk<DC>(D, c0);
          for (int64_t c = 0; c < nc; ++c) acc[c] = vec{};
          for (int64_t j = 0; j < L; ++j) {
            const vec aj = load(a.data() + j * s.P + i);
            const float* __restrict__ vj = vp + base + j * s.row + c0;
            for (int64_t c = 0; c < nc; ++c) acc[c] += vj[c] * aj;
          }
          for (int64_t c = 0; c < nc; ++c) store(ot.data() + (c0 + c) * s.P + i, acc[c]);
        }
      }
      for (int64_t i = 0; i < L; ++i)
        for (int64_t c = 0; c < D; ++c) op[obase + i * s.orow + c] = ot[c * s.P + i];
    }
  });
}

// dk_j = sum_i dS_ij q_i and dv_j = sum_i a_ij dO_i for i, j < L, kJ keys at a time, the head width
// in kW-float vectors: every q_i and dO_i loaded feeds 2 kJ multiply-adds held in registers (measured:
// halving kJ for widths above 16, where the accumulators spill, was slower).
// ds and a are [L, P] with the query in the minor index; q, g, dk, dv point at one (example, head).
template <int64_t DC>
void key_gradients_blocked(const float* __restrict__ q, const float* __restrict__ g, const float* __restrict__ a,
                           const float* __restrict__ ds, const Shape& s, float* __restrict__ dk,
                           float* __restrict__ dv) {
  constexpr int64_t NC = DC / kW;
  auto flush = [&](const wvec* acc_k, const wvec* acc_v, int64_t j0, int64_t nj) {
    for (int64_t jj = 0; jj < nj; ++jj)
      for (int64_t n = 0; n < NC; ++n) {
        __builtin_memcpy(dk + (j0 + jj) * s.row + n * kW, &acc_k[jj * NC + n], sizeof(wvec));
        __builtin_memcpy(dv + (j0 + jj) * s.row + n * kW, &acc_v[jj * NC + n], sizeof(wvec));
      }
  };
  int64_t j0 = 0;
  for (; j0 + kJ <= s.L; j0 += kJ) {
    wvec acc_k[kJ * NC] = {}, acc_v[kJ * NC] = {};
    for (int64_t i = 0; i < s.L; ++i) {
      wvec qi[NC], gi[NC];
      __builtin_memcpy(qi, q + i * s.row, sizeof qi);
      __builtin_memcpy(gi, g + i * s.orow, sizeof gi);
      for (int64_t jj = 0; jj < kJ; ++jj) {
        const float x = ds[(j0 + jj) * s.P + i], w = a[(j0 + jj) * s.P + i];
        for (int64_t n = 0; n < NC; ++n) {
          acc_k[jj * NC + n] += x * qi[n];
          acc_v[jj * NC + n] += w * gi[n];
        }
      }
    }
    flush(acc_k, acc_v, j0, kJ);
  }
  for (; j0 < s.L; ++j0) {
    wvec acc_k[NC] = {}, acc_v[NC] = {};
    for (int64_t i = 0; i < s.L; ++i) {
      wvec qi[NC], gi[NC];
      __builtin_memcpy(qi, q + i * s.row, sizeof qi);
      __builtin_memcpy(gi, g + i * s.orow, sizeof gi);
      const float x = ds[j0 * s.P + i], w = a[j0 * s.P + i];
      for (int64_t n = 0; n < NC; ++n) {
        acc_k[n] += x * qi[n];
        acc_v[n] += w * gi[n];
      }
    }
    flush(acc_k, acc_v, j0, 1);
  }
}

template <int64_t DC>
void backward_kernel(const torch::Tensor& grad_out, const torch::Tensor& qkv, float scale, torch::Tensor& dqkv) {
  const Shape s = shape_of<DC>(qkv);
  const int64_t L = s.L, H = qkv.size(3), D = s.D;
  const float* gp = grad_out.data_ptr<float>();
  const float* qp = qkv.data_ptr<float>();
  const float* kp = qp + H * D;
  const float* vp = qp + 2 * H * D;
  float* dqp = dqkv.data_ptr<float>();
  float* dkp = dqp + H * D;
  float* dvp = dqp + 2 * H * D;
  at::parallel_for(0, qkv.size(0) * H, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> qt(D * s.P), gt(D * s.P), a(L * s.P), ds(L * s.P), dqt(D * s.P);
    vec acc[kC];
    std::vector<float> rheap(DC > 0 ? 0 : 2 * D);
    float rstack[DC > 0 ? 2 * DC : 1];
    float* __restrict__ dkj = DC > 0 ? rstack : rheap.data();
    float* __restrict__ dvj = dkj + D;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t base = (task / H) * L * s.row + (task % H) * D;
      const int64_t gbase = (task / H) * L * s.orow + (task % H) * D;
      if (task % H == 0 && task + H < end) {
        prefetch(qp + base + L * s.row, L * s.row);
        prefetch(gp + gbase + L * s.orow, L * s.orow);
      }
      const float* __restrict__ kb = kp + base;
      const float* __restrict__ vb = vp + base;
      transpose(qp + base, s.row, s, qt.data());
      transpose(gp + gbase, s.orow, s, gt.data());
      for (int64_t i = 0; i < s.P; i += kLanes) {
        weights_block<DC>(qt.data(), kb, s, scale, i, a.data());
        // dA_ij = <dO_i, v_j>; softmax backward dS_ij = a_ij (dA_ij - sum_j' a_ij' dA_ij') * scale
        vec dot{};
        for (int64_t j = 0; j < L; ++j) {
          const float* __restrict__ vj = vb + j * s.row;
          vec x{};
          for (int64_t c = 0; c < D; ++c) x += vj[c] * load(gt.data() + c * s.P + i);
          store(ds.data() + j * s.P + i, x);
          dot += load(a.data() + j * s.P + i) * x;
        }
        for (int64_t j = 0; j < L; ++j)
          store(ds.data() + j * s.P + i,
                load(a.data() + j * s.P + i) * (load(ds.data() + j * s.P + i) - dot) * scale);
        for (int64_t c0 = 0; c0 < D; c0 += kC) {  // dq_i = sum_j dS_ij k_j, kC widths at a time
          const int64_t nc = chunk<DC>(D, c0);
          for (int64_t c = 0; c < nc; ++c) acc[c] = vec{};
          for (int64_t j = 0; j < L; ++j) {
            const vec x = load(ds.data() + j * s.P + i);
            const float* __restrict__ kj = kb + j * s.row + c0;
            for (int64_t c = 0; c < nc; ++c) acc[c] += kj[c] * x;
          }
          for (int64_t c = 0; c < nc; ++c) store(dqt.data() + (c0 + c) * s.P + i, acc[c]);
        }
      }
      // dk_j = sum_i dS_ij q_i and dv_j = sum_i a_ij dO_i over the real queries i < L
      if constexpr (DC > 0 && DC % kW == 0) {
        key_gradients_blocked<DC>(qp + base, gp + gbase, a.data(), ds.data(), s, dkp + base, dvp + base);
      } else {
        for (int64_t j = 0; j < L; ++j) {
          for (int64_t c = 0; c < D; ++c) dkj[c] = dvj[c] = 0.f;
          for (int64_t i = 0; i < L; ++i) {
            const float* __restrict__ qi = qp + base + i * s.row;
            const float* __restrict__ gi = gp + gbase + i * s.orow;
            const float x = ds[j * s.P + i], w = a[j * s.P + i];
            for (int64_t c = 0; c < D; ++c) {
              dkj[c] += x * qi[c];
              dvj[c] += w * gi[c];
            }
          }
          for (int64_t c = 0; c < D; ++c) {
            dkp[base + j * s.row + c] = dkj[c];
            dvp[base + j * s.row + c] = dvj[c];
          }
        }
      }
      for (int64_t i = 0; i < L; ++i)
        for (int64_t c = 0; c < D; ++c) dqp[base + i * s.row + c] = dqt[c * s.P + i];
    }
  });
}

template <typename Fn>
void by_width(int64_t d, Fn&& fn) {
  switch (d) {
    case 4: fn(std::integral_constant<int64_t, 4>{}); break;
    case 8: fn(std::integral_constant<int64_t, 8>{}); break;
    case 16: fn(std::integral_constant<int64_t, 16>{}); break;
    case 32: fn(std::integral_constant<int64_t, 32>{}); break;
    default: fn(std::integral_constant<int64_t, 0>{});
  }
}

}  // namespace

static void check_qkv(const torch::Tensor& qkv) {
  TORCH_CHECK(qkv.device().is_cpu() && qkv.scalar_type() == torch::kFloat32 && qkv.is_contiguous() &&
              qkv.dim() == 5 && qkv.size(2) == 3 && qkv.size(1) > 0,
              "qkv: expected a contiguous float32 CPU tensor [B, L, 3, H, d] with L > 0");
}

// out [B, L, H, d] = softmax(q k^T * scale) v per (example, head), for qkv = [B, L, (q, k, v), H, d].
torch::Tensor field_attention_forward(torch::Tensor qkv, double scale) {
  check_qkv(qkv);
  auto out = torch::empty({qkv.size(0), qkv.size(1), qkv.size(3), qkv.size(4)}, qkv.options());
  by_width(qkv.size(4), [&](auto dc) { forward_kernel<decltype(dc)::value>(qkv, scale, out); });
  return out;
}

// d(qkv) [B, L, 3, H, d] for the upstream gradient of ``out``.
torch::Tensor field_attention_backward(torch::Tensor grad_out, torch::Tensor qkv, double scale) {
  check_qkv(qkv);
  grad_out = grad_out.contiguous();
  TORCH_CHECK(grad_out.scalar_type() == torch::kFloat32 &&
              grad_out.sizes() == torch::IntArrayRef({qkv.size(0), qkv.size(1), qkv.size(3), qkv.size(4)}),
              "grad_out must be float32 [B, L, H, d] for qkv [B, L, 3, H, d]");
  auto dqkv = torch::empty_like(qkv);
  by_width(qkv.size(4), [&](auto dc) { backward_kernel<decltype(dc)::value>(grad_out, qkv, scale, dqkv); });
  return dqkv;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &field_attention_forward, "fused field attention: out [B, L, H, d]");
  m.def("backward", &field_attention_backward, "fused field attention backward: d(qkv) [B, L, 3, H, d]");
}

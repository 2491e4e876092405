// Dev tool: checks the CUDA prefill backend against a float64 reference without the host side
// (plans are built by hand here), then times the two benchmark shapes.
//
// Build (from the repository root; sm_90a for H100; the device tool carries /work/main/.carry):
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -Inative/include -DFI_WITH_CUDA=1 \
//     scripts/prefill_cuda_check.cu native/src/attention/prefill*.cu native/src/common/status.cpp \
//     native/src/runtime/device.cpp -o prefill_cuda_check
// Run: ./prefill_cuda_check [--no-bench]
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../native/src/attention/prefill.h"
#include "../native/src/attention/prefill_kernels.cuh"  // tuning knobs (printed)
#include "../native/src/common/dtype.h"

using namespace fi;

#define CK(x)                                                                                  \
  do {                                                                                         \
    cudaError_t e_ = (x);                                                                      \
    if (e_ != cudaSuccess) {                                                                   \
      fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));       \
      exit(2);                                                                                 \
    }                                                                                          \
  } while (0)

struct Case {
  std::string name;
  int dqk = 128, dvo = 128;
  int32_t q_dtype = FI_BFLOAT16, kv_dtype = FI_BFLOAT16;
  int hkv = 2, group = 1;
  int tile = 64;
  int page_size = 0;  // 0: ragged
  bool hnd = false;
  int mask = kMaskNone;
  int window = -1;
  float cap = 0.0f;
  int pos = FI_POS_ENCODING_NONE;
  int split = 0;  // > 0: split requests longer than this many keys into chunks of it
  bool lse = true;
  float k_scale = 1.0f, v_scale = 1.0f;
  std::vector<int> qo, kv;
};

struct Plan {
  std::vector<int32_t> ints;  // header + arrays, prefill_plan_view layout
  int num_work = 0, total_qo = 0, any_split = 0, slots = 0;
};

// Work items: per request, packed-row tiles x KV chunks. Ascending order, as a planner would.
Plan make_plan(const Case& c) {
  const int batch = int(c.qo.size());
  std::vector<int> wr, wq, wb, we, wc;
  std::vector<int32_t> qo_indptr(batch + 1, 0), merge(1, 0);
  Plan pl;
  for (int r = 0; r < batch; ++r) {
    qo_indptr[r + 1] = qo_indptr[r] + c.qo[r];
    const int packed = c.qo[r] * c.group;
    const int len = c.kv[r];
    const bool split = c.split > 0 && len > c.split;
    const int chunks = split ? (len + c.split - 1) / c.split : 1;
    if (split) pl.any_split = 1;
    for (int q0 = 0; q0 < packed; q0 += c.tile)
      for (int ch = 0; ch < chunks; ++ch) {
        wr.push_back(r);
        wq.push_back(q0);
        wb.push_back(split ? ch * c.split : 0);
        we.push_back(split ? std::min(len, (ch + 1) * c.split) : len);
        wc.push_back(split ? ch : -1);
      }
    for (int i = 0; i < c.qo[r]; ++i) merge.push_back(merge.back() + (split ? chunks : 0));
  }
  pl.num_work = int(wr.size());
  pl.total_qo = qo_indptr[batch];
  pl.slots = merge.back();
  auto& v = pl.ints;
  v.assign(kPrefillHeaderInts, 0);
  v[0] = pl.num_work;
  v[1] = batch;
  v[2] = c.tile;
  v[3] = pl.total_qo;
  v[4] = pl.any_split;
  for (auto* a : {&wr, &wq, &wb, &we, &wc}) v.insert(v.end(), a->begin(), a->end());
  v.insert(v.end(), qo_indptr.begin(), qo_indptr.end());
  return pl;  // kv_indptr, kv_len, mask_offset, merge_indptr appended by the caller
}

struct Buf {
  void* d = nullptr;
  size_t bytes = 0;
  void alloc(size_t n) {
    bytes = n;
    CK(cudaMalloc(&d, std::max<size_t>(n, 16)));
  }
  ~Buf() {
    if (d) cudaFree(d);
  }
};

double rope_freq(int c, int D, double scale, double theta) { return std::pow(theta, -2.0 * c / D) / scale; }
void rope_ref(std::vector<double>& x, double pos, double scale, double theta) {
  const int D = int(x.size()), h = D / 2;
  std::vector<double> y(x);
  for (int c = 0; c < h; ++c) {
    const double a = pos * rope_freq(c, D, scale, theta);
    y[c] = x[c] * std::cos(a) - x[c + h] * std::sin(a);
    y[c + h] = x[c + h] * std::cos(a) + x[c] * std::sin(a);
  }
  x = y;
}
double alibi_ref(int h, int n) {
  int p = 1;
  while (p * 2 <= n) p *= 2;
  const double m0 = std::pow(2.0, -8.0 / p);
  if (h < p) return std::pow(m0, h + 1);
  return std::pow(std::pow(2.0, -4.0 / p), 2 * (h - p) + 1);
}

struct Gen {
  std::mt19937_64 rng{1234};
  double uni() { return std::uniform_real_distribution<double>(-1.0, 1.0)(rng); }
};

// Fills n elements of dtype with random values; returns their exact values.
std::vector<uint8_t> random_tensor(Gen& g, int32_t dtype, size_t n, std::vector<double>& vals, double amp) {
  const int sz = itemsize(dtype);
  std::vector<uint8_t> bytes(n * sz);
  vals.resize(n);
  for (size_t i = 0; i < n; ++i) {
    store_bits(bytes.data(), dtype, int64_t(i), double_to_bits(g.uni() * amp, dtype));
    vals[i] = load_as_double(bytes.data(), dtype, int64_t(i));
  }
  return bytes;
}

bool run_case(const Case& c, Gen& g, bool verbose) {
  const int batch = int(c.qo.size());
  const int hq = c.hkv * c.group;
  Plan pl = make_plan(c);
  const int total_qo = pl.total_qo;
  // K/V storage.
  std::vector<int32_t> kv_indptr(batch + 1, 0), kv_len(c.kv.begin(), c.kv.end()), indices;
  int64_t kst_page = 0, kst_n, kst_h, vst_page = 0, vst_n, vst_h;
  size_t k_elems, v_elems;
  std::vector<std::vector<int64_t>> key_row_k(batch), key_row_v(batch);  // element offset of key j (head 0)
  const int padk = 8, padv = 16;  // odd-ish strides: rows are not packed tightly
  if (c.page_size == 0) {
    int total_kv = 0;
    for (int r = 0; r < batch; ++r) kv_indptr[r + 1] = kv_indptr[r] + c.kv[r], total_kv += c.kv[r];
    kst_h = c.dqk, kst_n = int64_t(c.hkv) * c.dqk + padk;
    vst_h = c.dvo, vst_n = int64_t(c.hkv) * c.dvo + padv;
    k_elems = size_t(total_kv + 1) * kst_n;
    v_elems = size_t(total_kv + 1) * vst_n;
    for (int r = 0; r < batch; ++r)
      for (int j = 0; j < c.kv[r]; ++j) {
        key_row_k[r].push_back((kv_indptr[r] + j) * kst_n);
        key_row_v[r].push_back((kv_indptr[r] + j) * vst_n);
      }
  } else {
    int pages = 0;
    for (int r = 0; r < batch; ++r) {
      kv_indptr[r + 1] = kv_indptr[r] + (c.kv[r] + c.page_size - 1) / c.page_size;
    }
    pages = kv_indptr[batch] + 3;  // spare pages never referenced
    std::vector<int32_t> perm(pages);
    for (int i = 0; i < pages; ++i) perm[i] = i;
    std::shuffle(perm.begin(), perm.end(), g.rng);
    indices.assign(perm.begin(), perm.begin() + kv_indptr[batch]);
    if (c.hnd) {
      kst_n = c.dqk, kst_h = int64_t(c.page_size) * c.dqk + padk, kst_page = c.hkv * kst_h;
      vst_n = c.dvo, vst_h = int64_t(c.page_size) * c.dvo + padv, vst_page = c.hkv * vst_h;
    } else {
      kst_h = c.dqk, kst_n = int64_t(c.hkv) * c.dqk + padk, kst_page = c.page_size * kst_n;
      vst_h = c.dvo, vst_n = int64_t(c.hkv) * c.dvo + padv, vst_page = c.page_size * vst_n;
    }
    k_elems = size_t(pages) * kst_page;
    v_elems = size_t(pages) * vst_page;
    for (int r = 0; r < batch; ++r)
      for (int j = 0; j < c.kv[r]; ++j) {
        const int64_t page = indices[kv_indptr[r] + j / c.page_size], pos = j % c.page_size;
        key_row_k[r].push_back(page * kst_page + pos * kst_n);
        key_row_v[r].push_back(page * vst_page + pos * vst_n);
      }
  }
  // Custom masks: each request's bits start at a byte boundary.
  std::vector<int32_t> mask_offset(batch, 0);
  std::vector<uint8_t> mask_bytes;
  std::vector<std::vector<uint8_t>> mask_bits(batch);
  for (int r = 0; r < batch; ++r) {
    mask_offset[r] = int32_t(mask_bytes.size());
    const size_t nbits = size_t(c.qo[r]) * c.kv[r];
    mask_bits[r].resize(nbits);
    std::vector<uint8_t> bytes((nbits + 7) / 8 + 1, 0);
    for (size_t b = 0; b < nbits; ++b) {
      mask_bits[r][b] = (g.rng() % 4) != 0;  // 3/4 visible
      if (mask_bits[r][b]) bytes[b / 8] |= uint8_t(1u << (b % 8));
    }
    mask_bytes.insert(mask_bytes.end(), bytes.begin(), bytes.end());
  }
  // Plan ints: the rest of the arrays.
  auto& v = pl.ints;
  v.insert(v.end(), kv_indptr.begin(), kv_indptr.end());
  v.insert(v.end(), kv_len.begin(), kv_len.end());
  v.insert(v.end(), mask_offset.begin(), mask_offset.end());
  {
    // merge_indptr
    std::vector<int32_t> merge(1, 0);
    for (int r = 0; r < batch; ++r) {
      const bool split = c.split > 0 && c.kv[r] > c.split;
      const int chunks = split ? (c.kv[r] + c.split - 1) / c.split : 0;
      for (int i = 0; i < c.qo[r]; ++i) merge.push_back(merge.back() + chunks);
    }
    v.insert(v.end(), merge.begin(), merge.end());
  }
  if (v.size() != prefill_plan_ints(pl.num_work, batch, total_qo)) {
    printf("plan size mismatch\n");
    return false;
  }
  const uint64_t off_indices = align_up(v.size() * 4, kWorkspaceAlign);
  std::vector<uint8_t> ws(off_indices + indices.size() * 4 + 16, 0);
  memcpy(ws.data(), v.data(), v.size() * 4);
  if (!indices.empty()) memcpy(ws.data() + off_indices, indices.data(), indices.size() * 4);

  // Tensors.
  std::vector<double> qv, kvals, vvals;
  const int32_t qd = c.q_dtype;
  const int64_t q_stride_h = c.dqk, q_stride_n = int64_t(hq) * c.dqk + 8;
  auto qb = random_tensor(g, qd, size_t(std::max(total_qo, 1)) * q_stride_n, qv, 1.0);
  auto kb = random_tensor(g, c.kv_dtype, k_elems, kvals, c.kv_dtype == qd ? 1.0 : 2.0);
  auto vb = random_tensor(g, c.kv_dtype, v_elems, vvals, c.kv_dtype == qd ? 1.0 : 2.0);
  const int64_t out_stride_h = c.dvo, out_stride_n = int64_t(hq) * c.dvo + 8;
  const size_t out_elems = size_t(std::max(total_qo, 1)) * out_stride_n;
  const int64_t lse_stride_h = 1, lse_stride_n = hq + 3;

  Buf dq, dk, dv, dout, dlse, dmask, dws, dpo, dplse;
  dq.alloc(qb.size());
  dk.alloc(kb.size());
  dv.alloc(vb.size());
  dout.alloc(out_elems * 2);
  dlse.alloc(size_t(std::max(total_qo, 1)) * lse_stride_n * 4);
  dmask.alloc(mask_bytes.size() + 1);
  dws.alloc(ws.size());
  dpo.alloc(size_t(std::max(pl.slots, 1)) * hq * c.dvo * 4);
  dplse.alloc(size_t(std::max(pl.slots, 1)) * hq * 4);
  CK(cudaMemcpy(dq.d, qb.data(), qb.size(), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dk.d, kb.data(), kb.size(), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dv.d, vb.data(), vb.size(), cudaMemcpyHostToDevice));
  if (!mask_bytes.empty()) CK(cudaMemcpy(dmask.d, mask_bytes.data(), mask_bytes.size(), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dws.d, ws.data(), ws.size(), cudaMemcpyHostToDevice));
  CK(cudaMemset(dout.d, 0xff, dout.bytes));  // NaN poison
  CK(cudaMemset(dlse.d, 0xff, dlse.bytes));
  CK(cudaMemset(dpo.d, 0xff, dpo.bytes));
  CK(cudaMemset(dplse.d, 0xff, dplse.bytes));

  PrefillParams p{};
  p.q = dq.d;
  p.k = dk.d;
  p.v = dv.d;
  p.out = dout.d;
  p.lse = c.lse ? static_cast<float*>(dlse.d) : nullptr;
  p.custom_mask = static_cast<const uint8_t*>(dmask.d);
  p.q_stride_n = q_stride_n, p.q_stride_h = q_stride_h;
  p.k_stride_page = kst_page, p.k_stride_n = kst_n, p.k_stride_h = kst_h;
  p.v_stride_page = vst_page, p.v_stride_n = vst_n, p.v_stride_h = vst_h;
  p.out_stride_n = out_stride_n, p.out_stride_h = out_stride_h;
  p.lse_stride_n = lse_stride_n, p.lse_stride_h = lse_stride_h;
  p.plan = prefill_plan_view(dws.d, pl.num_work, batch, total_qo, off_indices);
  p.partial_o = static_cast<float*>(dpo.d);
  p.partial_lse = static_cast<float*>(dplse.d);
  p.num_work = pl.num_work, p.batch_size = batch, p.total_qo = total_qo, p.cta_tile_q = c.tile, p.any_split = pl.any_split;
  p.num_qo_heads = hq, p.num_kv_heads = c.hkv, p.head_dim_qk = c.dqk, p.head_dim_vo = c.dvo, p.page_size = c.page_size;
  p.q_dtype = qd, p.kv_dtype = c.kv_dtype;
  p.mask_mode = c.mask, p.pos_encoding = c.pos, p.window_left = c.window;
  p.sm_scale = float(1.0 / std::sqrt(double(c.dqk)));
  p.logits_soft_cap = c.cap;
  p.rope_scale = 2.0f, p.rope_theta = 1e4f;
  p.k_scale = c.k_scale, p.v_scale = c.v_scale;
  try {
    prefill_run_cuda(p, nullptr);
  } catch (const std::exception& e) {
    printf("FAIL %s: threw %s\n", c.name.c_str(), e.what());
    return false;
  }
  CK(cudaDeviceSynchronize());
  std::vector<uint16_t> out(out_elems);
  std::vector<float> lse(size_t(std::max(total_qo, 1)) * lse_stride_n);
  CK(cudaMemcpy(out.data(), dout.d, out_elems * 2, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(lse.data(), dlse.d, lse.size() * 4, cudaMemcpyDeviceToHost));

  // Reference and comparison.
  int bad = 0;
  double max_err = 0.0;
  auto check = [&](double got, double want, const char* what, int n, int h, int d) {
    const bool ok = (std::isinf(want) && got == want) || (std::isfinite(got) && std::fabs(got - want) <= 1e-2 + 2e-2 * std::fabs(want));
    if (std::isfinite(want)) max_err = std::max(max_err, std::fabs(got - want));
    if (!ok && bad++ < 5) printf("  %s mismatch n=%d h=%d d=%d got %g want %g\n", what, n, h, d, got, want);
  };
  const double sm = p.sm_scale * double(c.k_scale);
  for (int r = 0; r < batch; ++r) {
    const int L = c.kv[r], Q = c.qo[r], delta = L - Q;
    for (int i = 0; i < Q; ++i) {
      const int n = v[kPrefillHeaderInts + 5 * pl.num_work + r] + i;  // qo_indptr[r] + i
      for (int h = 0; h < hq; ++h) {
        const int kh = h / c.group;
        std::vector<double> q(c.dqk);
        for (int d = 0; d < c.dqk; ++d) q[d] = qv[n * q_stride_n + h * q_stride_h + d];
        if (c.pos == FI_POS_ENCODING_ROPE_LLAMA) rope_ref(q, i + delta, p.rope_scale, p.rope_theta);
        std::vector<double> logit(L, -INFINITY);
        double mx = -INFINITY;
        for (int j = 0; j < L; ++j) {
          bool vis = true;
          if (c.mask == kMaskCausal) vis = j <= i + delta;
          if (c.mask == kMaskCustom) vis = mask_bits[r][size_t(i) * L + j];
          if (c.window >= 0) vis = vis && j >= i + delta - c.window;
          if (!vis) continue;
          std::vector<double> k(c.dqk);
          for (int d = 0; d < c.dqk; ++d) k[d] = kvals[key_row_k[r][j] + kh * kst_h + d];
          if (c.pos == FI_POS_ENCODING_ROPE_LLAMA) rope_ref(k, j, p.rope_scale, p.rope_theta);
          double dot = 0;
          for (int d = 0; d < c.dqk; ++d) dot += q[d] * k[d];
          double x = dot * sm;
          if (c.pos == FI_POS_ENCODING_ALIBI) x += alibi_ref(h, hq) * (j - (i + delta));
          if (c.cap > 0) x = c.cap * std::tanh(x / c.cap);
          logit[j] = x;
          mx = std::max(mx, x);
        }
        std::vector<double> o(c.dvo, 0.0);
        double sum = 0;
        if (mx != -INFINITY) {
          for (int j = 0; j < L; ++j) {
            if (logit[j] == -INFINITY) continue;
            const double wgt = std::exp(logit[j] - mx);
            sum += wgt;
            for (int d = 0; d < c.dvo; ++d) o[d] += wgt * vvals[key_row_v[r][j] + kh * vst_h + d];
          }
          for (int d = 0; d < c.dvo; ++d) o[d] = o[d] / sum * c.v_scale;
        }
        const double lse_want = mx == -INFINITY ? -INFINITY : mx + std::log(sum);
        for (int d = 0; d < c.dvo; ++d) {
          const double got = load_as_double(out.data(), qd, n * out_stride_n + h * out_stride_h + d);
          check(got, o[d], "out", n, h, d);
        }
        if (c.lse) check(lse[n * lse_stride_n + h * lse_stride_h], lse_want, "lse", n, h, -1);
      }
    }
  }
  printf("%s %s (work %d, split %d, max err %.3g)\n", bad ? "FAIL" : "ok  ", c.name.c_str(), pl.num_work, pl.any_split, max_err);
  return bad == 0;
}

// ---- timing

double bench(const Case& c, Gen& g) {
  // Same setup as run_case but no reference: random bytes are fine for timing.
  const int batch = int(c.qo.size());
  const int hq = c.hkv * c.group;
  Plan pl = make_plan(c);
  std::vector<int32_t> kv_indptr(batch + 1, 0), kv_len(c.kv.begin(), c.kv.end()), indices, mask_offset(batch, 0);
  int64_t kst_page = 0, kst_n = int64_t(c.hkv) * c.dqk, kst_h = c.dqk;
  size_t kv_rows = 0;
  if (c.page_size == 0) {
    for (int r = 0; r < batch; ++r) kv_indptr[r + 1] = kv_indptr[r] + c.kv[r];
    kv_rows = kv_indptr[batch];
  } else {
    for (int r = 0; r < batch; ++r) kv_indptr[r + 1] = kv_indptr[r] + (c.kv[r] + c.page_size - 1) / c.page_size;
    indices.resize(kv_indptr[batch]);
    for (size_t i = 0; i < indices.size(); ++i) indices[i] = int32_t(i);
    std::shuffle(indices.begin(), indices.end(), g.rng);
    kst_page = c.page_size * kst_n;
    kv_rows = size_t(indices.size()) * c.page_size;
  }
  auto& v = pl.ints;
  v.insert(v.end(), kv_indptr.begin(), kv_indptr.end());
  v.insert(v.end(), kv_len.begin(), kv_len.end());
  v.insert(v.end(), mask_offset.begin(), mask_offset.end());
  std::vector<int32_t> merge(pl.total_qo + 1, 0);
  v.insert(v.end(), merge.begin(), merge.end());
  const uint64_t off_indices = align_up(v.size() * 4, kWorkspaceAlign);
  std::vector<uint8_t> ws(off_indices + indices.size() * 4 + 16, 0);
  memcpy(ws.data(), v.data(), v.size() * 4);
  if (!indices.empty()) memcpy(ws.data() + off_indices, indices.data(), indices.size() * 4);
  Buf dq, dk, dv, dout, dws;
  dq.alloc(size_t(pl.total_qo) * hq * c.dqk * 2);
  dk.alloc(kv_rows * kst_n * 2);
  dv.alloc(kv_rows * kst_n * 2);
  dout.alloc(size_t(pl.total_qo) * hq * c.dvo * 2);
  dws.alloc(ws.size());
  std::vector<uint16_t> fill(std::max(dq.bytes, dk.bytes) / 2);
  for (auto& x : fill) x = uint16_t(double_to_bits(g.uni(), c.q_dtype));
  CK(cudaMemcpy(dq.d, fill.data(), dq.bytes, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dk.d, fill.data(), dk.bytes, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dv.d, fill.data(), dv.bytes, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dws.d, ws.data(), ws.size(), cudaMemcpyHostToDevice));
  PrefillParams p{};
  p.q = dq.d, p.k = dk.d, p.v = dv.d, p.out = dout.d, p.lse = nullptr;
  p.q_stride_n = int64_t(hq) * c.dqk, p.q_stride_h = c.dqk;
  p.k_stride_page = kst_page, p.k_stride_n = kst_n, p.k_stride_h = kst_h;
  p.v_stride_page = kst_page, p.v_stride_n = kst_n, p.v_stride_h = kst_h;
  p.out_stride_n = int64_t(hq) * c.dvo, p.out_stride_h = c.dvo;
  p.plan = prefill_plan_view(dws.d, pl.num_work, batch, pl.total_qo, off_indices);
  p.num_work = pl.num_work, p.batch_size = batch, p.total_qo = pl.total_qo, p.cta_tile_q = c.tile, p.any_split = 0;
  p.num_qo_heads = hq, p.num_kv_heads = c.hkv, p.head_dim_qk = c.dqk, p.head_dim_vo = c.dvo, p.page_size = c.page_size;
  p.q_dtype = c.q_dtype, p.kv_dtype = c.kv_dtype, p.mask_mode = c.mask, p.pos_encoding = 0, p.window_left = -1;
  p.sm_scale = float(1.0 / std::sqrt(double(c.dqk))), p.rope_scale = 1, p.rope_theta = 1e4, p.k_scale = 1, p.v_scale = 1;
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  for (int i = 0; i < 3; ++i) prefill_run_cuda(p, nullptr);
  std::vector<float> ms;
  for (int i = 0; i < 20; ++i) {
    CK(cudaEventRecord(e0));
    prefill_run_cuda(p, nullptr);
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    float t;
    CK(cudaEventElapsedTime(&t, e0, e1));
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  double flops = 0;
  for (int r = 0; r < batch; ++r) {
    const double pairs = c.mask == kMaskCausal ? double(c.qo[r]) * c.kv[r] / 2.0 : double(c.qo[r]) * c.kv[r];
    flops += 2.0 * pairs * hq * (c.dqk + c.dvo);
  }
  const double med = ms[ms.size() / 2];
  printf("bench %s: median %.3f ms, %.1f TFLOP/s (min %.3f ms)\n", c.name.c_str(), med, flops / (med * 1e-3) / 1e12, ms[0]);
  return flops / (med * 1e-3) / 1e12;
}

int main(int argc, char** argv) {
  bool do_bench = true, only_bench = false;
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "--no-bench")) do_bench = false;
    if (!strcmp(argv[i], "--only-bench")) only_bench = true;
  }
  // The library leaves short requests to the mma.sync kernel on Hopper; the checks here are
  // small, so force the wgmma kernel wherever it serves (FLASHINFER_PREFILL_SM90=0 from the
  // environment checks the mma.sync kernel instead).
  setenv("FLASHINFER_PREFILL_SM90", "1", 0);
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  printf("device: %s; kernel knobs: max stages %d, kv tile of the 128-row CTA %d\n", prop.name, FI_PREFILL_MAX_STAGES,
         16 * FI_PREFILL_MKV128);
  Gen g;
  std::vector<Case> cases;
  auto add = [&](Case c) { cases.push_back(c); };
  const std::vector<std::pair<int, int>> dims = {{64, 64}, {128, 128}, {192, 128}, {256, 256}};
  // Every head-dim pair x dtype x tile, ragged causal, GQA 4, mixed lengths (qo < kv, 1, 17).
  for (auto [dqk, dvo] : dims)
    for (int32_t dt : {FI_BFLOAT16, FI_FLOAT16})
      for (int tile : {16, 64, 128}) {
        Case c;
        c.name = "ragged causal d" + std::to_string(dqk) + "/" + std::to_string(dvo) + (dt == FI_FLOAT16 ? " f16" : " bf16") + " tile " +
                 std::to_string(tile);
        c.dqk = dqk, c.dvo = dvo, c.q_dtype = c.kv_dtype = dt, c.group = 4, c.hkv = 2, c.tile = tile, c.mask = kMaskCausal;
        c.qo = {17, 1, 70, 33};
        c.kv = {17, 50, 200, 33};
        add(c);
      }
  {
    Case c;
    c.name = "paged NHD page 16 none G1 d128 tile 64, kv_len 0";
    c.page_size = 16, c.group = 1, c.hkv = 3, c.qo = {5, 40, 3, 1}, c.kv = {37, 100, 0, 16};
    add(c);
    c.name = "paged HND page 1 causal G4 d64 tile 128";
    c.dqk = c.dvo = 64, c.page_size = 1, c.hnd = true, c.group = 4, c.hkv = 2, c.tile = 128, c.mask = kMaskCausal, c.qo = {40, 9},
    c.kv = {100, 9};
    add(c);
    c.name = "paged HND page 7 causal qo > kv (rows with no key) G4 f16 tile 16";
    c.q_dtype = c.kv_dtype = FI_FLOAT16, c.page_size = 7, c.tile = 16, c.qo = {30}, c.kv = {20};
    add(c);
  }
  for (int tile : {16, 64, 128}) {
    Case c;
    c.name = "custom mask G4 paged page 16 tile " + std::to_string(tile);
    c.mask = kMaskCustom, c.page_size = 16, c.group = 4, c.hkv = 2, c.tile = tile, c.qo = {17, 60, 1}, c.kv = {90, 60, 13};
    add(c);
    c.name = "window 20 + soft cap 30 G1 ragged causal d64 tile " + std::to_string(tile);
    c.mask = kMaskCausal, c.page_size = 0, c.dqk = c.dvo = 64, c.group = 1, c.window = 20, c.cap = 30.0f, c.qo = {100, 17}, c.kv = {130, 17};
    add(c);
    c.name = "ALiBi G4 causal d256 tile " + std::to_string(tile);
    c.window = -1, c.cap = 0, c.dqk = c.dvo = 256, c.group = 4, c.pos = FI_POS_ENCODING_ALIBI, c.qo = {33, 5}, c.kv = {80, 70};
    add(c);
    c.name = "RoPE G4 causal d192/128 paged page 16 tile " + std::to_string(tile);
    c.dqk = 192, c.dvo = 128, c.pos = FI_POS_ENCODING_ROPE_LLAMA, c.page_size = 16, c.qo = {40, 17}, c.kv = {300, 17};
    add(c);
    c.name = "RoPE + window + custom G1 d128 tile " + std::to_string(tile);
    c.dqk = c.dvo = 128, c.group = 1, c.mask = kMaskCustom, c.window = 50, c.qo = {70}, c.kv = {150};
    add(c);
  }
  for (int tile : {16, 64, 128}) {
    Case c;
    c.name = "split + merge (chunks of 64) causal G4 paged page 16, lse, tile " + std::to_string(tile);
    c.split = 64, c.mask = kMaskCausal, c.page_size = 16, c.group = 4, c.tile = tile, c.qo = {20, 1, 9}, c.kv = {300, 200, 40};
    add(c);
    c.name = "split + merge no lse, custom mask d64 ragged tile " + std::to_string(tile);
    c.lse = false, c.dqk = c.dvo = 64, c.page_size = 0, c.mask = kMaskCustom, c.split = 48;
    add(c);
  }
  for (auto [dqk, dvo] : dims)
    for (int32_t kd : {FI_FLOAT8_E4M3FN, FI_FLOAT8_E5M2})
      for (int tile : {16, 128}) {
        Case c;
        c.name = std::string("fp8 ") + (kd == FI_FLOAT8_E4M3FN ? "e4m3" : "e5m2") + " paged page 16 causal G4 d" + std::to_string(dqk) +
                 " q " + (tile == 16 ? "f16" : "bf16") + " tile " + std::to_string(tile);
        c.dqk = dqk, c.dvo = dvo, c.kv_dtype = kd, c.q_dtype = tile == 16 ? FI_FLOAT16 : FI_BFLOAT16, c.page_size = 16, c.group = 4,
        c.tile = tile, c.mask = kMaskCausal, c.k_scale = 0.7f, c.v_scale = 1.3f, c.qo = {33, 1}, c.kv = {90, 64};
        if (tile == 128) c.split = 32;
        add(c);
      }
  // Long cases for the Hopper wgmma kernel (tile 128, 16-bit q = kv, d64/d128, no RoPE): several
  // 128-key tiles so that its three-stage ring wraps, every mask and logit variant, partials.
  for (int32_t dt : {FI_BFLOAT16, FI_FLOAT16}) {
    const std::string ty = dt == FI_FLOAT16 ? " f16" : " bf16";
    Case c;
    c.q_dtype = c.kv_dtype = dt, c.tile = 128, c.hkv = 2, c.group = 4;
    c.name = "long ragged causal G4 d128" + ty + " tile 128";
    c.mask = kMaskCausal, c.qo = {300, 129, 1000, 1}, c.kv = {700, 900, 1000, 513};
    add(c);
    c.name = "long paged page 16 no mask G1 d64" + ty + " tile 128";
    c.dqk = c.dvo = 64, c.group = 1, c.hkv = 3, c.page_size = 16, c.mask = kMaskNone, c.qo = {200, 37}, c.kv = {1000, 640};
    add(c);
    c.name = "long paged HND page 5 custom mask + ALiBi + soft cap G4 d128" + ty + " tile 128";
    c.dqk = c.dvo = 128, c.group = 4, c.hkv = 2, c.page_size = 5, c.hnd = true, c.mask = kMaskCustom, c.pos = FI_POS_ENCODING_ALIBI,
    c.cap = 20.0f, c.qo = {150, 40}, c.kv = {600, 300};
    add(c);
    c.name = "long ragged window 300 causal G2 d128" + ty + " tile 128";
    c.page_size = 0, c.hnd = false, c.mask = kMaskCausal, c.pos = FI_POS_ENCODING_NONE, c.cap = 0.0f, c.window = 300, c.group = 2,
    c.qo = {700}, c.kv = {900};
    add(c);
    c.name = "long split (chunks of 400) + merge causal G4 paged page 16 d128" + ty + " tile 128";
    c.window = -1, c.group = 4, c.page_size = 16, c.split = 400, c.qo = {500, 64}, c.kv = {1300, 1000};
    add(c);
  }
  int failed = 0;
  if (!only_bench)
    for (const Case& c : cases) failed += !run_case(c, g, false);
  printf("%d cases, %d failed\n", only_bench ? 0 : int(cases.size()), failed);
  if (do_bench) {
    Case a;
    a.name = "single 8192, 32/8 heads, d128 bf16 causal, tile 128";
    a.hkv = 8, a.group = 4, a.tile = 128, a.mask = kMaskCausal, a.qo = {8192}, a.kv = {8192};
    bench(a, g);
    a.name = "single 8192, 32/8 heads, d128 bf16 causal, tile 64";
    a.tile = 64;
    bench(a, g);
    a.tile = 128;
    a.name = "single 8192, 32/8 heads, d128 bf16 no mask, tile 128";
    a.mask = kMaskNone;
    bench(a, g);
    Case b;
    b.name = "batch 16 x 1024 paged page 16, 32/8 heads, d128 bf16 causal, tile 128";
    b.hkv = 8, b.group = 4, b.tile = 128, b.mask = kMaskCausal, b.page_size = 16, b.qo.assign(16, 1024), b.kv.assign(16, 1024);
    bench(b, g);
    b.name = "batch 16 x 1024 paged page 16, 32/8 heads, d128 bf16 causal, tile 64";
    b.tile = 64;
    bench(b, g);
  }
  return failed ? 1 : 0;
}

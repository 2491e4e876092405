// The CPU backend's attention-variant hooks (FlashInfer's): where a logit sits, and the built-in
// variant (ALiBi, soft cap: its transform generated at build time from lib/jit_builtin.ts) that
// generated ones (lib/jit.ts) derive from. Used by prefill_cpu.h, which runs every plan on cpu,
// prefill and decode alike.
#pragma once
#include <cmath>
#include <cstdint>

#include "builtin_variant.generated.h"
#include "prefill.h"

namespace fi {

// Where one logit sits, as a variant's hooks see it.
struct VariantIndex {
  int batch_idx;    // request
  int qo_idx;       // query row within the request
  int kv_idx;       // key within the request
  int qo_head_idx;
  int kv_head_idx;
  int qo_len, kv_len;
  int64_t qo_row;   // global query row (qo_indptr[batch_idx] + qo_idx)
};

// The variants of the C API: ALiBi bias and the tanh soft cap (run-time options), no extra mask,
// no query, key or output transform. Generated variants derive from it and replace the hooks
// they define (the hooks take any parameter struct, so an inherited one serves a derived
// variant's parameters too). R is the backend's run parameters: anything with pos_encoding,
// num_qo_heads and logits_soft_cap.
struct BuiltinVariant {
  struct Params {};
  static constexpr bool kUseSoftmax = true;
  // Whether query(), key(), output() do anything (the backend skips them otherwise).
  static constexpr bool kQueryTransform = false, kKeyTransform = false, kOutputTransform = false;
  template <class R, class P>
  static double logits(const R& p, const P&, double x, const VariantIndex& ix) {
    const double slope = p.pos_encoding == FI_POS_ENCODING_ALIBI ? double(alibi_slope(ix.qo_head_idx, p.num_qo_heads)) : 0.0;
    const double cap = p.logits_soft_cap;
    return builtin_logits<double>(x, slope, cap, cap > 0 ? 1.0 / cap : 0.0, ix.batch_idx, ix.qo_idx, ix.qo_idx + ix.kv_len - ix.qo_len, ix.kv_idx, ix.qo_head_idx, ix.kv_head_idx, ix.qo_len,
                                  ix.kv_len, ix.qo_row);
  }
  template <class R, class P>
  static bool mask(const R&, const P&, const VariantIndex&) { return true; }
  // Element `dim` of a query row (after RoPE), of a key (after RoPE; ix has batch_idx, kv_idx,
  // kv_head_idx and kv_len only), and of an output row (normalized, merged, times v_scale).
  template <class R, class P>
  static double query(const R&, const P&, double q, const VariantIndex&, int) { return q; }
  template <class R, class P>
  static double key(const R&, const P&, double k, const VariantIndex&, int) { return k; }
  template <class R, class P>
  static double output(const R&, const P&, double o, const VariantIndex&, int) { return o; }
};

}  // namespace fi

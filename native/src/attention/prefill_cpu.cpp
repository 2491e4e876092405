// The built-in CPU backend of prefill attention: the template of prefill_cpu.h with the variants
// of the C API (ALiBi, soft cap; RoPE and the masks are applied for every variant).
#include "prefill_cpu.h"

namespace fi {

void prefill_run_cpu(const PrefillParams& p) { prefill_run_cpu_variant<BuiltinVariant>(p, BuiltinVariant::Params{}); }

}  // namespace fi

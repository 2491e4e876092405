// The built-in CPU decode backend: decode_cpu.h with the C API's variant (ALiBi, soft cap).
#include "decode_cpu.h"

namespace fi {

void decode_run_cpu(const fi_decode_run_args& a) { decode_run_cpu_variant<BuiltinVariant>(a, BuiltinVariant::Params{}); }

}  // namespace fi

// Tags that carry a run-time choice (head dim, dtype, ...) into a template: a dispatcher calls
// f(IntTag<128>{}, TypeTag<__half>{}) and f reads decltype(tag)::value / ::type.
#pragma once

namespace fi {

template <class T> struct TypeTag { using type = T; };
template <int N> struct IntTag { static constexpr int value = N; };

// Which KV kinds an attention launcher is compiled for: 16-bit (same dtype as q), fp8, or both. A
// generated variant's library (lib/jit.ts) builds only the one its configuration needs.
enum KvKinds { kKv16 = 1, kKvFp8 = 2, kKvAll = 3 };

}  // namespace fi

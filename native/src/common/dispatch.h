// Tags that carry a run-time choice (head dim, dtype, ...) into a template: a dispatcher calls
// f(IntTag<128>{}, TypeTag<__half>{}) and f reads decltype(tag)::value / ::type.
#pragma once

namespace fi {

template <class T> struct TypeTag { using type = T; };
template <int N> struct IntTag { static constexpr int value = N; };

}  // namespace fi

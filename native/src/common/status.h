// Errors inside the library are C++ exceptions of type fi::Error; every extern "C" entry wraps
// its body in fi::guard(), which turns them into a status code plus a thread-local message.
#pragma once
#include <cstdint>
#include <exception>
#include <new>
#include <sstream>
#include <string>

#include "flashinfer.h"

namespace fi {

struct Error : std::exception {
  int32_t code;
  std::string message;
  Error(int32_t c, std::string m) : code(c), message(std::move(m)) {}
  const char* what() const noexcept override { return message.c_str(); }
};

void set_last_error(const std::string& message);

template <class... Args>
[[noreturn]] void fail(int32_t code, const Args&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  throw Error(code, os.str());
}

// Throws FI_ERR_INVALID_ARGUMENT with the message parts when `ok` is false.
template <class... Args>
inline void require(bool ok, const Args&... parts) {
  if (!ok) fail(FI_ERR_INVALID_ARGUMENT, parts...);
}

template <class F>
int32_t guard(F&& body) noexcept {
  try {
    body();
    return FI_OK;
  } catch (const Error& e) {
    set_last_error(e.message);
    return e.code;
  } catch (const std::bad_alloc&) {
    set_last_error("out of host memory");
    return FI_ERR_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    set_last_error(std::string("internal error: ") + e.what());
    return FI_ERR_INTERNAL;
  } catch (...) {
    set_last_error("internal error: unknown exception");
    return FI_ERR_INTERNAL;
  }
}

}  // namespace fi

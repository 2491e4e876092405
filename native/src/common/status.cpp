#include "status.h"

namespace {
thread_local std::string g_last_error;
}

namespace fi {
void set_last_error(const std::string& message) { g_last_error = message; }
}  // namespace fi

extern "C" FI_API const char* fi_last_error(void) { return g_last_error.c_str(); }

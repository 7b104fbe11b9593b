#include "core/errors.h"

#include <cstring>
#include <type_traits>

namespace adaptrain::collective {

std::string errno_text(int error_number) {
  char buffer[256];
  // GNU strerror_r may return a static string instead of filling the buffer;
  // the XSI variant returns an int. Handle both without #ifdefs.
  auto result = strerror_r(error_number, buffer, sizeof(buffer));
  if constexpr (std::is_same_v<decltype(result), char*>) {
    return std::string(result) + " (errno " + std::to_string(error_number) + ")";
  } else {
    return std::string(result == 0 ? buffer : "unknown error") + " (errno " +
           std::to_string(error_number) + ")";
  }
}

}  // namespace adaptrain::collective

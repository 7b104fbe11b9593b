#include "tunables.h"

#include <cctype>
#include <cstdlib>
#include <string>

#include "errors.h"

namespace adaptrain::collective {
namespace {

// Accepts "262144", "256K", "4M", "1G".
size_t read_bytes(const char* name, size_t fallback, size_t min_value, size_t max_value) {
  const char* raw = std::getenv(name);
  if (raw == nullptr || *raw == '\0') return fallback;
  std::string text(raw);
  size_t multiplier = 1;
  switch (std::toupper(static_cast<unsigned char>(text.back()))) {
    case 'K':
      multiplier = size_t{1} << 10;
      text.pop_back();
      break;
    case 'M':
      multiplier = size_t{1} << 20;
      text.pop_back();
      break;
    case 'G':
      multiplier = size_t{1} << 30;
      text.pop_back();
      break;
    default:
      break;
  }
  char* end = nullptr;
  unsigned long long value = std::strtoull(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || text[0] == '-' || value > max_value / multiplier ||
      value * multiplier < min_value) {
    throw InvalidArgumentError(std::string(name) + "=" + raw + " is not valid: expected a byte count between " +
                               std::to_string(min_value) + " and " + std::to_string(max_value) +
                               " (suffixes K, M, G allowed)");
  }
  return static_cast<size_t>(value * multiplier);
}

Tunables read_tunables() {
  Tunables t{};
  t.ring_block_bytes = read_bytes("COLLECTIVE_RING_BLOCK_BYTES", 256 << 10, 4 << 10, size_t{1} << 30);
  t.socket_buffer_bytes = read_bytes("COLLECTIVE_SOCKET_BUFFER_BYTES", 4 << 20, 0, size_t{1} << 30);
  t.connect_retry_ms = static_cast<int>(read_bytes("COLLECTIVE_CONNECT_RETRY_MS", 200, 1, 60000));
  return t;
}

}  // namespace

const Tunables& tunables() {
  // A throwing initialiser leaves the static uninitialised, so the next call
  // reads the environment again.
  static const Tunables value = read_tunables();
  return value;
}

}  // namespace adaptrain::collective

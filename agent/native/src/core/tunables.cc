#include "core/tunables.h"

#include <cctype>
#include <cstdlib>
#include <string>

#include "core/errors.h"

namespace adaptrain::collective {

size_t parse_byte_count(const char* name, const char* raw, size_t fallback, size_t min_value,
                        size_t max_value) {
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
  unsigned long long value = text.empty() ? 0 : std::strtoull(text.c_str(), &end, 10);
  if (text.empty() || !std::isdigit(static_cast<unsigned char>(text[0])) || *end != '\0' ||
      value > max_value / multiplier || value * multiplier < min_value) {
    throw InvalidArgumentError(std::string(name) + "=" + raw +
                               " is not valid: expected a number between " +
                               std::to_string(min_value) + " and " + std::to_string(max_value) +
                               " (suffixes K, M, G allowed)");
  }
  return static_cast<size_t>(value * multiplier);
}

Tunables parse_tunables(const std::function<const char*(const char*)>& lookup) {
  auto read = [&](const char* name, size_t fallback, size_t min_value, size_t max_value) {
    return parse_byte_count(name, lookup(name), fallback, min_value, max_value);
  };
  Tunables t{};
  t.block_bytes = read("COLLECTIVE_RING_BLOCK_BYTES", 256 << 10, 4 << 10, size_t{1} << 30);
  t.socket_buffer_bytes = read("COLLECTIVE_SOCKET_BUFFER_BYTES", 4 << 20, 0, size_t{1} << 30);
  t.connect_retry_ms = static_cast<int>(read("COLLECTIVE_CONNECT_RETRY_MS", 200, 1, 60000));
  t.spin_us = static_cast<int>(read("COLLECTIVE_SPIN_US", 50, 0, 1000000));
  t.spin_bandwidth_us = static_cast<int>(read("COLLECTIVE_SPIN_BANDWIDTH_US", 2000, 0, 1000000));
  t.auto_ring_min_bytes = read("COLLECTIVE_AUTO_RING_MIN_BYTES", 512 << 10, 0, size_t{1} << 40);
  t.auto_star_max_ranks = read("COLLECTIVE_AUTO_STAR_MAX_RANKS", 4, 1, 1 << 20);
  const char* local = lookup("COLLECTIVE_LOCAL_TRANSPORT");
  const std::string local_text = local == nullptr ? "" : local;
  if (local_text.empty() || local_text == "auto") {
    t.local_transport = LocalTransport::kAuto;
  } else if (local_text == "shm") {
    t.local_transport = LocalTransport::kShm;
  } else if (local_text == "tcp") {
    t.local_transport = LocalTransport::kTcp;
  } else {
    throw InvalidArgumentError("COLLECTIVE_LOCAL_TRANSPORT=" + local_text +
                               " is not valid: expected auto, shm or tcp");
  }
  t.shm_buffer_bytes = read("COLLECTIVE_SHM_BUFFER_BYTES", 256 << 10, 64 << 10, size_t{1} << 30);
  if ((t.shm_buffer_bytes & (t.shm_buffer_bytes - 1)) != 0) {
    throw InvalidArgumentError("COLLECTIVE_SHM_BUFFER_BYTES=" + std::to_string(t.shm_buffer_bytes) +
                               " is not valid: expected a power of two (e.g. 1M, 4M)");
  }
  t.hierarchical_chunk_bytes =
      read("COLLECTIVE_HIERARCHICAL_CHUNK_BYTES", 1 << 20, 0, size_t{1} << 40);
  const char* scheme = lookup("COLLECTIVE_HIERARCHICAL_SCHEME");
  const std::string scheme_text = scheme == nullptr ? "" : scheme;
  if (scheme_text.empty() || scheme_text == "shards") {
    t.hierarchical_leader = false;
  } else if (scheme_text == "leader") {
    t.hierarchical_leader = true;
  } else {
    throw InvalidArgumentError("COLLECTIVE_HIERARCHICAL_SCHEME=" + scheme_text +
                               " is not valid: expected shards or leader");
  }
  return t;
}

std::string Tunables::describe() const {
  return "COLLECTIVE_AUTO_RING_MIN_BYTES=" + std::to_string(auto_ring_min_bytes) +
         "\nCOLLECTIVE_AUTO_STAR_MAX_RANKS=" + std::to_string(auto_star_max_ranks) +
         "\nCOLLECTIVE_LOCAL_TRANSPORT=" + name_of(local_transport) +
         "\nCOLLECTIVE_HIERARCHICAL_CHUNK_BYTES=" + std::to_string(hierarchical_chunk_bytes) +
         "\nCOLLECTIVE_HIERARCHICAL_SCHEME=" + (hierarchical_leader ? "leader" : "shards") + "\n";
}

const char* name_of(LocalTransport transport) {
  switch (transport) {
    case LocalTransport::kShm:
      return "shm";
    case LocalTransport::kTcp:
      return "tcp";
    default:
      return "auto";
  }
}

const Tunables& tunables() {
  // A throwing initialiser leaves the static uninitialised, so the next call
  // reads the environment again.
  static const Tunables value = parse_tunables([](const char* name) { return std::getenv(name); });
  return value;
}

}  // namespace adaptrain::collective

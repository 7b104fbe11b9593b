// The chunked staging loop (see staging.h for the pipeline and its hazards).
#include "core/staging.h"

#include <algorithm>
#include <cstdlib>

#include "core/errors.h"
#include "core/tunables.h"

namespace adaptrain::collective {

namespace {

constexpr size_t kAlignment = 4096;  // every element size divides it

size_t round_up(size_t value, size_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

}  // namespace

StagingTunables parse_staging_tunables(const std::function<const char*(const char*)>& lookup) {
  StagingTunables tunables{};
  tunables.chunk_min_bytes =
      parse_byte_count("COLLECTIVE_CUDA_CHUNK_MIN_BYTES", lookup("COLLECTIVE_CUDA_CHUNK_MIN_BYTES"),
                       size_t{1} << 20, kAlignment, size_t{1} << 30);
  tunables.chunk_max_bytes =
      parse_byte_count("COLLECTIVE_CUDA_CHUNK_MAX_BYTES", lookup("COLLECTIVE_CUDA_CHUNK_MAX_BYTES"),
                       size_t{16} << 20, kAlignment, size_t{1} << 30);
  if (tunables.chunk_max_bytes < tunables.chunk_min_bytes) {
    throw InvalidArgumentError(
        "COLLECTIVE_CUDA_CHUNK_MAX_BYTES must be at least COLLECTIVE_CUDA_CHUNK_MIN_BYTES (" +
        std::to_string(tunables.chunk_min_bytes) + " bytes)");
  }
  return tunables;
}

const StagingTunables& staging_tunables() {
  static const StagingTunables tunables =
      parse_staging_tunables([](const char* name) { return std::getenv(name); });
  return tunables;
}

size_t staging_chunk_bytes(size_t bytes, size_t element_bytes, const StagingTunables& tunables) {
  if (element_bytes == 0 || kAlignment % element_bytes != 0) {
    throw InvalidArgumentError("staging: unsupported element size " +
                               std::to_string(element_bytes));
  }
  size_t chunk = std::clamp((bytes + 7) / 8, tunables.chunk_min_bytes, tunables.chunk_max_bytes);
  chunk = round_up(chunk, kAlignment);
  // A buffer smaller than one chunk is one chunk of its own size.
  return std::max(std::min(chunk, round_up(bytes, kAlignment)), kAlignment);
}

void run_staged(StagingDevice& device, char* staging, size_t chunk_bytes, char* data, size_t bytes,
                bool download_input, bool upload_output,
                const std::function<void(char* host, size_t offset, size_t bytes)>& communicate) {
  if (bytes == 0) return;
  if (chunk_bytes == 0) throw InvalidArgumentError("staging: chunk_bytes must be positive");
  const size_t chunks = (bytes + chunk_bytes - 1) / chunk_bytes;
  auto slot_of = [](size_t chunk) { return static_cast<int>(chunk % kStagingSlots); };
  auto host_of = [&](size_t chunk) { return staging + slot_of(chunk) * chunk_bytes; };
  auto length_of = [&](size_t chunk) { return std::min(chunk_bytes, bytes - chunk * chunk_bytes); };

  size_t queued = 0;  // chunks whose download has been queued
  // Queue downloads of the chunks before `limit` (exclusive). Chunk j goes into
  // slot j % S; the device starts it once the upload of chunk j - S is done.
  auto queue_downloads = [&](size_t limit) {
    for (limit = std::min(limit, chunks); queued < limit; ++queued) {
      device.download(slot_of(queued), host_of(queued), data + queued * chunk_bytes,
                      length_of(queued));
    }
  };

  try {
    if (download_input) queue_downloads(kStagingSlots - 1);
    for (size_t i = 0; i < chunks; ++i) {
      if (download_input) {
        // Chunk i + S - 1 reuses the slot of chunk i - 1, whose upload (if
        // any) is already queued; slot i % S is the host's until the upload
        // below.
        queue_downloads(i + kStagingSlots);
        device.wait_download(slot_of(i));
      } else if (upload_output && i >= static_cast<size_t>(kStagingSlots)) {
        // The collective is about to overwrite the slot chunk i - S went up from.
        device.wait_upload(slot_of(i));
      }
      communicate(host_of(i), i * chunk_bytes, length_of(i));
      if (upload_output) {
        device.upload(slot_of(i), data + i * chunk_bytes, host_of(i), length_of(i));
      }
    }
    device.synchronize();
  } catch (...) {
    // Nothing may write the staging area or the buffer once this returns.
    try {
      device.synchronize();
    } catch (...) {
    }
    throw;
  }
}

}  // namespace adaptrain::collective

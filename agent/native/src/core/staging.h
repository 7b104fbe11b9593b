// Staging a device buffer through host memory in chunks, pipelined with the
// collective that runs on each chunk.
//
// The collectives move host memory. A buffer in device (GPU) memory is cut
// into chunks; each chunk is copied into a slot of a pinned host staging area
// (download), reduced there by one collective call (communicate), and copied
// back (upload). With S slots, the downloads of the next S-1 chunks and the
// uploads of the chunks already done run on the device's copy engines while
// the host communicates the current chunk, so at steady state the copies hide
// behind the network and the buffer never makes a whole round trip before the
// first byte is sent:
//
//   host:      comm 0   | comm 1   | comm 2   | ...
//   download:  d0 d1 d2 |       d3 |       d4 | ...   (into slot i % S)
//   upload:             | u0       | u1       | ...
//
// Slot reuse is the one hazard: chunk i + S may only be downloaded into slot
// i % S once chunk i's upload from it has finished (the device orders that;
// StagingDevice::download), and when nothing is downloaded (a broadcast's
// receivers) the host waits for that upload before the collective writes the
// slot again.
//
// The loop is written against StagingDevice, an interface over "copy engine"
// operations, so the ordering is tested without a GPU (tests/test_staging.cc
// drives it with host threads that play the streams); core/cuda_runtime.h has
// the CUDA implementation.
#pragma once

#include <cstddef>
#include <functional>

namespace adaptrain::collective {

// Asynchronous copies between device memory and the slots of a host staging
// area, in the order they are queued per direction (a CUDA stream each).
class StagingDevice {
 public:
  virtual ~StagingDevice() = default;
  // Queue a copy of `bytes` from device memory `device` into `host` (slot
  // `slot`), to start only once the last upload queued from that slot has
  // finished.
  virtual void download(int slot, void* host, const void* device, size_t bytes) = 0;
  // Block until the last download queued into `slot` has finished.
  virtual void wait_download(int slot) = 0;
  // Queue a copy of `bytes` from `host` (slot `slot`) to device memory `device`.
  virtual void upload(int slot, void* device, const void* host, size_t bytes) = 0;
  // Block until the last upload queued from `slot` has finished.
  virtual void wait_upload(int slot) = 0;
  // Block until every queued copy has finished.
  virtual void synchronize() = 0;
};

// How a buffer is cut: COLLECTIVE_CUDA_CHUNK_MIN_BYTES (default 1 MiB) and
// COLLECTIVE_CUDA_CHUNK_MAX_BYTES (default 16 MiB) bound a chunk, which is
// otherwise an eighth of the buffer (enough chunks to hide the copies, few
// enough that per-call latency does not show). Read once per process; every
// rank must use the same values, since each chunk is one collective call.
struct StagingTunables {
  size_t chunk_min_bytes;
  size_t chunk_max_bytes;
};
constexpr int kStagingSlots = 3;
// Throws InvalidArgumentError naming the variable when a value does not parse.
StagingTunables parse_staging_tunables(const std::function<const char*(const char*)>& lookup);
const StagingTunables& staging_tunables();

// The chunk size for a buffer of `bytes`: a whole number of elements (and of
// 4 KiB, which every element size divides), at least `element_bytes`.
size_t staging_chunk_bytes(size_t bytes, size_t element_bytes, const StagingTunables& tunables);

// Runs `communicate(host, offset, bytes)` on every chunk of the device buffer
// `data` (`bytes` long), in order, on a host copy of that chunk in a slot of
// `staging` (kStagingSlots * chunk_bytes bytes). `download_input`: the chunk
// is copied from the device first (else the slot holds whatever it held:
// the collective only writes it); `upload_output`: the slot is copied back
// after the collective (else the device buffer is left as it was). Returns
// once every copy has finished. If `communicate` or a copy throws, waits for
// the copies in flight (so nothing writes `staging` or `data` afterwards) and
// rethrows.
void run_staged(StagingDevice& device, char* staging, size_t chunk_bytes, char* data, size_t bytes,
                bool download_input, bool upload_output,
                const std::function<void(char* host, size_t offset, size_t bytes)>& communicate);

}  // namespace adaptrain::collective

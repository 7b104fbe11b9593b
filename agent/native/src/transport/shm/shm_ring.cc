#include "transport/shm/shm_ring.h"

#include <algorithm>
#include <cstring>

#include "core/errors.h"

namespace adaptrain::collective {

bool is_power_of_two(size_t value) { return value != 0 && (value & (value - 1)) == 0; }

RingSpan ring_span(uint64_t index, size_t length, size_t capacity) {
  const size_t offset = static_cast<size_t>(index & (capacity - 1));
  const size_t first = std::min(length, capacity - offset);
  return RingSpan{offset, first, length - first};
}

SpscRing::SpscRing(RingControl* control, char* data, size_t capacity)
    : control_(control), data_(data), capacity_(capacity) {
  if (!is_power_of_two(capacity)) {
    throw InvalidArgumentError("a shared-memory ring needs a power-of-two capacity, not " +
                               std::to_string(capacity));
  }
}

void SpscRing::reset(RingControl* control) {
  control->tail.store(0, std::memory_order_relaxed);
  control->head.store(0, std::memory_order_relaxed);
  control->reader_waiting.store(0, std::memory_order_relaxed);
  control->writer_waiting.store(0, std::memory_order_relaxed);
  control->producer_closed.store(0, std::memory_order_relaxed);
  control->consumer_closed.store(0, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
}

size_t SpscRing::readable() const {
  const uint64_t tail = control_->tail.load(std::memory_order_acquire);
  const uint64_t head = control_->head.load(std::memory_order_relaxed);
  return static_cast<size_t>(tail - head);
}

size_t SpscRing::writable() const {
  const uint64_t head = control_->head.load(std::memory_order_acquire);
  const uint64_t tail = control_->tail.load(std::memory_order_relaxed);
  return capacity_ - static_cast<size_t>(tail - head);
}

size_t SpscRing::write(const void* data, size_t length) {
  const uint64_t tail = control_->tail.load(std::memory_order_relaxed);
  const uint64_t head = control_->head.load(std::memory_order_acquire);
  const size_t n = std::min(length, capacity_ - static_cast<size_t>(tail - head));
  if (n == 0) return 0;
  // Publish every kRingPublishBytes, so the consumer starts on the first
  // piece while the rest is still being copied in.
  for (size_t done = 0; done < n;) {
    const size_t m = std::min(kRingPublishBytes, n - done);
    const RingSpan span = ring_span(tail + done, m, capacity_);
    const char* from = static_cast<const char*>(data) + done;
    std::memcpy(data_ + span.offset, from, span.first);
    if (span.second > 0) std::memcpy(data_, from + span.first, span.second);
    done += m;
    control_->tail.store(tail + done, std::memory_order_release);
  }
  return n;
}

size_t SpscRing::peek(void* data, size_t length) const {
  const uint64_t head = control_->head.load(std::memory_order_relaxed);
  const uint64_t tail = control_->tail.load(std::memory_order_acquire);
  const size_t n = std::min(length, static_cast<size_t>(tail - head));
  if (n == 0) return 0;
  const RingSpan span = ring_span(head, n, capacity_);
  std::memcpy(data, data_ + span.offset, span.first);
  if (span.second > 0) std::memcpy(static_cast<char*>(data) + span.first, data_, span.second);
  return n;
}

size_t SpscRing::read(void* data, size_t length) {
  const size_t n = peek(data, length);
  if (n > 0) {
    const uint64_t head = control_->head.load(std::memory_order_relaxed);
    control_->head.store(head + n, std::memory_order_release);
  }
  return n;
}

const char* SpscRing::view(size_t* length) const {
  const uint64_t head = control_->head.load(std::memory_order_relaxed);
  const uint64_t tail = control_->tail.load(std::memory_order_acquire);
  const RingSpan span = ring_span(head, static_cast<size_t>(tail - head), capacity_);
  *length = span.first;
  return data_ + span.offset;
}

void SpscRing::consume(size_t length) {
  const uint64_t head = control_->head.load(std::memory_order_relaxed);
  control_->head.store(head + length, std::memory_order_release);
}

bool SpscRing::wait_for_bytes() {
  control_->reader_waiting.store(1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return readable() == 0 && control_->producer_closed.load(std::memory_order_relaxed) == 0;
}

bool SpscRing::wait_for_room() {
  control_->writer_waiting.store(1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return writable() == 0 && control_->consumer_closed.load(std::memory_order_relaxed) == 0;
}

bool SpscRing::take_reader_waiting() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return control_->reader_waiting.load(std::memory_order_relaxed) != 0 &&
         control_->reader_waiting.exchange(0, std::memory_order_relaxed) != 0;
}

bool SpscRing::take_writer_waiting() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return control_->writer_waiting.load(std::memory_order_relaxed) != 0 &&
         control_->writer_waiting.exchange(0, std::memory_order_relaxed) != 0;
}

}  // namespace adaptrain::collective

// A single-producer, single-consumer byte ring in memory that two processes
// share (the shared-memory transport, transport_shm.h, puts two of them in
// one segment per pair of local ranks, one per direction).
//
// The indices are byte counts that only grow (64 bits never wrap in
// practice): the producer owns `tail`, the consumer owns `head`, the bytes
// waiting are tail - head and the free room is capacity - (tail - head). The
// capacity is a power of two, so an index maps to offset index & (capacity -
// 1) and a transfer is at most two memcpy calls (before and after the wrap).
// Each side reads the other's index with acquire and publishes its own with
// release, so the bytes are visible before the index that covers them.
//
// Sleeping. A side that finds nothing to do sets its "waiting" flag, issues
// a sequentially consistent fence and checks once more before it sleeps; the
// other side, after publishing its index, issues the same fence and reads
// the flag. One of the two must see the other's write (the two fences are
// totally ordered), so a wake-up is never lost: either the sleeper sees the
// new index, or the publisher sees the flag and rings the doorbell
// (take_reader_waiting / take_writer_waiting tell it to). How the doorbell
// rings and how a side sleeps is the transport's business, not the ring's.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace adaptrain::collective {

// The control block of one ring: the indices on cache lines of their own
// (the producer writes one, the consumer the other), then the flags.
struct alignas(64) RingControl {
  std::atomic<uint64_t> tail;  // bytes ever written (producer)
  char pad0[64 - sizeof(std::atomic<uint64_t>)];
  std::atomic<uint64_t> head;  // bytes ever read (consumer)
  char pad1[64 - sizeof(std::atomic<uint64_t>)];
  std::atomic<uint32_t> reader_waiting;   // the consumer sleeps until bytes arrive
  std::atomic<uint32_t> writer_waiting;   // the producer sleeps until room frees up
  std::atomic<uint32_t> producer_closed;  // the producer will write no more
  std::atomic<uint32_t> consumer_closed;  // the consumer will read no more
};
static_assert(std::atomic<uint64_t>::is_always_lock_free &&
                  std::atomic<uint32_t>::is_always_lock_free,
              "the ring's atomics must work between processes");

// Where a transfer of `length` bytes starting at index `index` lands in a
// ring of `capacity` bytes (a power of two): `first` bytes at `offset`, then
// `second` bytes at offset 0.
struct RingSpan {
  size_t offset;
  size_t first;
  size_t second;
};
RingSpan ring_span(uint64_t index, size_t length, size_t capacity);

// write() publishes its bytes in pieces of at most this many, each as soon
// as it is copied in, so that a consumer on another core reduces or copies
// out the first piece while the producer still copies the next: one large
// memcpy published at its end would make the two cores take turns. Measured
// on 2 cores, ranks on different cores, np = 2 (docs/native.md): 256 KiB
// allreduce 6.0 -> 7.4 GB/s, 64 KiB 4.9 -> 5.6; 8-32 KiB pieces alike.
inline constexpr size_t kRingPublishBytes = size_t{32} << 10;

// True for 1, 2, 4, ...
bool is_power_of_two(size_t value);

class SpscRing {
 public:
  // `control` must be zeroed (or reset()) before either side uses it;
  // `capacity` must be a power of two.
  SpscRing(RingControl* control, char* data, size_t capacity);

  static void reset(RingControl* control);

  size_t capacity() const { return capacity_; }
  // Bytes the consumer could read now / room the producer could fill now.
  size_t readable() const;
  size_t writable() const;

  // Producer: copies up to `length` bytes in; returns how many (0 when full).
  size_t write(const void* data, size_t length);
  // Consumer: copies up to `length` bytes out and frees their room.
  size_t read(void* data, size_t length);
  // Consumer: copies without consuming.
  size_t peek(void* data, size_t length) const;
  // Consumer, without copying: the readable bytes up to the wrap, and
  // consuming `length` of them once done with them.
  const char* view(size_t* length) const;
  void consume(size_t length);

  // Sleeping (see the file comment). A side about to sleep calls
  // wait_for_bytes()/wait_for_room(): it sets its flag, fences and returns
  // true when it may sleep (still nothing to do), false when it must not.
  bool wait_for_bytes();
  bool wait_for_room();
  // After publishing: true once when the other side asked to be woken (the
  // flag is cleared), so the caller rings the doorbell exactly then.
  bool take_reader_waiting();  // producer, after write()
  bool take_writer_waiting();  // consumer, after read()

  RingControl& control() { return *control_; }
  const RingControl& control() const { return *control_; }

 private:
  RingControl* control_;
  char* data_;
  size_t capacity_;
};

}  // namespace adaptrain::collective

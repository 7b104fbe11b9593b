// The shared-memory ring's index arithmetic, wrap-around and wake-up flags.
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "core/errors.h"
#include "transport/shm/shm_ring.h"
#include "unit_tests.h"

using namespace adaptrain::collective;

namespace {

// A ring in ordinary memory, as it would be in a segment.
struct LocalRing {
  explicit LocalRing(size_t capacity) : data(capacity), ring(&control, data.data(), capacity) {
    SpscRing::reset(&control);
  }
  RingControl control;
  std::vector<char> data;
  SpscRing ring;
};

}  // namespace

TEST(ring_spans_split_at_the_wrap) {
  const RingSpan inside = ring_span(3, 4, 16);
  CHECK_EQ(inside.offset, size_t{3});
  CHECK_EQ(inside.first, size_t{4});
  CHECK_EQ(inside.second, size_t{0});
  const RingSpan wraps = ring_span(14, 5, 16);
  CHECK_EQ(wraps.offset, size_t{14});
  CHECK_EQ(wraps.first, size_t{2});
  CHECK_EQ(wraps.second, size_t{3});
  // Indices only grow: index 16 * k + 5 is offset 5.
  const RingSpan later = ring_span((uint64_t{1} << 40) + 5, 16, 16);
  CHECK_EQ(later.offset, size_t{5});
  CHECK_EQ(later.first, size_t{11});
  CHECK_EQ(later.second, size_t{5});
  CHECK(is_power_of_two(1) && is_power_of_two(1 << 20) && !is_power_of_two(0) &&
        !is_power_of_two(24));
}

TEST(ring_refuses_a_capacity_that_is_not_a_power_of_two) {
  RingControl control;
  std::vector<char> data(24);
  CHECK_THROWS(SpscRing(&control, data.data(), 24), InvalidArgumentError, "power-of-two");
}

TEST(ring_fills_drains_and_wraps_in_order) {
  LocalRing local(16);
  SpscRing& ring = local.ring;
  CHECK_EQ(ring.readable(), size_t{0});
  CHECK_EQ(ring.writable(), size_t{16});
  const char text[] = "abcdefghijklmnopqrstuvwxyz";
  CHECK_EQ(ring.write(text, 10), size_t{10});
  CHECK_EQ(ring.write(text + 10, 10), size_t{6});  // only the room that is left
  CHECK_EQ(ring.write(text, 1), size_t{0});        // full
  char out[32] = {};
  CHECK_EQ(ring.peek(out, 3), size_t{3});
  CHECK_EQ(std::string(out, 3), std::string("abc"));
  CHECK_EQ(ring.readable(), size_t{16});  // peeking consumes nothing
  CHECK_EQ(ring.read(out, 12), size_t{12});
  CHECK_EQ(std::string(out, 12), std::string("abcdefghijkl"));
  // The next write wraps past the end of the buffer.
  CHECK_EQ(ring.write(text + 16, 10), size_t{10});
  CHECK_EQ(ring.readable(), size_t{14});
  CHECK_EQ(ring.read(out, 32), size_t{14});
  CHECK_EQ(std::string(out, 14), std::string("mnopqrstuvwxyz"));
  CHECK_EQ(local.control.head.load(), uint64_t{26});
  CHECK_EQ(local.control.tail.load(), uint64_t{26});
  CHECK_EQ(ring.read(out, 1), size_t{0});
}

TEST(ring_waiting_flags_ask_for_one_doorbell) {
  LocalRing local(16);
  SpscRing& ring = local.ring;
  char byte = 'x';
  // Nothing to read: the consumer may sleep, and the producer's next write
  // finds its flag once.
  CHECK(ring.wait_for_bytes());
  CHECK(ring.take_reader_waiting());
  CHECK(!ring.take_reader_waiting());
  CHECK_EQ(ring.write(&byte, 1), size_t{1});
  // Bytes waiting: a consumer about to sleep must not.
  CHECK(!ring.wait_for_bytes());
  // Full: the producer may sleep until the consumer frees room.
  std::vector<char> fill(15, 'y');
  CHECK_EQ(ring.write(fill.data(), fill.size()), size_t{15});
  CHECK(ring.wait_for_room());
  CHECK_EQ(ring.read(&byte, 1), size_t{1});
  CHECK(ring.take_writer_waiting());
  CHECK(!ring.take_writer_waiting());
  CHECK(!ring.wait_for_room());  // room now
  // A closed producer: a reader must not sleep for bytes that never come.
  std::vector<char> sink(16);
  ring.read(sink.data(), sink.size());
  local.control.producer_closed.store(1);
  CHECK(!ring.wait_for_bytes());
}

TEST(ring_carries_a_stream_between_two_threads) {
  // A producer and a consumer thread move 4 MiB of a known pattern through a
  // 4 KiB ring in odd-sized pieces; every byte must arrive once, in order.
  LocalRing local(4096);
  SpscRing& ring = local.ring;
  const size_t total = 4 << 20;
  auto pattern = [](size_t i) { return static_cast<char>((i * 131 + (i >> 9)) & 0xFF); };
  std::thread producer([&] {
    std::vector<char> piece(1000);
    size_t sent = 0;
    while (sent < total) {
      const size_t want = std::min(piece.size() - sent % 7, total - sent);
      for (size_t i = 0; i < want; ++i) piece[i] = pattern(sent + i);
      size_t done = 0;
      while (done < want) done += ring.write(piece.data() + done, want - done);
      sent += want;
    }
  });
  std::vector<char> piece(777);
  size_t received = 0;
  size_t wrong = 0;
  while (received < total) {
    const size_t got = ring.read(piece.data(), std::min(piece.size(), total - received));
    for (size_t i = 0; i < got; ++i) wrong += piece[i] != pattern(received + i);
    received += got;
  }
  producer.join();
  CHECK_EQ(wrong, size_t{0});
  CHECK_EQ(ring.readable(), size_t{0});
}

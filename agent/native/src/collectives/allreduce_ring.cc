// Ring algorithms: reduce-scatter, all-gather, and allreduce as the two in a
// row.
//
// The buffer is cut into n segments, one per rank (segment sizes differ by at
// most one row when n does not divide the row count). In each step every rank
// r sends one segment to rank r+1 and receives one from rank r-1:
//
//   step t        sends segment (r + s - t) mod n, receives (r + s - t - 1) mod n
//   t <  R        reduce steps: the received segment is reduced into ours
//   R <= t < R+C  copy steps: the received segment is final and is copied in
//
//   allreduce       R = n-1, C = n-1, s = 0: after the reduce steps rank r
//                   owns the full result of segment r+1, which the copy steps
//                   pass around
//   reduce-scatter  R = n-1, C = 0, s = -1: rank r ends owning segment r
//   all-gather      R = 0, C = n-1, s = 0: rank r starts by sending its own
//
// An allreduce sends and receives 2(n-1)/n of the buffer per rank, the lower
// bound for any allreduce whatever n is; the price is 2(n-1) latency hops,
// which is why the tree and the star beat it on small buffers.
//
// Pipelining. What rank r sends at step t is exactly the segment it received
// at step t-1. Rather than waiting for the whole segment, the sender may
// forward any prefix of it that has already been received and reduced. Seen
// as two byte streams, the outgoing stream is the first segment followed by
// the incoming stream (minus its last segment), so the rule is simply
//
//   bytes sendable in step t >= 1 = bytes of step t-1 already processed.
//
// Received data is processed in blocks of at most block_bytes: received into
// a scratch buffer, reduced into place (still in cache), then released for
// forwarding. The next hop therefore starts sending a segment while this rank
// is still receiving it, and sending, receiving and reducing all overlap. A
// blocking "send the segment, then receive one" ring would deadlock as soon
// as a segment exceeds the socket buffers (every rank stuck in send), so both
// directions run on non-blocking sockets from a single progress loop that
// polls only when neither direction can move.
//
// Why reusing segment memory is safe: a receive at step t writes segment
// (r+s-t-1); the only sends that read it are step t+1 (gated by the rule
// above) and, in the all-gather, step t+1-n, whose bytes must have left this
// rank before rank r-1 could even produce the step-t bytes (the data
// dependency runs all the way around the ring).
//
// Mean is a sum whose owner divides its fully reduced segment by n at the
// last reduce step, before forwarding it; every rank then receives the same
// bits, so all ranks end with bit-identical results (true for every op, since
// the copy steps only copy).
//
// The header check: each rank checks the header of the rank before it, and a
// rank only forwards reduced data after that check. If every check passes,
// every rank made the same call; if one fails, that rank never forwards and
// closes its connections, so no rank can complete a reduction that needs its
// data (the communicator only uses the ring when every segment is non-empty).
#include "collectives/allreduce_ring.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "collectives/reduce.h"
#include "collectives/segments.h"
#include "core/errors.h"

namespace adaptrain::collective {
namespace {

struct Segment {
  size_t offset;  // bytes
  size_t bytes;
};

}  // namespace

class RingEngine {
 public:
  RingEngine(Transport& transport, const RingOptions& options, size_t reduce_steps,
             size_t copy_steps, long long shift)
      : transport_(transport),
        options_(options),
        rank_(transport.rank()),
        size_(transport.size()),
        element_size_(element_size(options.dtype)),
        reduce_steps_(reduce_steps),
        steps_(reduce_steps + copy_steps),
        shift_(shift),
        reduce_(reduce_steps > 0 ? reduce_kernel(options.dtype, options.op) : nullptr),
        next_(transport.connection((rank_ + 1) % size_)),
        prev_(transport.connection((rank_ + size_ - 1) % size_)),
        data_(static_cast<char*>(options.data)),
        header_out_(encode_header(options.header)),
        deadline_(Deadline::inactivity(options.timeout)),
        stray_(transport, options.header, {(rank_ + 1) % size_, (rank_ + size_ - 1) % size_}) {
    // The block is a whole number of elements so that every reduce call sees
    // whole elements except for a partial tail carried to the next receive.
    block_bytes_ = std::max(options.block_bytes / element_size_, size_t{2}) * element_size_;
    if (options.scratch->size() < block_bytes_) options.scratch->resize(block_bytes_);
    scratch_ = options.scratch->data();
  }

  // One round without blocking, for callers that drive several rings at
  // once (RingTask): true when anything moved.
  bool progress() {
    bool moved = progress_send();
    moved = progress_recv() || moved;
    return moved;
  }
  bool done() const { return send_done() && recv_done(); }
  // What to sleep on when progress() moved nothing (the stray-header watch
  // included); check_strays() after the wait.
  void add_wait_requests(std::vector<WaitRequest>* requests) const {
    if (!send_done() && can_send_now()) requests->push_back(WaitRequest{&next_, true, false});
    if (!recv_done()) requests->push_back(WaitRequest{&prev_, false, true});
    stray_.add_requests(*requests);
  }
  void check_strays() { stray_.check(); }

  void run() {
    for (;;) {
      bool moved = progress_send();
      moved = progress_recv() || moved;
      if (send_done() && recv_done()) return;
      if (moved) {
        deadline_.note_progress();
        continue;
      }
      // Neither direction can move: sleep until one can. Only ask to send
      // when the pipeline rule allows it, or poll would spin on a writable
      // socket with nothing to write.
      requests_.clear();
      if (!send_done() && can_send_now()) requests_.push_back(WaitRequest{&next_, true, false});
      if (!recv_done()) requests_.push_back(WaitRequest{&prev_, false, true});
      if (requests_.empty()) {
        throw IoError("ring stalled with nothing to wait for (internal error)");
      }
      stray_.add_requests(requests_);
      transport_.wait(requests_.data(), requests_.size(), deadline_, options_.spin_us);
      stray_.check();
    }
  }

 private:
  Segment segment(size_t index) const {
    const size_t row_bytes = options_.row_elements * element_size_;
    if (options_.segment_ends != nullptr) {
      const std::vector<size_t>& ends = *options_.segment_ends;
      const size_t first = index == 0 ? 0 : ends[index - 1];
      return Segment{first * row_bytes, (ends[index] - first) * row_bytes};
    }
    const RowRange rows = segment_rows(options_.count / options_.row_elements, size_, index);
    return Segment{rows.first * row_bytes, rows.rows * row_bytes};
  }
  Segment send_segment(size_t step) const {
    return segment(ring_index(rank_ + shift_ - static_cast<long long>(step), size_));
  }
  Segment recv_segment(size_t step) const {
    return segment(ring_index(rank_ + shift_ - static_cast<long long>(step) - 1, size_));
  }
  bool reduces(size_t step) const { return step < reduce_steps_; }

  bool send_done() const { return header_sent_ == kHeaderBytes && send_step_ == steps_; }
  bool recv_done() const { return header_received_ == kHeaderBytes && recv_step_ == steps_; }

  // How many bytes of the current send step may go out (the pipeline rule).
  size_t send_limit() const {
    const size_t bytes = send_segment(send_step_).bytes;
    if (send_step_ == 0 || recv_step_ >= send_step_) return bytes;
    if (recv_step_ + 1 == send_step_) return recv_processed_;
    return 0;
  }
  bool can_send_now() const {
    return header_sent_ < kHeaderBytes || (send_step_ < steps_ && send_offset_ < send_limit());
  }

  // Steps whose segment is empty complete without any bytes.
  void skip_empty_send_steps() {
    while (send_step_ < steps_ && send_segment(send_step_).bytes == 0) ++send_step_;
  }
  void skip_empty_recv_steps() {
    while (recv_step_ < steps_ && recv_segment(recv_step_).bytes == 0) ++recv_step_;
  }

  bool progress_send() {
    if (header_sent_ < kHeaderBytes) {
      size_t moved =
          next_.send_some(header_out_.data() + header_sent_, kHeaderBytes - header_sent_);
      header_sent_ += moved;
      return moved > 0;
    }
    skip_empty_send_steps();
    if (send_step_ == steps_) return false;
    const size_t limit = send_limit();
    if (send_offset_ >= limit) return false;
    const Segment seg = send_segment(send_step_);
    size_t moved = next_.send_some(data_ + seg.offset + send_offset_, limit - send_offset_);
    send_offset_ += moved;
    if (send_offset_ == seg.bytes) {
      ++send_step_;
      send_offset_ = 0;
    }
    return moved > 0;
  }

  bool progress_recv() {
    if (header_received_ < kHeaderBytes) {
      size_t moved =
          prev_.recv_some(header_in_.data() + header_received_, kHeaderBytes - header_received_);
      header_received_ += moved;
      if (header_received_ == kHeaderBytes) check_header(options_.header, header_in_.data(), prev_);
      return moved > 0;
    }
    skip_empty_recv_steps();
    if (recv_step_ == steps_) return false;
    const Segment seg = recv_segment(recv_step_);
    size_t moved = 0;
    if (reduces(recv_step_) && scratch_fill_ == 0 && reduce_in_place(seg, &moved)) {
      // Reduced straight from the transport's memory (shared memory).
    } else if (reduces(recv_step_)) {
      const size_t room = std::min(block_bytes_ - scratch_fill_, seg.bytes - recv_received_);
      moved = prev_.recv_some(scratch_ + scratch_fill_, room);
      if (moved == 0) return false;
      scratch_fill_ += moved;
      recv_received_ += moved;
      const size_t whole = scratch_fill_ / element_size_ * element_size_;
      if (whole > 0) {
        char* target = data_ + seg.offset + recv_processed_;
        reduce_(target, scratch_, whole / element_size_);
        if (options_.op == ReduceOp::kMean && recv_step_ + 1 == reduce_steps_) {
          // Last reduce step: this range is now the full sum.
          finish_mean(target, whole / element_size_, options_.dtype, static_cast<size_t>(size_));
        }
        recv_processed_ += whole;
        scratch_fill_ -= whole;
        if (scratch_fill_ > 0) std::memmove(scratch_, scratch_ + whole, scratch_fill_);
      }
    } else {
      // Copy step: the incoming bytes are final, so land them in place.
      const size_t room = std::min(block_bytes_, seg.bytes - recv_processed_);
      moved = prev_.recv_some(data_ + seg.offset + recv_processed_, room);
      recv_processed_ += moved;
      recv_received_ = recv_processed_;
    }
    if (recv_processed_ == seg.bytes) {
      ++recv_step_;
      recv_processed_ = recv_received_ = 0;
    }
    return moved > 0;
  }

  // Reduces whole elements that sit in the connection's own memory into
  // place, without the copy into scratch; false when the transport cannot
  // lend its memory, or the bytes there are misaligned or less than one
  // element before the ring wraps (then the copying path takes them).
  bool reduce_in_place(const Segment& seg, size_t* moved) {
    const char* view = nullptr;
    size_t available = 0;
    if (!prev_.recv_view(&view, &available)) return false;
    if (available == 0) return true;  // nothing yet: no progress, like recv_some
    const size_t want = std::min({available, seg.bytes - recv_received_, block_bytes_});
    const size_t whole = want / element_size_ * element_size_;
    if (whole == 0 || reinterpret_cast<uintptr_t>(view) % element_size_ != 0) return false;
    char* target = data_ + seg.offset + recv_processed_;
    reduce_(target, view, whole / element_size_);
    if (options_.op == ReduceOp::kMean && recv_step_ + 1 == reduce_steps_) {
      finish_mean(target, whole / element_size_, options_.dtype, static_cast<size_t>(size_));
    }
    prev_.recv_consume(whole);
    recv_received_ += whole;
    recv_processed_ += whole;
    *moved = whole;
    return true;
  }

  Transport& transport_;
  const RingOptions& options_;
  const int rank_;
  const int size_;
  const size_t element_size_;
  const size_t reduce_steps_;
  const size_t steps_;
  const long long shift_;
  const ReduceFn reduce_;
  Connection& next_;
  Connection& prev_;
  char* const data_;
  const HeaderBytes header_out_;
  HeaderBytes header_in_{};
  Deadline deadline_;
  StrayHeaderWatch stray_;
  std::vector<WaitRequest> requests_;
  size_t block_bytes_ = 0;
  char* scratch_ = nullptr;

  size_t header_sent_ = 0;
  size_t header_received_ = 0;
  size_t send_step_ = 0;
  size_t send_offset_ = 0;  // bytes of the current send segment already sent
  size_t recv_step_ = 0;
  size_t recv_received_ = 0;   // bytes of the current receive segment taken from the socket
  size_t recv_processed_ = 0;  // ... of which reduced (or copied) and so forwardable
  size_t scratch_fill_ = 0;    // bytes in scratch not reduced yet (< one element after a reduce)
};

namespace {

void check(const RingOptions& options, int size) {
  if (options.scratch == nullptr) throw InvalidArgumentError("the ring needs a scratch buffer");
  if (options.row_elements == 0 || options.count % options.row_elements != 0) {
    throw InvalidArgumentError("the ring's row size must divide the element count");
  }
  if (options.segment_ends != nullptr) {
    const std::vector<size_t>& ends = *options.segment_ends;
    if (ends.size() != static_cast<size_t>(size) ||
        ends.back() != options.count / options.row_elements ||
        !std::is_sorted(ends.begin(), ends.end())) {
      throw InvalidArgumentError("the ring's segment ends must rise to the row count");
    }
  }
}

}  // namespace

void ring_allreduce(Transport& transport, const RingOptions& options) {
  if (transport.size() == 1) return;
  check(options, transport.size());
  const size_t n = static_cast<size_t>(transport.size());
  RingEngine(transport, options, n - 1, n - 1, 0).run();
}

void ring_reduce_scatter(Transport& transport, const RingOptions& options) {
  if (transport.size() == 1) return;
  check(options, transport.size());
  const size_t n = static_cast<size_t>(transport.size());
  RingEngine(transport, options, n - 1, 0, -1).run();
}

void ring_allgather(Transport& transport, const RingOptions& options) {
  if (transport.size() == 1) return;
  check(options, transport.size());
  const size_t n = static_cast<size_t>(transport.size());
  RingEngine(transport, options, 0, n - 1, 0).run();
}

RingTask::RingTask(Transport& transport, const RingOptions& options, RingKind kind) {
  if (transport.size() == 1) return;
  check(options, transport.size());
  const size_t n = static_cast<size_t>(transport.size());
  switch (kind) {
    case RingKind::kAllreduce:
      engine_ = std::make_unique<RingEngine>(transport, options, n - 1, n - 1, 0);
      break;
    case RingKind::kReduceScatter:
      engine_ = std::make_unique<RingEngine>(transport, options, n - 1, 0, -1);
      break;
    case RingKind::kAllgather:
      engine_ = std::make_unique<RingEngine>(transport, options, 0, n - 1, 0);
      break;
  }
}

RingTask::~RingTask() = default;
RingTask::RingTask(RingTask&&) noexcept = default;
RingTask& RingTask::operator=(RingTask&&) noexcept = default;

bool RingTask::progress() { return engine_ != nullptr && engine_->progress(); }
bool RingTask::done() const { return engine_ == nullptr || engine_->done(); }
void RingTask::add_wait_requests(std::vector<WaitRequest>* requests) const {
  if (engine_ != nullptr && !engine_->done()) engine_->add_wait_requests(requests);
}
void RingTask::check_strays() {
  if (engine_ != nullptr) engine_->check_strays();
}

}  // namespace adaptrain::collective

// Ring allreduce: reduce-scatter followed by all-gather.
//
// The buffer is cut into n segments, one per rank (segment sizes differ by at
// most one element when n does not divide the count). In 2(n-1) steps every
// rank r sends one segment to rank r+1 and receives one from rank r-1:
//
//   step t        sends segment (r - t) mod n, receives segment (r - t - 1) mod n
//   t <  n-1      reduce-scatter: the received segment is reduced into ours;
//                 after the last of these steps rank r owns the full result
//                 of segment (r + 1) mod n
//   t >= n-1      all-gather: the received segment is final and is copied in
//
// Each rank sends and receives 2(n-1)/n of the buffer, the lower bound for any
// allreduce, whatever n is; the price is 2(n-1) latency hops, which is why a
// tree is better for small buffers (a later algorithm, chosen at run time).
//
// Pipelining. What rank r sends at step t is exactly the segment it received
// at step t-1. Rather than waiting for the whole segment, the sender may
// forward any prefix of it that has already been received and reduced. Seen
// as two byte streams, the outgoing stream is segment r followed by the
// incoming stream (minus its last segment), so the rule is simply
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
// (r-t-1); the only sends that read it are step t+1 (gated by the rule above)
// and, in the all-gather, step t+1-n, whose bytes must have left this rank
// before rank r-1 could even produce the step-t bytes (the data dependency
// runs all the way around the ring).
//
// Mean is a sum whose owner divides its fully reduced segment by n at the
// last reduce-scatter step, before forwarding it; every rank then receives
// the same bits, so all ranks end with bit-identical results (true for every
// op, since the all-gather only copies).
#include "allreduce_ring.h"

#include <algorithm>
#include <cstring>

#include "errors.h"
#include "protocol.h"
#include "reduce.h"

namespace adaptrain::collective {
namespace {

struct Segment {
  size_t offset;  // bytes
  size_t bytes;
};

class RingAllreduce {
 public:
  RingAllreduce(Transport& transport, const RingAllreduceOptions& options)
      : transport_(transport),
        options_(options),
        rank_(transport.rank()),
        size_(transport.size()),
        element_size_(element_size(options.dtype)),
        steps_(2 * (static_cast<size_t>(size_) - 1)),
        reduce_(reduce_kernel(options.dtype, options.op)),
        next_(transport.connection((rank_ + 1) % size_)),
        prev_(transport.connection((rank_ + size_ - 1) % size_)),
        data_(static_cast<char*>(options.data)),
        header_out_(make_header(CollectiveKind::kAllreduce, options.sequence, options.count,
                                static_cast<uint32_t>(options.dtype), static_cast<uint32_t>(options.op))),
        deadline_(Deadline::inactivity(options.timeout)) {
    // The block is a whole number of elements so that every reduce call sees
    // whole elements except for a partial tail carried to the next receive.
    block_bytes_ = std::max(options.block_bytes / element_size_, size_t{2}) * element_size_;
    if (options.scratch->size() < block_bytes_) options.scratch->resize(block_bytes_);
    scratch_ = options.scratch->data();
  }

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
      WaitRequest requests[2];
      size_t count = 0;
      if (!send_done() && can_send_now()) requests[count++] = WaitRequest{&next_, true, false};
      if (!recv_done()) requests[count++] = WaitRequest{&prev_, false, true};
      if (count == 0) throw IoError("ring allreduce stalled with nothing to wait for (internal error)");
      transport_.wait(requests, count, deadline_);
    }
  }

 private:
  Segment segment(size_t index) const {
    const size_t base = options_.count / size_;
    const size_t extra = options_.count % size_;  // the first `extra` segments get one more element
    const size_t first = index * base + std::min(index, extra);
    const size_t elements = base + (index < extra ? 1 : 0);
    return Segment{first * element_size_, elements * element_size_};
  }
  size_t ring_index(long long value) const {
    long long n = size_;
    return static_cast<size_t>(((value % n) + n) % n);
  }
  Segment send_segment(size_t step) const { return segment(ring_index(rank_ - static_cast<long long>(step))); }
  Segment recv_segment(size_t step) const { return segment(ring_index(rank_ - static_cast<long long>(step) - 1)); }
  bool reduces(size_t step) const { return step < static_cast<size_t>(size_) - 1; }

  bool send_done() const { return header_sent_ == sizeof(MessageHeader) && send_step_ == steps_; }
  bool recv_done() const { return header_received_ == sizeof(MessageHeader) && recv_step_ == steps_; }

  // How many bytes of the current send step may go out (the pipeline rule).
  size_t send_limit() const {
    const size_t bytes = send_segment(send_step_).bytes;
    if (send_step_ == 0 || recv_step_ >= send_step_) return bytes;
    if (recv_step_ + 1 == send_step_) return recv_processed_;
    return 0;
  }
  bool can_send_now() const {
    return header_sent_ < sizeof(MessageHeader) || (send_step_ < steps_ && send_offset_ < send_limit());
  }

  // Steps whose segment is empty (count < n) complete without any bytes.
  void skip_empty_send_steps() {
    while (send_step_ < steps_ && send_segment(send_step_).bytes == 0) ++send_step_;
  }
  void skip_empty_recv_steps() {
    while (recv_step_ < steps_ && recv_segment(recv_step_).bytes == 0) ++recv_step_;
  }

  bool progress_send() {
    if (header_sent_ < sizeof(MessageHeader)) {
      size_t moved = next_.send_some(reinterpret_cast<const char*>(&header_out_) + header_sent_,
                                     sizeof(MessageHeader) - header_sent_);
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
    if (header_received_ < sizeof(MessageHeader)) {
      size_t moved = prev_.recv_some(reinterpret_cast<char*>(&header_in_) + header_received_,
                                     sizeof(MessageHeader) - header_received_);
      header_received_ += moved;
      if (header_received_ == sizeof(MessageHeader)) check_header(header_out_, header_in_, prev_);
      return moved > 0;
    }
    skip_empty_recv_steps();
    if (recv_step_ == steps_) return false;
    const Segment seg = recv_segment(recv_step_);
    size_t moved = 0;
    if (reduces(recv_step_)) {
      const size_t room = std::min(block_bytes_ - scratch_fill_, seg.bytes - recv_received_);
      moved = prev_.recv_some(scratch_ + scratch_fill_, room);
      if (moved == 0) return false;
      scratch_fill_ += moved;
      recv_received_ += moved;
      const size_t whole = scratch_fill_ / element_size_ * element_size_;
      if (whole > 0) {
        char* target = data_ + seg.offset + recv_processed_;
        reduce_(target, scratch_, whole / element_size_);
        if (options_.op == ReduceOp::kMean && recv_step_ + 2 == static_cast<size_t>(size_)) {
          // Last reduce-scatter step: this range is now the full sum.
          finish_mean(target, whole / element_size_, options_.dtype, static_cast<size_t>(size_));
        }
        recv_processed_ += whole;
        scratch_fill_ -= whole;
        if (scratch_fill_ > 0) std::memmove(scratch_, scratch_ + whole, scratch_fill_);
      }
    } else {
      // All-gather: the incoming bytes are final, so land them in place.
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

  Transport& transport_;
  const RingAllreduceOptions& options_;
  const int rank_;
  const int size_;
  const size_t element_size_;
  const size_t steps_;
  const ReduceFn reduce_;
  Connection& next_;
  Connection& prev_;
  char* const data_;
  const MessageHeader header_out_;
  MessageHeader header_in_{};
  Deadline deadline_;
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

}  // namespace

void ring_allreduce(Transport& transport, const RingAllreduceOptions& options) {
  if (transport.size() == 1) return;
  if (options.scratch == nullptr) throw InvalidArgumentError("ring_allreduce needs a scratch buffer");
  RingAllreduce(transport, options).run();
}

}  // namespace adaptrain::collective

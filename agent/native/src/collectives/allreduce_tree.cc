// Binary-tree allreduce, and the engine it shares with the star and with
// every broadcast: reduce up a rooted tree, then broadcast down it.
//
// Up: each rank reduces its children's buffers into its own and sends the
// result to its parent; the root ends with the full reduction (and divides
// it, for a mean). Down: the root sends the result to its children, who pass
// it on. On a binary tree both phases take log2(n) hops, against 2(n-1) for
// the ring, so small, latency-bound buffers finish sooner; the price is that
// every link carries the whole buffer (twice, up and down), against 2(n-1)/n
// of it for the ring, so large buffers belong on the ring.
//
// Pipelining, as in the ring: buffers move in blocks of block_bytes. A rank
// forwards the prefix of its buffer that all of its children have already
// reduced into, so every level of the tree works at once; the root starts
// broadcasting the prefix that is final while the rest is still coming up;
// and a rank forwards to its children the prefix it has received from its
// parent. Every link is full-duplex, so the up stream of one call and its
// down stream overlap on the same socket.
//
// In place: the down stream overwrites the buffer, which is safe because the
// parent can only send the final bytes at offset o after this rank has sent
// its partial bytes at o (the root needed them), and those partial bytes were
// complete (every child's contribution reduced) before they went up.
//
// Headers travel up and down in every mode (a broadcast too, though its data
// only goes down). Up, a rank sends its header twice: once at the start, and
// again as an acknowledgment once every child's header and acknowledgment
// arrived and matched; its data only follows the acknowledgment. Down, a
// rank sends its header only after its parent's arrived and matched (the
// root: after every child's acknowledgment). The first header goes out
// unconditionally so that ranks which disagree about the topology (another
// root or algorithm), and so may all be waiting for a child, still see each
// other's header. A rank that finds a child's header wrong sends the child
// its own at once, so both ends of that link name both calls.
//
// So if any two linked ranks disagree about the call, the final result never
// leaves the root, no rank completes, and the ranks that noticed close their
// connections, which fails the others at once. A tree thereby checks every
// rank's call even when the buffer is empty.
//
// The up phase reduces children in the order their data arrives, so for
// floating-point sums the bits may differ from one run to the next (never
// between ranks: everyone receives the root's bytes).
#include "collectives/allreduce_tree.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>

#include "collectives/reduce.h"
#include "core/errors.h"

namespace adaptrain::collective {
namespace {

constexpr size_t kUpHeaderBytes = 2 * kHeaderBytes;  // header, then acknowledgment

class Rooted {
 public:
  Rooted(Transport& transport, const RootedOptions& options)
      : transport_(transport),
        options_(options),
        element_size_(element_size(options.dtype)),
        total_(options.count * element_size_),
        reduce_(options.reduce ? reduce_kernel(options.dtype, options.op) : nullptr),
        data_(static_cast<char*>(options.data)),
        header_(encode_header(options.header)),
        deadline_(Deadline::inactivity(options.timeout)) {
    block_bytes_ = std::max(options.block_bytes / element_size_, size_t{2}) * element_size_;
    if (options.topology.parent >= 0) parent_ = &transport.connection(options.topology.parent);
    if (options.reduce) {
      options.scratch->resize(std::max(options.scratch->size(), options.topology.children.size()));
    }
    for (size_t i = 0; i < options.topology.children.size(); ++i) {
      Child child;
      child.connection = &transport.connection(options.topology.children[i]);
      if (options.reduce) {
        std::vector<char>& buffer = (*options.scratch)[i];
        if (buffer.size() < block_bytes_) buffer.resize(block_bytes_);
        child.scratch = buffer.data();
      }
      children_.push_back(child);
    }
    std::copy(header_.begin(), header_.end(), up_headers_.begin());
    std::copy(header_.begin(), header_.end(), up_headers_.begin() + kHeaderBytes);
    std::vector<int> used = options.topology.children;
    if (options.topology.parent >= 0) used.push_back(options.topology.parent);
    stray_ = std::make_unique<StrayHeaderWatch>(transport, options.header, used);
  }

  void run() {
    for (;;) {
      bool moved = false;
      for (Child& child : children_) moved = progress_up_from(child) || moved;
      update_reduced();
      if (parent_ != nullptr) {
        moved = progress_up_to_parent() || moved;
        moved = progress_down_from_parent() || moved;
      }
      for (Child& child : children_) moved = progress_down_to(child) || moved;
      if (done()) return;
      if (moved) {
        deadline_.note_progress();
        continue;
      }
      wait();
    }
  }

 private:
  struct Child {
    Connection* connection = nullptr;
    char* scratch = nullptr;
    std::array<uint8_t, kUpHeaderBytes> header_in{};
    size_t header_received = 0;
    size_t received = 0;   // up-stream bytes taken from the socket
    size_t processed = 0;  // ... of which reduced into our buffer
    size_t fill = 0;       // bytes in scratch not reduced yet
    size_t header_sent = 0;
    size_t sent = 0;  // down-stream bytes sent
  };

  bool is_root() const { return parent_ == nullptr; }
  bool up_done_from(const Child& c) const {
    return c.header_received == kUpHeaderBytes && (!options_.reduce || c.processed == total_);
  }
  bool down_done_to(const Child& c) const {
    return !options_.broadcast || (c.header_sent == kHeaderBytes && c.sent == total_);
  }
  bool up_done_to_parent() const {
    return is_root() ||
           (up_header_sent_ == kUpHeaderBytes && (!options_.reduce || up_sent_ == total_));
  }
  bool down_done_from_parent() const {
    return is_root() || !options_.broadcast ||
           (down_header_received_ == kHeaderBytes && down_received_ == total_);
  }
  bool done() const {
    if (!up_done_to_parent() || !down_done_from_parent()) return false;
    for (const Child& c : children_) {
      if (!up_done_from(c) || !down_done_to(c)) return false;
    }
    return true;
  }

  // Bytes of the down stream this rank may pass on.
  size_t down_available() const {
    if (is_root()) return options_.reduce ? reduced_ : total_;
    return down_received_;
  }

  bool progress_up_from(Child& c) {
    if (up_done_from(c)) return false;
    if (c.header_received < kUpHeaderBytes) {
      const size_t before = c.header_received;
      size_t moved = c.connection->recv_some(c.header_in.data() + c.header_received,
                                             kUpHeaderBytes - c.header_received);
      c.header_received += moved;
      for (size_t end = kHeaderBytes; end <= kUpHeaderBytes; end += kHeaderBytes) {
        if (before >= end || c.header_received < end) continue;
        try {
          check_header(options_.header, c.header_in.data() + end - kHeaderBytes, *c.connection);
        } catch (const IoError&) {
          tell_child_why(c);
          throw;
        }
      }
      return moved > 0;
    }
    if (!options_.reduce) return false;
    const size_t room = std::min(block_bytes_ - c.fill, total_ - c.received);
    if (room == 0) return false;
    size_t moved = c.connection->recv_some(c.scratch + c.fill, room);
    if (moved == 0) return false;
    c.fill += moved;
    c.received += moved;
    const size_t whole = c.fill / element_size_ * element_size_;
    if (whole > 0) {
      reduce_(data_ + c.processed, c.scratch, whole / element_size_);
      c.processed += whole;
      c.fill -= whole;
      if (c.fill > 0) std::memmove(c.scratch, c.scratch + whole, c.fill);
    }
    return true;
  }

  // The child sent a different call. Our header is the first thing on the
  // stream down to it anyway, so send it now (best effort, it fits in any
  // socket buffer) before closing: the child then fails with a message naming
  // both calls instead of just seeing the connection close.
  void tell_child_why(Child& c) {
    if (c.header_sent != 0) return;
    try {
      c.header_sent = c.connection->send_some(header_.data(), kHeaderBytes);
    } catch (const IoError&) {
      // The child is gone; the mismatch is reported here regardless.
    }
  }

  // Recomputes how much of our buffer holds every child's contribution;
  // on the root, that prefix is final (divided now, for a mean).
  void update_reduced() {
    if (!children_checked_) {
      children_checked_ = std::all_of(children_.begin(), children_.end(), [](const Child& c) {
        return c.header_received == kUpHeaderBytes;
      });
      if (children_checked_ && is_root()) down_header_ready_ = true;
    }
    if (!options_.reduce) return;
    size_t reduced = total_;
    for (const Child& c : children_) reduced = std::min(reduced, c.processed);
    if (is_root() && options_.op == ReduceOp::kMean && reduced > reduced_) {
      finish_mean(data_ + reduced_, (reduced - reduced_) / element_size_, options_.dtype,
                  static_cast<size_t>(transport_.size()));
    }
    reduced_ = reduced;
  }

  // The header goes up at once; its second copy (the acknowledgment) once
  // every child's call checked out.
  size_t up_header_limit() const { return children_checked_ ? kUpHeaderBytes : kHeaderBytes; }

  bool progress_up_to_parent() {
    if (up_done_to_parent()) return false;
    if (up_header_sent_ < kUpHeaderBytes) {
      const size_t limit = up_header_limit();
      if (up_header_sent_ >= limit) return false;
      size_t moved =
          parent_->send_some(up_headers_.data() + up_header_sent_, limit - up_header_sent_);
      up_header_sent_ += moved;
      return moved > 0;
    }
    if (!options_.reduce || up_sent_ >= reduced_) return false;
    size_t moved =
        parent_->send_some(data_ + up_sent_, std::min(reduced_ - up_sent_, block_bytes_));
    up_sent_ += moved;
    return moved > 0;
  }

  bool progress_down_from_parent() {
    if (down_done_from_parent()) return false;
    if (down_header_received_ < kHeaderBytes) {
      size_t moved = parent_->recv_some(down_header_in_.data() + down_header_received_,
                                        kHeaderBytes - down_header_received_);
      down_header_received_ += moved;
      if (down_header_received_ == kHeaderBytes) {
        check_header(options_.header, down_header_in_.data(), *parent_);
        down_header_ready_ = true;
      }
      return moved > 0;
    }
    size_t moved =
        parent_->recv_some(data_ + down_received_, std::min(total_ - down_received_, block_bytes_));
    down_received_ += moved;
    return moved > 0;
  }

  bool progress_down_to(Child& c) {
    if (down_done_to(c) || !down_header_ready_) return false;
    if (c.header_sent < kHeaderBytes) {
      size_t moved =
          c.connection->send_some(header_.data() + c.header_sent, kHeaderBytes - c.header_sent);
      c.header_sent += moved;
      return moved > 0;
    }
    const size_t available = down_available();
    if (c.sent >= available) return false;
    size_t moved =
        c.connection->send_some(data_ + c.sent, std::min(available - c.sent, block_bytes_));
    c.sent += moved;
    return moved > 0;
  }

  void wait() {
    std::vector<WaitRequest> requests;
    requests.reserve(children_.size() * 2 + 2);
    if (parent_ != nullptr) {
      const bool send =
          !up_done_to_parent() &&
          (up_header_sent_ < up_header_limit() ||
           (up_header_sent_ == kUpHeaderBytes && options_.reduce && up_sent_ < reduced_));
      const bool recv = !down_done_from_parent();
      if (send || recv) requests.push_back(WaitRequest{parent_, send, recv});
    }
    for (const Child& c : children_) {
      const bool send = !down_done_to(c) && down_header_ready_ &&
                        (c.header_sent < kHeaderBytes || c.sent < down_available());
      const bool recv = !up_done_from(c);
      if (send || recv) requests.push_back(WaitRequest{c.connection, send, recv});
    }
    if (requests.empty()) throw IoError("tree stalled with nothing to wait for (internal error)");
    stray_->add_requests(requests);
    transport_.wait(requests.data(), requests.size(), deadline_, options_.spin_us);
    stray_->check();
  }

  Transport& transport_;
  const RootedOptions& options_;
  const size_t element_size_;
  const size_t total_;
  const ReduceFn reduce_;
  char* const data_;
  const HeaderBytes header_;
  Deadline deadline_;
  size_t block_bytes_ = 0;

  Connection* parent_ = nullptr;
  std::vector<Child> children_;
  std::unique_ptr<StrayHeaderWatch> stray_;
  bool children_checked_ = false;   // every child's header arrived and matched
  bool down_header_ready_ = false;  // the down stream may start
  size_t reduced_ = 0;              // prefix holding every child's contribution

  std::array<uint8_t, kUpHeaderBytes> up_headers_{};  // the header, twice
  size_t up_header_sent_ = 0;
  size_t up_sent_ = 0;
  HeaderBytes down_header_in_{};
  size_t down_header_received_ = 0;
  size_t down_received_ = 0;
};

}  // namespace

void rooted_collective(Transport& transport, const RootedOptions& options) {
  if (transport.size() == 1) return;
  if (options.reduce && options.scratch == nullptr) {
    throw InvalidArgumentError("a reduction needs scratch buffers");
  }
  Rooted(transport, options).run();
}

void tree_allreduce(Transport& transport, RootedOptions options) {
  options.reduce = options.broadcast = true;
  options.topology = binary_tree(transport.rank(), transport.size(), 0);
  rooted_collective(transport, options);
}

}  // namespace adaptrain::collective

#include "communicator.h"

#include <set>

#include "allreduce_ring.h"
#include "barrier.h"
#include "errors.h"
#include "transport_tcp.h"
#include "tunables.h"

namespace adaptrain::collective {
namespace {

int checked_size(const CommunicatorOptions& options) {
  if (options.peers.empty()) throw InvalidArgumentError("peers is empty: give one \"host:port\" per rank");
  const int size = static_cast<int>(options.peers.size());
  if (options.rank < 0 || options.rank >= size) {
    throw InvalidArgumentError("rank " + std::to_string(options.rank) + " is out of range for " + std::to_string(size) +
                               " peers: use 0.." + std::to_string(size - 1));
  }
  if (options.timeout.count() <= 0) throw InvalidArgumentError("timeout must be positive");
  for (const std::string& peer : options.peers) parse_host_port(peer);
  return size;
}

}  // namespace

Communicator::Communicator(CommunicatorOptions options)
    : rank_(options.rank), size_(checked_size(options)), timeout_(options.timeout) {
  const Tunables& knobs = tunables();
  ring_block_bytes_ = knobs.ring_block_bytes;
  if (size_ == 1) return;
  // The ring only talks to its two neighbours (one peer when size is 2).
  std::set<int> neighbours{(rank_ + 1) % size_, (rank_ + size_ - 1) % size_};
  TcpOptions tcp;
  tcp.rank = rank_;
  tcp.peers = std::move(options.peers);
  tcp.needed_peers.assign(neighbours.begin(), neighbours.end());
  tcp.timeout = timeout_;
  tcp.socket_buffer_bytes = knobs.socket_buffer_bytes;
  tcp.connect_retry_ms = knobs.connect_retry_ms;
  tcp.interrupt_check = std::move(options.interrupt_check);
  transport_ = TcpTransport::connect(tcp);
}

Communicator::~Communicator() { close(); }

bool Communicator::closed() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return closed_;
}

void Communicator::close() {
  std::lock_guard<std::mutex> lock(mutex_);
  closed_ = true;
  if (transport_) transport_->shutdown();
}

template <typename Body>
void Communicator::run(const char* operation, Body&& body) {
  std::lock_guard<std::mutex> lock(mutex_);
  const std::string context =
      std::string(operation) + " on rank " + std::to_string(rank_) + " of " + std::to_string(size_) + ": ";
  if (closed_) {
    throw IoError(context + (failure_.empty() ? "the communicator is closed"
                                              : "the communicator was closed by an earlier failure (" + failure_ +
                                                    "); create a new one"));
  }
  const uint64_t sequence = sequence_++;
  // Any failure after the first byte leaves the streams out of step, so the
  // communicator closes itself; shutting the sockets down also tells the
  // neighbours at once instead of after their timeout.
  auto fail = [&](const std::exception& e) {
    closed_ = true;
    failure_ = e.what();
    if (transport_) transport_->shutdown();
  };
  try {
    body(sequence);
  } catch (const TimeoutError& e) {
    fail(e);
    throw TimeoutError(context + e.what());
  } catch (const IoError& e) {
    fail(e);
    throw IoError(context + e.what());
  } catch (const InterruptedError& e) {
    fail(e);
    throw;
  }
}

void Communicator::allreduce(void* data, size_t count, DataType dtype, ReduceOp op) {
  // Validate before any byte moves: a bad argument must leave the group usable.
  (void)element_size(dtype);
  if (count > 0 && data == nullptr) throw InvalidArgumentError("allreduce: data is null");
  run("allreduce", [&](uint64_t sequence) {
    if (size_ == 1) return;  // already the result (mean of one value is itself)
    RingAllreduceOptions options;
    options.data = data;
    options.count = count;
    options.dtype = dtype;
    options.op = op;
    options.sequence = sequence;
    options.timeout = timeout_;
    options.block_bytes = ring_block_bytes_;
    options.scratch = &scratch_;
    ring_allreduce(*transport_, options);
  });
}

void Communicator::barrier() {
  run("barrier", [&](uint64_t sequence) {
    if (size_ == 1) return;
    ring_barrier(*transport_, BarrierOptions{sequence, timeout_});
  });
}

}  // namespace adaptrain::collective

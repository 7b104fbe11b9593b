// A group of ranks that run collectives together: owns the transport, the
// per-call sequence number and reusable buffers, and turns any failure into a
// closed communicator so that no later call runs on out-of-step streams.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "transport.h"
#include "types.h"

namespace adaptrain::collective {

struct CommunicatorOptions {
  int rank = 0;
  std::vector<std::string> peers;  // "host:port" per rank; rank r listens on peers[r]
  // Budget for forming the group, and the longest a collective may go
  // without any data moving.
  std::chrono::milliseconds timeout{60000};
  std::function<void()> interrupt_check;  // see TcpOptions
};

class Communicator {
 public:
  // Blocks until connected to the peers the algorithms need (nothing for a
  // single rank). Throws InvalidArgumentError, IoError or TimeoutError.
  explicit Communicator(CommunicatorOptions options);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  double timeout_seconds() const { return timeout_.count() / 1000.0; }
  bool closed() const;

  // In place. `data` holds `count` elements of `dtype`. Thread-safe: calls
  // from several threads run one after another.
  void allreduce(void* data, size_t count, DataType dtype, ReduceOp op);
  void barrier();
  void close();

 private:
  // Runs one collective; on failure closes the communicator and rethrows
  // with the operation and this rank in the message.
  template <typename Body>
  void run(const char* operation, Body&& body);

  const int rank_;
  const int size_;
  const std::chrono::milliseconds timeout_;
  size_t ring_block_bytes_;

  mutable std::mutex mutex_;
  std::unique_ptr<Transport> transport_;  // null for a single rank
  bool closed_ = false;
  std::string failure_;  // why the communicator closed itself
  uint64_t sequence_ = 0;
  std::vector<char> scratch_;
};

}  // namespace adaptrain::collective

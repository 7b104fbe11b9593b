// The transport interface every collective algorithm is written against.
//
// As in gloo's transport/ directory, algorithms never see sockets: they see a
// Connection per peer that moves bytes without blocking, and a Transport that
// waits until some connection can make progress. That is exactly what a
// pipelined algorithm needs (keep sending to one peer while receiving from
// another, never block on one direction while the other could move), and it
// lets a later shared-memory or RDMA transport slot in without touching the
// ring, tree or star code.
#pragma once

#include <poll.h>

#include <cstddef>
#include <string>

#include "core/deadline.h"

namespace adaptrain::collective {

// A reliable, ordered byte stream to one peer, usable in both directions.
class Connection {
 public:
  virtual ~Connection() = default;

  virtual int peer_rank() const = 0;
  virtual const std::string& peer_address() const = 0;
  // "rank 2 (10.0.0.3:41002)" for messages.
  std::string describe_peer() const;

  // Hand up to `length` bytes to the transport without blocking; returns how
  // many were taken (0 when it is full). Throws IoError if the peer is gone.
  virtual size_t send_some(const void* data, size_t length) = 0;
  // Take up to `length` bytes that have arrived, without blocking; returns how
  // many (0 when none are waiting). Throws IoError on end of stream.
  virtual size_t recv_some(void* data, size_t length) = 0;
  // Copy up to `length` bytes that have arrived without consuming them;
  // returns how many. Sets *closed (and returns 0) when the peer has closed
  // the stream or it broke: peeking never throws.
  virtual size_t peek_some(void* data, size_t length, bool* closed) = 0;
  // Zero-copy receive, for transports whose bytes sit in memory this process
  // can read (shared memory). recv_view() returns false when unsupported;
  // otherwise true with *data and *length (0 when nothing has arrived; it
  // throws like recv_some when the peer has closed) naming bytes that
  // have arrived and stay valid until recv_consume(n), which consumes the
  // first n <= *length of them.
  virtual bool recv_view(const char** /*data*/, size_t* /*length*/) { return false; }
  virtual void recv_consume(size_t /*bytes*/) {}
  // End of stream for the peer, at once; idempotent. Later calls throw.
  virtual void close() = 0;

  // How Transport::wait sleeps on this connection. Every connection can be
  // slept on with poll(): poll_target() names the descriptor and events
  // (TCP: the socket, for the wanted directions; shared memory: its TCP
  // liveness socket, which carries doorbells and end-of-stream).
  virtual void poll_target(bool send, bool recv, pollfd* target) const = 0;
  // True when the direction can move now and finding out needs no system
  // call (shared memory: bytes or room in the ring, or the peer gone). TCP
  // answers false: only poll() knows.
  virtual bool ready(bool /*send*/, bool /*recv*/) { return false; }
  // Called just before sleeping in poll(): arranges to be woken (shared
  // memory: asks the peer to ring the doorbell) and returns false when the
  // direction became ready meanwhile, so the caller must not sleep.
  virtual bool arm(bool /*send*/, bool /*recv*/) { return true; }
  // After poll() returned events for poll_target()'s descriptor.
  virtual void woke(short /*revents*/) {}
  // Connections in memory are spun on by ready(), not by poll(fd, 0).
  virtual bool memory_backed() const { return false; }
};

// One direction of one connection that a caller wants to make progress on.
struct WaitRequest {
  Connection* connection;
  bool send;
  bool recv;
};

class Transport {
 public:
  virtual ~Transport() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;

  // The connection to `peer`; the algorithm must have asked for it when the
  // transport was set up. Throws IoError if there is none.
  virtual Connection& connection(int peer) = 0;
  virtual bool has_connection(int peer) const = 0;

  // Block until at least one requested direction can make progress. Throws
  // TimeoutError naming the peers when the deadline passes first. With
  // spin_us > 0 it first checks without sleeping for that long
  // (COLLECTIVE_SPIN_US; worth it only for latency-bound calls).
  virtual void wait(const WaitRequest* requests, size_t count, const Deadline& deadline,
                    int spin_us) = 0;

  // Close every connection so peers see end-of-stream at once instead of
  // waiting for their timeout. Idempotent.
  virtual void shutdown() = 0;
};

// Blocking transfers of a whole buffer, built on the non-blocking interface.
// Used for small control messages (handshakes, barrier tokens, headers).
void send_all(Transport& transport, Connection& connection, const void* data, size_t length,
              Deadline& deadline, int spin_us = 0);
void recv_all(Transport& transport, Connection& connection, void* data, size_t length,
              Deadline& deadline, int spin_us = 0);

}  // namespace adaptrain::collective

#include "transport/transport.h"

namespace adaptrain::collective {

std::string Connection::describe_peer() const {
  if (peer_rank() < 0) return "an unidentified peer at " + peer_address();
  return "rank " + std::to_string(peer_rank()) + " (" + peer_address() + ")";
}

void send_all(Transport& transport, Connection& connection, const void* data, size_t length,
              Deadline& deadline, int spin_us) {
  const char* cursor = static_cast<const char*>(data);
  while (length > 0) {
    size_t moved = connection.send_some(cursor, length);
    if (moved > 0) {
      cursor += moved;
      length -= moved;
      deadline.note_progress();
      continue;
    }
    WaitRequest request{&connection, true, false};
    transport.wait(&request, 1, deadline, spin_us);
  }
}

void recv_all(Transport& transport, Connection& connection, void* data, size_t length,
              Deadline& deadline, int spin_us) {
  char* cursor = static_cast<char*>(data);
  while (length > 0) {
    size_t moved = connection.recv_some(cursor, length);
    if (moved > 0) {
      cursor += moved;
      length -= moved;
      deadline.note_progress();
      continue;
    }
    WaitRequest request{&connection, false, true};
    transport.wait(&request, 1, deadline, spin_us);
  }
}

}  // namespace adaptrain::collective

#include "transport/shm/transport_shm.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>

#include "core/errors.h"
#include "transport/shm/shm_ring.h"

namespace adaptrain::collective {
namespace {

constexpr uint32_t kOfferMagic = 0x4D485341;   // "ASHM"
constexpr uint32_t kStatusMagic = 0x54534841;  // "AHST"
constexpr uint32_t kShmProtocolVersion = 1;
constexpr uint64_t kSegmentMagic = 0x474553504D484341ull;  // "ACHMPSEG"
constexpr size_t kHeaderBytes = 4096;

struct Offer {
  uint32_t magic;
  uint32_t version;
  uint32_t want;
  uint32_t pid;
  uint64_t host_id;
  uint64_t nonce;
};

// Stage at which setting a pair up failed, for messages.
enum Stage : uint32_t {
  kOk = 0,
  kNotWanted = 1,  // different hosts, or mode tcp on the peer
  kCreate = 2,
  kReserve = 3,
  kMap = 4,
  kOpen = 5,
  kCheck = 6,
};

struct Status {
  uint32_t magic;
  uint32_t stage;
  uint32_t error_number;
  uint32_t reserved;
};

// The segment: this header page, then ring 0's bytes (L to H), then ring 1's
// (H to L).
struct SegmentHeader {
  uint64_t magic;
  uint32_t version;
  uint32_t reserved;
  uint64_t nonce;
  uint64_t capacity;
  RingControl rings[2];
};
static_assert(sizeof(SegmentHeader) <= kHeaderBytes, "the segment header must fit its page");

const char* stage_text(uint32_t stage) {
  switch (stage) {
    case kNotWanted:
      return "the peer is on another host";
    case kCreate:
      return "creating the shared-memory segment failed";
    case kReserve:
      return "reserving the segment's memory failed (is /dev/shm full?)";
    case kMap:
      return "mapping the segment failed";
    case kOpen:
      return "opening the segment failed (another IPC namespace or /dev/shm?)";
    case kCheck:
      return "the segment's header did not match";
    default:
      return "unknown failure";
  }
}

std::string status_text(const Status& status) {
  std::string text = stage_text(status.stage);
  if (status.error_number != 0) text += ": " + errno_text(static_cast<int>(status.error_number));
  return text;
}

uint64_t fnv1a(const std::string& text, uint64_t hash = 1469598103934665603ull) {
  for (unsigned char c : text) {
    hash ^= c;
    hash *= 1099511628211ull;
  }
  return hash;
}

uint64_t random_nonce() {
  std::random_device device;
  const uint64_t high = device();
  const uint64_t low = device();
  const uint64_t clock =
      static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  return ((high << 32) | low) ^ (clock * 0x9E3779B97F4A7C15ull) ^ static_cast<uint64_t>(::getpid());
}

size_t segment_bytes(size_t capacity) { return kHeaderBytes + 2 * capacity; }

// A mapping, unmapped on destruction.
struct Mapping {
  void* base = MAP_FAILED;
  size_t bytes = 0;
  Mapping() = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (base != MAP_FAILED) ::munmap(base, bytes);
  }
  SegmentHeader* header() const { return static_cast<SegmentHeader*>(base); }
};

int open_retrying(const std::string& name, int flags) {
  for (;;) {
    int fd = ::shm_open(name.c_str(), flags | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0 || errno != EINTR) return fd;
  }
}

// L's side: create, reserve, map and initialise. Returns kOk or the stage
// that failed, with *error set.
uint32_t create_segment(const std::string& name, size_t capacity, uint64_t nonce, Mapping& mapping,
                        int* error) {
  const int fd = open_retrying(name, O_CREAT | O_EXCL);
  if (fd < 0) {
    *error = errno;
    return kCreate;
  }
  const size_t bytes = segment_bytes(capacity);
  uint32_t stage = kOk;
  int result = 0;
  do {
    result = ::posix_fallocate(fd, 0, static_cast<off_t>(bytes));
  } while (result == EINTR);
  if (result != 0) {
    *error = result;
    stage = kReserve;
  } else {
    mapping.base = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (mapping.base == MAP_FAILED) {
      *error = errno;
      stage = kMap;
    } else {
      mapping.bytes = bytes;
    }
  }
  ::close(fd);
  if (stage != kOk) {
    ::shm_unlink(name.c_str());
    return stage;
  }
  SegmentHeader* header = mapping.header();
  header->magic = kSegmentMagic;
  header->version = kShmProtocolVersion;
  header->nonce = nonce;
  header->capacity = capacity;
  SpscRing::reset(&header->rings[0]);
  SpscRing::reset(&header->rings[1]);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return kOk;
}

// H's side: open, check, map and unlink.
uint32_t open_segment(const std::string& name, uint64_t nonce, Mapping& mapping, int* error) {
  const int fd = open_retrying(name, 0);
  if (fd < 0) {
    *error = errno;
    return kOpen;
  }
  uint32_t stage = kOk;
  struct stat info{};
  if (::fstat(fd, &info) != 0) {
    *error = errno;
    stage = kOpen;
  } else if (static_cast<size_t>(info.st_size) < kHeaderBytes) {
    stage = kCheck;
  } else {
    const size_t bytes = static_cast<size_t>(info.st_size);
    mapping.base = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (mapping.base == MAP_FAILED) {
      *error = errno;
      stage = kMap;
    } else {
      mapping.bytes = bytes;
      const SegmentHeader* header = mapping.header();
      if (header->magic != kSegmentMagic || header->version != kShmProtocolVersion ||
          header->nonce != nonce || !is_power_of_two(header->capacity) ||
          segment_bytes(header->capacity) != bytes) {
        stage = kCheck;
      }
    }
  }
  ::close(fd);
  // Both sides hold a mapping now (or never will): the name is not needed.
  ::shm_unlink(name.c_str());
  return stage;
}

// A pair's link over a shared segment; owns the pair's TCP connection as
// its liveness channel and doorbell.
class ShmConnection final : public Connection {
 public:
  ShmConnection(std::unique_ptr<TcpConnection> liveness, std::unique_ptr<Mapping> mapping,
                bool lower)
      : liveness_(std::move(liveness)),
        mapping_(std::move(mapping)),
        out_(ring(lower ? 0 : 1)),
        in_(ring(lower ? 1 : 0)) {}
  ~ShmConnection() override { close(); }

  int peer_rank() const override { return liveness_->peer_rank(); }
  const std::string& peer_address() const override { return liveness_->peer_address(); }

  size_t send_some(const void* data, size_t length) override {
    check_open();
    if (peer_gone_ || out_.control().consumer_closed.load(std::memory_order_relaxed) != 0) {
      throw IoError("the connection to " + describe_peer() +
                    " broke while sending: the peer closed it; it has probably exited or failed");
    }
    const size_t moved = out_.write(data, length);
    if (moved > 0 && out_.take_reader_waiting()) ring_doorbell();
    return moved;
  }

  size_t recv_some(void* data, size_t length) override {
    check_open();
    if (length == 0) return 0;
    const size_t moved = in_.read(data, length);
    if (moved > 0) {
      if (in_.take_writer_waiting()) ring_doorbell();
      return moved;
    }
    if (peer_closed()) {
      throw IoError(describe_peer() +
                    " closed the connection; it has probably exited or failed, or found that the "
                    "ranks' calls differ (see its error)");
    }
    return 0;
  }

  bool recv_view(const char** data, size_t* length) override {
    check_open();
    *data = in_.view(length);
    if (*length == 0 && peer_closed()) {
      throw IoError(describe_peer() +
                    " closed the connection; it has probably exited or failed, or found that the "
                    "ranks' calls differ (see its error)");
    }
    return true;
  }

  void recv_consume(size_t bytes) override {
    if (bytes == 0) return;
    in_.consume(bytes);
    if (in_.take_writer_waiting()) ring_doorbell();
  }

  size_t peek_some(void* data, size_t length, bool* closed) override {
    *closed = false;
    if (closed_) {
      *closed = true;
      return 0;
    }
    const size_t seen = length == 0 ? 0 : in_.peek(data, length);
    if (seen == 0 && peer_closed()) *closed = true;
    return seen;
  }

  void close() override {
    if (closed_) return;
    closed_ = true;
    out_.control().producer_closed.store(1, std::memory_order_relaxed);
    in_.control().consumer_closed.store(1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    // The peer's poll() wakes with end-of-stream.
    liveness_->close();
  }

  void poll_target(bool, bool, pollfd* target) const override {
    *target = pollfd{liveness_->fd(), POLLIN, 0};
  }

  bool ready(bool send, bool recv) override {
    if (closed_ || peer_gone_) return true;
    if (send && (out_.writable() > 0 ||
                 out_.control().consumer_closed.load(std::memory_order_relaxed) != 0)) {
      return true;
    }
    return recv && (in_.readable() > 0 ||
                    in_.control().producer_closed.load(std::memory_order_relaxed) != 0);
  }

  bool arm(bool send, bool recv) override {
    if (closed_ || peer_gone_) return false;
    bool may_sleep = true;
    if (recv) may_sleep = in_.wait_for_bytes() && may_sleep;
    if (send) may_sleep = out_.wait_for_room() && may_sleep;
    return may_sleep;
  }

  void woke(short revents) override {
    if (revents & (POLLHUP | POLLERR)) peer_gone_ = true;
    if (!(revents & (POLLIN | POLLHUP | POLLERR)) || liveness_->fd() < 0) return;
    // Drain the doorbells; end-of-stream means the peer is gone.
    char bytes[256];
    for (;;) {
      ssize_t got = ::recv(liveness_->fd(), bytes, sizeof(bytes), MSG_DONTWAIT);
      if (got > 0) continue;
      if (got < 0 && errno == EINTR) continue;
      if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      peer_gone_ = true;  // 0: end of stream; any other error: broken
      return;
    }
  }

  bool memory_backed() const override { return true; }

 private:
  SpscRing ring(int index) {
    SegmentHeader* header = mapping_->header();
    char* data = static_cast<char*>(mapping_->base) + kHeaderBytes + index * header->capacity;
    return SpscRing(&header->rings[index], data, header->capacity);
  }

  bool peer_closed() const {
    return peer_gone_ || in_.control().producer_closed.load(std::memory_order_relaxed) != 0;
  }

  void check_open() const {
    if (closed_) throw IoError("the connection to " + describe_peer() + " is closed");
  }

  void ring_doorbell() {
    const char byte = 1;
    // Best effort: a full socket buffer already holds doorbells the peer has
    // not read, and a broken one is found by the peer's poll().
    for (;;) {
      ssize_t sent = ::send(liveness_->fd(), &byte, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (sent < 0 && errno == EINTR) continue;
      return;
    }
  }

  std::unique_ptr<TcpConnection> liveness_;
  std::unique_ptr<Mapping> mapping_;
  SpscRing out_;
  SpscRing in_;
  bool closed_ = false;
  bool peer_gone_ = false;
};

struct Pair {
  Pair(int peer_rank, bool is_lower) : peer(peer_rank), lower(is_lower) {}
  int peer;
  bool lower;  // this rank is L
  bool want = false;
  Offer theirs{};
  std::string name;
  std::unique_ptr<Mapping> mapping;
  Status local{kStatusMagic, kOk, 0, 0};   // how our side of the set-up went
  Status remote{kStatusMagic, kOk, 0, 0};  // how theirs went
};

}  // namespace

std::string host_of(const std::string& address) { return parse_host_port(address).host; }

uint64_t host_identity() {
  std::string boot_id;
  std::ifstream boot("/proc/sys/kernel/random/boot_id");
  std::getline(boot, boot_id);
  char name[256] = {};
  ::gethostname(name, sizeof(name) - 1);
  return fnv1a(std::string(name), fnv1a(boot_id));
}

std::vector<std::string> use_shared_memory(TcpTransport& transport, const ShmOptions& options,
                                           Deadline& deadline) {
  const int rank = transport.rank();
  const int size = transport.size();
  std::vector<std::string> kinds(size, "tcp");
  kinds[rank] = "self";
  if (options.mode == LocalTransport::kTcp) return kinds;
  if (!is_power_of_two(options.buffer_bytes)) {
    throw InvalidArgumentError("the shared-memory ring size must be a power of two");
  }
  const std::vector<std::string>& peers = transport.peers();
  const std::string own_host = host_of(peers[rank]);
  const uint64_t identity = host_identity();
  const uint64_t nonce = random_nonce();

  std::vector<Pair> pairs;
  for (int peer = 0; peer < size; ++peer) {
    if (peer != rank && transport.has_connection(peer)) pairs.emplace_back(peer, rank < peer);
  }
  auto link = [&](const Pair& pair) -> Connection& { return transport.connection(pair.peer); };
  auto fail_text = [&](const Pair& pair, const std::string& why) {
    return transport.who() + " could not set up shared memory with " + link(pair).describe_peer() +
           ": " + why + " (COLLECTIVE_LOCAL_TRANSPORT=shm; use auto to fall back to TCP)";
  };

  // 1. Offers, all sent before any is read.
  for (Pair& pair : pairs) {
    Offer offer{kOfferMagic,
                kShmProtocolVersion,
                host_of(peers[pair.peer]) == own_host ? 1u : 0u,
                static_cast<uint32_t>(::getpid()),
                identity,
                nonce};
    send_all(transport, link(pair), &offer, sizeof(offer), deadline);
  }
  for (Pair& pair : pairs) {
    recv_all(transport, link(pair), &pair.theirs, sizeof(pair.theirs), deadline);
    if (pair.theirs.magic != kOfferMagic || pair.theirs.version != kShmProtocolVersion) {
      throw IoError(
          transport.who() + ": " + link(pair).describe_peer() +
          " answered the shared-memory offer with something else; do both run the same build?");
    }
    pair.want = pair.theirs.want != 0 && host_of(peers[pair.peer]) == own_host &&
                pair.theirs.host_id == identity;
    if (pair.want) {
      const int low = std::min(rank, pair.peer);
      const int high = std::max(rank, pair.peer);
      const uint64_t low_nonce = pair.lower ? nonce : pair.theirs.nonce;
      const uint64_t high_nonce = pair.lower ? pair.theirs.nonce : nonce;
      char name[160];
      std::snprintf(name, sizeof(name), "/adaptrain-%016llx-%llu-%d-%d-%016llx%016llx",
                    static_cast<unsigned long long>(transport.group_id()),
                    static_cast<unsigned long long>(transport.cluster_version()), low, high,
                    static_cast<unsigned long long>(low_nonce),
                    static_cast<unsigned long long>(high_nonce));
      pair.name = name;
    } else if (options.mode == LocalTransport::kShm && host_of(peers[pair.peer]) == own_host) {
      throw IoError(
          fail_text(pair, pair.theirs.host_id != identity
                              ? "its host name or boot id differs, although its address has this "
                                "rank's host part"
                              : "it does not want shared memory"));
    }
  }

  // 2. As the lower rank: create, answer.
  for (Pair& pair : pairs) {
    if (!pair.lower || !pair.want) continue;
    pair.mapping = std::make_unique<Mapping>();
    int error = 0;
    pair.local.stage = create_segment(pair.name, options.buffer_bytes, pair.theirs.nonce ^ nonce,
                                      *pair.mapping, &error);
    pair.local.error_number = static_cast<uint32_t>(error);
    if (pair.local.stage != kOk) pair.mapping.reset();
    send_all(transport, link(pair), &pair.local, sizeof(pair.local), deadline);
  }
  // 3. As the higher rank: read that answer, open and unlink, answer.
  for (Pair& pair : pairs) {
    if (pair.lower || !pair.want) continue;
    try {
      recv_all(transport, link(pair), &pair.remote, sizeof(pair.remote), deadline);
    } catch (const IoError&) {
      ::shm_unlink(pair.name.c_str());  // the creator may have died after creating it
      throw;
    }
    if (pair.remote.magic != kStatusMagic) throw IoError(fail_text(pair, "the peer sent garbage"));
    if (pair.remote.stage != kOk) continue;
    pair.mapping = std::make_unique<Mapping>();
    int error = 0;
    pair.local.stage = open_segment(pair.name, pair.theirs.nonce ^ nonce, *pair.mapping, &error);
    pair.local.error_number = static_cast<uint32_t>(error);
    if (pair.local.stage != kOk) pair.mapping.reset();
    send_all(transport, link(pair), &pair.local, sizeof(pair.local), deadline);
  }
  // 4. As the lower rank: read whether the peer mapped it.
  for (Pair& pair : pairs) {
    if (!pair.lower || !pair.want || pair.local.stage != kOk) continue;
    try {
      recv_all(transport, link(pair), &pair.remote, sizeof(pair.remote), deadline);
    } catch (const IoError&) {
      ::shm_unlink(pair.name.c_str());
      throw;
    }
    if (pair.remote.magic != kStatusMagic) throw IoError(fail_text(pair, "the peer sent garbage"));
    if (pair.remote.stage != kOk) {
      ::shm_unlink(pair.name.c_str());
      pair.mapping.reset();
    }
  }

  for (Pair& pair : pairs) {
    if (!pair.want) continue;
    const bool ok = pair.local.stage == kOk && pair.remote.stage == kOk;
    if (!ok) {
      if (options.mode == LocalTransport::kShm) {
        const bool ours = pair.local.stage != kOk;
        throw IoError(fail_text(pair, (ours ? "on this rank, " : "on the peer, ") +
                                          status_text(ours ? pair.local : pair.remote)));
      }
      continue;  // auto: this pair stays on TCP
    }
    std::unique_ptr<Connection> tcp = transport.release_connection(pair.peer);
    std::unique_ptr<TcpConnection> liveness(static_cast<TcpConnection*>(tcp.release()));
    transport.adopt_connection(
        pair.peer,
        std::make_unique<ShmConnection>(std::move(liveness), std::move(pair.mapping), pair.lower));
    kinds[pair.peer] = "shm";
  }
  return kinds;
}

}  // namespace adaptrain::collective

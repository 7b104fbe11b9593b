// COLLECTIVE_* parsing and how "auto" chooses an algorithm.
#include <map>
#include <string>

#include "collectives/algorithm.h"
#include "core/errors.h"
#include "core/tunables.h"
#include "unit_tests.h"

using namespace adaptrain::collective;

namespace {

Tunables parse(const std::map<std::string, std::string>& environment) {
  return parse_tunables([&](const char* name) -> const char* {
    auto found = environment.find(name);
    return found == environment.end() ? nullptr : found->second.c_str();
  });
}

}  // namespace

TEST(byte_counts_accept_plain_numbers_and_binary_suffixes) {
  CHECK_EQ(parse_byte_count("X", "262144", 1, 0, 1 << 30), size_t{262144});
  CHECK_EQ(parse_byte_count("X", "256K", 1, 0, 1 << 30), size_t{256} << 10);
  CHECK_EQ(parse_byte_count("X", "4m", 1, 0, 1 << 30), size_t{4} << 20);
  CHECK_EQ(parse_byte_count("X", "1G", 1, 0, size_t{1} << 30), size_t{1} << 30);
  CHECK_EQ(parse_byte_count("X", "", 77, 0, 100), size_t{77});
  CHECK_EQ(parse_byte_count("X", nullptr, 77, 0, 100), size_t{77});
}

TEST(bad_byte_counts_name_the_variable_and_the_range) {
  CHECK_THROWS(parse_byte_count("COLLECTIVE_X", "lots", 1, 0, 100), InvalidArgumentError,
               "COLLECTIVE_X=lots");
  CHECK_THROWS(parse_byte_count("COLLECTIVE_X", "-5", 1, 0, 100), InvalidArgumentError,
               "between 0 and 100");
  CHECK_THROWS(parse_byte_count("COLLECTIVE_X", "K", 1, 0, 100), InvalidArgumentError,
               "COLLECTIVE_X");
  CHECK_THROWS(parse_byte_count("COLLECTIVE_X", "101", 1, 0, 100), InvalidArgumentError,
               "COLLECTIVE_X");
  CHECK_THROWS(parse_byte_count("COLLECTIVE_X", "3", 1, 4, 100), InvalidArgumentError,
               "COLLECTIVE_X");
  CHECK_THROWS(parse_byte_count("COLLECTIVE_X", "99999999999999999999G", 1, 0, 100),
               InvalidArgumentError, "X");
  CHECK_THROWS(parse_byte_count("COLLECTIVE_X", "12abc", 1, 0, 100), InvalidArgumentError, "X");
}

TEST(tunables_have_defaults_and_read_every_variable) {
  const Tunables defaults = parse({});
  CHECK_EQ(defaults.block_bytes, size_t{256} << 10);
  CHECK_EQ(defaults.socket_buffer_bytes, size_t{4} << 20);
  CHECK_EQ(defaults.connect_retry_ms, 200);
  CHECK_EQ(defaults.spin_us, 50);
  CHECK_EQ(defaults.spin_bandwidth_us, 2000);
  CHECK_EQ(defaults.auto_ring_min_bytes, size_t{512} << 10);
  CHECK_EQ(defaults.auto_star_max_ranks, size_t{4});
  const Tunables set = parse({{"COLLECTIVE_RING_BLOCK_BYTES", "64K"},
                              {"COLLECTIVE_SOCKET_BUFFER_BYTES", "0"},
                              {"COLLECTIVE_CONNECT_RETRY_MS", "50"},
                              {"COLLECTIVE_SPIN_US", "0"},
                              {"COLLECTIVE_SPIN_BANDWIDTH_US", "0"},
                              {"COLLECTIVE_AUTO_RING_MIN_BYTES", "1M"},
                              {"COLLECTIVE_AUTO_STAR_MAX_RANKS", "8"}});
  CHECK_EQ(set.block_bytes, size_t{64} << 10);
  CHECK_EQ(set.socket_buffer_bytes, size_t{0});
  CHECK_EQ(set.connect_retry_ms, 50);
  CHECK_EQ(set.spin_us, 0);
  CHECK_EQ(set.spin_bandwidth_us, 0);
  CHECK_EQ(set.auto_ring_min_bytes, size_t{1} << 20);
  CHECK_EQ(set.auto_star_max_ranks, size_t{8});
  CHECK(set.describe().find("COLLECTIVE_AUTO_RING_MIN_BYTES=1048576\n") != std::string::npos);
  CHECK_THROWS(parse({{"COLLECTIVE_RING_BLOCK_BYTES", "1K"}}), InvalidArgumentError,
               "COLLECTIVE_RING_BLOCK_BYTES");
  CHECK_THROWS(parse({{"COLLECTIVE_SPIN_BANDWIDTH_US", "2ms"}}), InvalidArgumentError,
               "COLLECTIVE_SPIN_BANDWIDTH_US=2ms");
  CHECK_THROWS(parse({{"COLLECTIVE_SPIN_BANDWIDTH_US", "2000000"}}), InvalidArgumentError,
               "between 0 and 1000000");
}

TEST(auto_uses_the_ring_for_large_buffers_and_star_or_tree_below) {
  Tunables t =
      parse({{"COLLECTIVE_AUTO_RING_MIN_BYTES", "64K"}, {"COLLECTIVE_AUTO_STAR_MAX_RANKS", "4"}});
  CHECK_EQ(choose_algorithm(Algorithm::kAuto, 64 << 10, 16 << 10, 4, t), Algorithm::kRing);
  CHECK_EQ(choose_algorithm(Algorithm::kAuto, (64 << 10) - 4, 16 << 10, 4, t), Algorithm::kStar);
  CHECK_EQ(choose_algorithm(Algorithm::kAuto, 4096, 1024, 5, t), Algorithm::kTree);
  // Fewer elements than ranks: the ring would have empty segments.
  CHECK_EQ(choose_algorithm(Algorithm::kAuto, 1 << 30, 3, 4, t), Algorithm::kStar);
}

TEST(explicit_choices_are_kept_except_a_ring_too_small_to_cut) {
  const Tunables t = parse({});
  CHECK_EQ(choose_algorithm(Algorithm::kRing, 8, 2, 2, t), Algorithm::kRing);
  CHECK_EQ(choose_algorithm(Algorithm::kRing, 8, 2, 3, t), Algorithm::kTree);
  CHECK_EQ(choose_algorithm(Algorithm::kStar, 1 << 30, 1 << 28, 8, t), Algorithm::kStar);
  CHECK_EQ(choose_algorithm(Algorithm::kTree, 0, 0, 2, t), Algorithm::kTree);
  CHECK_THROWS(choose_algorithm(Algorithm::kDefault, 0, 0, 2, t), InvalidArgumentError, "internal");
}

TEST(algorithm_names_parse_and_print) {
  for (const char* name : {"auto", "ring", "tree", "star"}) {
    CHECK_EQ(std::string(name_of(parse_algorithm(name))), std::string(name));
  }
  CHECK_THROWS(parse_algorithm("mesh"), InvalidArgumentError, "\"ring\"");
}

TEST(hierarchical_chunk_bytes_parse_and_are_agreed) {
  CHECK_EQ(parse({}).hierarchical_chunk_bytes, size_t{1} << 20);
  CHECK_EQ(parse({{"COLLECTIVE_HIERARCHICAL_CHUNK_BYTES", "0"}}).hierarchical_chunk_bytes,
           size_t{0});
  CHECK_EQ(parse({{"COLLECTIVE_HIERARCHICAL_CHUNK_BYTES", "4M"}}).hierarchical_chunk_bytes,
           size_t{4} << 20);
  CHECK(parse({{"COLLECTIVE_HIERARCHICAL_CHUNK_BYTES", "4M"}})
            .describe()
            .find("COLLECTIVE_HIERARCHICAL_CHUNK_BYTES=4194304\n") != std::string::npos);
  CHECK_THROWS(parse({{"COLLECTIVE_HIERARCHICAL_CHUNK_BYTES", "lots"}}), InvalidArgumentError,
               "COLLECTIVE_HIERARCHICAL_CHUNK_BYTES");
  CHECK(!parse({}).hierarchical_leader);
  CHECK(parse({{"COLLECTIVE_HIERARCHICAL_SCHEME", "leader"}}).hierarchical_leader);
  CHECK(!parse({{"COLLECTIVE_HIERARCHICAL_SCHEME", "shards"}}).hierarchical_leader);
  CHECK(parse({{"COLLECTIVE_HIERARCHICAL_SCHEME", "leader"}})
            .describe()
            .find("COLLECTIVE_HIERARCHICAL_SCHEME=leader\n") != std::string::npos);
  CHECK_THROWS(parse({{"COLLECTIVE_HIERARCHICAL_SCHEME", "nearest"}}), InvalidArgumentError,
               "COLLECTIVE_HIERARCHICAL_SCHEME=nearest is not valid");
}

TEST(local_transport_is_auto_shm_or_tcp_and_is_agreed) {
  CHECK_EQ(parse({}).local_transport, LocalTransport::kAuto);
  CHECK_EQ(parse({}).shm_buffer_bytes, size_t{256} << 10);
  CHECK_EQ(parse({{"COLLECTIVE_LOCAL_TRANSPORT", "shm"}}).local_transport, LocalTransport::kShm);
  CHECK_EQ(parse({{"COLLECTIVE_LOCAL_TRANSPORT", "tcp"}}).local_transport, LocalTransport::kTcp);
  CHECK(parse({{"COLLECTIVE_LOCAL_TRANSPORT", "tcp"}})
            .describe()
            .find("COLLECTIVE_LOCAL_TRANSPORT=tcp\n") != std::string::npos);
  CHECK_THROWS(parse({{"COLLECTIVE_LOCAL_TRANSPORT", "fast"}}), InvalidArgumentError,
               "auto, shm or tcp");
  CHECK_EQ(parse({{"COLLECTIVE_SHM_BUFFER_BYTES", "1M"}}).shm_buffer_bytes, size_t{1} << 20);
  CHECK_THROWS(parse({{"COLLECTIVE_SHM_BUFFER_BYTES", "96K"}}), InvalidArgumentError,
               "power of two");
  CHECK_THROWS(parse({{"COLLECTIVE_SHM_BUFFER_BYTES", "4K"}}), InvalidArgumentError,
               "COLLECTIVE_SHM_BUFFER_BYTES");
}

// The chunked staging pipeline (core/staging.h) driven by a fake device whose
// two "streams" are host threads doing memcpy after random delays, so the
// slot-reuse ordering and the overlap are tested without a GPU.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "core/errors.h"
#include "core/staging.h"
#include "unit_tests.h"

using namespace adaptrain::collective;

namespace {

// A FIFO of tasks run one after another by its own thread, like a CUDA stream.
class FakeStream {
 public:
  FakeStream() : thread_([this] { loop(); }) {}
  ~FakeStream() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    changed_.notify_all();
    thread_.join();
  }
  // Returns the task's ticket (0, 1, ...).
  size_t enqueue(std::function<void()> task) {
    std::lock_guard<std::mutex> lock(mutex_);
    tasks_.push_back(std::move(task));
    changed_.notify_all();
    return queued_++;
  }
  void wait_for(size_t ticket) {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] { return done_ > ticket; });
  }
  void drain() {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] { return done_ == queued_; });
  }
  bool idle() {
    std::lock_guard<std::mutex> lock(mutex_);
    return done_ == queued_;
  }
  size_t done() {
    std::lock_guard<std::mutex> lock(mutex_);
    return done_;
  }

 private:
  void loop() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      changed_.wait(lock, [&] { return stop_ || !tasks_.empty(); });
      if (tasks_.empty()) return;
      std::function<void()> task = std::move(tasks_.front());
      tasks_.pop_front();
      lock.unlock();
      task();
      lock.lock();
      ++done_;
      changed_.notify_all();
    }
  }

  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<std::function<void()>> tasks_;
  size_t queued_ = 0;
  size_t done_ = 0;
  bool stop_ = false;
  std::thread thread_;
};

// Host memory playing device memory; copies after random delays of up to
// `max_delay_us` (uploads `upload_delay_us` more), a log of what happened,
// and a check that no copy touches a slot while the host is using it.
class FakeDevice final : public StagingDevice {
 public:
  explicit FakeDevice(int max_delay_us, int upload_delay_us = 0, unsigned seed = 1)
      : max_delay_us_(max_delay_us), upload_delay_us_(upload_delay_us), random_(seed) {}
  ~FakeDevice() override { synchronize(); }

  void download(int slot, void* host, const void* device, size_t bytes) override {
    const size_t after = uploaded_[slot];  // 1 + ticket of the slot's last upload, 0: none
    const int delay = next_delay();
    record("queue download slot " + std::to_string(slot));
    const size_t ticket = downloads_.enqueue([=] {
      if (after != 0) uploads_.wait_for(after - 1);  // cudaStreamWaitEvent
      std::this_thread::sleep_for(std::chrono::microseconds(delay));
      if (host_owns_[slot]) violations_++;
      std::memcpy(host, device, bytes);
    });
    downloaded_[slot] = ticket + 1;
  }
  void wait_download(int slot) override {
    if (downloaded_[slot] != 0) downloads_.wait_for(downloaded_[slot] - 1);
  }
  void upload(int slot, void* device, const void* host, size_t bytes) override {
    const int delay = next_delay() + upload_delay_us_;
    record("queue upload slot " + std::to_string(slot));
    const size_t ticket = uploads_.enqueue([=] {
      std::this_thread::sleep_for(std::chrono::microseconds(delay));
      if (host_owns_[slot]) violations_++;
      std::memcpy(device, host, bytes);
      uploads_done_++;
    });
    uploaded_[slot] = ticket + 1;
  }
  void wait_upload(int slot) override {
    if (uploaded_[slot] != 0) uploads_.wait_for(uploaded_[slot] - 1);
  }
  void synchronize() override {
    downloads_.drain();
    uploads_.drain();
  }

  // The host holds `slot` (between the wait and the upload of its chunk).
  void host_holds(int slot, bool holds) { host_owns_[slot] = holds; }
  void record(const std::string& event) {
    std::lock_guard<std::mutex> lock(log_mutex_);
    log_.push_back(event);
  }
  std::vector<std::string> log() {
    std::lock_guard<std::mutex> lock(log_mutex_);
    return log_;
  }
  bool idle() { return downloads_.idle() && uploads_.idle(); }
  int uploads_done() const { return uploads_done_; }
  int violations() const { return violations_; }

 private:
  int next_delay() {
    return max_delay_us_ == 0 ? 0 : std::uniform_int_distribution<int>(0, max_delay_us_)(random_);
  }

  const int max_delay_us_;
  const int upload_delay_us_;
  std::mt19937 random_;
  size_t downloaded_[kStagingSlots] = {};
  size_t uploaded_[kStagingSlots] = {};
  std::atomic<bool> host_owns_[kStagingSlots] = {};
  std::atomic<int> violations_{0};
  std::atomic<int> uploads_done_{0};
  std::mutex log_mutex_;
  std::vector<std::string> log_;
  FakeStream downloads_;  // destroyed (joined) before the state above
  FakeStream uploads_;
};

int slot_at(const char* staging, const char* host, size_t chunk_bytes) {
  return static_cast<int>((host - staging) / chunk_bytes);
}

// An "allreduce" on the host copy: every int32 x becomes 3x + 1.
void run_allreduce_case(size_t count, size_t chunk_bytes, int max_delay_us, unsigned seed) {
  std::vector<int32_t> device(count), original(count);
  for (size_t i = 0; i < count; ++i) original[i] = device[i] = static_cast<int32_t>(i * 7 + 3);
  std::vector<char> staging(chunk_bytes * kStagingSlots);
  FakeDevice fake(max_delay_us, 0, seed);
  size_t next_offset = 0;
  run_staged(fake, staging.data(), chunk_bytes, reinterpret_cast<char*>(device.data()),
             count * sizeof(int32_t), true, true, [&](char* host, size_t offset, size_t bytes) {
               CHECK_EQ(offset, next_offset);  // chunks in order, each once
               next_offset += bytes;
               const int slot = slot_at(staging.data(), host, chunk_bytes);
               fake.host_holds(slot, true);
               auto* values = reinterpret_cast<int32_t*>(host);
               for (size_t k = 0; k < bytes / sizeof(int32_t); ++k) {
                 // The slot holds this chunk's input, not a neighbour's.
                 CHECK_EQ(values[k], original[offset / sizeof(int32_t) + k]);
                 values[k] = values[k] * 3 + 1;
               }
               fake.host_holds(slot, false);
             });
  CHECK_EQ(next_offset, count * sizeof(int32_t));
  CHECK(fake.idle());
  CHECK_EQ(fake.violations(), 0);
  for (size_t i = 0; i < count; ++i) CHECK_EQ(device[i], original[i] * 3 + 1);
}

}  // namespace

TEST(staged_chunks_come_back_transformed_in_place_whatever_the_copy_timing) {
  // Counts that fill the chunks exactly, leave a short last chunk, fit in one
  // chunk, and need more chunks than slots many times over.
  const size_t chunk = 4096;
  for (size_t count : {size_t{1}, size_t{1023}, size_t{1024}, size_t{3 * 1024},
                       size_t{10 * 1024 + 17}, size_t{64 * 1024}}) {
    for (unsigned seed = 1; seed <= 3; ++seed) run_allreduce_case(count, chunk, 200, seed);
  }
  run_allreduce_case(50 * 1024, chunk, 0, 7);  // copies as fast as they go
}

TEST(the_next_downloads_are_queued_before_the_host_communicates_a_chunk) {
  const size_t chunk = 4096, chunks = 6;
  std::vector<char> device(chunk * chunks, 1), staging(chunk * kStagingSlots);
  FakeDevice fake(0);
  int call = 0;
  run_staged(fake, staging.data(), chunk, device.data(), device.size(), true, true,
             [&](char*, size_t, size_t) { fake.record("communicate " + std::to_string(call++)); });
  const std::vector<std::string> log = fake.log();
  // Before chunk i is communicated, the downloads of chunks up to i + S - 1
  // are queued (slots 0, 1, 2, 0, ...), and the upload of chunk i - 1.
  std::vector<std::string> expected = {
      "queue download slot 0", "queue download slot 1", "queue download slot 2",
      "communicate 0",         "queue upload slot 0",   "queue download slot 0",
      "communicate 1",         "queue upload slot 1",   "queue download slot 1",
      "communicate 2",         "queue upload slot 2",   "queue download slot 2",
      "communicate 3",         "queue upload slot 0",   "communicate 4",
      "queue upload slot 1",   "communicate 5",         "queue upload slot 2"};
  CHECK_EQ(log, expected);
}

TEST(the_host_does_not_wait_for_an_upload_before_communicating_the_next_chunk) {
  // Uploads take 30 ms each: the host communicates chunk 1 while chunk 0 is
  // still going up, and the call returns only once every upload is done.
  const size_t chunk = 4096, chunks = 4;
  std::vector<char> device(chunk * chunks, 1), staging(chunk * kStagingSlots);
  FakeDevice fake(0, 30000);
  std::vector<int> uploads_done_at_call;
  run_staged(fake, staging.data(), chunk, device.data(), device.size(), true, true,
             [&](char*, size_t, size_t) { uploads_done_at_call.push_back(fake.uploads_done()); });
  CHECK_EQ(uploads_done_at_call[1], 0);
  CHECK_EQ(fake.uploads_done(), static_cast<int>(chunks));
}

TEST(a_receiver_uploads_without_downloading_and_waits_before_reusing_a_slot) {
  // A broadcast's receiver: nothing is downloaded, the host writes each slot,
  // and a slot is written again only once its previous upload has finished.
  const size_t chunk = 4096, count = 9 * 1024 + 5;
  std::vector<int32_t> source(count), device(count, -1);
  for (size_t i = 0; i < count; ++i) source[i] = static_cast<int32_t>(i ^ 0x5a5a);
  std::vector<char> staging(chunk * kStagingSlots);
  FakeDevice fake(300, 0, 5);
  run_staged(fake, staging.data(), chunk, reinterpret_cast<char*>(device.data()),
             count * sizeof(int32_t), false, true, [&](char* host, size_t offset, size_t bytes) {
               const int slot = slot_at(staging.data(), host, chunk);
               fake.host_holds(slot, true);
               std::memcpy(host, reinterpret_cast<char*>(source.data()) + offset, bytes);
               fake.host_holds(slot, false);
             });
  CHECK_EQ(fake.violations(), 0);
  CHECK(device == source);
  for (const std::string& event : fake.log()) CHECK(event.find("download") == std::string::npos);
}

TEST(a_sender_downloads_without_uploading_and_leaves_the_device_buffer_alone) {
  const size_t chunk = 4096, count = 5 * 1024;
  std::vector<int32_t> device(count);
  for (size_t i = 0; i < count; ++i) device[i] = static_cast<int32_t>(i);
  const std::vector<int32_t> original = device;
  std::vector<char> staging(chunk * kStagingSlots);
  FakeDevice fake(100);
  std::vector<int32_t> sent;
  run_staged(fake, staging.data(), chunk, reinterpret_cast<char*>(device.data()),
             count * sizeof(int32_t), true, false, [&](char* host, size_t, size_t bytes) {
               auto* values = reinterpret_cast<int32_t*>(host);
               sent.insert(sent.end(), values, values + bytes / sizeof(int32_t));
               std::memset(host, 0, bytes);  // what the collective does to the copy stays there
             });
  CHECK(sent == original);
  CHECK(device == original);
  for (const std::string& event : fake.log()) CHECK(event.find("upload") == std::string::npos);
}

TEST(a_failed_collective_waits_for_the_copies_in_flight_and_rethrows) {
  const size_t chunk = 4096, chunks = 8;
  std::vector<char> device(chunk * chunks, 1), staging(chunk * kStagingSlots);
  FakeDevice fake(2000, 5000);
  int calls = 0;
  CHECK_THROWS(run_staged(fake, staging.data(), chunk, device.data(), device.size(), true, true,
                          [&](char*, size_t, size_t) {
                            if (++calls == 3) throw IoError("peer 1 went away");
                          }),
               IoError, "peer 1 went away");
  CHECK(fake.idle());  // nothing writes the staging area or the buffer any more
  CHECK_EQ(calls, 3);
}

TEST(chunks_are_an_eighth_of_the_buffer_within_the_bounds_and_whole_elements) {
  const StagingTunables tunables{size_t{1} << 20, size_t{16} << 20};
  CHECK_EQ(staging_chunk_bytes(size_t{64} << 20, 4, tunables), size_t{8} << 20);
  CHECK_EQ(staging_chunk_bytes(size_t{1} << 30, 4, tunables), size_t{16} << 20);
  CHECK_EQ(staging_chunk_bytes(size_t{4} << 20, 4, tunables), size_t{1} << 20);
  // Smaller than one chunk: one chunk of (about) its own size.
  CHECK_EQ(staging_chunk_bytes(10, 2, tunables), size_t{4096});
  CHECK_EQ(staging_chunk_bytes(300000, 8, tunables), size_t{303104});
  for (size_t element : {size_t{2}, size_t{4}, size_t{8}}) {
    CHECK_EQ(staging_chunk_bytes(12345678, element, tunables) % element, size_t{0});
  }
}

TEST(staging_tunables_have_defaults_and_refuse_bad_values) {
  auto parse = [](std::map<std::string, std::string> environment) {
    return parse_staging_tunables([environment](const char* name) -> const char* {
      auto found = environment.find(name);
      return found == environment.end() ? nullptr : found->second.c_str();
    });
  };
  const StagingTunables defaults = parse({});
  CHECK_EQ(defaults.chunk_min_bytes, size_t{1} << 20);
  CHECK_EQ(defaults.chunk_max_bytes, size_t{16} << 20);
  const StagingTunables set = parse(
      {{"COLLECTIVE_CUDA_CHUNK_MIN_BYTES", "256K"}, {"COLLECTIVE_CUDA_CHUNK_MAX_BYTES", "4M"}});
  CHECK_EQ(set.chunk_min_bytes, size_t{256} << 10);
  CHECK_EQ(set.chunk_max_bytes, size_t{4} << 20);
  CHECK_THROWS(parse({{"COLLECTIVE_CUDA_CHUNK_MIN_BYTES", "32M"}}), InvalidArgumentError,
               "COLLECTIVE_CUDA_CHUNK_MAX_BYTES must be at least");
  CHECK_THROWS(parse({{"COLLECTIVE_CUDA_CHUNK_MAX_BYTES", "lots"}}), InvalidArgumentError,
               "COLLECTIVE_CUDA_CHUNK_MAX_BYTES=lots");
}

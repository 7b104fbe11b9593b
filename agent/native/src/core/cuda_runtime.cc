// libcudart through dlopen, and the CUDA staging device (see cuda_runtime.h).
#include "core/cuda_runtime.h"

#include <dlfcn.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <vector>

namespace adaptrain::collective {

namespace {

// The part of the CUDA runtime API this file uses, declared here so that the
// build needs no CUDA headers. These signatures and values have been stable
// since CUDA 4 and are the same in CUDA 11, 12 and 13.
using cudaError_t = int;
using cudaStream_t = void*;
using cudaEvent_t = void*;
constexpr cudaError_t cudaSuccess = 0;
constexpr int cudaMemcpyHostToDevice = 1;
constexpr int cudaMemcpyDeviceToHost = 2;
constexpr unsigned cudaStreamNonBlocking = 0x01;
constexpr unsigned cudaEventDisableTiming = 0x02;
constexpr unsigned cudaHostAllocDefault = 0x00;

struct CudaRuntime {
  std::string description;
  const char* (*GetErrorString)(cudaError_t);
  cudaError_t (*RuntimeGetVersion)(int*);
  cudaError_t (*GetDevice)(int*);
  cudaError_t (*SetDevice)(int);
  cudaError_t (*StreamCreateWithFlags)(cudaStream_t*, unsigned);
  cudaError_t (*StreamSynchronize)(cudaStream_t);
  cudaError_t (*StreamWaitEvent)(cudaStream_t, cudaEvent_t, unsigned);
  cudaError_t (*EventCreateWithFlags)(cudaEvent_t*, unsigned);
  cudaError_t (*EventRecord)(cudaEvent_t, cudaStream_t);
  cudaError_t (*EventSynchronize)(cudaEvent_t);
  cudaError_t (*MemcpyAsync)(void*, const void*, size_t, int, cudaStream_t);
  cudaError_t (*HostAlloc)(void**, size_t, unsigned);
  cudaError_t (*FreeHost)(void*);
};

// libcudart files already mapped into this process (PyTorch's or CuPy's).
std::vector<std::string> mapped_runtimes() {
  std::vector<std::string> found;
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    const size_t slash = line.find('/');
    if (slash == std::string::npos) continue;
    const std::string path = line.substr(slash);
    if (path.find("/libcudart.so") == std::string::npos) continue;
    bool seen = false;
    for (const std::string& known : found) seen = seen || known == path;
    if (!seen) found.push_back(path);
  }
  return found;
}

template <typename Function>
void resolve(void* library, const char* name, Function& function, std::string& missing) {
  function = reinterpret_cast<Function>(dlsym(library, name));
  if (function == nullptr) missing += std::string(missing.empty() ? "" : ", ") + name;
}

std::unique_ptr<CudaRuntime> open_runtime() {
  std::vector<std::string> candidates;
  const char* chosen = std::getenv("COLLECTIVE_CUDART");
  if (chosen != nullptr && *chosen != '\0') {
    candidates.emplace_back(chosen);  // the one to use: no search
  } else {
    for (const std::string& path : mapped_runtimes()) candidates.push_back(path);
    for (const char* name :
         {"libcudart.so.12", "libcudart.so.13", "libcudart.so.11.0", "libcudart.so"}) {
      candidates.emplace_back(name);
    }
  }
  std::string tried;
  for (const std::string& candidate : candidates) {
    void* library = dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (library == nullptr) {
      const char* why = dlerror();
      tried += "\n  " + candidate + ": " + (why != nullptr ? why : "not found");
      continue;
    }
    auto runtime = std::make_unique<CudaRuntime>();
    std::string missing;
    resolve(library, "cudaGetErrorString", runtime->GetErrorString, missing);
    resolve(library, "cudaRuntimeGetVersion", runtime->RuntimeGetVersion, missing);
    resolve(library, "cudaGetDevice", runtime->GetDevice, missing);
    resolve(library, "cudaSetDevice", runtime->SetDevice, missing);
    resolve(library, "cudaStreamCreateWithFlags", runtime->StreamCreateWithFlags, missing);
    resolve(library, "cudaStreamSynchronize", runtime->StreamSynchronize, missing);
    resolve(library, "cudaStreamWaitEvent", runtime->StreamWaitEvent, missing);
    resolve(library, "cudaEventCreateWithFlags", runtime->EventCreateWithFlags, missing);
    resolve(library, "cudaEventRecord", runtime->EventRecord, missing);
    resolve(library, "cudaEventSynchronize", runtime->EventSynchronize, missing);
    resolve(library, "cudaMemcpyAsync", runtime->MemcpyAsync, missing);
    resolve(library, "cudaHostAlloc", runtime->HostAlloc, missing);
    resolve(library, "cudaFreeHost", runtime->FreeHost, missing);
    if (!missing.empty()) {
      tried += "\n  " + candidate + ": lacks " + missing;
      dlclose(library);
      continue;
    }
    std::string path = candidate;
    Dl_info info{};
    if (dladdr(reinterpret_cast<void*>(runtime->GetDevice), &info) != 0 &&
        info.dli_fname != nullptr) {
      path = info.dli_fname;
    }
    int version = 0;
    runtime->RuntimeGetVersion(&version);
    runtime->description = path + " (CUDA runtime " + std::to_string(version / 1000) + "." +
                           std::to_string(version % 1000 / 10) + ")";
    return runtime;  // kept loaded until exit
  }
  throw CudaUnavailableError(
      "CUDA tensors need the CUDA runtime library (libcudart), and none could be loaded:" + tried +
      "\nInstall it (PyTorch or CuPy built for CUDA bring one; or pip install "
      "nvidia-cuda-runtime-cu12), set COLLECTIVE_CUDART to the path of libcudart.so.*, or pass "
      "a host (CPU) tensor");
}

const CudaRuntime& runtime() {
  // Loaded once; a failure is remembered and raised again with the same text.
  static std::unique_ptr<CudaRuntime> loaded;
  static std::string failure;
  static std::once_flag once;
  std::call_once(once, [] {
    try {
      loaded = open_runtime();
    } catch (const CudaUnavailableError& error) {
      failure = error.what();
    }
  });
  if (!loaded) throw CudaUnavailableError(failure);
  return *loaded;
}

void check(cudaError_t status, const char* call, int device) {
  if (status == cudaSuccess) return;
  const char* text = runtime().GetErrorString(status);
  throw CudaError(std::string(call) + " failed on CUDA device " + std::to_string(device) + ": " +
                  (text != nullptr ? text : "unknown error") + " (cudaError " +
                  std::to_string(status) + ")");
}

// Makes `device` this thread's current device for a scope, and restores the
// previous one after.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    const CudaRuntime& cuda = runtime();
    check(cuda.GetDevice(&previous_), "cudaGetDevice", device);
    if (previous_ != device) check(cuda.SetDevice(device), "cudaSetDevice", device);
  }
  ~DeviceScope() {
    int current = previous_;
    runtime().GetDevice(&current);
    if (current != previous_) runtime().SetDevice(previous_);
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int previous_ = 0;
};

}  // namespace

std::string load_cuda_runtime() { return runtime().description; }

CudaStager& CudaStager::for_device(int device) {
  runtime();  // a missing runtime says so before anything else
  if (device < 0)
    throw InvalidArgumentError("CUDA device " + std::to_string(device) + " is not valid");
  static std::mutex mutex;
  static std::map<int, CudaStager*> stagers;  // never freed: CUDA may be torn down first at exit
  std::lock_guard<std::mutex> lock(mutex);
  auto found = stagers.find(device);
  if (found == stagers.end()) found = stagers.emplace(device, new CudaStager(device)).first;
  return *found->second;
}

CudaStager::CudaStager(int device) : device_(device) {
  const CudaRuntime& cuda = runtime();
  DeviceScope scope(device);
  check(cuda.StreamCreateWithFlags(&download_stream_, cudaStreamNonBlocking),
        "cudaStreamCreateWithFlags", device);
  check(cuda.StreamCreateWithFlags(&upload_stream_, cudaStreamNonBlocking),
        "cudaStreamCreateWithFlags", device);
  check(cuda.EventCreateWithFlags(&start_event_, cudaEventDisableTiming),
        "cudaEventCreateWithFlags", device);
  for (int slot = 0; slot < kStagingSlots; ++slot) {
    check(cuda.EventCreateWithFlags(&downloaded_[slot], cudaEventDisableTiming),
          "cudaEventCreateWithFlags", device);
    check(cuda.EventCreateWithFlags(&uploaded_[slot], cudaEventDisableTiming),
          "cudaEventCreateWithFlags", device);
  }
}

void CudaStager::run(
    char* data, size_t bytes, size_t element_bytes, bool download_input, bool upload_output,
    const std::function<void(char* host, size_t offset, size_t bytes)>& communicate) {
  if (bytes == 0) return;
  const CudaRuntime& cuda = runtime();
  std::lock_guard<std::mutex> lock(mutex_);
  DeviceScope scope(device_);
  const size_t chunk = staging_chunk_bytes(bytes, element_bytes, staging_tunables());
  const size_t needed = chunk * kStagingSlots;
  if (pinned_bytes_ < needed) {  // grows to the largest call's need, then stays
    if (pinned_ != nullptr) check(cuda.FreeHost(pinned_), "cudaFreeHost", device_);
    pinned_ = nullptr;
    pinned_bytes_ = 0;
    void* pinned = nullptr;
    check(cuda.HostAlloc(&pinned, needed, cudaHostAllocDefault), "cudaHostAlloc", device_);
    pinned_ = static_cast<char*>(pinned);
    pinned_bytes_ = needed;
  }
  // Uploads write the caller's buffer: order them after everything the
  // download stream waits for (the producer's work, see the header).
  check(cuda.EventRecord(start_event_, download_stream_), "cudaEventRecord", device_);
  check(cuda.StreamWaitEvent(upload_stream_, start_event_, 0), "cudaStreamWaitEvent", device_);
  run_staged(*this, pinned_, chunk, data, bytes, download_input, upload_output, communicate);
}

void CudaStager::download(int slot, void* host, const void* device, size_t bytes) {
  const CudaRuntime& cuda = runtime();
  // An event never recorded counts as complete, so the first use waits for nothing.
  check(cuda.StreamWaitEvent(download_stream_, uploaded_[slot], 0), "cudaStreamWaitEvent", device_);
  check(cuda.MemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, download_stream_),
        "cudaMemcpyAsync (device to host)", device_);
  check(cuda.EventRecord(downloaded_[slot], download_stream_), "cudaEventRecord", device_);
}

void CudaStager::wait_download(int slot) {
  check(runtime().EventSynchronize(downloaded_[slot]), "cudaEventSynchronize", device_);
}

void CudaStager::upload(int slot, void* device, const void* host, size_t bytes) {
  const CudaRuntime& cuda = runtime();
  check(cuda.MemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, upload_stream_),
        "cudaMemcpyAsync (host to device)", device_);
  check(cuda.EventRecord(uploaded_[slot], upload_stream_), "cudaEventRecord", device_);
}

void CudaStager::wait_upload(int slot) {
  check(runtime().EventSynchronize(uploaded_[slot]), "cudaEventSynchronize", device_);
}

void CudaStager::synchronize() {
  const CudaRuntime& cuda = runtime();
  const cudaError_t downloads = cuda.StreamSynchronize(download_stream_);
  check(cuda.StreamSynchronize(upload_stream_), "cudaStreamSynchronize", device_);
  check(downloads, "cudaStreamSynchronize", device_);
}

}  // namespace adaptrain::collective

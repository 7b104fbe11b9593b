// The CUDA runtime (libcudart), loaded at run time, and the staging device
// that moves CUDA buffers through pinned host memory for the collectives.
//
// The library is built without CUDA headers or a toolkit: the few runtime
// functions it calls are declared here and looked up with dlopen/dlsym on
// first use: the file COLLECTIVE_CUDART names if it is set (and nothing
// else), otherwise a libcudart already mapped into the process (the one
// PyTorch or CuPy loaded), then libcudart.so.12, .so.13, .so.11.0 and
// libcudart.so on the loader's path. A
// process that never passes a CUDA buffer never loads it.
//
// Stream semantics: each device has two non-blocking streams of its own, one
// for downloads (device to host) and one for uploads. A caller makes the
// download stream wait for the work that produces the buffer (the Python
// facade passes it as the `stream` argument of __dlpack__, which is how the
// DLPack protocol hands over a producer's stream); the upload stream waits for
// the download stream's state at the start of each call. A staged call
// returns once its uploads have finished, so work queued afterwards on any
// stream sees the result.
//
// NOTE: written and unit-tested without a GPU (the pipeline through a fake
// StagingDevice, the loader's error without libcudart); see docs/native.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>

#include "core/errors.h"
#include "core/staging.h"

namespace adaptrain::collective {

// No CUDA runtime could be loaded (or it lacks a function this file needs).
// Raised before anything is sent: ValueError in Python.
class CudaUnavailableError : public InvalidArgumentError {
 public:
  using InvalidArgumentError::InvalidArgumentError;
};

// A CUDA runtime call failed.
class CudaError : public IoError {
 public:
  using IoError::IoError;
};

// Loads the runtime (once per process). Throws CudaUnavailableError saying
// what was tried and what to install. Returns a description: the library's
// path and the runtime's version.
std::string load_cuda_runtime();

// Per CUDA device, its streams, events and pinned staging area; one per
// process and device, created on first use and kept until exit.
class CudaStager final : public StagingDevice {
 public:
  // Loads the runtime if needed. Throws CudaUnavailableError or CudaError.
  static CudaStager& for_device(int device);

  int device() const { return device_; }
  // The download stream (a cudaStream_t), for DLPack's `stream` argument.
  uintptr_t download_stream() const { return reinterpret_cast<uintptr_t>(download_stream_); }

  // Runs `communicate` on every chunk of the device buffer `data` through
  // run_staged (staging.h), with this thread's current device set to this
  // one for the call. One call at a time per device.
  void run(char* data, size_t bytes, size_t element_bytes, bool download_input, bool upload_output,
           const std::function<void(char* host, size_t offset, size_t bytes)>& communicate);

  void download(int slot, void* host, const void* device, size_t bytes) override;
  void wait_download(int slot) override;
  void upload(int slot, void* device, const void* host, size_t bytes) override;
  void wait_upload(int slot) override;
  void synchronize() override;

 private:
  explicit CudaStager(int device);

  const int device_;
  void* download_stream_ = nullptr;
  void* upload_stream_ = nullptr;
  void* start_event_ = nullptr;
  void* downloaded_[kStagingSlots] = {};
  void* uploaded_[kStagingSlots] = {};
  char* pinned_ = nullptr;
  size_t pinned_bytes_ = 0;
  std::mutex mutex_;
};

}  // namespace adaptrain::collective

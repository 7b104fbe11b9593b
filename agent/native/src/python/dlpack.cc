// DLPack arrays in the bindings (see dlpack.h).
#include "python/dlpack.h"

#include <nanobind/stl/string.h>

#include <string>

#include "core/cuda_runtime.h"
#include "core/errors.h"
#include "core/staging.h"

namespace adaptrain::collective::python {

namespace {

// DLPack's device types (dlpack.h, DLDeviceType).
constexpr int32_t kDLCPU = 1;
constexpr int32_t kDLCUDA = 2;
constexpr int32_t kDLCUDAHost = 3;
constexpr int32_t kDLCUDAManaged = 13;

std::string device_name(int32_t type) {
  switch (type) {
    case 4:
      return "OpenCL";
    case 7:
      return "Vulkan";
    case 8:
      return "Metal";
    case 10:
      return "ROCm";
    case 11:
      return "ROCm host";
    case kDLCUDAManaged:
      return "CUDA managed memory";
    case 14:
      return "oneAPI";
    default:
      return "DLPack device type " + std::to_string(type);
  }
}

// Closes the communicator when CUDA fails mid-call: the peers are inside the
// same collective and would otherwise wait for the timeout.
template <typename Body>
void closing_on_cuda_error(Communicator& communicator, const char* operation, Body&& body) {
  try {
    body();
  } catch (const CudaError& error) {
    communicator.close();
    throw CudaError(std::string(operation) + " on rank " + std::to_string(communicator.rank()) +
                    ": " + error.what() + "; the communicator is closed");
  }
}

}  // namespace

int cuda_device_of(const AnyArray& array, const char* operation) {
  const int32_t type = array.device_type();
  if (type == kDLCPU || type == kDLCUDAHost) return -1;
  if (type == kDLCUDA) return array.device_id();
  throw InvalidArgumentError(std::string(operation) +
                             " takes host (CPU) or CUDA arrays; this one is in " +
                             device_name(type) + ": copy it to a CUDA device or to the host first");
}

void allreduce_cuda(Communicator& communicator, int device, void* data, size_t count,
                    DataType dtype, ReduceOp op, Algorithm algorithm, uint64_t shape_hash) {
  check_op_supported(dtype, op);  // before any chunk moves
  if (count == 0) {               // one (empty) collective, as for a host array
    char nothing = 0;
    communicator.allreduce(&nothing, 0, dtype, op, algorithm, shape_hash);
    return;
  }
  CudaStager& stager = CudaStager::for_device(device);
  const size_t element = element_size(dtype);
  closing_on_cuda_error(communicator, "allreduce", [&] {
    stager.run(static_cast<char*>(data), count * element, element, true, true,
               [&](char* host, size_t, size_t bytes) {
                 communicator.allreduce(host, bytes / element, dtype, op, algorithm, shape_hash);
               });
  });
}

void broadcast_cuda(Communicator& communicator, int device, void* data, size_t count,
                    DataType dtype, int root, Algorithm algorithm, uint64_t shape_hash) {
  if (root < 0 || root >= communicator.size()) {
    throw InvalidArgumentError("broadcast: root " + std::to_string(root) + " is out of range");
  }
  if (count == 0) {
    char nothing = 0;
    communicator.broadcast(&nothing, 0, dtype, root, algorithm, shape_hash);
    return;
  }
  CudaStager& stager = CudaStager::for_device(device);
  const size_t element = element_size(dtype);
  const bool is_root = communicator.rank() == root;
  closing_on_cuda_error(communicator, "broadcast", [&] {
    // The root only sends (its buffer does not change); the others only receive.
    stager.run(static_cast<char*>(data), count * element, element, is_root, !is_root,
               [&](char* host, size_t, size_t bytes) {
                 communicator.broadcast(host, bytes / element, dtype, root, algorithm, shape_hash);
               });
  });
}

void bind_dlpack(nb::module_& module) {
  module.def(
      "_cuda_stream",
      [](int device) {
        CudaStager& stager = CudaStager::for_device(device);
        return static_cast<uint64_t>(stager.download_stream());
      },
      nb::arg("device"),
      "The stream (a cudaStream_t as an int) the staged collectives on CUDA `device` read "
      "from: pass it as __dlpack__(stream=...) so that the producer's work is ordered before "
      "it. Loads the CUDA runtime (ValueError if there is none).");
  module.def(
      "_cuda_runtime", [] { return load_cuda_runtime(); },
      "Which libcudart the staged collectives use (ValueError if none loads).");
  module.def(
      "_staging_chunk_bytes",
      [](size_t bytes, size_t element_bytes) {
        return staging_chunk_bytes(bytes, element_bytes, staging_tunables());
      },
      nb::arg("bytes"), nb::arg("element_bytes"),
      "The chunk size a staged collective of `bytes` uses (COLLECTIVE_CUDA_CHUNK_*_BYTES).");
}

}  // namespace adaptrain::collective::python

// DLPack arrays in the bindings: where an array lives, and the collectives on
// arrays in CUDA memory.
//
// The in-place collectives (allreduce, broadcast) take any DLPack array
// (nb::ndarray<>): NumPy arrays, and torch or CuPy tensors through
// __dlpack__. Host memory (kDLCPU, and kDLCUDAHost: pinned memory the host
// can address) is reduced in place, exactly as before. CUDA memory (kDLCUDA)
// is staged through a pinned host buffer in chunks, pipelined with the
// collective (core/staging.h, core/cuda_runtime.h). Anything else is refused
// with a message that says where the array should be.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstddef>
#include <cstdint>

#include "communicator.h"
#include "core/types.h"

namespace adaptrain::collective::python {

namespace nb = nanobind;

// Any DLPack array; its device is checked with cuda_device_of.
using AnyArray = nb::ndarray<>;

// -1 for an array the host can address; the CUDA device index for a CUDA
// array. Throws InvalidArgumentError for other devices (and for CUDA managed
// memory, which the host may only touch once the device is idle).
int cuda_device_of(const AnyArray& array, const char* operation);

// The staged forms of Communicator::allreduce and ::broadcast for a buffer on
// CUDA device `device`. Call without the GIL. A CUDA failure closes the
// communicator (the peers are mid-collective) and raises CollectiveError.
void allreduce_cuda(Communicator& communicator, int device, void* data, size_t count,
                    DataType dtype, ReduceOp op, Algorithm algorithm, uint64_t shape_hash);
void broadcast_cuda(Communicator& communicator, int device, void* data, size_t count,
                    DataType dtype, int root, Algorithm algorithm, uint64_t shape_hash);

// Module functions: _cuda_stream(device) (loads the runtime; the stream a
// producer must order its work before, for __dlpack__(stream=...)),
// _cuda_runtime() (which libcudart), _staging_chunk_bytes(bytes, element_bytes).
void bind_dlpack(nb::module_& module);

}  // namespace adaptrain::collective::python

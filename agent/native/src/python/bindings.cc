// Python bindings: the private module agent.native._collective.
//
// Kept thin on purpose: argument checks that need numpy knowledge, output
// allocation and the public docstrings live in the typed facade
// (agent/native/__init__.py). This file converts arguments, checks them again
// (other callers may skip the facade, and nothing may crash or copy
// silently), releases the GIL around everything that may block, and maps the
// C++ error kinds to Python exceptions:
//   InvalidArgumentError -> ValueError
//   IoError              -> CollectiveError (subclass of OSError)
//   TimeoutError         -> CollectiveTimeout (TimeoutError and CollectiveError)
//   InterruptedError     -> whatever the signal handler raised (KeyboardInterrupt)
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <chrono>
#include <cmath>
#include <new>
#include <optional>

#include "auth/fabric_auth.h"
#include "auth/sha256.h"
#include "collectives/algorithm.h"
#include "collectives/protocol.h"
#include "collectives/segments.h"
#include "communicator.h"
#include "core/errors.h"
#include "core/types.h"
#include "python/dlpack.h"

namespace nb = nanobind;
using namespace nb::literals;
namespace col = adaptrain::collective;
using col::python::AnyArray;  // allreduce and broadcast: host or CUDA (python/dlpack.h)

namespace {

// Any CPU array; dtype, layout and writeability are checked here, with
// messages that say what to fix, rather than by nanobind's overload matching
// (which would report a TypeError and might copy a non-contiguous input).
using CpuArray = nb::ndarray<nb::device::cpu>;
// What a call only reads (publish): read-only arrays are fine.
using ReadOnlyCpuArray = nb::ndarray<nb::ro, nb::device::cpu>;

PyObject* collective_error = nullptr;
PyObject* collective_timeout = nullptr;

constexpr const char* kSupported = "float32, float64, float16, int32 or int64";

// Runs with the GIL released, on EINTR: lets Python signal handlers run, so
// Ctrl-C interrupts a blocked collective instead of waiting for the timeout.
void check_python_signals() {
  nb::gil_scoped_acquire acquire;
  if (PyErr_CheckSignals() != 0) throw col::InterruptedError("interrupted by a signal");
}

std::chrono::milliseconds to_milliseconds(double seconds) {
  if (!std::isfinite(seconds) || seconds <= 0 || seconds > 1e9) {
    throw col::InvalidArgumentError("timeout_s must be a positive number of seconds");
  }
  return std::chrono::milliseconds(static_cast<long long>(std::ceil(seconds * 1000.0)));
}

col::Algorithm algorithm_of(const std::string& name) {
  return name.empty() ? col::Algorithm::kDefault : col::parse_algorithm(name);
}

template <typename Array>
col::DataType data_type_of(const Array& array, const char* operation) {
  const nb::dlpack::dtype type = array.dtype();
  if (type.lanes == 1) {
    if (type.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Float)) {
      if (type.bits == 32) return col::DataType::kFloat32;
      if (type.bits == 64) return col::DataType::kFloat64;
      if (type.bits == 16) return col::DataType::kFloat16;
    } else if (type.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Int)) {
      if (type.bits == 32) return col::DataType::kInt32;
      if (type.bits == 64) return col::DataType::kInt64;
    }
  }
  throw col::InvalidArgumentError(std::string(operation) + " supports " + kSupported +
                                  " arrays: convert with x.astype(...)");
}

template <typename Array>
void check_c_contiguous(const Array& array, const char* operation) {
  if (array.size() == 0) return;  // strides of an empty array mean nothing
  int64_t expected = 1;           // stride in elements
  for (size_t i = array.ndim(); i-- > 0;) {
    if (array.shape(i) != 1 && array.stride(i) != expected) {
      throw col::InvalidArgumentError(
          std::string(operation) +
          " needs a C-contiguous array: pass numpy.ascontiguousarray(x) "
          "(a torch tensor: x.contiguous()) and use the returned array");
    }
    expected *= static_cast<int64_t>(array.shape(i));
  }
}

template <typename Array>
std::vector<size_t> shape_of(const Array& array) {
  std::vector<size_t> shape;
  for (size_t i = 0; i < array.ndim(); ++i) shape.push_back(array.shape(i));
  return shape;
}

// Checks an array the caller passes in and returns its element type.
template <typename Array>
col::DataType checked(const Array& array, const char* operation) {
  const col::DataType dtype = data_type_of(array, operation);
  check_c_contiguous(array, operation);
  return dtype;
}

}  // namespace

NB_MODULE(_collective, m) {
  m.doc() = "Private native module of agent.native; use the agent.native facade.";
  // Workers leave the interpreter with TensorFlow's objects still holding bound functions;
  // nanobind's exit-time leak report is noise for users, not a bug they can act on.
  nb::set_leak_warnings(false);

  // Created here rather than with nb::exception because CollectiveTimeout
  // needs two bases. The names make them pickle as agent.native.*.
  collective_error = PyErr_NewExceptionWithDoc(
      "agent.native.CollectiveError", "A peer failed, went away or disagreed about the collective.",
      PyExc_OSError, nullptr);
  PyObject* timeout_bases = PyTuple_Pack(2, PyExc_TimeoutError, collective_error);
  collective_timeout = PyErr_NewExceptionWithDoc("agent.native.CollectiveTimeout",
                                                 "Nothing moved within the communicator's timeout.",
                                                 timeout_bases, nullptr);
  Py_DECREF(timeout_bases);
  if (collective_error == nullptr || collective_timeout == nullptr) throw nb::python_error();
  m.attr("CollectiveError") = nb::handle(collective_error);
  m.attr("CollectiveTimeout") = nb::handle(collective_timeout);

  nb::register_exception_translator([](const std::exception_ptr& pointer, void*) {
    try {
      std::rethrow_exception(pointer);
    } catch (const col::InvalidArgumentError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const col::TimeoutError& e) {
      PyErr_SetString(collective_timeout, e.what());
    } catch (const col::IoError& e) {
      PyErr_SetString(collective_error, e.what());
    } catch (const col::InterruptedError& e) {
      if (!PyErr_Occurred()) PyErr_SetString(PyExc_KeyboardInterrupt, e.what());
    } catch (const col::Error& e) {
      PyErr_SetString(collective_error, e.what());
    }
  });

  col::python::bind_dlpack(m);

  m.def(
      "segment_rows",
      [](size_t rows, size_t parts, size_t index) {
        if (parts == 0 || index >= parts) {
          throw col::InvalidArgumentError("segment index out of range");
        }
        const col::RowRange range = col::segment_rows(rows, parts, index);
        return std::make_pair(range.first, range.rows);
      },
      "rows"_a, "parts"_a, "index"_a,
      "First row and row count of segment `index` (numpy.array_split's cut).");

  m.def(
      "_hmac_sha256",
      [](nb::bytes key, nb::bytes message) {
        col::HmacSha256 mac(key.c_str(), key.size());
        mac.update(message.c_str(), message.size());
        const col::Digest digest = mac.finish();
        return nb::bytes(reinterpret_cast<const char*>(digest.data()), digest.size());
      },
      "key"_a, "message"_a,
      "HMAC-SHA256 as the fabric handshake computes it (for tests against hashlib/hmac).");

  nb::class_<col::Communicator>(m, "Communicator")
      .def(
          "__init__",
          [](col::Communicator* self, int rank, std::vector<std::string> peers, double timeout_s,
             const std::string& algorithm, uint64_t cluster_version,
             std::optional<std::string> fabric_secret) {
            col::CommunicatorOptions options;
            options.rank = rank;
            options.cluster_version = cluster_version;
            options.secret = fabric_secret ? *fabric_secret : col::fabric_secret_from_environment();
            options.peers = std::move(peers);
            options.timeout = to_milliseconds(timeout_s);
            options.algorithm = col::parse_algorithm(algorithm);
            options.interrupt_check = check_python_signals;
            nb::gil_scoped_release release;
            new (self) col::Communicator(std::move(options));
          },
          "rank"_a, "peers"_a, "timeout_s"_a, "algorithm"_a = "auto", "cluster_version"_a = 0,
          "fabric_secret"_a = nb::none())
      .def_prop_ro("rank", &col::Communicator::rank)
      .def_prop_ro("size", &col::Communicator::size)
      .def_prop_ro("cluster_version", &col::Communicator::cluster_version)
      .def_prop_ro("timeout_s", &col::Communicator::timeout_seconds)
      .def_prop_ro("closed", &col::Communicator::closed)
      .def_prop_ro("links", [](const col::Communicator& self) { return self.link_kinds(); })
      .def_prop_ro("nodes", [](const col::Communicator& self) { return self.nodes(); })
      .def(
          "allreduce_algorithm",
          [](const col::Communicator& self, size_t count, size_t element_bytes,
             const std::string& algorithm) {
            return std::string(col::name_of(
                self.allreduce_algorithm(count, element_bytes, algorithm_of(algorithm))));
          },
          nb::arg("count"), nb::arg("element_bytes"), nb::arg("algorithm"))
      .def(
          "broadcast_algorithm",
          [](const col::Communicator& self, size_t count, size_t element_bytes,
             const std::string& algorithm) {
            return std::string(col::name_of(
                self.broadcast_algorithm(count, element_bytes, algorithm_of(algorithm))));
          },
          nb::arg("count"), nb::arg("element_bytes"), nb::arg("algorithm"))
      .def(
          "allgather_algorithm",
          [](const col::Communicator& self, size_t count, size_t element_bytes,
             const std::string& algorithm) {
            return std::string(col::name_of(
                self.allgather_algorithm(count, element_bytes, algorithm_of(algorithm))));
          },
          nb::arg("count"), nb::arg("element_bytes"), nb::arg("algorithm"))
      .def_prop_ro(
          "algorithm",
          [](const col::Communicator& self) { return std::string(col::name_of(self.algorithm())); })
      .def(
          "allreduce",
          [](col::Communicator& self, AnyArray array, const std::string& op,
             const std::string& algorithm) {
            const int cuda_device = col::python::cuda_device_of(array, "allreduce");
            const col::DataType dtype = checked(array, "allreduce");
            const col::ReduceOp reduce_op = col::parse_reduce_op(op);
            const col::Algorithm chosen = algorithm_of(algorithm);
            const uint64_t shape_hash = col::hash_shape(shape_of(array));
            void* data = array.data();
            const size_t count = array.size();
            nb::gil_scoped_release release;
            if (cuda_device >= 0) {
              col::python::allreduce_cuda(self, cuda_device, data, count, dtype, reduce_op, chosen,
                                          shape_hash);
              return;
            }
            self.allreduce(data, count, dtype, reduce_op, chosen, shape_hash);
          },
          "array"_a, "op"_a = "sum", "algorithm"_a = "")
      .def(
          "broadcast",
          [](col::Communicator& self, AnyArray array, int root, const std::string& algorithm) {
            const int cuda_device = col::python::cuda_device_of(array, "broadcast");
            const col::DataType dtype = checked(array, "broadcast");
            const col::Algorithm chosen = algorithm_of(algorithm);
            const uint64_t shape_hash = col::hash_shape(shape_of(array));
            void* data = array.data();
            const size_t count = array.size();
            nb::gil_scoped_release release;
            if (cuda_device >= 0) {
              col::python::broadcast_cuda(self, cuda_device, data, count, dtype, root, chosen,
                                          shape_hash);
              return;
            }
            self.broadcast(data, count, dtype, root, chosen, shape_hash);
          },
          "array"_a, "root"_a = 0, "algorithm"_a = "")
      .def(
          "allgather",
          [](col::Communicator& self, CpuArray input, CpuArray output,
             const std::string& algorithm) {
            const col::DataType dtype = checked(input, "allgather");
            if (checked(output, "allgather") != dtype ||
                output.size() != input.size() * static_cast<size_t>(self.size())) {
              throw col::InvalidArgumentError(
                  "allgather: the output must have size * input.size elements of the "
                  "input's dtype");
            }
            const col::Algorithm chosen = algorithm_of(algorithm);
            const uint64_t shape_hash = col::hash_shape(shape_of(input));
            const void* in = input.data();
            void* out = output.data();
            const size_t count = input.size();
            nb::gil_scoped_release release;
            self.allgather(in, count, dtype, out, chosen, shape_hash);
          },
          "input"_a, "output"_a, "algorithm"_a = "")
      .def(
          "reduce_scatter",
          [](col::Communicator& self, CpuArray input, CpuArray output, const std::string& op,
             const std::string& algorithm) {
            const col::DataType dtype = checked(input, "reduce_scatter");
            if (input.ndim() == 0) {
              throw col::InvalidArgumentError(
                  "reduce_scatter needs an array of at least 1 dimension");
            }
            const col::ReduceOp reduce_op = col::parse_reduce_op(op);
            const size_t rows = input.shape(0);
            const size_t row_elements = rows == 0 ? 0 : input.size() / rows;
            const col::RowRange own = col::segment_rows(rows, self.size(), self.rank());
            if (checked(output, "reduce_scatter") != dtype ||
                output.size() != own.rows * row_elements) {
              throw col::InvalidArgumentError(
                  "reduce_scatter: the output must hold this rank's segment (" +
                  std::to_string(own.rows * row_elements) + " elements of the input's dtype)");
            }
            const col::Algorithm chosen = algorithm_of(algorithm);
            const uint64_t shape_hash = col::hash_shape(shape_of(input));
            const void* in = input.data();
            void* out = output.data();
            nb::gil_scoped_release release;
            self.reduce_scatter(in, rows, row_elements, dtype, reduce_op, out, chosen, shape_hash);
          },
          "input"_a, "output"_a, "op"_a = "sum", "algorithm"_a = "")
      .def(
          "consensus",
          [](col::Communicator& self, nb::bytes data) {
            std::string copy(data.c_str(), data.size());
            nb::gil_scoped_release release;
            return self.consensus(copy.data(), copy.size());
          },
          "data"_a)
      .def(
          "set_algorithm",
          [](col::Communicator& self, const std::string& name) {
            const col::Algorithm algorithm = col::parse_algorithm(name);
            nb::gil_scoped_release release;
            self.set_algorithm(algorithm);
          },
          "name"_a)
      .def(
          "set_ring_order",
          [](col::Communicator& self, const std::vector<int>& order) {
            nb::gil_scoped_release release;
            self.set_ring_order(order);
          },
          "order"_a)
      .def_prop_ro("ring_order", [](const col::Communicator& self) { return self.ring_order(); })
      .def(
          "grouped_allreduce",
          [](col::Communicator& self, std::vector<CpuArray> arrays, const std::string& op,
             const std::string& algorithm) {
            const col::ReduceOp reduce_op = col::parse_reduce_op(op);
            const col::Algorithm chosen = algorithm_of(algorithm);
            std::vector<col::Buffer> buffers;
            buffers.reserve(arrays.size());
            for (CpuArray& array : arrays) {
              buffers.push_back(
                  col::Buffer{array.data(), array.size(), checked(array, "grouped_allreduce")});
            }
            nb::gil_scoped_release release;
            self.grouped_allreduce(buffers, reduce_op, chosen);
          },
          "arrays"_a, "op"_a = "sum", "algorithm"_a = "")
      .def(
          "publish",
          [](col::Communicator& self, const std::string& name, ReadOnlyCpuArray array) {
            const col::DataType dtype = checked(array, "publish");
            const void* data = array.data();
            const size_t count = array.size();
            nb::gil_scoped_release release;
            return self.publish(name, data, count, dtype);
          },
          "name"_a, "array"_a)
      .def(
          "request",
          [](col::Communicator& self, int peer, const std::string& name, CpuArray out,
             double timeout_s) {
            const col::DataType dtype = checked(out, "request");
            // 0: the communicator's timeout.
            const std::chrono::milliseconds timeout =
                timeout_s == 0 ? std::chrono::milliseconds(0) : to_milliseconds(timeout_s);
            void* data = out.data();
            const size_t count = out.size();
            nb::gil_scoped_release release;
            return self.request(peer, name, data, count, dtype, timeout);
          },
          "peer"_a, "name"_a, "out"_a, "timeout_s"_a = 0.0)
      .def("barrier", &col::Communicator::barrier, nb::call_guard<nb::gil_scoped_release>())
      .def("close", &col::Communicator::close, nb::call_guard<nb::gil_scoped_release>());
}

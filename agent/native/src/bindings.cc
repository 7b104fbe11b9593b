// Python bindings: the private module agent.native._collective.
//
// Kept thin on purpose: argument checks that need numpy knowledge and the
// public docstrings live in the typed facade (agent/native/__init__.py). This
// file converts arguments, releases the GIL around everything that may block,
// and maps the C++ error kinds to Python exceptions:
//   InvalidArgumentError -> ValueError
//   IoError              -> CollectiveError (subclass of OSError)
//   TimeoutError         -> CollectiveTimeout (TimeoutError and CollectiveError)
//   InterruptedError     -> whatever the signal handler raised (KeyboardInterrupt)
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <chrono>
#include <cmath>
#include <new>

#include "communicator.h"
#include "errors.h"
#include "types.h"

namespace nb = nanobind;
using namespace nb::literals;
namespace col = adaptrain::collective;

namespace {

// Any CPU array; dtype, layout and writeability are checked here, with
// messages that say what to fix, rather than by nanobind's overload matching
// (which would report a TypeError and might copy a non-contiguous input).
using CpuArray = nb::ndarray<nb::device::cpu>;

PyObject* collective_error = nullptr;
PyObject* collective_timeout = nullptr;

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

col::DataType data_type_of(const CpuArray& array) {
  if (array.dtype() == nb::dtype<float>()) return col::DataType::kFloat32;
  throw col::InvalidArgumentError("allreduce supports float32 arrays only: convert with x.astype(numpy.float32)");
}

void check_c_contiguous(const CpuArray& array) {
  if (array.size() == 0) return;  // strides of an empty array mean nothing
  int64_t expected = 1;           // stride in elements
  for (size_t i = array.ndim(); i-- > 0;) {
    if (array.shape(i) != 1 && array.stride(i) != expected) {
      throw col::InvalidArgumentError(
          "allreduce needs a C-contiguous array (it works in place): pass numpy.ascontiguousarray(x) "
          "and use the returned array");
    }
    expected *= static_cast<int64_t>(array.shape(i));
  }
}

}  // namespace

NB_MODULE(_collective, m) {
  m.doc() = "Private native module of agent.native; use the agent.native facade.";

  // Created here rather than with nb::exception because CollectiveTimeout
  // needs two bases. The names make them pickle as agent.native.*.
  collective_error =
      PyErr_NewExceptionWithDoc("agent.native.CollectiveError",
                                "A peer failed, went away or disagreed about the collective.", PyExc_OSError, nullptr);
  PyObject* timeout_bases = PyTuple_Pack(2, PyExc_TimeoutError, collective_error);
  collective_timeout = PyErr_NewExceptionWithDoc(
      "agent.native.CollectiveTimeout", "Nothing moved within the communicator's timeout.", timeout_bases, nullptr);
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

  nb::class_<col::Communicator>(m, "Communicator")
      .def(
          "__init__",
          [](col::Communicator* self, int rank, std::vector<std::string> peers, double timeout_s) {
            col::CommunicatorOptions options;
            options.rank = rank;
            options.peers = std::move(peers);
            options.timeout = to_milliseconds(timeout_s);
            options.interrupt_check = check_python_signals;
            nb::gil_scoped_release release;
            new (self) col::Communicator(std::move(options));
          },
          "rank"_a, "peers"_a, "timeout_s"_a)
      .def_prop_ro("rank", &col::Communicator::rank)
      .def_prop_ro("size", &col::Communicator::size)
      .def_prop_ro("timeout_s", &col::Communicator::timeout_seconds)
      .def_prop_ro("closed", &col::Communicator::closed)
      .def(
          "allreduce",
          [](col::Communicator& self, CpuArray array, const std::string& op) {
            const col::DataType dtype = data_type_of(array);
            check_c_contiguous(array);
            const col::ReduceOp reduce_op = col::parse_reduce_op(op);
            void* data = array.data();
            const size_t count = array.size();
            nb::gil_scoped_release release;
            self.allreduce(data, count, dtype, reduce_op);
          },
          "array"_a, "op"_a = "sum")
      .def("barrier", &col::Communicator::barrier, nb::call_guard<nb::gil_scoped_release>())
      .def("close", &col::Communicator::close, nb::call_guard<nb::gil_scoped_release>());
}

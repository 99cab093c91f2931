// spaattn._C: the Python extension over the spaattn library. It only converts arguments and
// forwards to the C++ API; memory for outputs, masks and workspaces is allocated on the Python
// side through the caller's framework and passed in. spaattn::Error becomes ValueError (invalid
// argument) or RuntimeError (runtime failure) with the library's message.
#include <nanobind/nanobind.h>

#include "bindings.hpp"
#include "spaattn/error.hpp"

namespace nb = nanobind;

NB_MODULE(_C, m) {
  m.doc() = "spaattn's C++ core (private: use the spaattn package)";
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const spaattn::Error& e) {
      PyErr_SetString(e.kind() == spaattn::Error::Kind::invalid_argument ? PyExc_ValueError
                                                                         : PyExc_RuntimeError,
                      e.what());
    }
  });
  spaattn::python::bind_attention(m);
  spaattn::python::bind_method(m);
  spaattn::python::bind_orders(m);
}

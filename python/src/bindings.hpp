// The parts of the spaattn._C module, one file each.
#pragma once
#include <nanobind/nanobind.h>

namespace spaattn::python {

void bind_attention(nanobind::module_& m);  // block-sparse attention, dense -> CSR masks
void bind_method(nanobind::module_& m);     // SparseAttention: a whole call with its state
void bind_orders(nanobind::module_& m);     // token orders and the block neighbour map

}  // namespace spaattn::python

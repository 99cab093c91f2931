// SparseAttention (method.hpp): the configured method with its state across denoising steps.
// On CUDA tensors its workspace and per-layer state come from Python callables (torch's
// caching allocator), called with the GIL held; calls on one object are serialised.
#include <nanobind/stl/array.h>
#include <nanobind/stl/function.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "bindings.hpp"
#include "views.hpp"

namespace spaattn::python {
namespace {

using AllocateFn = std::function<uintptr_t(size_t bytes, uintptr_t stream)>;
using ReleaseFn = std::function<void(uintptr_t ptr, size_t bytes, uintptr_t stream)>;

// The C++ object. Its calls are serialised by SparseAttention's own mutex, taken after the GIL
// is released here, so a memory callback (which takes the GIL) cannot deadlock.
struct Attention {
  explicit Attention(SparseAttention&& attention) : impl(std::move(attention)) {}
  SparseAttention impl;
};

DeviceMemory make_memory(std::optional<AllocateFn> allocate, std::optional<ReleaseFn> release) {
  DeviceMemory memory;
  if (allocate)
    memory.allocate = [f = std::move(*allocate)](size_t bytes, void* stream) {
      return reinterpret_cast<void*>(f(bytes, reinterpret_cast<uintptr_t>(stream)));
    };
  if (release)
    memory.release = [f = std::move(*release)](void* ptr, size_t bytes, void* stream) {
      f(reinterpret_cast<uintptr_t>(ptr), bytes, reinterpret_cast<uintptr_t>(stream));
    };
  return memory;
}

void init(Attention* self, const std::string& method, double sparsity, double p, int block_size,
          const std::string& order, std::optional<std::array<int64_t, 3>> grid,
          const std::string& axes, std::array<int64_t, 3> tile, const std::string& selector,
          bool neighbours, int64_t first_frame_blocks, bool gapr, int dense_steps,
          std::vector<int> dense_layers, int mask_period, int ref_period, float drift, bool clamp,
          bool cache_delta, float scale, bool measure_density, const std::string& kernel,
          const std::string& precision, std::optional<AllocateFn> allocate,
          std::optional<ReleaseFn> release) {
  Config c;
  c.method = parse_method(method, "method");
  c.block_size = block_size;
  c.order.kind = parse_order(order);
  if (grid) c.order.grid = Grid{(*grid)[0], (*grid)[1], (*grid)[2]};
  c.order.axes = parse_axes(axes);
  c.order.tile = tile;
  c.select.selector = parse_selector(selector);
  c.select.sparsity = sparsity;
  c.select.p = p;
  c.select.neighbours = neighbours;
  c.select.first_frame_blocks = first_frame_blocks;
  c.gapr = gapr;
  c.rettention.ref_period = ref_period;
  c.rettention.drift = drift;
  c.rettention.clamp = clamp;
  c.rettention.cache_delta = cache_delta;
  c.schedule.dense_steps = dense_steps;
  c.schedule.dense_layers = std::move(dense_layers);
  c.schedule.mask_period = mask_period;
  c.scale = scale;
  c.measure_density = measure_density;
  c.kernel = parse_kernel_family(kernel, "kernel");
  c.precision = parse_precision(precision, "precision");
  // A given grid is checked whatever its value: the core reads (0, 0, 0) as no grid, which is
  // not what a caller who passed one meant (None is no grid).
  if (grid) spaattn::validate(c.order);
  // Invalid options throw here, before the Python callables are wrapped; the object is built
  // step by step so that no temporary holding them is alive while a constructor may throw.
  c.validate();
  DeviceMemory memory = make_memory(std::move(allocate), std::move(release));
  SparseAttention attention(std::move(c), std::move(memory));
  new (self) Attention(std::move(attention));
}

// Returns (kind, density, mask_reused) of the call.
std::tuple<std::string, double, bool> forward(Attention& self, const In& q, const In& k,
                                              const In& v, const Out& out,
                                              const std::optional<In>& text_lengths,
                                              const std::optional<In>& text_lengths_host,
                                              int layer, int entry, int step, int64_t num_text,
                                              const std::string& text_placement,
                                              uintptr_t stream) {
  // The call's scale stays unset (0): forward applies config.scale.
  const AttentionArgs args =
      make_args(q, k, v, text_lengths, text_lengths_host, num_text, text_placement,
                self.impl.config().block_size, 0.f);
  const TensorView o = to_view(out, "out");
  CallStats stats;
  {
    nb::gil_scoped_release release;
    stats = self.impl.forward(CallInfo{.layer = layer, .entry = entry, .step = step}, args, o,
                              to_stream(stream));
  }
  static constexpr const char* kKinds[] = {"dense", "sparse", "reference"};
  return {kKinds[static_cast<int>(stats.kind)], stats.density, stats.mask_reused};
}

// forward()'s checks from the arguments' metadata (SparseAttention::check); `out` is the output
// forward would write.
void check(const Attention& self, const Meta& q, const Meta& k, const Meta& v, const Meta& out,
           const std::optional<Meta>& text_lengths, int layer, int entry, int step,
           int64_t num_text, const std::string& text_placement) {
  std::vector<int32_t> zeros;
  const AttentionArgs args = meta_args(q, k, v, text_lengths, zeros, num_text, text_placement,
                                       self.impl.config().block_size);
  self.impl.check(CallInfo{.layer = layer, .entry = entry, .step = step}, args,
                  meta_view(out, "out"));
}

// Method::calibrated's measurements of (layer, entry)'s last reference step, or None:
// (ref_step, interval, batch, heads, drift per (b, h), errors at distance 0 and at distance
// interval per (b, h, candidate)).
using CalibrationTuple = std::tuple<int, int, int64_t, int64_t, std::vector<float>,
                                    std::vector<double>, std::vector<double>>;
std::optional<CalibrationTuple> calibration(const Attention& self, int layer, int entry) {
  std::optional<Calibration> cal;
  {
    nb::gil_scoped_release release;
    cal = self.impl.calibration(layer, entry);
  }
  if (!cal) return std::nullopt;
  return CalibrationTuple{cal->ref_step,          cal->interval,
                          cal->batch,             cal->heads,
                          std::move(cal->drift),  std::move(cal->error_ref),
                          std::move(cal->error_then)};
}

// The candidate Calibration::choice picks for one (b, h) at `distance`, and the error it expects
// of each candidate there (NaN where not measured), from that (b, h)'s errors.
std::tuple<std::string, std::vector<double>> calibrated_choice(std::vector<double> error_ref,
                                                               std::vector<double> error_then,
                                                               int interval, int distance) {
  Calibration cal;
  cal.batch = cal.heads = 1;
  cal.interval = interval;
  cal.error_ref = std::move(error_ref);
  cal.error_then = std::move(error_then);
  std::vector<double> expected(kCandidates);
  const Candidate choice = cal.choice(0, distance);
  for (int c = 0; c < kCandidates; ++c) expected[c] = cal.expected(0, Candidate(c), distance);
  return {to_string(choice), expected};
}

void reset(Attention& self) {
  nb::gil_scoped_release release;
  self.impl.reset();
}

}  // namespace

void bind_method(nb::module_& m) {
  using namespace nb::literals;
  nb::class_<Attention>(m, "SparseAttention")
      .def("__init__", &init, nb::kw_only(), "method"_a, "sparsity"_a, "p"_a, "block_size"_a,
           "order"_a, "grid"_a.none(), "axes"_a, "tile"_a, "selector"_a, "neighbours"_a,
           "first_frame_blocks"_a, "gapr"_a, "dense_steps"_a, "dense_layers"_a,
           "mask_period"_a, "ref_period"_a, "drift"_a, "clamp"_a, "cache_delta"_a, "scale"_a,
           "measure_density"_a, "kernel"_a, "precision"_a, "allocate"_a.none(),
           "release"_a.none())
      .def("forward", &forward, "q"_a, "k"_a, "v"_a, "out"_a, "text_lengths"_a.none(),
           "text_lengths_host"_a.none(), "layer"_a, "entry"_a, "step"_a, "num_text"_a,
           "text_placement"_a, "stream"_a)
      .def("check", &check, "q"_a, "k"_a, "v"_a, "out"_a, "text_lengths"_a.none(), "layer"_a,
           "entry"_a, "step"_a, "num_text"_a, "text_placement"_a)
      .def("reset", &reset)
      .def("calibration", &calibration, "layer"_a, "entry"_a)
      .def_prop_ro("state_count",
                   [](Attention& self) {
                     nb::gil_scoped_release release;
                     return self.impl.state_count();
                   })
      .def_prop_ro("selector",
                   [](const Attention& self) { return to_string(self.impl.config().selector()); });
  m.def("calibrated_choice", &calibrated_choice, "error_ref"_a, "error_then"_a, "interval"_a,
        "distance"_a);
}

}  // namespace spaattn::python

// Method names and the validation of Config.
#include "spaattn/config.hpp"

#include <cmath>
#include <string>

#include "spaattn/error.hpp"

namespace spaattn {

const char* to_string(Method m) {
  switch (m) {
    case Method::dense: return "dense";
    case Method::sparse: return "sparse";
    case Method::rectified: return "rectified";
    case Method::rettention: return "rettention";
    case Method::rectified_rettention: return "rectified_rettention";
    case Method::calibrated: return "calibrated";
  }
  return "unknown";
}

Method parse_method(std::string_view name, const char* arg) {
  for (Method m : {Method::dense, Method::sparse, Method::rectified, Method::rettention,
                   Method::rectified_rettention, Method::calibrated})
    if (name == to_string(m)) return m;
  throw Error(Error::Kind::invalid_argument,
              detail::concat(arg, ": expected one of dense, sparse, rectified, rettention, "
                                  "rectified_rettention, calibrated, got '", std::string(name),
                             "'"));
}

const char* to_string(Precision p) {
  switch (p) {
    case Precision::input: return "input";
    case Precision::fp8: return "fp8";
  }
  return "unknown";
}

Precision parse_precision(std::string_view name, const char* arg) {
  for (Precision p : {Precision::input, Precision::fp8})
    if (name == to_string(p)) return p;
  throw Error(Error::Kind::invalid_argument,
              detail::concat(arg, ": expected input or fp8, got '", std::string(name), "'"));
}

const char* to_string(Selector s) {
  switch (s) {
    case Selector::automatic: return "automatic";
    case Selector::ipar: return "ipar";
    case Selector::band: return "band";
    case Selector::local: return "local";
  }
  return "unknown";
}

Selector Config::selector() const {
  if (select.selector != Selector::automatic) return select.selector;
  return method == Method::rettention ? Selector::band : Selector::ipar;
}

void Config::validate() const {
  SPAATTN_CHECK_ARG(method <= Method::calibrated, "config.method",
                    "expected dense, sparse, rectified, rettention, rectified_rettention or "
                    "calibrated, got ",
                    static_cast<int>(method));
  SPAATTN_CHECK_ARG(select.selector <= Selector::local, "config.select.selector",
                    "expected automatic, ipar, band or local, got ",
                    static_cast<int>(select.selector));
  SPAATTN_CHECK_ARG(order.kind <= OrderKind::tiles, "config.order.kind",
                    "expected raster, gilbert or tiles, got ", static_cast<int>(order.kind));
  SPAATTN_CHECK_ARG(block_size == 64 || block_size == 128, "config.block_size",
                    "expected 64 or 128, got ", block_size);
  SPAATTN_CHECK_ARG(kernel <= KernelFamily::hopper, "config.kernel",
                    "expected automatic, portable or hopper, got ", static_cast<int>(kernel));
  SPAATTN_CHECK_ARG(precision <= Precision::fp8, "config.precision",
                    "expected input or fp8, got ", static_cast<int>(precision));
  SPAATTN_CHECK_ARG(precision != Precision::fp8 || block_size == 128, "config.precision",
                    "fp8 needs block_size 128, got ", block_size);
  SPAATTN_CHECK_ARG(precision != Precision::fp8 || kernel != KernelFamily::portable,
                    "config.precision", "fp8 runs on the hopper kernel family, and config.kernel "
                    "is portable");
  SPAATTN_CHECK_ARG(select.sparsity >= 0.0 && select.sparsity < 1.0, "config.select.sparsity",
                    "expected 0 <= sparsity < 1, got ", select.sparsity);
  SPAATTN_CHECK_ARG(select.p >= 0.0 && select.p <= 1.0, "config.select.p",
                    "expected 0 <= p <= 1, got ", select.p);
  SPAATTN_CHECK_ARG(select.first_frame_blocks >= 0, "config.select.first_frame_blocks",
                    "expected >= 0, got ", select.first_frame_blocks);
  SPAATTN_CHECK_ARG(rettention.ref_period >= 1, "config.rettention.ref_period",
                    "expected >= 1, got ", rettention.ref_period);
  SPAATTN_CHECK_ARG(std::isfinite(rettention.drift), "config.rettention.drift",
                    "expected a finite value, got ", rettention.drift);
  // calibrated's Re-ttention candidate is rho' O_spa + Delta: it cannot do without Delta.
  SPAATTN_CHECK_ARG(method != Method::calibrated || rettention.cache_delta,
                    "config.rettention.cache_delta",
                    "expected true for calibrated (its Re-ttention candidate adds Delta), got "
                    "false");
  SPAATTN_CHECK_ARG(schedule.dense_steps >= 0, "config.schedule.dense_steps",
                    "expected >= 0, got ", schedule.dense_steps);
  SPAATTN_CHECK_ARG(schedule.mask_period >= 1, "config.schedule.mask_period",
                    "expected >= 1, got ", schedule.mask_period);
  SPAATTN_CHECK_ARG(std::isfinite(scale) && scale >= 0.f, "config.scale",
                    "expected a finite value > 0 (or 0 for 1/sqrt(d)), got ", scale);
  if (order.kind != OrderKind::raster || !order.grid.empty()) spaattn::validate(order);
  SPAATTN_CHECK_ARG(selector() != Selector::local || !order.grid.empty(), "config.select.selector",
                    "expected a grid (config.order.grid) for the local selector, got none");
}

}  // namespace spaattn

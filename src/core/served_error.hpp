// The expected error of a calibrated candidate over the sparse steps its choice serves
// (docs/methods.md, Calibrated correction), shared by the host (spaattn::served_error) and the
// GPU's calibration pass (src/cuda/plan/calibrate.cu), so that both choose by the same numbers.
#pragma once
#include <math.h>

#ifdef __CUDACC__
#define SPAATTN_HOST_DEVICE __host__ __device__
#else
#define SPAATTN_HOST_DEVICE
#endif

namespace spaattn::detail {

// Squared errors e0 (distance 0) and ek (distance k); the norm is interpolated linearly between
// them (a at 0, b at k) and its square averaged over the distances 1 .. k - 1, in closed form:
//   1/(k - 1) sum_{d=1}^{k-1} (a + (b - a) d / k)^2 = a b + (b - a)^2 (2k - 1) / (6k)
// (ek itself when k < 2), so the cost does not grow with k.
SPAATTN_HOST_DEVICE inline double served_error_of(double e0, double ek, int k) {
  const double a = sqrt(e0 > 0.0 ? e0 : 0.0), b = sqrt(ek > 0.0 ? ek : 0.0);
  if (k < 2) return b * b;
  const double kk = k;
  return a * b + (b - a) * (b - a) * (2.0 * kk - 1.0) / (6.0 * kk);
}

}  // namespace spaattn::detail

// The error Method::calibrated expects of a candidate at a sparse step, and the choice that
// follows (docs/methods.md, Calibrated correction), shared by the host (Calibration, the CPU
// path) and the GPU's choice kernel (src/cuda/plan/calibrate.cu), so that both choose by the
// same numbers.
#pragma once
#include <math.h>

#include "spaattn/method.hpp"

#ifdef __CUDACC__
#define SPAATTN_HOST_DEVICE __host__ __device__
#else
#define SPAATTN_HOST_DEVICE
#endif

namespace spaattn::detail {

// Whether a candidate's errors at both distances were measured and are finite (an overflow
// leaves an infinite error: such a candidate is never chosen).
SPAATTN_HOST_DEVICE inline bool measured(double e0, double ek) {
  return e0 >= 0.0 && ek >= 0.0 && !isinf(e0) && !isinf(ek);
}

// Squared errors e0 at distance 0 and ek at distance k >= 1 from a reference step; the norm is
// taken as linear in the distance through sqrt(e0) and sqrt(ek), extrapolated past k and never
// below 0, and its square returned at distance d. An infinite error (an overflow) stays
// infinite. The device rounds each operation as the host does (no fused multiply-add), so that
// both choose alike on near-ties.
SPAATTN_HOST_DEVICE inline double expected_error_at(double e0, double ek, int k, int d) {
  if (isinf(e0) || isinf(ek)) return INFINITY;
  const double a = sqrt(e0 > 0.0 ? e0 : 0.0), b = sqrt(ek > 0.0 ? ek : 0.0);
  const double t = static_cast<double>(d) / static_cast<double>(k);
#ifdef __CUDA_ARCH__
  double n = __dadd_rn(a, __dmul_rn(__dsub_rn(b, a), t));
  n = n > 0.0 ? n : 0.0;
  return __dmul_rn(n, n);
#else
  double n = a + (b - a) * t;
  n = n > 0.0 ? n : 0.0;
  return n * n;
#endif
}

// The candidate a sparse step at distance d >= 1 applies, from the errors of one (b, h) at
// distances 0 (e0) and k (ek), kCandidates each: the least expected error, the lower index
// on a tie (so "none" wins every tie), candidates whose errors are not numbers or infinite
// skipped ("none" when every one is). Without a previous reference step (k < 1) nothing was
// measured at a distance: Re-ttention's correction.
SPAATTN_HOST_DEVICE inline int choose_at(const double* e0, const double* ek, int k, int d) {
  if (k < 1) return static_cast<int>(Candidate::rettention);
  double best = INFINITY;
  int choice = 0;
  for (int c = 0; c < kCandidates; ++c) {
    if (!measured(e0[c], ek[c])) continue;
    const double e = expected_error_at(e0[c], ek[c], k, d);
    if (e < best) {
      best = e;
      choice = c;
    }
  }
  return choice;
}

}  // namespace spaattn::detail

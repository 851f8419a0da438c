// Inline maths shared by vit-exp's CPU kernels (cpu_kernels.cc, onednn_kernels.cc): no libm calls,
// so the loops around them vectorise.
#pragma once

#include <cstdint>

namespace {

// exp(x) by range reduction to [-ln2/2, ln2/2] and a degree-6 polynomial (relative error ~2e-7),
// with no libm call so that the loops around it vectorise.
inline float exp_approx(float x) {
  x = x < -87.f ? -87.f : (x > 88.f ? 88.f : x);
  const int32_t n = static_cast<int32_t>(x * 1.44269504088896341f + 128.5f) - 128;  // floor(x/ln2 + 0.5)
  const float nf = static_cast<float>(n);
  const float r = x - nf * 0.693359375f - nf * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  return p * __builtin_bit_cast(float, (n + 127) << 23);
}

}  // namespace

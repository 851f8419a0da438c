// Inline maths shared by vit-exp's CPU kernels (cpu_kernels.cc, onednn_kernels.cc): exp, erf, tanh
// and GELU with no libm calls, so the loops around them vectorise.
#pragma once

#include <algorithm>
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

// float32 -> bfloat16, round to nearest even; NaN stays a (quiet) NaN, +-inf stays +-inf.
inline uint16_t to_bf16(float value) {
  const uint32_t bits = __builtin_bit_cast(uint32_t, value);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const bool nan = (bits & 0x7fffffffu) > 0x7f800000u;
  return static_cast<uint16_t>(nan ? ((bits >> 16) | 0x40u) : rounded);
}

constexpr float kSqrtHalf = 0.70710678118654752f;  // 1 / sqrt(2)
constexpr float kInvSqrt2Pi = 0.39894228040143268f;  // 1 / sqrt(2 pi)
constexpr float kSqrt2OverPi = 0.79788456080286536f;  // sqrt(2 / pi)
constexpr float kTanhCoef = 0.044715f;

// erf(x) as a rational function of x (odd numerator, even denominator) on [-4, 4], where float
// erf saturates; max abs error ~1e-7. Only multiply-adds and one divide, so loops vectorise.
inline float erf_approx(float a) {
  const float x = std::min(std::max(a, -4.f), 4.f);
  const float x2 = x * x;
  float p = x2 * -2.72614225801306e-10f + 2.77068142495902e-08f;
  p = x2 * p + -2.10102402082508e-06f;
  p = x2 * p + -5.69250639462346e-05f;
  p = x2 * p + -7.34990630326855e-04f;
  p = x2 * p + -2.95459980854025e-03f;
  p = x2 * p + -1.60960333262415e-02f;
  p = x * p;
  float q = x2 * -1.45660718464996e-05f + -2.13374055278905e-04f;
  q = x2 * q + -1.68282697438203e-03f;
  q = x2 * q + -7.37332916720468e-03f;
  q = x2 * q + -1.42647390514189e-02f;
  return p / q;
}

inline float tanh_approx(float u) {
  return 1.f - 2.f / (exp_approx(2.f * u) + 1.f);
}

inline float gelu_erf(float v) { return v * (0.5f + 0.5f * erf_approx(v * kSqrtHalf)); }

// Phi(x) + x * phi(x)
inline float gelu_erf_derivative(float v) {
  return 0.5f + 0.5f * erf_approx(v * kSqrtHalf) + v * exp_approx(-0.5f * v * v) * kInvSqrt2Pi;
}

// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
inline float gelu_tanh(float v) {
  return 0.5f * v * (1.f + tanh_approx(kSqrt2OverPi * (v + kTanhCoef * v * v * v)));
}

inline float gelu_tanh_derivative(float v) {
  const float v2 = v * v;
  const float t = tanh_approx(kSqrt2OverPi * (v + kTanhCoef * v2 * v));
  return 0.5f * (1.f + t) + 0.5f * v * (1.f - t * t) * kSqrt2OverPi * (1.f + 3.f * kTanhCoef * v2);
}

}  // namespace

// Fused CPU kernels for the ViT, loaded as MindSpore "aot" Custom operators (models/kernels/ops.py).
//
// MindSpore's CPU backend runs GELU and LayerNorm (and their gradients) as chains of element-wise
// kernels, each a full pass over memory; these do each in one pass, vectorised and split over
// threads. Every function has MindSpore's aot signature:
//   int f(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
//         void *stream, void *extra)
// with the inputs first, then the outputs, all float32 and contiguous.
// Built with: g++ -O3 -march=native -fno-trapping-math -fopenmp-simd -shared -fPIC -pthread.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "kernel_math.h"
#include "thread_pool.h"

namespace {

int64_t numel(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

constexpr int64_t kElementChunk = 32768;

// y = f(x) element-wise; params: x, y.
template <typename F>
int map_unary(void **params, int *ndims, int64_t **shapes, F f) {
  const float *__restrict x = static_cast<const float *>(params[0]);
  float *__restrict y = static_cast<float *>(params[1]);
  parallel_chunks(numel(ndims[0], shapes[0]), kElementChunk, [=](int64_t b, int64_t e, int64_t) {
#pragma omp simd
    for (int64_t i = b; i < e; ++i) y[i] = f(x[i]);
  });
  return 0;
}

// dx = dy * f'(x) element-wise; params: x, dy, dx.
template <typename DF>
int map_gradient(void **params, int *ndims, int64_t **shapes, DF derivative) {
  const float *__restrict x = static_cast<const float *>(params[0]);
  const float *__restrict dy = static_cast<const float *>(params[1]);
  float *__restrict dx = static_cast<float *>(params[2]);
  parallel_chunks(numel(ndims[0], shapes[0]), kElementChunk, [=](int64_t b, int64_t e, int64_t) {
#pragma omp simd
    for (int64_t i = b; i < e; ++i) dx[i] = dy[i] * derivative(x[i]);
  });
  return 0;
}

// Mean and 1/sqrt(variance + eps) of one row of d values (two passes, for accuracy).
inline void row_stats(const float *__restrict xr, int64_t d, float eps, float *mean, float *rstd) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < d; ++i) sum += xr[i];
  const float m = sum / static_cast<float>(d);
  float sq = 0.f;
#pragma omp simd reduction(+ : sq)
  for (int64_t i = 0; i < d; ++i) sq += (xr[i] - m) * (xr[i] - m);
  *mean = m;
  *rstd = 1.f / std::sqrt(sq / static_cast<float>(d) + eps);
}

// LayerNorm over the last axis: inputs x (rows, d), gamma (d), beta (d), eps (1); output y
// (float32, or bfloat16 rounded to nearest even for a bf16 dense kernel to read as it is).
template <typename Out>
int layer_norm_forward(void **params, int *ndims, int64_t **shapes) {
  const float *__restrict x = static_cast<const float *>(params[0]);
  const float *__restrict gamma = static_cast<const float *>(params[1]);
  const float *__restrict beta = static_cast<const float *>(params[2]);
  const float eps = *static_cast<const float *>(params[3]);
  Out *__restrict y = static_cast<Out *>(params[4]);
  const int64_t d = shapes[0][ndims[0] - 1];
  const int64_t rows = numel(ndims[0], shapes[0]) / d;
  parallel_chunks(rows, std::max<int64_t>(1, kElementChunk / d), [=](int64_t b, int64_t e, int64_t) {
    for (int64_t r = b; r < e; ++r) {
      const float *xr = x + r * d;
      Out *yr = y + r * d;
      float mean, rstd;
      row_stats(xr, d, eps, &mean, &rstd);
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) {
        const float v = (xr[i] - mean) * rstd * gamma[i] + beta[i];
        if constexpr (std::is_same_v<Out, float>) {
          yr[i] = v;
        } else {
          yr[i] = to_bf16(v);
        }
      }
    }
  });
  return 0;
}

}  // namespace

extern "C" {

int GeluErfForward(int, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  return map_unary(params, ndims, shapes, [](float v) { return gelu_erf(v); });
}

int GeluErfBackward(int, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  return map_gradient(params, ndims, shapes, [](float v) { return gelu_erf_derivative(v); });
}

int GeluTanhForward(int, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  return map_unary(params, ndims, shapes, [](float v) { return gelu_tanh(v); });
}

int GeluTanhBackward(int, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  return map_gradient(params, ndims, shapes, [](float v) { return gelu_tanh_derivative(v); });
}

int LayerNormForward(int, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  return layer_norm_forward<float>(params, ndims, shapes);
}

// The same with a bfloat16 y (inference in bf16: only bf16 dense kernels read it).
int LayerNormForwardBf16(int, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  return layer_norm_forward<uint16_t>(params, ndims, shapes);
}

// LayerNorm gradient: inputs x (rows, d), dy (rows, d), gamma (d), eps (1);
// outputs dx (rows, d), dgamma (d), dbeta (d). Row statistics are recomputed from x.
int LayerNormBackward(int, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  const float *__restrict x = static_cast<const float *>(params[0]);
  const float *__restrict dy = static_cast<const float *>(params[1]);
  const float *__restrict gamma = static_cast<const float *>(params[2]);
  const float eps = *static_cast<const float *>(params[3]);
  float *__restrict dx = static_cast<float *>(params[4]);
  float *__restrict dgamma = static_cast<float *>(params[5]);
  float *__restrict dbeta = static_cast<float *>(params[6]);
  const int64_t d = shapes[0][ndims[0] - 1];
  const int64_t rows = numel(ndims[0], shapes[0]) / d;
  const float inv_d = 1.f / static_cast<float>(d);
  const int64_t min_rows = std::max<int64_t>(1, kElementChunk / d);
  // Per-thread partial sums for dgamma / dbeta (at most 16 threads), combined at the end.
  std::vector<float> partial(static_cast<size_t>(16) * 2 * d, 0.f);
  float *parts = partial.data();
  parallel_chunks(rows, min_rows, [=](int64_t b, int64_t e, int64_t chunk) {
    float *pg = parts + chunk * 2 * d;
    float *pb = pg + d;
    for (int64_t r = b; r < e; ++r) {
      const float *xr = x + r * d;
      const float *dyr = dy + r * d;
      float *dxr = dx + r * d;
      float mean, rstd;
      row_stats(xr, d, eps, &mean, &rstd);
      float m1 = 0.f, m2 = 0.f;
#pragma omp simd reduction(+ : m1, m2)
      for (int64_t i = 0; i < d; ++i) {
        const float xhat = (xr[i] - mean) * rstd;
        const float g = dyr[i] * gamma[i];
        m1 += g;
        m2 += g * xhat;
        pg[i] += dyr[i] * xhat;
        pb[i] += dyr[i];
      }
      m1 *= inv_d;
      m2 *= inv_d;
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) {
        const float xhat = (xr[i] - mean) * rstd;
        dxr[i] = rstd * (dyr[i] * gamma[i] - m1 - xhat * m2);
      }
    }
  });
  for (int64_t i = 0; i < d; ++i) {
    float g = 0.f, s = 0.f;
    for (int64_t c = 0; c < 16; ++c) {
      g += parts[c * 2 * d + i];
      s += parts[c * 2 * d + d + i];
    }
    dgamma[i] = g;
    dbeta[i] = s;
  }
  return 0;
}

}  // extern "C"

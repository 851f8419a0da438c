// bf16 matrix multiplies for the ViT's dense layers, as MindSpore "aot" Custom operators
// (vit_exp/models/bf16.py). MindSpore 2.10's CPU MatMul refuses bfloat16, so these call oneDNN's
// bf16 GEMM (libdnnl.so.3, shipped inside the MindSpore wheel) directly.
//
// Mixed precision as PyTorch's CPU autocast does it, with fp32 outputs: the tensors MindSpore sees
// stay float32 (weights, activations, gradients, optimizer state); each kernel rounds its matrix
// inputs to bfloat16 (round to nearest even, NaN kept NaN), multiplies with float32 accumulation and
// writes float32. Bias gradients are float32 sums of the float32 output gradient.
//
// aot signature: int f(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
//                      void *stream, void *extra), inputs first, then outputs, contiguous float32.
// Built with: g++ -O3 -march=native ... -shared -fPIC -pthread <mindspore/lib>/libdnnl.so.3

#include <sched.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

extern "C" int dnnl_gemm_bf16bf16f32(char transa, char transb, int64_t M, int64_t N, int64_t K,
                                     float alpha, const uint16_t *A, int64_t lda, const uint16_t *B,
                                     int64_t ldb, float beta, float *C, int64_t ldc);

namespace {

int usable_cpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

int thread_count() {
  static const int cpus = std::min(usable_cpus(), 16);
  return cpus;
}

// Run body(begin, end) over [0, n) in contiguous chunks of at least min_chunk, one per thread.
template <typename Body>
void parallel_for(int64_t n, int64_t min_chunk, Body body) {
  const int64_t chunks = std::min<int64_t>(thread_count(), std::max<int64_t>(1, n / min_chunk));
  if (chunks <= 1) {
    body(0, n);
    return;
  }
  const int64_t step = (n + chunks - 1) / chunks;
  std::vector<std::thread> workers;
  workers.reserve(chunks - 1);
  for (int64_t c = 1; c < chunks; ++c) {
    const int64_t begin = c * step;
    const int64_t end = std::min(n, begin + step);
    if (begin < end) workers.emplace_back(body, begin, end);
  }
  body(0, std::min(n, step));
  for (auto &w : workers) w.join();
}

// float32 -> bfloat16, round to nearest even; NaN stays a (quiet) NaN, +-inf stays +-inf.
inline uint16_t to_bf16(float value) {
  const uint32_t bits = __builtin_bit_cast(uint32_t, value);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const bool nan = (bits & 0x7fffffffu) > 0x7f800000u;
  return static_cast<uint16_t>(nan ? ((bits >> 16) | 0x40u) : rounded);
}

void convert_range(const float *__restrict in, uint16_t *__restrict out, int64_t begin, int64_t end) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) out[i] = to_bf16(in[i]);
}

// A growable scratch buffer per calling thread (kernels may run on several MindSpore threads).
uint16_t *scratch(int slot, int64_t elements) {
  thread_local std::vector<uint16_t> buffers[3];
  auto &buffer = buffers[slot];
  if (static_cast<int64_t>(buffer.size()) < elements) buffer.resize(elements);
  return buffer.data();
}

constexpr int64_t kConvertChunk = 1 << 16;
constexpr int64_t kGemmRows = 64;  // fewer rows than this per thread: one thread does the GEMM

int64_t numel(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

// C[rows, n] (+)= A[rows, k] . op(B), the rows split over threads. A is row-major bf16 with
// leading dimension lda; B is (n, k) when trans_b == 'T', else (k, n).
int gemm_rows(int64_t rows, int64_t n, int64_t k, const uint16_t *a, int64_t lda, char trans_b,
              const uint16_t *b, float beta, float *c) {
  int status = 0;
  const int64_t ldb = trans_b == 'T' ? k : n;
  parallel_for(rows, kGemmRows, [&](int64_t begin, int64_t end) {
    const int s = dnnl_gemm_bf16bf16f32('N', trans_b, end - begin, n, k, 1.f, a + begin * lda, lda, b,
                                        ldb, beta, c + begin * n, n);
    if (s != 0) status = s;
  });
  return status;
}

}  // namespace

extern "C" {

// y = x . w^T + b; params: x (..., K), w (N, K), b (N), y (..., N).
int Bf16DenseForward(int, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  const float *b = static_cast<const float *>(params[2]);
  float *y = static_cast<float *>(params[3]);
  const int64_t k = shapes[1][1], n = shapes[1][0];
  const int64_t m = numel(ndims[0], shapes[0]) / k;
  uint16_t *xb = scratch(0, m * k);
  uint16_t *wb = scratch(1, n * k);
  parallel_for(m * k, kConvertChunk, [&](int64_t s, int64_t e) { convert_range(x, xb, s, e); });
  parallel_for(n * k, kConvertChunk, [&](int64_t s, int64_t e) { convert_range(w, wb, s, e); });
  parallel_for(m, kGemmRows, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) std::memcpy(y + i * n, b, n * sizeof(float));
  });
  return gemm_rows(m, n, k, xb, k, 'T', wb, 1.f, y);
}

// Gradients of y = x . w^T + b; params: x (..., K), w (N, K), dy (..., N), dx, dw, db.
int Bf16DenseBackward(int, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  const float *dy = static_cast<const float *>(params[2]);
  float *dx = static_cast<float *>(params[3]);
  float *dw = static_cast<float *>(params[4]);
  float *db = static_cast<float *>(params[5]);
  const int64_t k = shapes[1][1], n = shapes[1][0];
  const int64_t m = numel(ndims[0], shapes[0]) / k;
  uint16_t *xb = scratch(0, m * k);
  uint16_t *wb = scratch(1, n * k);
  uint16_t *dyb = scratch(2, m * n);
  parallel_for(m * k, kConvertChunk, [&](int64_t s, int64_t e) { convert_range(x, xb, s, e); });
  parallel_for(n * k, kConvertChunk, [&](int64_t s, int64_t e) { convert_range(w, wb, s, e); });
  // dy -> bf16 and the bias gradient (float32 column sums), each thread over its own rows.
  const int threads = thread_count();
  std::vector<float> partial(static_cast<size_t>(threads) * n, 0.f);
  const int64_t row_step = (m + threads - 1) / threads;
  parallel_for(threads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      float *sum = partial.data() + t * n;
      const int64_t begin = t * row_step, end = std::min(m, begin + row_step);
      for (int64_t i = begin; i < end; ++i) {
        const float *row = dy + i * n;
        convert_range(row, dyb + i * n, 0, n);
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) sum[j] += row[j];
      }
    }
  });
  for (int64_t j = 0; j < n; ++j) {
    float total = 0.f;
    for (int t = 0; t < threads; ++t) total += partial[t * n + j];
    db[j] = total;
  }
  // dx (M, K) = dy (M, N) . w (N, K)
  int status = gemm_rows(m, k, n, dyb, n, 'N', wb, 0.f, dx);
  // dw (N, K) = dy^T (N, M) . x (M, K), the rows of dw split over threads
  parallel_for(n, kGemmRows, [&](int64_t s, int64_t e) {
    const int r = dnnl_gemm_bf16bf16f32('T', 'N', e - s, k, m, 1.f, dyb + s, n, xb, k, 0.f, dw + s * k, k);
    if (r != 0) status = r;
  });
  return status;
}

}  // extern "C"

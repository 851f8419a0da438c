// ViT kernels on oneDNN's GEMMs (libdnnl.so.3, shipped inside the MindSpore wheel), as MindSpore
// "aot" Custom operators (vit_exp/models/kernels/ops.py):
//  - dense layers with the bias and its gradient folded in, fp32 or bf16 (MindSpore 2.10's CPU
//    MatMul refuses bfloat16, so bf16 has to call oneDNN's bf16 GEMM directly);
//  - multi-head attention in fp32, forward and backward, straight from the fused qkv projection's
//    output: no split, no transposes, no per-head BatchMatMul kernels. It stays fp32 in bf16 mode:
//    rounding the softmax probabilities and their gradients to bf16 cost the default run val
//    accuracy for ~3 % of B/16's step time (bench/RESULTS.md).
//
// Mixed precision as PyTorch's CPU autocast does it, with fp32 outputs: the tensors MindSpore sees
// stay float32 (weights, activations, gradients, optimizer state); each kernel rounds its matrix
// inputs to bfloat16 (round to nearest even, NaN kept NaN), multiplies with float32 accumulation and
// writes float32. Bias gradients are float32 sums of the float32 output gradient.
//
// aot signature: int f(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
//                      void *stream, void *extra), inputs first, then outputs, contiguous float32.
// Built with: g++ -O3 -march=native ... -shared -fPIC -pthread <mindspore/lib>/libdnnl.so.3

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernel_math.h"
#include "thread_pool.h"

extern "C" int dnnl_gemm_bf16bf16f32(char transa, char transb, int64_t M, int64_t N, int64_t K,
                                     float alpha, const uint16_t *A, int64_t lda, const uint16_t *B,
                                     int64_t ldb, float beta, float *C, int64_t ldc);
extern "C" int dnnl_sgemm(char transa, char transb, int64_t M, int64_t N, int64_t K, float alpha,
                          const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                          int64_t ldc);

namespace {

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

// Row-major GEMMs with float32 output on bf16 (uint16_t) or float32 operands.
inline int gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, float alpha, const uint16_t *a,
                int64_t lda, const uint16_t *b, int64_t ldb, float beta, float *c, int64_t ldc) {
  return dnnl_gemm_bf16bf16f32(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

inline int gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
  return dnnl_sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

inline void store(const float *in, float *out, int64_t n) { std::memcpy(out, in, n * sizeof(float)); }
inline void store(const float *in, uint16_t *out, int64_t n) { convert_range(in, out, 0, n); }

// A growable float32 buffer per thread (pool workers included): a GEMM's output block that a
// kernel converts to bfloat16 before writing it out.
float *block_scratch(int64_t elements) {
  thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < elements) buffer.resize(elements);
  return buffer.data();
}

bool is_bf16(const char *dtype) { return dtype != nullptr && std::strcmp(dtype, "bfloat16") == 0; }

// The GEMM operand for a float32 tensor: the tensor itself (fp32) or its bf16 copy in scratch slot.
template <typename T>
const T *operand(const float *data, int64_t n, int slot);

template <>
const float *operand<float>(const float *data, int64_t, int) {
  return data;
}

template <>
const uint16_t *operand<uint16_t>(const float *data, int64_t n, int slot) {
  uint16_t *copy = scratch(slot, n);
  parallel_for(n, kConvertChunk, [&](int64_t s, int64_t e) { convert_range(data, copy, s, e); });
  return copy;
}

// P = softmax(S) row by row, in place, float32 (NaN in a row gives a NaN row).
void softmax_rows(float *s, int64_t rows, int64_t cols) {
  for (int64_t i = 0; i < rows; ++i) {
    float *row = s + i * cols;
    float top = row[0];
#pragma omp simd reduction(max : top)
    for (int64_t j = 1; j < cols; ++j) top = row[j] > top ? row[j] : top;
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < cols; ++j) {
      row[j] = exp_approx(row[j] - top);
      sum += row[j];
    }
    const float inv = 1.f / sum;
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) row[j] *= inv;
  }
}

struct AttentionShape {
  int64_t batch, tokens, heads, dim, head_dim;
  float scale;
};

// qkv (B, n, 3d) and a (heads,) marker tensor give the shape; q k v of head h are columns
// [h*hd, (h+1)*hd) of the q, k and v thirds of each token's row.
AttentionShape attention_shape(int64_t **shapes) {
  AttentionShape a;
  a.batch = shapes[0][0];
  a.tokens = shapes[0][1];
  a.dim = shapes[0][2] / 3;
  a.heads = shapes[1][0];
  a.head_dim = a.dim / a.heads;
  a.scale = 1.f / std::sqrt(static_cast<float>(a.head_dim));
  return a;
}

// out (B, n, d) = per head softmax(q k^T / sqrt(hd)) v, written in (token, head, hd) order:
// float32, or bfloat16 (inference in bf16: only the out projection's bf16 kernel reads it).
template <typename Out>
int attention_forward(void **params, int64_t **shapes) {
  const AttentionShape a = attention_shape(shapes);
  const int64_t n = a.tokens, d3 = 3 * a.dim, hd = a.head_dim;
  const float *qkv = static_cast<const float *>(params[0]);
  Out *out = static_cast<Out *>(params[2]);
  int status = 0;
  parallel_for(a.batch * a.heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> p(n * n), o(std::is_same_v<Out, float> ? 0 : n * hd);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / a.heads, h = item % a.heads;
      const float *q = qkv + b * n * d3 + h * hd, *k = q + a.dim, *v = q + 2 * a.dim;
      Out *target = out + b * n * a.dim + h * hd;
      int r = gemm('N', 'T', n, n, hd, a.scale, q, d3, k, d3, 0.f, p.data(), n);
      softmax_rows(p.data(), n, n);
      if constexpr (std::is_same_v<Out, float>) {
        r |= gemm('N', 'N', n, hd, n, 1.f, p.data(), n, v, d3, 0.f, target, a.dim);
      } else {
        r |= gemm('N', 'N', n, hd, n, 1.f, p.data(), n, v, d3, 0.f, o.data(), hd);
        for (int64_t t = 0; t < n; ++t) store(o.data() + t * hd, target + t * a.dim, hd);
      }
      if (r != 0) status = r;
    }
  });
  return status;
}

// dqkv (B, n, 3d) of the attention above for the upstream gradient dout (B, n, d); the
// probabilities are recomputed from q and k (nothing but qkv is kept from the forward pass).
int attention_backward(void **params, int64_t **shapes) {
  const AttentionShape a = attention_shape(shapes);
  const int64_t n = a.tokens, d3 = 3 * a.dim, hd = a.head_dim;
  const float *qkv = static_cast<const float *>(params[0]);
  const float *dout = static_cast<const float *>(params[2]);
  float *dqkv = static_cast<float *>(params[3]);
  int status = 0;
  parallel_for(a.batch * a.heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> s(n * n), dp(n * n);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / a.heads, h = item % a.heads;
      const float *q = qkv + b * n * d3 + h * hd, *k = q + a.dim, *v = q + 2 * a.dim;
      const float *go = dout + b * n * a.dim + h * hd;
      float *dq = dqkv + b * n * d3 + h * hd, *dk = dq + a.dim, *dv = dq + 2 * a.dim;
      int r = gemm('N', 'T', n, n, hd, a.scale, q, d3, k, d3, 0.f, s.data(), n);
      softmax_rows(s.data(), n, n);
      r |= gemm('T', 'N', n, hd, n, 1.f, s.data(), n, go, a.dim, 0.f, dv, d3);  // dV = P^T dO
      r |= gemm('N', 'T', n, n, hd, 1.f, go, a.dim, v, d3, 0.f, dp.data(), n);  // dP = dO V^T
      for (int64_t i = 0; i < n; ++i) {  // dS = P * (dP - rowsum(dP * P)), in float32
        const float *pr = s.data() + i * n;
        float *dr = dp.data() + i * n;
        float dot = 0.f;
#pragma omp simd reduction(+ : dot)
        for (int64_t j = 0; j < n; ++j) dot += dr[j] * pr[j];
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) dr[j] = pr[j] * (dr[j] - dot);
      }
      r |= gemm('N', 'N', n, hd, n, a.scale, dp.data(), n, k, d3, 0.f, dq, d3);  // dQ = dS K / sqrt(hd)
      r |= gemm('T', 'N', n, hd, n, a.scale, dp.data(), n, q, d3, 0.f, dk, d3);  // dK = dS^T Q / sqrt(hd)
      if (r != 0) status = r;
    }
  });
  return status;
}


// C[rows, n] (+)= A[rows, k] . op(B), the rows split over threads; B is (n, k) when trans_b is 'T'.
template <typename T>
int gemm_rows(int64_t rows, int64_t n, int64_t k, const T *a, char trans_b, const T *b, float beta, float *c) {
  int status = 0;
  const int64_t ldb = trans_b == 'T' ? k : n;
  parallel_for(rows, kGemmRows, [&](int64_t begin, int64_t end) {
    const int r = gemm('N', trans_b, end - begin, n, k, 1.f, a + begin * k, k, b, ldb, beta, c + begin * n, n);
    if (r != 0) status = r;
  });
  return status;
}

// What a dense layer's forward kernel does to x . w^T before writing y: add the bias, then either
// nothing, a residual (r + x . w^T + b, the block's skip connection) or GELU (inference only).
enum class Epilogue { kBias, kBiasResidual, kBiasGeluErf, kBiasGeluTanh };

// y = epilogue(c + b) row by row; c is the GEMM's float32 output (y itself when Out is float).
template <Epilogue E, typename Out>
void epilogue(float *c, Out *y, const float *__restrict r, const float *__restrict b, int64_t rows, int64_t n) {
  for (int64_t i = 0; i < rows; ++i) {
    const float *cr = c + i * n;
    Out *yr = y + i * n;
    const float *__restrict rr = r + i * n;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      float v = cr[j] + b[j];
      if constexpr (E == Epilogue::kBiasResidual) v += rr[j];
      if constexpr (E == Epilogue::kBiasGeluErf) v = gelu_erf(v);
      if constexpr (E == Epilogue::kBiasGeluTanh) v = gelu_tanh(v);
      if constexpr (std::is_same_v<Out, float>) {
        yr[j] = v;
      } else {
        yr[j] = to_bf16(v);
      }
    }
  }
}

// Rows of y per GEMM call, so that the epilogue finds each block still in cache: ~1 MB of output,
// at least 512 rows. Only for small weights: each call repacks w, which made B/16's layers (w of
// 0.6-2.4 M values) 3-6 % slower, while vit_tiny/tiny32-sized layers got 1-9 % faster.
constexpr int64_t kBlockFloats = 1 << 18, kMinBlockRows = 512, kMaxBlockedWeights = 1 << 19;

int64_t block_rows(int64_t m, int64_t n, int64_t k) {
  return n * k > kMaxBlockedWeights ? m : std::max(kMinBlockRows, kBlockFloats / n);
}

// The GEMM operand of a dense layer's input: in bf16, an input that is already bfloat16 (written
// by an inference kernel below) as it is; otherwise operand<T>. nullptr: bfloat16 into fp32.
template <typename T>
const T *input_operand(void *data, const char *dtype, int64_t n, int slot) {
  if (is_bf16(dtype)) {
    if constexpr (std::is_same_v<T, uint16_t>) return static_cast<const uint16_t *>(data);
    return nullptr;
  }
  return operand<T>(static_cast<const float *>(data), n, slot);
}

// y = epilogue(x . w^T + b); params: x (..., K) float32 or bfloat16 (bf16 kernels), w (N, K),
// b (N), [r (..., N)], y (..., N) of type Out (float32, or bfloat16 for the next bf16 kernel).
template <typename T, Epilogue E, typename Out>
int dense_forward(void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  constexpr int kOutput = E == Epilogue::kBiasResidual ? 4 : 3;
  const float *b = static_cast<const float *>(params[2]);
  const float *r = E == Epilogue::kBiasResidual ? static_cast<const float *>(params[3]) : nullptr;
  Out *y = static_cast<Out *>(params[kOutput]);
  const int64_t k = shapes[1][1], n = shapes[1][0];
  const int64_t m = numel(ndims[0], shapes[0]) / k;
  const T *x = input_operand<T>(params[0], dtypes[0], m * k, 0);
  if (x == nullptr) return 1;
  const T *w = operand<T>(static_cast<const float *>(params[1]), n * k, 1);
  const int64_t block = block_rows(m, n, k);
  int status = 0;
  parallel_for(m, kGemmRows, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; i += block) {
      const int64_t rows = std::min(block, e - i);
      float *c = std::is_same_v<Out, float> ? reinterpret_cast<float *>(y + i * n) : block_scratch(rows * n);
      const int rc = gemm('N', 'T', rows, n, k, 1.f, x + i * k, k, w, k, 0.f, c, n);
      if (rc != 0) status = rc;
      epilogue<E>(c, y + i * n, r == nullptr ? nullptr : r + i * n, b, rows, n);
    }
  });
  return status;
}

// db = column sums of dy (float32), and dy as a GEMM operand (its bf16 copy, or itself).
template <typename T>
const T *bias_gradient(const float *dy, int64_t m, int64_t n, float *db) {
  const int threads = thread_count();
  std::vector<float> partial(static_cast<size_t>(threads) * n, 0.f);
  const int64_t row_step = (m + threads - 1) / threads;
  T *copy = std::is_same_v<T, float> ? nullptr : reinterpret_cast<T *>(scratch(2, m * n));
  parallel_for(threads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      float *sum = partial.data() + t * n;
      for (int64_t i = t * row_step; i < std::min(m, (t + 1) * row_step); ++i) {
        const float *row = dy + i * n;
        if (copy != nullptr) store(row, copy + i * n, n);
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
  return copy != nullptr ? copy : reinterpret_cast<const T *>(dy);
}

// Gradients of y = x . w^T + b; params: x (..., K), w (N, K), dy (..., N), dx, dw, db.
template <typename T>
int dense_backward(void **params, int *ndims, int64_t **shapes) {
  float *dx = static_cast<float *>(params[3]);
  float *dw = static_cast<float *>(params[4]);
  float *db = static_cast<float *>(params[5]);
  const int64_t k = shapes[1][1], n = shapes[1][0];
  const int64_t m = numel(ndims[0], shapes[0]) / k;
  const T *x = operand<T>(static_cast<const float *>(params[0]), m * k, 0);
  const T *w = operand<T>(static_cast<const float *>(params[1]), n * k, 1);
  const T *dy = bias_gradient<T>(static_cast<const float *>(params[2]), m, n, db);
  int status = gemm_rows(m, k, n, dy, 'N', w, 0.f, dx);  // dx (M, K) = dy (M, N) . w (N, K)
  // dw (N, K) = dy^T (N, M) . x (M, K), the rows of dw split over threads
  parallel_for(n, kGemmRows, [&](int64_t s, int64_t e) {
    const int r = gemm('T', 'N', e - s, k, m, 1.f, dy + s, n, x, k, 0.f, dw + s * k, k);
    if (r != 0) status = r;
  });
  return status;
}

}  // namespace

extern "C" {

// Dense layers: params as dense_forward / dense_backward above.
#define VIT_EXP_DENSE_FORWARD(NAME, T, E, OUT)                                                    \
  int NAME(int, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) { \
    return dense_forward<T, Epilogue::E, OUT>(params, ndims, shapes, dtypes);                       \
  }

// params: x, w, b, y
VIT_EXP_DENSE_FORWARD(Fp32DenseForward, float, kBias, float)
VIT_EXP_DENSE_FORWARD(Bf16DenseForward, uint16_t, kBias, float)
// params: x, w, b, r, y (y = r + x . w^T + b)
VIT_EXP_DENSE_FORWARD(Fp32DenseResidualForward, float, kBiasResidual, float)
VIT_EXP_DENSE_FORWARD(Bf16DenseResidualForward, uint16_t, kBiasResidual, float)
// params: x, w, b, y (y = GELU(x . w^T + b), erf or tanh form; inference: no backward kernel).
// In bf16, y is bfloat16: rounded here as the next dense kernel would round it, so that kernel
// reads it as it is (same bits, half the memory traffic, no conversion pass).
VIT_EXP_DENSE_FORWARD(Fp32DenseGeluErfForward, float, kBiasGeluErf, float)
VIT_EXP_DENSE_FORWARD(Fp32DenseGeluTanhForward, float, kBiasGeluTanh, float)
VIT_EXP_DENSE_FORWARD(Bf16DenseGeluErfForward, uint16_t, kBiasGeluErf, uint16_t)
VIT_EXP_DENSE_FORWARD(Bf16DenseGeluTanhForward, uint16_t, kBiasGeluTanh, uint16_t)

int Fp32DenseBackward(int, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  return dense_backward<float>(params, ndims, shapes);
}

int Bf16DenseBackward(int, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  return dense_backward<uint16_t>(params, ndims, shapes);
}

// params: qkv (B, n, 3d), heads marker (h,), out (B, n, d)
int AttentionForward(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  return attention_forward<float>(params, shapes);
}

// The same with a bfloat16 out (inference in bf16)
int AttentionForwardBf16(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  return attention_forward<uint16_t>(params, shapes);
}

// params: qkv (B, n, 3d), heads marker (h,), dout (B, n, d), dqkv (B, n, 3d)
int AttentionBackward(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  return attention_backward(params, shapes);
}

}  // extern "C"

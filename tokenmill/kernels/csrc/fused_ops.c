/* Fused elementwise ops of a transformer layer, float32 on the CPU: one pass over memory and one
 * call from Python where PyTorch would run four to eight separate operators. Parallel over rows
 * once a call has enough work to pay for waking the threads. Also the matrix product for a few
 * rows, which BLAS serves badly. */
#include <stdint.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "fast_exp.h"
#include "vectors.h"

#define MIN_PARALLEL_ELEMENTS 65536

/* residual += x (when add_residual), then out = residual / rms(residual) * weight, row by row.
 * Without add_residual, residual is only read: it holds the input. */
void rms_norm_f32(const float *x, float *residual, const float *weight, float *out, int64_t rows,
                  int64_t hidden, float eps, int add_residual, int num_threads) {
#pragma omp parallel for num_threads(num_threads) if (rows * hidden >= MIN_PARALLEL_ELEMENTS)
    for (int64_t r = 0; r < rows; r++) {
        float *h = residual + r * hidden;
        const float *in = x + r * hidden;
        float sum = 0.0f;
        for (int64_t i = 0; i < hidden; i++) {
            const float v = add_residual ? h[i] + in[i] : h[i];
            h[i] = v;
            sum += v * v;
        }
        const float inv = 1.0f / sqrtf(sum / (float)hidden + eps);
        for (int64_t i = 0; i < hidden; i++) out[r * hidden + i] = h[i] * inv * weight[i];
    }
}

/* Rotate-half RoPE in place on q [T, Hq, D] and k [T, Hk, D] (rows T apart by the strides given,
 * heads contiguous); cos and sin are [max_position, D / 2] tables. */
void rotary_f32(float *q, float *k, int64_t q_stride, int64_t k_stride, const int64_t *positions,
                const float *cos_table, const float *sin_table, int64_t num_tokens, int64_t q_heads,
                int64_t k_heads, int64_t head_dim, int num_threads) {
    const int64_t half = head_dim / 2;
#pragma omp parallel for num_threads(num_threads) if (num_tokens * (q_heads + k_heads) * head_dim >= MIN_PARALLEL_ELEMENTS)
    for (int64_t t = 0; t < num_tokens; t++) {
        const float *cos = cos_table + positions[t] * half, *sin = sin_table + positions[t] * half;
        for (int64_t h = 0; h < q_heads + k_heads; h++) {
            float *x = h < q_heads ? q + t * q_stride + h * head_dim : k + t * k_stride + (h - q_heads) * head_dim;
            for (int64_t i = 0; i < half; i++) {
                const float x1 = x[i], x2 = x[i + half];
                x[i] = x1 * cos[i] - x2 * sin[i];
                x[i + half] = x2 * cos[i] + x1 * sin[i];
            }
        }
    }
}

/* out[t, i] = silu(gate_up[t, i]) * gate_up[t, size + i]: SwiGLU's activation. */
void silu_and_mul_f32(const float *gate_up, float *out, int64_t rows, int64_t size, int num_threads) {
#pragma omp parallel for num_threads(num_threads) if (rows * size >= MIN_PARALLEL_ELEMENTS)
    for (int64_t r = 0; r < rows; r++) {
        const float *gate = gate_up + r * 2 * size, *up = gate + size;
        for (int64_t i = 0; i < size; i++) {
            const float g = gate[i];
            const float e = exp_nonpositive(-fabsf(g)); /* sigmoid from exp(-|g|): never overflows */
            const float sigmoid = g >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
            out[r * size + i] = g * sigmoid * up[i];
        }
    }
}

/* ---- y[M, N] = x[M, K] @ w[N, K]^T (+ bias) for a few rows -------------------------------------
 * Decoding a few sequences, or verifying a few speculative tokens, multiplies a handful of rows by
 * every weight. BLAS packs w for such shapes and reads it more than once: at four rows it takes
 * twice the time of one. Here w (nn.Linear's own layout) streams from memory once; each group of
 * W_ROWS weight rows meets every row of x in registers (ROWS at a time; the group stays in cache
 * for the next ROWS), one accumulator per pair, summed across its lanes at the end. The weights
 * are float32, or bfloat16 (dtype bfloat16 on the CPU), widened to float32 in registers: a
 * bfloat16 is a float32's upper half. */

typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
#define W_ROWS 4
#define ROWS 6 /* 6 x 4 accumulators, 4 weight vectors and one of x: 29 of 32 vector registers */
#define PREFETCH_BYTES 4096 /* ahead of the weight stream: the hardware prefetcher lags it */

/* 16 weights from element i of w, float32 or bfloat16 ones, as float32. */
INLINE f32x16 load_weights(const void *w, int64_t i, int bf16) {
    if (!bf16) return load16((const float *)w + i);
    u16x16 half;
    memcpy(&half, (const uint16_t *)w + i, sizeof half);
    const u32x16 bits = __builtin_convertvector(half, u32x16) << 16;
    f32x16 v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

/* Rows m0..m0+R of y at outputs n0..n0+W_ROWS. */
INLINE void few_rows_block(const float *x, int64_t ldx, const void *w, int bf16, const float *bias, float *y,
                           int64_t K, int64_t N, int R, int64_t m0, int64_t n0) {
    const int C = W_ROWS;
    const int64_t element_bytes = bf16 ? 2 : 4;
    f32x16 acc[ROWS][W_ROWS];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < C; c++) acc[r][c] = (f32x16){0};
    for (int64_t k = 0; k < K; k += 16) {
        f32x16 wv[W_ROWS];
#pragma GCC unroll 4
        for (int c = 0; c < C; c++) {
            const int64_t i = (n0 + c) * K + k;
            __builtin_prefetch((const char *)w + i * element_bytes + PREFETCH_BYTES);
            wv[c] = load_weights(w, i, bf16);
        }
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            const f32x16 xv = load16(x + (m0 + r) * ldx + k);
#pragma GCC unroll 4
            for (int c = 0; c < C; c++) acc[r][c] += xv * wv[c];
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) y[(m0 + r) * N + n0 + c] = lane_sum(acc[r][c]) + (bias ? bias[n0 + c] : 0.0f);
}

#define ROWS_CASE(R) \
    case R: few_rows_block(x, ldx, w, BF16, bias, y, K, N, R, m0, n0); break;

/* K a multiple of 16, N of W_ROWS (the caller checks); BF16 a constant, so each version is its own code. */
#define FEW_ROWS_BODY                                                                                 \
    _Pragma("omp parallel for num_threads(num_threads) schedule(static)")                             \
    for (int64_t n0 = 0; n0 < N; n0 += W_ROWS)                                                        \
        for (int64_t m0 = 0; m0 < M; m0 += ROWS) {                                                    \
            switch (M - m0 < ROWS ? M - m0 : ROWS) {                                                  \
                ROWS_CASE(1) ROWS_CASE(2) ROWS_CASE(3) ROWS_CASE(4) ROWS_CASE(5) ROWS_CASE(6)         \
            }                                                                                         \
        }

void linear_few_rows_f32(const float *x, int64_t ldx, const float *w, const float *bias, float *y, int64_t M,
                         int64_t K, int64_t N, int num_threads) {
    enum { BF16 = 0 };
    FEW_ROWS_BODY
}

/* The same with bfloat16 weights (uint16 bit patterns). */
void linear_few_rows_bf16(const float *x, int64_t ldx, const uint16_t *w, const float *bias, float *y, int64_t M,
                          int64_t K, int64_t N, int num_threads) {
    enum { BF16 = 1 };
    FEW_ROWS_BODY
}

/* Fused elementwise ops of a transformer layer, float32 on the CPU: one pass over memory and one
 * call from Python where PyTorch would run four to eight separate operators. Parallel over rows
 * once a call has enough work to pay for waking the threads. */
#include <stdint.h>

#include "fast_exp.h"

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

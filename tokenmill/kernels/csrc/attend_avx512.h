/* The inner loop of paged_attention.c in AVX-512 intrinsics, for block_size 16 (one key block is
 * one 16-lane register) and head_dim a multiple of 16: the common shapes. Up to R_MAX query rows
 * share each key and value load; their scores, softmax state and accumulators stay in registers.
 * Part of paged_attention.c, which includes it after defining KVHead and kv_block.
 *
 * A row's arithmetic is the same whichever rows it is grouped with, so a token's attention output
 * is bit-identical in a decode step and in a prefill chunk (batch invariance rests on this). */
#pragma once
#include <float.h>
#include <immintrin.h>
#include <stdint.h>

#include "fast_exp.h"

#define ACC_REGISTERS 24 /* of the 32: the rest hold scores, values and the broadcast weight */
#define DV_MAX 8         /* head_dim up to 128 */
#define R_MAX 6

/* exp(x) for x <= 0 on 16 lanes: fast_exp.h's polynomial. */
static inline __m512 exp512_nonpositive(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504f));
    const __m512 n = _mm512_roundscale_ps(_mm512_add_ps(t, _mm512_set1_ps(0.5f)),
                                          _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_mul_ps(_mm512_sub_ps(t, n), _mm512_set1_ps(0.69314718f));
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}

/* 16 elements from index i of a float32 block, or of an int8 one, as float32. */
static inline __m512 load16(const void *base, int64_t i, const int int8) {
    if (int8)
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)((const int8_t *)base + i))));
    return _mm512_loadu_ps((const float *)base + i);
}

/* R rows (constant after inlining) of head_dim 16 * DV against the keys [0, num_keys) of a
 * sequence, block by block with online softmax. Keys of a block past a row's position are masked. */
static inline __attribute__((always_inline)) void attend_rows_avx512(
    const float *const q_rows[], const int64_t row_pos[], const KVHead *kv, const int32_t *table,
    int64_t num_keys, float scale, float *const out_rows[], const int prefetch, const int R, const int DV,
    const int int8) {
    enum { BS = 16 };
    const int D = DV * 16;
    __m512 acc[R_MAX][DV_MAX];
    float q[R_MAX][DV_MAX * 16], m[R_MAX], l[R_MAX];
    float weights[R_MAX][BS] __attribute__((aligned(64)));
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
        for (int d = 0; d < D; d++) q[r][d] = q_rows[r][d] * scale;
#pragma GCC unroll 8
        for (int v = 0; v < DV; v++) acc[r][v] = _mm512_setzero_ps();
        m[r] = -FLT_MAX;
        l[r] = 0.0f;
    }
    for (int64_t b = 0; b * BS < num_keys; b++) {
        const KVBlock blk = kv_block(kv, table[b], int8);
        /* Blocks are scattered, so the hardware cannot guess the next one: the first row group of a
         * tile fetches it while on this one (each 64-byte line of its K and V, and of its scales),
         * the others find it in cache. On the last block, it fetches that block again: a no-op. */
        const KVBlock next = kv_block(kv, (b + 1) * BS < num_keys ? table[b + 1] : table[b], int8);
        const int elem = int8 ? 1 : 4, dims_per_line = int8 ? 4 : 1; /* a d's 16 keys: a line or a quarter */
        if (prefetch && int8) {
            _mm_prefetch((const char *)next.key_scales, _MM_HINT_T0);
            _mm_prefetch((const char *)next.value_scales, _MM_HINT_T0);
        }
        __m512 s[R_MAX];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) s[r] = _mm512_setzero_ps();
        for (int d = 0; d < D; d++) {
            if (prefetch && d % dims_per_line == 0) {
                _mm_prefetch((const char *)next.keys_t + d * BS * elem, _MM_HINT_T0);
                _mm_prefetch((const char *)next.values + d * BS * elem, _MM_HINT_T0);
            }
            const __m512 k = load16(blk.keys_t, d * BS, int8);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) s[r] = _mm512_fmadd_ps(_mm512_set1_ps(q[r][d]), k, s[r]);
        }
        if (int8) {
            const __m512 key_scales = _mm512_loadu_ps(blk.key_scales);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) s[r] = _mm512_mul_ps(s[r], key_scales);
        }
        int used = 0; /* keys of this block that some row sees */
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            const int64_t visible = row_pos[r] + 1 - b * BS; /* causal: keys up to the row's position */
            if (visible <= 0) {
                _mm512_store_ps(weights[r], _mm512_setzero_ps());
                continue;
            }
            used = visible > used ? (int)(visible < BS ? visible : BS) : used;
            const __mmask16 seen = visible >= BS ? (__mmask16)0xFFFF : (__mmask16)((1u << visible) - 1);
            const float new_max = fmaxf(m[r], _mm512_mask_reduce_max_ps(seen, s[r]));
            const float correction = exp_nonpositive(m[r] - new_max);
            const __m512 e = _mm512_maskz_mov_ps(seen, exp512_nonpositive(_mm512_sub_ps(s[r], _mm512_set1_ps(new_max))));
            /* int8: the weights carry the value scales; the sum below stays the softmax's */
            _mm512_store_ps(weights[r], int8 ? _mm512_mul_ps(e, _mm512_loadu_ps(blk.value_scales)) : e);
            const __m512 c = _mm512_set1_ps(correction);
#pragma GCC unroll 8
            for (int v = 0; v < DV; v++) acc[r][v] = _mm512_mul_ps(acc[r][v], c);
            m[r] = new_max;
            l[r] = l[r] * correction + _mm512_reduce_add_ps(e);
        }
        for (int t = 0; t < used; t++) {
            __m512 val[DV_MAX];
#pragma GCC unroll 8
            for (int v = 0; v < DV; v++) val[v] = load16(blk.values, t * D + v * 16, int8);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) {
                const __m512 w = _mm512_set1_ps(weights[r][t]);
#pragma GCC unroll 8
                for (int v = 0; v < DV; v++) acc[r][v] = _mm512_fmadd_ps(w, val[v], acc[r][v]);
            }
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
        const __m512 inv = _mm512_set1_ps(1.0f / l[r]);
#pragma GCC unroll 8
        for (int v = 0; v < DV; v++) _mm512_storeu_ps(out_rows[r] + v * 16, _mm512_mul_ps(acc[r][v], inv));
    }
}

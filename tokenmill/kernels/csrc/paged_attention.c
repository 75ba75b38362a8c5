/* Paged attention over a block pool, on the CPU: float32 queries, any GQA group size, causal.
 *
 * One call attends every query token of a step (decode rows and prefill chunks alike) by
 * reading each sequence's keys and values straight from their blocks: nothing is gathered into
 * a padded copy first, so the KV is read once per step, which is what bounds decode speed.
 *
 * Work is split into tasks of (sequence, KV head, tile of up to TILE_Q query positions); the
 * query heads sharing a KV head are processed together so each key is loaded once for all of
 * them. Softmax is computed online, one key block at a time (flash attention's rescaling).
 * On AVX-512 machines the common shapes run attend_avx512.h's intrinsics; the portable C below
 * serves every other shape and machine.
 *
 * The pool holds float32, or int8 with a float32 scale per token and KV head (K and V apart):
 * a block's scores are dot products with the int8 keys, times the keys' scales; the values'
 * scales are folded into the softmax weights. Each function below takes `int8` as a constant,
 * so the compiler builds a float32 and an int8 copy of it.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fast_exp.h"

/* One KV head's share of a layer's pool: its keys, values and (int8) scales in block 0, and
 * how far apart blocks are. */
typedef struct {
    const char *keys, *values;
    const float *key_scales, *value_scales;
    int64_t block_bytes, scale_stride;
} KVHead;

typedef struct {
    const void *keys_t;                     /* [D, block_size] */
    const void *values;                     /* [block_size, D] */
    const float *key_scales, *value_scales; /* [block_size] each; int8 only */
} KVBlock;

/* The head's keys, values and scales in pool block `block`. */
static inline KVBlock kv_block(const KVHead *kv, int64_t block, const int int8) {
    const KVBlock blk = {
        kv->keys + block * kv->block_bytes, kv->values + block * kv->block_bytes,
        int8 ? kv->key_scales + block * kv->scale_stride : NULL,
        int8 ? kv->value_scales + block * kv->scale_stride : NULL,
    };
    return blk;
}

#ifdef __AVX512F__
#include "attend_avx512.h" /* after KVHead and kv_block, which it uses */
#endif

#define TILE_Q 16

typedef struct {
    const float *q;            /* [T, H, D], rows q_stride apart */
    const void *k_cache;       /* float32 or int8 [num_blocks, KVH, D, block_size]: keys transposed per block */
    const void *v_cache;       /* float32 or int8 [num_blocks, KVH, block_size, D] */
    const float *k_scales;     /* int8 pools only: [num_blocks, KVH, block_size] */
    const float *v_scales;     /* int8 pools only: [num_blocks, KVH, block_size] */
    const int32_t *block_tables; /* [S, max_blocks] */
    const int32_t *query_start;  /* [S + 1]: first query token of each sequence in q */
    const int32_t *seq_lens;     /* [S]: keys each sequence has after this step's tokens */
    float *out;                /* [T, H, D] */
    int64_t q_stride, max_blocks, num_heads, num_kv_heads, head_dim, block_size;
    float scale;
} Problem;

#define ROWS 4 /* query rows attended together: each key and value load feeds ROWS FMAs */

/* Element i of a float32 pool, or of an int8 one. */
static inline float kv_at(const void *base, int64_t i, const int int8) {
    return int8 ? (float)((const int8_t *)base)[i] : ((const float *)base)[i];
}

/* Query rows [r0, r0 + nr) of a tile (row r is query r / G, head r % G of the KV head's group):
 * their scores and softmax-weighted values, block by block, with the rows' state in registers. */
static inline __attribute__((always_inline)) void attend_rows(
    const float *q_rows[ROWS], const int64_t row_pos[ROWS], int64_t nr, const KVHead *kv, const int32_t *table,
    int64_t num_keys, float scale, float *out_rows[ROWS], const int64_t D, const int64_t BS, const int int8) {
    float q[ROWS][D], acc[ROWS][D], s[ROWS][BS], m[ROWS], l[ROWS];
    for (int64_t r = 0; r < ROWS; r++) {
        for (int64_t d = 0; d < D; d++) {
            q[r][d] = r < nr ? q_rows[r][d] * scale : 0.0f;
            acc[r][d] = 0.0f;
        }
        m[r] = -FLT_MAX;
        l[r] = 0.0f;
    }
    const int64_t bytes = D * BS * (int8 ? 1 : 4); /* of one head's keys (or values) in a block */
    for (int64_t b = 0; b * BS < num_keys; b++) {
        const KVBlock blk = kv_block(kv, table[b], int8);
        if ((b + 1) * BS < num_keys) { /* blocks are scattered: fetch the next one while on this one */
            const KVBlock next = kv_block(kv, table[b + 1], int8);
            for (int64_t i = 0; i < bytes; i += 64) {
                __builtin_prefetch((const char *)next.keys_t + i);
                __builtin_prefetch((const char *)next.values + i);
            }
        }
        for (int64_t r = 0; r < ROWS; r++)
            for (int64_t t = 0; t < BS; t++) s[r][t] = 0.0f;
        for (int64_t d = 0; d < D; d++)
            for (int64_t r = 0; r < ROWS; r++)
                for (int64_t t = 0; t < BS; t++) s[r][t] += q[r][d] * kv_at(blk.keys_t, d * BS + t, int8);
        if (int8)
            for (int64_t r = 0; r < ROWS; r++)
                for (int64_t t = 0; t < BS; t++) s[r][t] *= blk.key_scales[t];
        int64_t used = 0; /* keys of this block that some row sees */
        for (int64_t r = 0; r < ROWS; r++) {
            const int64_t visible = row_pos[r] + 1 - b * BS; /* causal: keys up to the row's position */
            used = visible > used ? visible : used;
            float block_max = -FLT_MAX;
            for (int64_t t = 0; t < BS; t++) {
                s[r][t] = t < visible ? s[r][t] : -FLT_MAX;
                block_max = fmaxf(block_max, s[r][t]);
            }
            const float new_max = fmaxf(block_max, m[r]);
            const float correction = exp_nonpositive(m[r] - new_max);
            float sum = 0.0f;
            for (int64_t t = 0; t < BS; t++) {
                s[r][t] = t < visible ? exp_nonpositive(s[r][t] - new_max) : 0.0f;
                sum += s[r][t];
            }
            if (int8) /* the weights now carry the value scales; the sum stays the softmax's */
                for (int64_t t = 0; t < BS; t++) s[r][t] *= blk.value_scales[t];
            for (int64_t d = 0; d < D; d++) acc[r][d] *= correction;
            m[r] = new_max;
            l[r] = l[r] * correction + sum;
        }
        used = used < BS ? used : BS;
        for (int64_t t = 0; t < used; t++)
            for (int64_t r = 0; r < ROWS; r++)
                for (int64_t d = 0; d < D; d++) acc[r][d] += s[r][t] * kv_at(blk.values, t * D + d, int8);
    }
    for (int64_t r = 0; r < nr; r++)
        for (int64_t d = 0; d < D; d++) out_rows[r][d] = acc[r][d] / l[r];
}

/* Where rows [r0, r0 + nr) of a tile live (row r is query r / G, head r % G of the KV head's
 * group); returns the keys the group needs, those of its last row, which sees the most. */
static inline int64_t locate_rows(const Problem *p, int64_t s, int64_t h, int64_t i0, int64_t r0, int64_t nr,
                                  int64_t slots, const float *q_rows[], float *out_rows[], int64_t row_pos[]) {
    const int64_t G = p->num_heads / p->num_kv_heads;
    const int64_t q_len = p->query_start[s + 1] - p->query_start[s];
    const int64_t first_pos = p->seq_lens[s] - q_len; /* position of the sequence's first query */
    for (int64_t r = 0; r < slots; r++) {
        const int64_t row = r0 + (r < nr ? r : nr - 1); /* spare slots repeat the last real row */
        const int64_t token = p->query_start[s] + i0 + row / G, head = h * G + row % G;
        q_rows[r] = p->q + token * p->q_stride + head * p->head_dim;
        out_rows[r] = p->out + (token * p->num_heads + head) * p->head_dim;
        row_pos[r] = first_pos + i0 + row / G;
    }
    return row_pos[nr - 1] + 1;
}

/* KV head h's share of the pool. */
static inline KVHead kv_head(const Problem *p, int64_t h, const int int8) {
    const int64_t D = p->head_dim, BS = p->block_size, elem = int8 ? 1 : 4;
    const KVHead kv = {
        (const char *)p->k_cache + h * D * BS * elem, (const char *)p->v_cache + h * D * BS * elem,
        int8 ? p->k_scales + h * BS : NULL, int8 ? p->v_scales + h * BS : NULL,
        p->num_kv_heads * D * BS * elem, p->num_kv_heads * BS,
    };
    return kv;
}

/* Queries [i0, i1) of sequence s, every query head of KV head h, ROWS rows at a time. Inlined
 * with constant D and BS for the common shapes, so that the rows' state stays in registers. */
static inline __attribute__((always_inline)) void attend_tile(const Problem *p, int64_t s, int64_t h, int64_t i0,
                                                              int64_t i1, const int64_t D, const int64_t BS,
                                                              const int int8) {
    const int64_t rows = (i1 - i0) * (p->num_heads / p->num_kv_heads);
    const KVHead kv = kv_head(p, h, int8);
    const int32_t *table = p->block_tables + s * p->max_blocks;
    for (int64_t r0 = 0; r0 < rows; r0 += ROWS) {
        const int64_t nr = rows - r0 < ROWS ? rows - r0 : ROWS;
        const float *q_rows[ROWS];
        float *out_rows[ROWS];
        int64_t row_pos[ROWS];
        const int64_t num_keys = locate_rows(p, s, h, i0, r0, nr, ROWS, q_rows, out_rows, row_pos);
        attend_rows(q_rows, row_pos, nr, &kv, table, num_keys, p->scale, out_rows, D, BS, int8);
    }
}

#ifdef __AVX512F__
#define ATTEND_ROWS_CASE(R, DV)                                                                              \
    case R:                                                                                                  \
        attend_rows_avx512(q_rows, row_pos, &kv, table, num_keys, p->scale, out_rows, r0 == 0, R, DV, int8); \
        break;
#define ATTEND_ROWS_SWITCH(DV)                                                                                   \
    switch (nr) {                                                                                                \
        ATTEND_ROWS_CASE(1, DV) ATTEND_ROWS_CASE(2, DV) ATTEND_ROWS_CASE(3, DV) ATTEND_ROWS_CASE(4, DV)          \
        ATTEND_ROWS_CASE(5, DV) ATTEND_ROWS_CASE(6, DV)                                                          \
    }

/* attend_tile for block_size 16 and head_dim 32, 64 or 128, with the intrinsics of attend_avx512.h. */
static inline __attribute__((always_inline)) void attend_tile_avx512(const Problem *p, int64_t s, int64_t h,
                                                                     int64_t i0, int64_t i1, const int int8) {
    const int64_t D = p->head_dim, rows = (i1 - i0) * (p->num_heads / p->num_kv_heads);
    const int64_t group = ACC_REGISTERS / (D / 16) < R_MAX ? ACC_REGISTERS / (D / 16) : R_MAX; /* rows per pass */
    const int32_t *table = p->block_tables + s * p->max_blocks;
    const KVHead kv = kv_head(p, h, int8);
    for (int64_t r0 = 0; r0 < rows; r0 += group) {
        const int64_t nr = rows - r0 < group ? rows - r0 : group;
        const float *q_rows[R_MAX];
        float *out_rows[R_MAX];
        int64_t row_pos[R_MAX];
        const int64_t num_keys = locate_rows(p, s, h, i0, r0, nr, nr, q_rows, out_rows, row_pos);
        if (D == 32) { ATTEND_ROWS_SWITCH(2) } else if (D == 64) { ATTEND_ROWS_SWITCH(4) } else { ATTEND_ROWS_SWITCH(8) }
    }
}

/* attend_tile_avx512 for each pool type, kept out of line: with both copies inlined into
 * attend_all's loop, GCC built the float32 prefill path 2.5 times slower. */
static __attribute__((noinline)) void attend_tile_avx512_f32(const Problem *p, int64_t s, int64_t h, int64_t i0,
                                                             int64_t i1) {
    attend_tile_avx512(p, s, h, i0, i1, 0);
}

static __attribute__((noinline)) void attend_tile_avx512_int8(const Problem *p, int64_t s, int64_t h, int64_t i0,
                                                              int64_t i1) {
    attend_tile_avx512(p, s, h, i0, i1, 1);
}
#endif

/* One task: queries [i0, i1) of sequence s against KV head h, by the fastest path for the shape. */
static inline __attribute__((always_inline)) void attend_task(const Problem *p, int64_t s, int64_t h, int64_t i0,
                                                              int64_t i1, const int int8) {
    const int64_t D = p->head_dim, BS = p->block_size;
#ifdef __AVX512F__
    if (BS == 16 && (D == 32 || D == 64 || D == 128))
        (int8 ? attend_tile_avx512_int8 : attend_tile_avx512_f32)(p, s, h, i0, i1);
    else
#endif
    if (D == 64 && BS == 16)
        attend_tile(p, s, h, i0, i1, 64, 16, int8);
    else if (D == 128 && BS == 16)
        attend_tile(p, s, h, i0, i1, 128, 16, int8);
    else
        attend_tile(p, s, h, i0, i1, D, BS, int8);
}

static void attend_all(const Problem *p, int64_t num_seqs, int num_threads) {
    int64_t *tile_start = malloc((size_t)(num_seqs + 1) * sizeof(int64_t));
    tile_start[0] = 0;
    for (int64_t s = 0; s < num_seqs; s++) {
        const int64_t q_len = p->query_start[s + 1] - p->query_start[s];
        tile_start[s + 1] = tile_start[s] + (q_len + TILE_Q - 1) / TILE_Q;
    }
    const int64_t num_kv_heads = p->num_kv_heads, num_tasks = tile_start[num_seqs] * num_kv_heads;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
    for (int64_t task = 0; task < num_tasks; task++) {
        const int64_t tile = task / num_kv_heads, h = task % num_kv_heads;
        int64_t lo = 0, hi = num_seqs - 1; /* the sequence that owns this tile */
        while (lo < hi) {
            const int64_t mid = (lo + hi + 1) / 2;
            if (tile_start[mid] <= tile) lo = mid; else hi = mid - 1;
        }
        const int64_t i0 = (tile - tile_start[lo]) * TILE_Q;
        const int64_t q_len = p->query_start[lo + 1] - p->query_start[lo];
        const int64_t i1 = i0 + TILE_Q < q_len ? i0 + TILE_Q : q_len;
        if (p->k_scales != NULL)
            attend_task(p, lo, h, i0, i1, 1);
        else
            attend_task(p, lo, h, i0, i1, 0);
    }
    free(tile_start);
}

void paged_attention_f32(const float *q, const float *k_cache, const float *v_cache,
                         const int32_t *block_tables, const int32_t *query_start, const int32_t *seq_lens,
                         float *out, int64_t q_stride, int64_t num_seqs, int64_t max_blocks, int64_t num_heads,
                         int64_t num_kv_heads, int64_t head_dim, int64_t block_size, float scale,
                         int num_threads) {
    const Problem p = {q, k_cache, v_cache, NULL, NULL, block_tables, query_start, seq_lens, out, q_stride,
                       max_blocks, num_heads, num_kv_heads, head_dim, block_size, scale};
    attend_all(&p, num_seqs, num_threads);
}

/* As paged_attention_f32, over an int8 pool and its scales (see Problem). */
void paged_attention_int8(const float *q, const int8_t *k_cache, const int8_t *v_cache, const float *k_scales,
                          const float *v_scales, const int32_t *block_tables, const int32_t *query_start,
                          const int32_t *seq_lens, float *out, int64_t q_stride, int64_t num_seqs,
                          int64_t max_blocks, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                          int64_t block_size, float scale, int num_threads) {
    const Problem p = {q, k_cache, v_cache, k_scales, v_scales, block_tables, query_start, seq_lens, out,
                       q_stride, max_blocks, num_heads, num_kv_heads, head_dim, block_size, scale};
    attend_all(&p, num_seqs, num_threads);
}

#define PARALLEL_WRITE_TOKENS 64

/* Copies a step's new keys and values (k, v: [T, KVH, D], rows k_stride and v_stride apart) into
 * their slots of a float32 pool, laid out as in Problem; threads as kv_write_int8. */
void kv_write_f32(const float *k, const float *v, int64_t k_stride, int64_t v_stride, const int64_t *slot_blocks,
                  const int64_t *slot_offsets, float *k_cache, float *v_cache, int64_t num_tokens,
                  int64_t num_kv_heads, int64_t head_dim, int64_t block_size, int num_threads) {
    const int64_t D = head_dim, BS = block_size;
#pragma omp parallel for num_threads(num_threads) if (num_tokens >= PARALLEL_WRITE_TOKENS)
    for (int64_t i = 0; i < num_tokens; i++)
        for (int64_t h = 0; h < num_kv_heads; h++) {
            const int64_t block_head = slot_blocks[i] * num_kv_heads + h, offset = slot_offsets[i];
            float *k_slot = k_cache + block_head * D * BS + offset; /* keys transposed: BS apart */
            const float *k_row = k + i * k_stride + h * D;
            for (int64_t d = 0; d < D; d++) k_slot[d * BS] = k_row[d];
            memcpy(v_cache + block_head * D * BS + offset * D, v + i * v_stride + h * D, D * sizeof(float));
        }
}

/* A token's head_dim values x as int8 at out[0], out[stride], ...: scale = max |x| / 127 and
 * x ~ scale * int8, rounded half to even, which is torch's arithmetic in quant/tensor.py's
 * symmetric_int8 step for step (an IEEE division, not a multiply by the reciprocal), so the two
 * write the same bits. */
static inline float quantize_int8(const float *x, int64_t D, int8_t *out, int64_t stride) {
    float absmax = 0.0f;
    for (int64_t d = 0; d < D; d++) absmax = fmaxf(absmax, fabsf(x[d]));
    const float scale = absmax / 127.0f, divisor = fmaxf(scale, FLT_MIN); /* a zero vector stays zero */
    int64_t d = 0;
#ifdef __AVX512F__
    const __m512 by = _mm512_set1_ps(divisor), low = _mm512_set1_ps(-127.0f), high = _mm512_set1_ps(127.0f);
    for (; d + 16 <= D; d += 16) {
        const __m512 q = _mm512_roundscale_ps(_mm512_div_ps(_mm512_loadu_ps(x + d), by),
                                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        int8_t lanes[16];
        _mm_storeu_si128((__m128i *)lanes, _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(q, low), high))));
        for (int i = 0; i < 16; i++) out[(d + i) * stride] = lanes[i];
    }
#endif
    for (; d < D; d++) out[d * stride] = (int8_t)fminf(fmaxf(nearbyintf(x[d] / divisor), -127.0f), 127.0f);
    return scale;
}

/* Quantizes a step's new keys and values (k, v: [T, KVH, D], rows k_stride and v_stride apart)
 * into their slots of an int8 pool and its scales, laid out as in Problem. A decode step's few
 * rows take one thread (less than waking a team would cost); a prefill chunk's take all. */
void kv_write_int8(const float *k, const float *v, int64_t k_stride, int64_t v_stride, const int64_t *slot_blocks,
                   const int64_t *slot_offsets, int8_t *k_cache, int8_t *v_cache, float *k_scales, float *v_scales,
                   int64_t num_tokens, int64_t num_kv_heads, int64_t head_dim, int64_t block_size, int num_threads) {
    const int64_t D = head_dim, BS = block_size;
#pragma omp parallel for num_threads(num_threads) if (num_tokens >= PARALLEL_WRITE_TOKENS)
    for (int64_t i = 0; i < num_tokens; i++)
        for (int64_t h = 0; h < num_kv_heads; h++) {
            const int64_t block_head = slot_blocks[i] * num_kv_heads + h, offset = slot_offsets[i];
            int8_t *k_slot = k_cache + block_head * D * BS + offset; /* keys transposed: BS apart */
            int8_t *v_slot = v_cache + block_head * D * BS + offset * D;
            k_scales[block_head * BS + offset] = quantize_int8(k + i * k_stride + h * D, D, k_slot, BS);
            v_scales[block_head * BS + offset] = quantize_int8(v + i * v_stride + h * D, D, v_slot, 1);
        }
}

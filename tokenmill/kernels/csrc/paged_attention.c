/* Paged attention over a block pool, on the CPU: float32, any GQA group size, causal.
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
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "fast_exp.h"
#ifdef __AVX512F__
#include "attend_avx512.h"
#endif

#define TILE_Q 16

typedef struct {
    const float *q;            /* [T, H, D], rows q_stride apart */
    const float *k_cache;      /* [num_blocks, KVH, D, block_size]: keys transposed per block */
    const float *v_cache;      /* [num_blocks, KVH, block_size, D] */
    const int32_t *block_tables; /* [S, max_blocks] */
    const int32_t *query_start;  /* [S + 1]: first query token of each sequence in q */
    const int32_t *seq_lens;     /* [S]: keys each sequence has after this step's tokens */
    float *out;                /* [T, H, D] */
    int64_t q_stride, max_blocks, num_heads, num_kv_heads, head_dim, block_size;
    float scale;
} Problem;

#define ROWS 4 /* query rows attended together: each key and value load feeds ROWS FMAs */

/* Query rows [r0, r0 + nr) of a tile (row r is query r / G, head r % G of the KV head's group):
 * their scores and softmax-weighted values, block by block, with the rows' state in registers. */
static inline __attribute__((always_inline)) void attend_rows(
    const float *q_rows[ROWS], const int64_t row_pos[ROWS], int64_t nr, const float *k_base,
    const float *v_base, const int32_t *table, int64_t num_keys, int64_t block_stride, float scale,
    float *out_rows[ROWS], const int64_t D, const int64_t BS) {
    float q[ROWS][D], acc[ROWS][D], s[ROWS][BS], m[ROWS], l[ROWS];
    for (int64_t r = 0; r < ROWS; r++) {
        for (int64_t d = 0; d < D; d++) {
            q[r][d] = r < nr ? q_rows[r][d] * scale : 0.0f;
            acc[r][d] = 0.0f;
        }
        m[r] = -FLT_MAX;
        l[r] = 0.0f;
    }
    for (int64_t b = 0; b * BS < num_keys; b++) {
        const float *keys_t = k_base + (int64_t)table[b] * block_stride; /* [D, BS] */
        const float *values = v_base + (int64_t)table[b] * block_stride; /* [BS, D] */
        if ((b + 1) * BS < num_keys) { /* blocks are scattered: fetch the next one while on this one */
            const float *next_k = k_base + (int64_t)table[b + 1] * block_stride;
            const float *next_v = v_base + (int64_t)table[b + 1] * block_stride;
            for (int64_t i = 0; i < D * BS; i += 16) {
                __builtin_prefetch(next_k + i);
                __builtin_prefetch(next_v + i);
            }
        }
        for (int64_t r = 0; r < ROWS; r++)
            for (int64_t t = 0; t < BS; t++) s[r][t] = 0.0f;
        for (int64_t d = 0; d < D; d++)
            for (int64_t r = 0; r < ROWS; r++)
                for (int64_t t = 0; t < BS; t++) s[r][t] += q[r][d] * keys_t[d * BS + t];
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
            for (int64_t d = 0; d < D; d++) acc[r][d] *= correction;
            m[r] = new_max;
            l[r] = l[r] * correction + sum;
        }
        used = used < BS ? used : BS;
        for (int64_t t = 0; t < used; t++)
            for (int64_t r = 0; r < ROWS; r++)
                for (int64_t d = 0; d < D; d++) acc[r][d] += s[r][t] * values[t * D + d];
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

/* Queries [i0, i1) of sequence s, every query head of KV head h, ROWS rows at a time. Inlined
 * with constant D and BS for the common shapes, so that the rows' state stays in registers. */
static inline __attribute__((always_inline)) void attend_tile(const Problem *p, int64_t s, int64_t h, int64_t i0,
                                                              int64_t i1, const int64_t D, const int64_t BS) {
    const int64_t rows = (i1 - i0) * (p->num_heads / p->num_kv_heads);
    const int64_t block_stride = p->num_kv_heads * D * BS;
    const int32_t *table = p->block_tables + s * p->max_blocks;
    for (int64_t r0 = 0; r0 < rows; r0 += ROWS) {
        const int64_t nr = rows - r0 < ROWS ? rows - r0 : ROWS;
        const float *q_rows[ROWS];
        float *out_rows[ROWS];
        int64_t row_pos[ROWS];
        const int64_t num_keys = locate_rows(p, s, h, i0, r0, nr, ROWS, q_rows, out_rows, row_pos);
        attend_rows(q_rows, row_pos, nr, p->k_cache + h * D * BS, p->v_cache + h * D * BS, table, num_keys,
                    block_stride, p->scale, out_rows, D, BS);
    }
}

#ifdef __AVX512F__
#define ATTEND_ROWS_CASE(R, DV)                                                                                \
    case R:                                                                                                    \
        attend_rows_avx512(q_rows, row_pos, k_base, v_base, table, num_keys, block_stride, p->scale, out_rows, \
                           r0 == 0, R, DV);                                                                    \
        break;
#define ATTEND_ROWS_SWITCH(DV)                                                                                   \
    switch (nr) {                                                                                                \
        ATTEND_ROWS_CASE(1, DV) ATTEND_ROWS_CASE(2, DV) ATTEND_ROWS_CASE(3, DV) ATTEND_ROWS_CASE(4, DV)          \
        ATTEND_ROWS_CASE(5, DV) ATTEND_ROWS_CASE(6, DV)                                                          \
    }

/* attend_tile for block_size 16 and head_dim 32, 64 or 128, with the intrinsics of attend_avx512.h. */
static void attend_tile_avx512(const Problem *p, int64_t s, int64_t h, int64_t i0, int64_t i1) {
    const int64_t D = p->head_dim, rows = (i1 - i0) * (p->num_heads / p->num_kv_heads);
    const int64_t block_stride = p->num_kv_heads * D * 16;
    const int64_t group = ACC_REGISTERS / (D / 16) < R_MAX ? ACC_REGISTERS / (D / 16) : R_MAX; /* rows per pass */
    const int32_t *table = p->block_tables + s * p->max_blocks;
    const float *k_base = p->k_cache + h * D * 16, *v_base = p->v_cache + h * D * 16;
    for (int64_t r0 = 0; r0 < rows; r0 += group) {
        const int64_t nr = rows - r0 < group ? rows - r0 : group;
        const float *q_rows[R_MAX];
        float *out_rows[R_MAX];
        int64_t row_pos[R_MAX];
        const int64_t num_keys = locate_rows(p, s, h, i0, r0, nr, nr, q_rows, out_rows, row_pos);
        if (D == 32) { ATTEND_ROWS_SWITCH(2) } else if (D == 64) { ATTEND_ROWS_SWITCH(4) } else { ATTEND_ROWS_SWITCH(8) }
    }
}
#endif

void paged_attention_f32(const float *q, const float *k_cache, const float *v_cache,
                         const int32_t *block_tables, const int32_t *query_start, const int32_t *seq_lens,
                         float *out, int64_t q_stride, int64_t num_seqs, int64_t max_blocks, int64_t num_heads,
                         int64_t num_kv_heads, int64_t head_dim, int64_t block_size, float scale,
                         int num_threads) {
    const Problem p = {q, k_cache, v_cache, block_tables, query_start, seq_lens, out, q_stride,
                       max_blocks, num_heads, num_kv_heads, head_dim, block_size, scale};
    int64_t *tile_start = malloc((size_t)(num_seqs + 1) * sizeof(int64_t));
    tile_start[0] = 0;
    for (int64_t s = 0; s < num_seqs; s++) {
        const int64_t q_len = query_start[s + 1] - query_start[s];
        tile_start[s + 1] = tile_start[s] + (q_len + TILE_Q - 1) / TILE_Q;
    }
    const int64_t num_tasks = tile_start[num_seqs] * num_kv_heads;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
    for (int64_t task = 0; task < num_tasks; task++) {
        const int64_t tile = task / num_kv_heads, h = task % num_kv_heads;
        int64_t lo = 0, hi = num_seqs - 1; /* the sequence that owns this tile */
        while (lo < hi) {
            const int64_t mid = (lo + hi + 1) / 2;
            if (tile_start[mid] <= tile) lo = mid; else hi = mid - 1;
        }
        const int64_t i0 = (tile - tile_start[lo]) * TILE_Q;
        const int64_t q_len = query_start[lo + 1] - query_start[lo];
        const int64_t i1 = i0 + TILE_Q < q_len ? i0 + TILE_Q : q_len;
#ifdef __AVX512F__
        if (block_size == 16 && (head_dim == 32 || head_dim == 64 || head_dim == 128))
            attend_tile_avx512(&p, lo, h, i0, i1);
        else
#endif
        if (head_dim == 64 && block_size == 16)
            attend_tile(&p, lo, h, i0, i1, 64, 16);
        else if (head_dim == 128 && block_size == 16)
            attend_tile(&p, lo, h, i0, i1, 128, 16);
        else
            attend_tile(&p, lo, h, i0, i1, head_dim, block_size);
    }
    free(tile_start);
}

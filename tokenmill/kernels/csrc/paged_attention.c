/* Paged attention over a block pool, on the CPU: float32, any GQA group size, causal.
 *
 * One call attends every query token of a step (decode rows and prefill chunks alike) by
 * reading each sequence's keys and values straight from their blocks: nothing is gathered into
 * a padded copy first, so the KV is read once per step, which is what bounds decode speed.
 *
 * Work is split into tasks of (sequence, KV head, tile of up to TILE_Q query positions); the
 * query heads sharing a KV head are processed together so each key is loaded once for all of
 * them. Softmax is computed online, one key block at a time (flash attention's rescaling).
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define TILE_Q 16

typedef struct {
    const float *q;            /* [T, H, D] */
    const float *k_cache;      /* [num_blocks, KVH, D, block_size]: keys transposed per block */
    const float *v_cache;      /* [num_blocks, KVH, block_size, D] */
    const int32_t *block_tables; /* [S, max_blocks] */
    const int32_t *query_start;  /* [S + 1]: first query token of each sequence in q */
    const int32_t *seq_lens;     /* [S]: keys each sequence has after this step's tokens */
    float *out;                /* [T, H, D] */
    int64_t max_blocks, num_heads, num_kv_heads, head_dim, block_size;
    float scale;
} Problem;

/* exp(x) for x <= 0, to about 2e-7 relative: 2^n * 2^f with a degree-7 polynomial for 2^f.
 * Written out so the compiler can vectorize it, which libm's expf does not allow. */
static inline float exp_nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x;
    const float t = x * 1.44269504f;
    const float n = floorf(t + 0.5f);
    const float f = (t - n) * 0.69314718f;                        /* 2^(t-n) = e^f, |f| <= ln2/2 */
    float p = 1.0f / 5040.0f;
    p = p * f + 1.0f / 720.0f;
    p = p * f + 1.0f / 120.0f;
    p = p * f + 1.0f / 24.0f;
    p = p * f + 1.0f / 6.0f;
    p = p * f + 0.5f;
    p = p * f + 1.0f;
    p = p * f + 1.0f;
    const int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    __builtin_memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* Queries [i0, i1) of sequence s, every query head of KV head h. Inlined with constant D and BS
 * for the common shapes, so that a block's scores stay in registers. */
static inline __attribute__((always_inline)) void attend_tile(const Problem *p, int64_t s, int64_t h, int64_t i0,
                                                              int64_t i1, const int64_t D, const int64_t BS) {
    const int64_t G = p->num_heads / p->num_kv_heads;
    const int64_t q_len = p->query_start[s + 1] - p->query_start[s];
    const int64_t first_pos = p->seq_lens[s] - q_len; /* position of the sequence's first query */
    const int64_t rows = (i1 - i0) * G;
    float m[rows], l[rows], scores[BS];
    float *acc = calloc((size_t)(rows * D), sizeof(float));
    const float *q_rows[rows];
    int64_t row_pos[rows];
    for (int64_t r = 0; r < rows; r++) {
        const int64_t token = p->query_start[s] + i0 + r / G;
        q_rows[r] = p->q + (token * p->num_heads + h * G + r % G) * D;
        row_pos[r] = first_pos + i0 + r / G;
        m[r] = -FLT_MAX;
        l[r] = 0.0f;
    }
    const int64_t num_keys = first_pos + i1; /* the tile's last query sees keys [0, num_keys) */
    const int32_t *table = p->block_tables + s * p->max_blocks;
    for (int64_t b = 0; b * BS < num_keys; b++) {
        const int64_t base = ((int64_t)table[b] * p->num_kv_heads + h) * D * BS;
        const float *keys_t = p->k_cache + base, *values = p->v_cache + base;
        for (int64_t r = 0; r < rows; r++) { /* a row's scores against the block: D vector FMAs */
            const int64_t visible = row_pos[r] + 1 - b * BS; /* causal: keys up to the row's position */
            if (visible <= 0) continue;
            const float *q = q_rows[r];
            for (int64_t t = 0; t < BS; t++) scores[t] = 0.0f;
            for (int64_t d = 0; d < D; d++) {
                const float qd = q[d] * p->scale;
                for (int64_t t = 0; t < BS; t++) scores[t] += qd * keys_t[d * BS + t];
            }
            for (int64_t t = 0; t < BS; t++) scores[t] = t < visible ? scores[t] : -FLT_MAX;
            float block_max = -FLT_MAX;
            for (int64_t t = 0; t < BS; t++) block_max = fmaxf(block_max, scores[t]);
            const float new_max = block_max > m[r] ? block_max : m[r];
            const float correction = exp_nonpositive(m[r] - new_max);
            float sum = 0.0f;
            for (int64_t t = 0; t < BS; t++) {
                scores[t] = exp_nonpositive(scores[t] - new_max);
                sum += scores[t];
            }
            float *a = acc + r * D;
            for (int64_t d = 0; d < D; d++) a[d] *= correction;
            const int64_t used = visible < BS ? visible : BS;
            for (int64_t t = 0; t < used; t++) {
                const float weight = scores[t], *v = values + t * D;
                for (int64_t d = 0; d < D; d++) a[d] += weight * v[d];
            }
            m[r] = new_max;
            l[r] = l[r] * correction + sum;
        }
    }
    for (int64_t r = 0; r < rows; r++) {
        float *o = p->out + (q_rows[r] - p->q);
        const float inv = 1.0f / l[r];
        for (int64_t d = 0; d < D; d++) o[d] = acc[r * D + d] * inv;
    }
    free(acc);
}

void paged_attention_f32(const float *q, const float *k_cache, const float *v_cache,
                         const int32_t *block_tables, const int32_t *query_start, const int32_t *seq_lens,
                         float *out, int64_t num_seqs, int64_t max_blocks, int64_t num_heads,
                         int64_t num_kv_heads, int64_t head_dim, int64_t block_size, float scale,
                         int num_threads) {
    const Problem p = {q, k_cache, v_cache, block_tables, query_start, seq_lens, out,
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
        if (head_dim == 64 && block_size == 16)
            attend_tile(&p, lo, h, i0, i1, 64, 16);
        else if (head_dim == 128 && block_size == 16)
            attend_tile(&p, lo, h, i0, i1, 128, 16);
        else
            attend_tile(&p, lo, h, i0, i1, head_dim, block_size);
    }
    free(tile_start);
}

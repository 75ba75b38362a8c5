/* Multi-LoRA's delta for a whole mixed batch in one call per layer, float32 on the CPU:
 * y[t] += (x[t] A[s]^T) B[s]^T for every token t whose sequence uses the adapter in slot s
 * (slot -1: no adapter, y[t] untouched). Punica's SGMV on a CPU: tokens are grouped by slot, and
 * each group is cut into tiles; a tile shrinks its tokens through A (rank outputs each), then
 * expands them through B, both from cache: an adapter's matrices come from memory once per
 * thread per step, whatever its number of tokens.
 *
 * Layouts, per slot: A [rank_total, in] (nn.Linear's), and B transposed, [rank_total, out], so
 * that the expansion adds whole contiguous rows of B^T to y. A fused layer (q/k/v, gate/up) has
 * `num_shards` shards; shard i owns the output columns [shard_bounds[i], shard_bounds[i + 1]) and
 * the rank rows [i * max_rank, (i + 1) * max_rank): the expansion skips the zeros between them.
 * Ranks below max_rank are zero-padded. */
#include "vectors.h"

#define MAX_TILE 16
#define COLUMNS 64 /* the expansion's block of y: 4 vectors for each of 2 tokens stay in registers */

static inline float dot(const float *a, const float *b, int64_t n) {
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t k = 0; k < n; k++) sum += a[k] * b[k];
    return sum;
}

/* u[i, j] = A[j] . x[i] for 4 rows of A and 4 tokens at once: each 16 inputs, 8 loads feed 16 FMAs. */
INLINE void shrink_block(const float *a, const float *const x[4], int64_t in_features, float *u, int64_t rank_total,
                         int64_t j) {
    f32x16 acc[4][4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++)
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) acc[i][r] = (f32x16){0};
    for (int64_t k = 0; k < in_features; k += 16) {
        f32x16 av[4];
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) av[r] = load16(a + (j + r) * in_features + k);
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) {
            const f32x16 xv = load16(x[i] + k);
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++) acc[i][r] += xv * av[r];
        }
    }
    for (int i = 0; i < 4; i++)
        for (int r = 0; r < 4; r++) u[i * rank_total + j + r] = lane_sum(acc[i][r]);
}

/* y[t] += u[i, r] * B^T[r] over one shard's rank rows and output columns [first, last), for 2 tokens
 * at a time (the second may be the first again: then only the first is stored). */
INLINE void expand_pair(float *y0, float *y1, const float *u0, const float *u1, const float *bt, int64_t out_features,
                        int64_t r0, int64_t r1, int64_t first, int64_t last) {
    int64_t n = first;
    for (; n + COLUMNS <= last; n += COLUMNS) {
        f32x16 acc0[4], acc1[4];
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) acc0[c] = load16(y0 + n + 16 * c), acc1[c] = load16(y1 + n + 16 * c);
        for (int64_t r = r0; r < r1; r++) {
            const float *b = bt + r * out_features + n;
            const float c0 = u0[r], c1 = u1[r];
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) {
                const f32x16 bv = load16(b + 16 * c);
                acc0[c] += c0 * bv;
                acc1[c] += c1 * bv;
            }
        }
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            store16(y1 + n + 16 * c, acc1[c]);
            store16(y0 + n + 16 * c, acc0[c]); /* last: where y1 is y0, y0's sums stand */
        }
    }
    for (; n < last; n++) {
        float s0 = y0[n], s1 = y1[n];
        for (int64_t r = r0; r < r1; r++) s0 += u0[r] * bt[r * out_features + n], s1 += u1[r] * bt[r * out_features + n];
        y1[n] = s1;
        y0[n] = s0;
    }
}

static void tile_delta(const float *x, int64_t x_stride, float *y, int64_t y_stride, const int32_t *tokens,
                       int64_t count, const float *a, const float *bt, int64_t in_features,
                       int64_t out_features, int64_t max_rank, const int64_t *shard_bounds, int64_t num_shards) {
    const int64_t rank_total = num_shards * max_rank;
    float u[MAX_TILE * rank_total];
    int64_t i = 0;
    if (in_features % 16 == 0) { /* blocks of 4 tokens and 4 rows of A; the rest below, one by one */
        for (; i + 4 <= count; i += 4) {
            const float *xs[4] = {x + tokens[i] * x_stride, x + tokens[i + 1] * x_stride,
                                  x + tokens[i + 2] * x_stride, x + tokens[i + 3] * x_stride};
            int64_t j = 0;
            for (; j + 4 <= rank_total; j += 4) shrink_block(a, xs, in_features, u + i * rank_total, rank_total, j);
            for (; j < rank_total; j++)
                for (int t = 0; t < 4; t++) u[(i + t) * rank_total + j] = dot(a + j * in_features, xs[t], in_features);
        }
    }
    for (; i < count; i++)
        for (int64_t j = 0; j < rank_total; j++)
            u[i * rank_total + j] = dot(a + j * in_features, x + tokens[i] * x_stride, in_features);
    for (i = 0; i < count; i += 2) {
        const int64_t other = i + 1 < count ? i + 1 : i;
        float *y0 = y + tokens[i] * y_stride, *y1 = y + tokens[other] * y_stride;
        const float *u0 = u + i * rank_total, *u1 = other == i ? u0 : u + other * rank_total;
        for (int64_t shard = 0; shard < num_shards; shard++)
            expand_pair(y0, y1, u0, u1, bt, out_features, shard * max_rank, (shard + 1) * max_rank,
                        shard_bounds[shard], shard_bounds[shard + 1]);
    }
}

void lora_delta_f32(const float *x, int64_t x_stride, float *y, int64_t y_stride, const int32_t *token_slots,
                    int64_t num_tokens, const float *lora_a, const float *lora_bt, int64_t num_slots,
                    int64_t in_features, int64_t out_features, int64_t max_rank, const int64_t *shard_bounds,
                    int64_t num_shards, int num_threads) {
    /* group the tokens by slot (a counting sort: slots are few) */
    int64_t starts[num_slots + 1];
    for (int64_t s = 0; s <= num_slots; s++) starts[s] = 0;
    int64_t with_adapter = 0;
    for (int64_t t = 0; t < num_tokens; t++) {
        const int32_t s = token_slots[t];
        if (s >= 0 && s < num_slots) starts[s + 1]++, with_adapter++;
    }
    if (with_adapter == 0) return;
    for (int64_t s = 0; s < num_slots; s++) starts[s + 1] += starts[s];
    int32_t order[with_adapter];
    int64_t fill[num_slots];
    for (int64_t s = 0; s < num_slots; s++) fill[s] = starts[s];
    for (int64_t t = 0; t < num_tokens; t++) {
        const int32_t s = token_slots[t];
        if (s >= 0 && s < num_slots) order[fill[s]++] = (int32_t)t;
    }
    /* tiles of at most MAX_TILE tokens of one slot, small enough that every thread has one */
    int64_t tile = (with_adapter + num_threads - 1) / num_threads;
    tile = tile < 1 ? 1 : tile > MAX_TILE ? MAX_TILE : tile;
    int64_t num_items = 0;
    int64_t item_slot[with_adapter], item_first[with_adapter], item_count[with_adapter];
    for (int64_t s = 0; s < num_slots; s++) {
        for (int64_t first = starts[s]; first < starts[s + 1]; first += tile) {
            const int64_t left = starts[s + 1] - first;
            item_slot[num_items] = s, item_first[num_items] = first;
            item_count[num_items++] = left < tile ? left : tile;
        }
    }
    const int64_t rank_total = num_shards * max_rank;
    const int64_t work = with_adapter * rank_total * (in_features + out_features);
#pragma omp parallel for num_threads(num_threads) schedule(dynamic, 1) if (num_items > 1 && work >= 262144)
    for (int64_t item = 0; item < num_items; item++) {
        const int64_t s = item_slot[item];
        tile_delta(x, x_stride, y, y_stride, order + item_first[item], item_count[item],
                   lora_a + s * rank_total * in_features, lora_bt + s * rank_total * out_features, in_features,
                   out_features, max_rank, shard_bounds, num_shards);
    }
}

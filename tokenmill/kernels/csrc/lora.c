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
#include <stdint.h>

#define MAX_TILE 16

static inline float dot(const float *a, const float *b, int64_t n) {
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t k = 0; k < n; k++) sum += a[k] * b[k];
    return sum;
}

static void tile_delta(const float *x, int64_t x_stride, float *y, int64_t y_stride, const int32_t *tokens,
                       int64_t count, const float *a, const float *bt, int64_t in_features,
                       int64_t out_features, int64_t max_rank, const int64_t *shard_bounds, int64_t num_shards) {
    const int64_t rank_total = num_shards * max_rank;
    float u[MAX_TILE * rank_total];
    for (int64_t j = 0; j < rank_total; j++) { /* A's row j stays in L1 across the tile's tokens */
        const float *a_row = a + j * in_features;
        for (int64_t i = 0; i < count; i++) u[i * rank_total + j] = dot(a_row, x + tokens[i] * x_stride, in_features);
    }
    for (int64_t i = 0; i < count; i++) {
        float *y_row = y + tokens[i] * y_stride;
        for (int64_t shard = 0; shard < num_shards; shard++) {
            const int64_t first = shard_bounds[shard], last = shard_bounds[shard + 1];
            for (int64_t r = shard * max_rank; r < (shard + 1) * max_rank; r++) {
                const float c = u[i * rank_total + r];
                const float *b_row = bt + r * out_features;
#pragma omp simd
                for (int64_t n = first; n < last; n++) y_row[n] += c * b_row[n];
            }
        }
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

/* Weight-only quantized matrix products with float32 activations:
 *   y[M, N] = x[M, K] @ W[N, K]^T (+ bias),  W[n, k] = q[n, k] * scale[g, n] + offset[g, n]
 * where q is an 8- or 4-bit integer and g = k / group (offset optional).
 *
 * Layout (packed by tokenmill/quant/packing.py): output channels in tiles of 16, tiles in blocks
 * of four, and input channels in pairs: one 32- or 16-byte load holds two input channels of a
 * tile's 16 outputs, and a block's four tiles sit side by side for each pair, so a thread reads
 * its block as one sequential stream. int8: [N/64][K/2][4][2][16] bytes; int4: [N/64][K/2][4][16]
 * bytes with channel k in the low nibble and k + 1 in the high one. Scales and offsets:
 * [K/group][N] floats. N is padded to a multiple of 64 with zero weights, and so is y: [M, n_pad].
 *
 * Integers become floats in registers, two rows of a tile at a time, and meet broadcast
 * activations there: the bytes read from memory are the quantized ones. Within a group the
 * products add up unscaled; the scale, and the offset times the group's activation sum, are
 * applied once per group. Written with GCC vector extensions: AVX-512 where the machine has it,
 * narrower SIMD elsewhere, one source.
 */
#include <stdint.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif
#include <stdlib.h>
#include <string.h>

typedef float f32x16 __attribute__((vector_size(64)));
typedef int8_t i8x16 __attribute__((vector_size(16)));
typedef uint8_t u8x16 __attribute__((vector_size(16)));

#define TILE 16
#define TILES_PER_BLOCK 4
#define PREFETCH_PAIRS 32 /* how many pairs of channels ahead a single-row stream asks for */
#define MAX_ROWS 12       /* rows of x per micro-kernel: 12 x 2 accumulators fill the registers */

typedef struct {
    const float *x, *scale, *offset, *bias, *xsum;
    const uint8_t *w;
    float *y;
    int64_t ldx, M, K, n_pad, group, groups;
} Problem;

#define INLINE static inline __attribute__((always_inline))

INLINE f32x16 load16(const float *p) {
    f32x16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* a * b + c as one instruction: the build's -fassociative-math would otherwise regroup a pair of
 * multiply-adds into a multiply, a multiply-add and an add. */
INLINE f32x16 fma16(f32x16 a, f32x16 b, f32x16 c) {
#ifdef __AVX512F__
    return _mm512_fmadd_ps(a, b, c);
#else
    return a * b + c;
#endif
}

/* Input channels k and k + 1 of one tile's 16 outputs, widened to floats. GCC turns a generic
 * byte-to-float vector conversion into scalar code, so AVX-512 gets the two instructions by name. */
INLINE void widen_pair(int bits, const uint8_t *p, f32x16 *even, f32x16 *odd) {
#ifdef __AVX512F__
    const __m128i a = _mm_loadu_si128((const __m128i *)p);
    if (bits == 8) {
        *even = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(a));
        *odd = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 16))));
    } else { /* a permute reads only an index's low 4 bits: a 16-float table turns nibbles to floats */
        const __m512 levels = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        const __m512i wide = _mm512_cvtepu8_epi32(a);
        *even = _mm512_permutexvar_ps(wide, levels);
        *odd = _mm512_permutexvar_ps(_mm512_srli_epi32(wide, 4), levels);
    }
#else
    u8x16 a;
    memcpy(&a, p, 16);
    if (bits == 8) {
        i8x16 b;
        memcpy(&b, p + 16, 16);
        *even = __builtin_convertvector((i8x16)a, f32x16);
        *odd = __builtin_convertvector(b, f32x16);
    } else {
        *even = __builtin_convertvector(a & 15, f32x16);
        *odd = __builtin_convertvector(a >> 4, f32x16);
    }
#endif
}

/* Rows m0..m0+R of y for tiles t0..t0+C. The accumulators of one group stay in registers; y
 * gathers the scaled groups in memory. SPLIT keeps even and odd channels in separate
 * accumulators: with few rows that breaks the chain of dependent multiply-adds. */
INLINE void micro_kernel(const Problem *p, int bits, int R, int C, int SPLIT, int64_t m0, int64_t t0) {
    const int64_t pair_bytes = 4 * bits, row_bytes = TILES_PER_BLOCK * pair_bytes; /* a pair: 16 x 2 x bits / 8 */
    float *y = p->y + m0 * p->n_pad + t0 * TILE;
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            const f32x16 init = p->bias ? load16(p->bias + (t0 + c) * TILE) : (f32x16){0};
            memcpy(y + r * p->n_pad + c * TILE, &init, sizeof init);
        }
    for (int64_t g = 0; g < p->groups; g++) {
        f32x16 acc[MAX_ROWS][TILES_PER_BLOCK][2];
#pragma GCC unroll 16
        for (int r = 0; r < R; r++)
#pragma GCC unroll 16
            for (int c = 0; c < C; c++) acc[r][c][0] = acc[r][c][SPLIT - 1] = (f32x16){0};
        const uint8_t *w = p->w + (t0 / TILES_PER_BLOCK) * (p->K / 2) * row_bytes + (t0 % TILES_PER_BLOCK) * pair_bytes +
                           g * (p->group / 2) * row_bytes;
        const float *x = p->x + m0 * p->ldx + g * p->group;
        for (int64_t k = 0; k < p->group; k += 2, w += row_bytes) {
            /* One row streams its block once: fetch ahead of the hardware prefetcher. */
            if (R == 1)
                for (int line = 0; line < row_bytes; line += 64) __builtin_prefetch(w + PREFETCH_PAIRS * row_bytes + line);
            f32x16 even[TILES_PER_BLOCK], odd[TILES_PER_BLOCK];
#pragma GCC unroll 16
            for (int c = 0; c < C; c++) widen_pair(bits, w + c * pair_bytes, &even[c], &odd[c]);
#pragma GCC unroll 16
            for (int r = 0; r < R; r++) {
                const f32x16 xe = (f32x16){0} + x[r * p->ldx + k], xo = (f32x16){0} + x[r * p->ldx + k + 1];
#pragma GCC unroll 16
                for (int c = 0; c < C; c++) {
                    acc[r][c][0] = fma16(xe, even[c], acc[r][c][0]);
                    acc[r][c][SPLIT - 1] = fma16(xo, odd[c], acc[r][c][SPLIT - 1]);
                }
            }
        }
        for (int c = 0; c < C; c++) {
            const f32x16 scale = load16(p->scale + g * p->n_pad + (t0 + c) * TILE);
            const f32x16 offset = p->offset ? load16(p->offset + g * p->n_pad + (t0 + c) * TILE) : (f32x16){0};
            for (int r = 0; r < R; r++) {
                float *out = y + r * p->n_pad + c * TILE;
                f32x16 sum = load16(out) + (SPLIT == 2 ? acc[r][c][0] + acc[r][c][1] : acc[r][c][0]) * scale;
                if (p->offset) sum += p->xsum[(m0 + r) * p->groups + g] * offset;
                memcpy(out, &sum, sizeof sum);
            }
        }
    }
}

/* One block of tiles for every row of x, MAX_ROWS at a time (the block's weights stay in cache).
 * With at most two rows (few_rows), four tiles with split accumulators; else two tiles. */
#define ROW_CASE(BITS, R) \
    case R: micro_kernel(p, BITS, R, 2, 1, m0, t0); break;
#define DEFINE_COLUMN_BLOCK(BITS)                                                                   \
    static void column_block_##BITS(const Problem *p, int64_t t0, int few_rows) {                  \
        for (int64_t m0 = 0; m0 < p->M; m0 += MAX_ROWS) {                                          \
            const int64_t rows = p->M - m0 < MAX_ROWS ? p->M - m0 : MAX_ROWS;                      \
            if (few_rows) {                                                                         \
                if (rows == 1) micro_kernel(p, BITS, 1, 4, 2, m0, t0);                              \
                else micro_kernel(p, BITS, 2, 4, 2, m0, t0);                                        \
                continue;                                                                           \
            }                                                                                       \
            switch (rows) {                                                                         \
                ROW_CASE(BITS, 1) ROW_CASE(BITS, 2) ROW_CASE(BITS, 3) ROW_CASE(BITS, 4)             \
                ROW_CASE(BITS, 5) ROW_CASE(BITS, 6) ROW_CASE(BITS, 7) ROW_CASE(BITS, 8)             \
                ROW_CASE(BITS, 9) ROW_CASE(BITS, 10) ROW_CASE(BITS, 11) ROW_CASE(BITS, 12)          \
            }                                                                                       \
        }                                                                                           \
    }
DEFINE_COLUMN_BLOCK(8)
DEFINE_COLUMN_BLOCK(4)

/* y = x @ W^T (+ bias) for W packed as described above; bits is 8 or 4. x rows are ldx apart;
 * y is dense [M, n_pad]. scale/offset/bias are padded to n_pad; offset and bias may be NULL. */
void quant_matmul_f32(const float *x, int64_t ldx, const uint8_t *w, const float *scale, const float *offset,
                      const float *bias, float *y, int64_t M, int64_t K, int64_t n_pad, int64_t group,
                      int bits, int num_threads) {
    Problem p = {x, scale, offset, bias, NULL, w, y, ldx, M, K, n_pad, group, K / group};
    float *xsum = NULL;
    if (offset) { /* each row's activation sum per group: the offset's share of every output */
        xsum = malloc(M * p.groups * sizeof(float));
#pragma omp parallel for num_threads(num_threads) if (M * K >= 65536)
        for (int64_t i = 0; i < M * p.groups; i++) {
            const float *row = x + (i / p.groups) * ldx + (i % p.groups) * group;
            float sum = 0.0f;
            for (int64_t k = 0; k < group; k++) sum += row[k];
            xsum[i] = sum;
        }
        p.xsum = xsum;
    }
    const int few_rows = M <= 2, tiles = few_rows ? 4 : 2;
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t b = 0; b < n_pad / TILE / tiles; b++) {
        if (bits == 8) column_block_8(&p, b * tiles, few_rows);
        else column_block_4(&p, b * tiles, few_rows);
    }
    free(xsum);
}

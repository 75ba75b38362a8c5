/* Weight-only quantized matrix products with float32 activations:
 *   y[M, N] = x[M, K] @ W[N, K]^T (+ bias),  W[n, k] = q[n, k] * scale[g, n] + offset[g, n]
 * where q is an 8- or 4-bit integer and g = k / group (offset optional).
 *
 * Layout (packed by tokenmill/quant/packing.py): output channels in tiles of 16, tiles in blocks
 * of four, input channels in steps (2 for int8, 8 for int4), and a block's four tiles side by side
 * for each step, so a thread reads its block as one sequential stream. A tile's step is one load:
 *   int8: [N/64][K/2][4][2][16] bytes, channels k and k + 1 of 16 outputs;
 *   int4: [N/64][K/8][4][16] 32-bit words, one an output, holding channel k + 2j in nibble j and
 *         k + 2j + 1 in nibble 4 + j (j < 4): shifted by 4j and masked, a word gives the pair
 *         (k + 2j, k + 2j + 1) as two 16-bit integers, the form integer dot products take.
 * Scales and offsets: [N/64][K/group][64] floats, a block's one stream beside its weights. N is
 * padded to a multiple of 64 with zero weights, and so is y: [M, n_pad].
 *
 * Float path: integers become floats in registers, two channels of a tile at a time, and meet
 * broadcast activations there: the bytes read from memory are the quantized ones. Within a group
 * the products add up unscaled; the scale, and the offset times the group's activation sum, are
 * applied once per group. Written with GCC vector extensions: AVX-512 where the machine has it,
 * narrower SIMD elsewhere, one source.
 *
 * Integer path, 4-bit weights on a CPU with AVX-512 VNNI: each row's activations are rounded to
 * int16 per weight group (scale = max |x| / 32767: a relative error near 1e-5, where int8 would
 * cost this model ten times int4's KL divergence), and one vpdpwssd multiplies a pair of channels
 * of 16 outputs and adds both products to int32, with a shift and a mask to unpack them instead of
 * a conversion to float. The offset term uses the exact float sum of the activations.
 */
#include <stdint.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif
#include <stdlib.h>
#include <string.h>
#include "vectors.h"

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define INTEGER_PATH 1
#else
#define INTEGER_PATH 0
#endif
/* Groups up to this many channels: 15 x 32767 x 4369 would overflow the int32 sums. */
#define INTEGER_PATH_MAX_GROUP 4096

typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef int8_t i8x16 __attribute__((vector_size(16)));

#define TILE 16
#define TILES_PER_BLOCK 4
#define PREFETCH_BYTES 4096 /* how far ahead of a single-row stream to fetch */
#define MAX_ROWS 12         /* rows of x per micro-kernel: 12 x 2 accumulators fill the registers */

typedef struct {
    const float *x, *scale, *offset, *bias, *xsum;
    const int16_t *xq; /* the integer path's activations, [M][K], with a scale per row and group in dx */
    const float *dx;
    const uint8_t *w;
    float *y;
    int64_t ldx, M, K, n_pad, group, groups;
} Problem;


/* Input channels per step and bytes per tile and step (see the layout above). */
INLINE int64_t step_channels(int bits) { return bits == 8 ? 2 : 8; }
INLINE int64_t tile_bytes(int bits) { return bits == 8 ? 32 : 64; }

/* a * b + c as one instruction: the build's -fassociative-math would otherwise regroup a pair of
 * multiply-adds into a multiply, a multiply-add and an add. */
INLINE f32x16 fma16(f32x16 a, f32x16 b, f32x16 c) {
#ifdef __AVX512F__
    return _mm512_fmadd_ps(a, b, c);
#else
    return a * b + c;
#endif
}

/* Input channels k + 2j and k + 2j + 1 of one tile's 16 outputs (pair j of the step), widened to
 * floats. GCC turns a generic byte-to-float vector conversion into scalar code, so AVX-512 gets
 * the int8 instructions by name. */
INLINE void widen_pair(int bits, const uint8_t *p, int j, f32x16 *first, f32x16 *second) {
    if (bits == 8) {
#ifdef __AVX512F__
        *first = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
        *second = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 16))));
#else
        i8x16 a, b;
        memcpy(&a, p, 16);
        memcpy(&b, p + 16, 16);
        *first = __builtin_convertvector(a, f32x16);
        *second = __builtin_convertvector(b, f32x16);
#endif
    } else {
        i32x16 v;
        memcpy(&v, p, sizeof v);
        *first = __builtin_convertvector((v >> (4 * j)) & 15, f32x16);
        *second = __builtin_convertvector((v >> (4 * j + 16)) & 15, f32x16);
    }
}

/* y's rows m0..m0+R, tiles t0..t0+C, set to the bias (or zero) before the groups add up in them. */
INLINE void init_output(const Problem *p, int R, int C, int64_t m0, int64_t t0) {
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            const f32x16 init = p->bias ? load16(p->bias + (t0 + c) * TILE) : (f32x16){0};
            memcpy(p->y + (m0 + r) * p->n_pad + (t0 + c) * TILE, &init, sizeof init);
        }
}

/* Where tile t0's bytes of group g begin. */
INLINE const uint8_t *group_start(const Problem *p, int bits, int64_t t0, int64_t g) {
    const int64_t step_bytes = TILES_PER_BLOCK * tile_bytes(bits), steps = p->K / step_channels(bits);
    return p->w + (t0 / TILES_PER_BLOCK) * steps * step_bytes + (t0 % TILES_PER_BLOCK) * tile_bytes(bits) +
           g * (p->group / step_channels(bits)) * step_bytes;
}

/* Tile t0's 16 scales (or offsets) for group g. */
INLINE f32x16 group_scales(const Problem *p, const float *base, int64_t t0, int64_t g) {
    return load16(base + ((t0 / TILES_PER_BLOCK) * p->groups + g) * TILE * TILES_PER_BLOCK + (t0 % TILES_PER_BLOCK) * TILE);
}

/* Group g's sums for row m and tile t, dot (times row_scale, the integer path's activation
 * scale), scaled and offset into y. */
INLINE void add_group(const Problem *p, int64_t m, int64_t t, int64_t g, f32x16 dot, float row_scale) {
    float *out = p->y + m * p->n_pad + t * TILE;
    f32x16 sum = fma16(dot, group_scales(p, p->scale, t, g) * row_scale, load16(out));
    if (p->offset) sum += p->xsum[m * p->groups + g] * group_scales(p, p->offset, t, g);
    memcpy(out, &sum, sizeof sum);
}

/* One row streams its block once: fetch ahead of the hardware prefetcher. */
INLINE void prefetch_ahead(const uint8_t *w, int64_t step_bytes) {
    for (int line = 0; line < step_bytes; line += 64) __builtin_prefetch(w + PREFETCH_BYTES + line);
}

/* Rows m0..m0+R of y for tiles t0..t0+C, float activations. The accumulators of one group stay in
 * registers; y gathers the scaled groups in memory. Four tiles are the few-rows shape, which keeps
 * even and odd channels in separate accumulators: that breaks the chain of dependent multiply-adds. */
INLINE void micro_kernel(const Problem *p, int bits, int R, int C, int64_t m0, int64_t t0) {
    const int SPLIT = C == 4 ? 2 : 1;
    const int64_t step_bytes = TILES_PER_BLOCK * tile_bytes(bits);
    init_output(p, R, C, m0, t0);
    for (int64_t g = 0; g < p->groups; g++) {
        f32x16 acc[MAX_ROWS][TILES_PER_BLOCK][2];
#pragma GCC unroll 16
        for (int r = 0; r < R; r++)
#pragma GCC unroll 16
            for (int c = 0; c < C; c++) acc[r][c][0] = acc[r][c][SPLIT - 1] = (f32x16){0};
        const uint8_t *w = group_start(p, bits, t0, g);
        const float *x = p->x + m0 * p->ldx + g * p->group;
        for (int64_t k = 0; k < p->group; k += step_channels(bits), w += step_bytes) {
            if (R == 1) prefetch_ahead(w, step_bytes);
#pragma GCC unroll 4
            for (int j = 0; j < step_channels(bits) / 2; j++) {
                const int64_t first = k + 2 * j, second = first + 1;
                f32x16 even[TILES_PER_BLOCK], odd[TILES_PER_BLOCK];
#pragma GCC unroll 16
                for (int c = 0; c < C; c++) widen_pair(bits, w + c * tile_bytes(bits), j, &even[c], &odd[c]);
#pragma GCC unroll 16
                for (int r = 0; r < R; r++) {
                    const f32x16 xe = (f32x16){0} + x[r * p->ldx + first], xo = (f32x16){0} + x[r * p->ldx + second];
#pragma GCC unroll 16
                    for (int c = 0; c < C; c++) {
                        acc[r][c][0] = fma16(xe, even[c], acc[r][c][0]);
                        acc[r][c][SPLIT - 1] = fma16(xo, odd[c], acc[r][c][SPLIT - 1]);
                    }
                }
            }
        }
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++)
                add_group(p, m0 + r, t0 + c, g, SPLIT == 2 ? acc[r][c][0] + acc[r][c][1] : acc[r][c][0], 1.0f);
    }
}

INLINE void float_x_int8_w(const Problem *p, int R, int C, int64_t m0, int64_t t0) {
    micro_kernel(p, 8, R, C, m0, t0);
}

INLINE void float_x_int4_w(const Problem *p, int R, int C, int64_t m0, int64_t t0) {
    micro_kernel(p, 4, R, C, m0, t0);
}

#if INTEGER_PATH
/* acc + in each 32-bit lane, the two products of a's and b's signed 16-bit halves. Written as one
 * instruction: GCC copies the accumulator registers around the intrinsic in every iteration. */
INLINE __m512i dot_pairs(__m512i acc, __m512i a, __m512i b) {
    __asm__("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
    return acc;
}

/* As micro_kernel for 4-bit weights, with int16 activations and int32 accumulators per group. */
INLINE void int16_x_int4_w(const Problem *p, int R, int C, int64_t m0, int64_t t0) {
    const int SPLIT = C == 4 ? 2 : 1;
    const int64_t step_bytes = TILES_PER_BLOCK * tile_bytes(4);
    const __m512i nibbles = _mm512_set1_epi32(0x000F000F);
    init_output(p, R, C, m0, t0);
    for (int64_t g = 0; g < p->groups; g++) {
        __m512i acc[MAX_ROWS][TILES_PER_BLOCK][2];
#pragma GCC unroll 16
        for (int r = 0; r < R; r++)
#pragma GCC unroll 16
            for (int c = 0; c < C; c++) acc[r][c][0] = acc[r][c][SPLIT - 1] = _mm512_setzero_si512();
        const uint8_t *w = group_start(p, 4, t0, g);
        const int16_t *x = p->xq + m0 * p->K + g * p->group;
        for (int64_t k = 0; k < p->group; k += 8, w += step_bytes) {
            if (R == 1) prefetch_ahead(w, step_bytes);
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                __m512i pair[TILES_PER_BLOCK];
#pragma GCC unroll 16
                for (int c = 0; c < C; c++)
                    pair[c] = _mm512_and_si512(_mm512_srli_epi32(_mm512_loadu_si512(w + c * tile_bytes(4)), 4 * j), nibbles);
#pragma GCC unroll 16
                for (int r = 0; r < R; r++) {
                    int32_t two;
                    memcpy(&two, x + r * p->K + k + 2 * j, sizeof two);
                    const __m512i xb = _mm512_set1_epi32(two);
#pragma GCC unroll 16
                    for (int c = 0; c < C; c++) acc[r][c][j % SPLIT] = dot_pairs(acc[r][c][j % SPLIT], pair[c], xb);
                }
            }
        }
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++) {
                const __m512i dot = SPLIT == 2 ? _mm512_add_epi32(acc[r][c][0], acc[r][c][1]) : acc[r][c][0];
                add_group(p, m0 + r, t0 + c, g, (f32x16)_mm512_cvtepi32_ps(dot), p->dx[(m0 + r) * p->groups + g]);
            }
    }
}
#endif

/* One block of tiles for every row of x, MAX_ROWS at a time (the block's weights stay in cache).
 * With at most two rows (few_rows), four tiles; else two tiles. */
#define ROW_CASE(KERNEL, R) \
    case R: KERNEL(p, R, 2, m0, t0); break;
#define DEFINE_COLUMN_BLOCK(KERNEL)                                                                 \
    static void column_block_##KERNEL(const Problem *p, int64_t t0, int few_rows) {                \
        for (int64_t m0 = 0; m0 < p->M; m0 += MAX_ROWS) {                                          \
            const int64_t rows = p->M - m0 < MAX_ROWS ? p->M - m0 : MAX_ROWS;                      \
            if (few_rows) {                                                                         \
                if (rows == 1) KERNEL(p, 1, 4, m0, t0);                                             \
                else KERNEL(p, 2, 4, m0, t0);                                                       \
                continue;                                                                           \
            }                                                                                       \
            switch (rows) {                                                                         \
                ROW_CASE(KERNEL, 1) ROW_CASE(KERNEL, 2) ROW_CASE(KERNEL, 3) ROW_CASE(KERNEL, 4)     \
                ROW_CASE(KERNEL, 5) ROW_CASE(KERNEL, 6) ROW_CASE(KERNEL, 7) ROW_CASE(KERNEL, 8)     \
                ROW_CASE(KERNEL, 9) ROW_CASE(KERNEL, 10) ROW_CASE(KERNEL, 11) ROW_CASE(KERNEL, 12)  \
            }                                                                                       \
        }                                                                                           \
    }
DEFINE_COLUMN_BLOCK(float_x_int8_w)
DEFINE_COLUMN_BLOCK(float_x_int4_w)
#if INTEGER_PATH
DEFINE_COLUMN_BLOCK(int16_x_int4_w)
#endif

/* Whether this build has the integer path for 4-bit weights (groups of a multiple of 16 channels,
 * at most INTEGER_PATH_MAX_GROUP). */
int quant_matmul_has_integer_path(void) { return INTEGER_PATH; }

/* Per row and group of x: the activation sum (the offset's share of every output) and, for the
 * integer path, the int16 values, rounded half to even, with their scale. */
static void prepare_rows(Problem *p, float *xsum, int16_t *xq, float *dx, int num_threads) {
#pragma omp parallel for num_threads(num_threads) if (p->M * p->K >= 65536)
    for (int64_t i = 0; i < p->M * p->groups; i++) {
        const int64_t m = i / p->groups, g = i % p->groups;
        const float *row = p->x + m * p->ldx + g * p->group;
        float sum = 0.0f, amax = 0.0f;
        for (int64_t k = 0; k < p->group; k++) {
            sum += row[k];
            amax = amax > __builtin_fabsf(row[k]) ? amax : __builtin_fabsf(row[k]);
        }
        if (xsum) xsum[i] = sum;
#if INTEGER_PATH
        if (xq) {
            dx[i] = amax / 32767;
            const __m512 divisor = _mm512_set1_ps(dx[i] > 0 ? dx[i] : __FLT_MIN__);
            for (int64_t k = 0; k < p->group; k += 16) {
                const __m512i q = _mm512_cvtps_epi32(_mm512_div_ps(_mm512_loadu_ps(row + k), divisor));
                _mm256_storeu_si256((__m256i *)(xq + m * p->K + g * p->group + k), _mm512_cvtsepi32_epi16(q));
            }
        }
#else
        (void)xq, (void)dx, (void)amax;
#endif
    }
}

/* y = x @ W^T (+ bias) for W packed as described above; bits is 8 or 4. x rows are ldx apart;
 * y is dense [M, n_pad]. bias is padded to n_pad; offset and bias may be NULL. integer_path asks
 * for the integer path for 4-bit weights, which it takes where this build has one. */
void quant_matmul_f32(const float *x, int64_t ldx, const uint8_t *w, const float *scale, const float *offset,
                      const float *bias, float *y, int64_t M, int64_t K, int64_t n_pad, int64_t group,
                      int bits, int integer_path, int num_threads) {
    Problem p = {x, scale, offset, bias, NULL, NULL, NULL, w, y, ldx, M, K, n_pad, group, K / group};
    const int integer = INTEGER_PATH && integer_path && bits == 4 && group % 16 == 0 && group <= INTEGER_PATH_MAX_GROUP;
    float *xsum = offset ? malloc(M * p.groups * sizeof(float)) : NULL;
    int16_t *xq = integer ? malloc(M * K * sizeof(int16_t)) : NULL;
    float *dx = integer ? malloc(M * p.groups * sizeof(float)) : NULL;
    if (xsum || xq) prepare_rows(&p, xsum, xq, dx, num_threads);
    p.xsum = xsum, p.xq = xq, p.dx = dx;
    const int few_rows = M <= 2, tiles = few_rows ? 4 : 2;
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t b = 0; b < n_pad / TILE / tiles; b++) {
#if INTEGER_PATH
        if (integer) {
            column_block_int16_x_int4_w(&p, b * tiles, few_rows);
            continue;
        }
#endif
        if (bits == 8) column_block_float_x_int8_w(&p, b * tiles, few_rows);
        else column_block_float_x_int4_w(&p, b * tiles, few_rows);
    }
    free(xsum);
    free(xq);
    free(dx);
}

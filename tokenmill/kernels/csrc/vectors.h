/* 16 float32 lanes as GCC vector extensions (one AVX-512 register; the compiler splits them where
 * the CPU has narrower ones), and the few operations on them the kernels share. */
#ifndef TOKENMILL_VECTORS_H
#define TOKENMILL_VECTORS_H

#include <stdint.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#define INLINE static inline __attribute__((always_inline))

typedef float f32x16 __attribute__((vector_size(64)));

/* Unaligned loads and stores: memcpy compiles to one vector move. */
INLINE f32x16 load16(const float *p) {
    f32x16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

INLINE void store16(float *p, f32x16 v) { memcpy(p, &v, sizeof v); }

INLINE float lane_sum(f32x16 v) {
#ifdef __AVX512F__
    __m512 m;
    memcpy(&m, &v, sizeof m);
    return _mm512_reduce_add_ps(m);
#else
    float sum = 0.0f;
    for (int i = 0; i < 16; i++) sum += v[i];
    return sum;
#endif
}

#endif

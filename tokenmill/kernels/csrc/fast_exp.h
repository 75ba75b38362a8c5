/* A vectorizable exp for the kernels (libm's expf keeps loops from vectorizing). */
#pragma once
#include <math.h>
#include <stdint.h>

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

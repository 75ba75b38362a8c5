/* A recorded decode step run as one C call: each entry is a kernel's address with its arguments,
 * the integer-class ones (pointers, int64, int) in order and the float ones in order.
 *
 * Every entry is called through one prototype with more integer and float parameters than any
 * kernel takes. Under the System V x86-64 and the AArch64 (Linux) calling conventions integer
 * and floating-point arguments take separate register sequences and surplus stack arguments are
 * the caller's, so a kernel reads exactly its own arguments; launch.py uses this file only there,
 * and only for kernels whose float arguments all fit in registers. */
#include <stdint.h>

#define INT_SLOTS 24
#define FLOAT_SLOTS 8

typedef struct {
    void *function;
    int64_t ints[INT_SLOTS];
    float floats[FLOAT_SLOTS];
} StepCall;

typedef void (*AnyKernel)(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                          int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                          int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float, float, float, float,
                          float, float, float, float);

int replay_int_slots(void) { return INT_SLOTS; }
int replay_float_slots(void) { return FLOAT_SLOTS; }

void replay_calls(const StepCall *calls, int64_t n) {
    for (int64_t c = 0; c < n; c++) {
        const int64_t *i = calls[c].ints;
        const float *f = calls[c].floats;
        ((AnyKernel)calls[c].function)(i[0], i[1], i[2], i[3], i[4], i[5], i[6], i[7], i[8], i[9], i[10], i[11],
                                       i[12], i[13], i[14], i[15], i[16], i[17], i[18], i[19], i[20], i[21],
                                       i[22], i[23], f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7]);
    }
}

/* Separable resampling of channels-last images (gan_style.nn.resample): CUT's antialiased
   down- and up-sampling, their adjoints (the backward passes), in one pass over memory.

   out[n, p, q, c] = sum_t sum_u rw[p, t] * cw[q, u] * in[n, ri[p, t], ci[q, u], c]

   Images are (N, H, W, C) and contiguous; each output row p reads the rn[p] input rows ri[p, 0..]
   with weights rw[p, 0..] (tables padded to rt entries a row), each output column q the cn[q]
   input columns ci[q, 0..] with weights cw[q, 0..] (ct entries). The sums are fp32 whatever the
   storage: a bf16 image is read into fp32 and its result rounded once, to nearest even. */

#include <stdint.h>
#include <string.h>

/* bf16_load, bf16_store and AS_IS: bf16.h, which the loader puts in front of this file. */

typedef int64_t i64;

/* dst[k] for the channels k of one output pixel (p, q) of image b: the pixel's taps (input pixels
   and weights) are listed once, then each block of 16 channels is summed over them in registers. */
#define ACCUMULATE(T, LOAD, STORE, LOAD16, STORE16)                                                                        \
    do {                                                                                                                   \
        const T *src[rt * ct];                                                                                             \
        float weight[rt * ct];                                                                                             \
        int taps = 0;                                                                                                      \
        for (i64 t = 0; t < rn[p]; t++)                                                                                    \
            for (i64 u = 0; u < cn[q]; u++, taps++) {                                                                      \
                src[taps] = in + ((b * h + ri[p * rt + t]) * w + ci[q * ct + u]) * c;                                      \
                weight[taps] = rw[p * rt + t] * cw[q * ct + u];                                                            \
            }                                                                                                              \
        i64 k = 0;                                                                                                         \
        for (; k + 16 <= c; k += 16) {                                                                                     \
            f32x16 acc = weight[0] * LOAD16(src[0] + k);                                                                   \
            for (int i = 1; i < taps; i++)                                                                                 \
                acc += weight[i] * LOAD16(src[i] + k);                                                                     \
            STORE16(dst + k, acc);                                                                                         \
        }                                                                                                                  \
        for (; k < c; k++) { /* channels left over (an RGB image's three) */                                               \
            float acc = weight[0] * LOAD(src[0][k]);                                                                       \
            for (int i = 1; i < taps; i++)                                                                                 \
                acc += weight[i] * LOAD(src[i][k]);                                                                        \
            dst[k] = STORE(acc);                                                                                           \
        }                                                                                                                  \
    } while (0)

#define RESAMPLE(NAME, T, LOAD, STORE, LOAD16, STORE16)                                                                    \
    void NAME(const T *in, T *out, i64 n, i64 h, i64 w, i64 c, i64 out_h, i64 out_w, const i64 *rn, const i64 *ri,         \
              const float *rw, i64 rt, const i64 *cn, const i64 *ci, const float *cw, i64 ct)                               \
    {                                                                                                                      \
        _Pragma("omp parallel for collapse(2) schedule(static)")                                                           \
        for (i64 b = 0; b < n; b++)                                                                                        \
            for (i64 p = 0; p < out_h; p++) {                                                                              \
                T *dst = out + ((b * out_h + p) * out_w) * c;                                                              \
                for (i64 q = 0; q < out_w; q++, dst += c) {                                                                \
                    if (rn[p] == 1 && cn[q] == 1 && rw[p * rt] == 1.0f && cw[q * ct] == 1.0f) /* a pad's copy */           \
                        memcpy(dst, in + ((b * h + ri[p * rt]) * w + ci[q * ct]) * c, sizeof(T) * c);                      \
                    else                                                                                                   \
                        ACCUMULATE(T, LOAD, STORE, LOAD16, STORE16);                                                       \
                }                                                                                                          \
            }                                                                                                              \
    }

RESAMPLE(gs_resample_f32, float, AS_IS, AS_IS, f32x16_load, f32x16_store)
RESAMPLE(gs_resample_bf16, uint16_t, bf16_load, bf16_store, bf16x16_load, bf16x16_store)

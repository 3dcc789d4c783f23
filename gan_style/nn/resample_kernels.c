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

#define RESAMPLE(NAME, T, LOAD, STORE)                                                                                     \
    void NAME(const T *in, T *out, i64 n, i64 h, i64 w, i64 c, i64 out_h, i64 out_w, const i64 *rn, const i64 *ri,         \
              const float *rw, i64 rt, const i64 *cn, const i64 *ci, const float *cw, i64 ct)                               \
    {                                                                                                                      \
        _Pragma("omp parallel")                                                                                            \
        {                                                                                                                  \
            float acc[c];                                                                                                  \
            _Pragma("omp for collapse(2) schedule(static)")                                                                \
            for (i64 b = 0; b < n; b++)                                                                                    \
                for (i64 p = 0; p < out_h; p++) {                                                                          \
                    T *dst = out + ((b * out_h + p) * out_w) * c;                                                          \
                    for (i64 q = 0; q < out_w; q++, dst += c) {                                                            \
                        if (rn[p] == 1 && cn[q] == 1 && rw[p * rt] == 1.0f && cw[q * ct] == 1.0f) { /* a pad's copy */     \
                            memcpy(dst, in + ((b * h + ri[p * rt]) * w + ci[q * ct]) * c, sizeof(T) * c);                  \
                            continue;                                                                                      \
                        }                                                                                                  \
                        for (i64 ch = 0; ch < c; ch++)                                                                     \
                            acc[ch] = 0.0f;                                                                                \
                        for (i64 t = 0; t < rn[p]; t++) {                                                                  \
                            const T *row = in + ((b * h + ri[p * rt + t]) * w) * c;                                        \
                            for (i64 u = 0; u < cn[q]; u++) {                                                              \
                                const float weight = rw[p * rt + t] * cw[q * ct + u];                                      \
                                const T *src = row + ci[q * ct + u] * c;                                                   \
                                for (i64 ch = 0; ch < c; ch++)                                                             \
                                    acc[ch] += weight * LOAD(src[ch]);                                                     \
                            }                                                                                              \
                        }                                                                                                  \
                        for (i64 ch = 0; ch < c; ch++)                                                                     \
                            dst[ch] = STORE(acc[ch]);                                                                      \
                    }                                                                                                      \
                }                                                                                                          \
        }                                                                                                                  \
    }

RESAMPLE(gs_resample_f32, float, AS_IS, AS_IS)
RESAMPLE(gs_resample_bf16, uint16_t, bf16_load, bf16_store)

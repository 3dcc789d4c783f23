/* bf16 storage for the C kernels that take fp32 or bf16 tensors (resample_kernels.c,
   norm_kernels.c): their loaders put this text in front of their source (gan_style.nn.native.c_source),
   so that a change here rebuilds them. Arithmetic is fp32: a bf16 value is widened exactly and a
   result rounded once, to nearest even. */

#include <stdint.h>
#include <string.h>

static inline float bf16_load(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t bf16_store(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it a (quiet) NaN */
        return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest, ties to even */
    return (uint16_t)(u >> 16);
}

#define AS_IS(x) (x)

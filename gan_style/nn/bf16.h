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

/* Sixteen values at a time, as GCC/Clang vectors (one AVX-512 register, two AVX2 ones): loops
   whose trip count the compiler cannot see (a table's taps) keep their sums in registers. Loads
   and stores are unaligned; the rounding is bf16_store's, lane by lane. */
typedef float f32x16 __attribute__((vector_size(64)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));

static inline f32x16 f32x16_load(const float *p)
{
    f32x16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void f32x16_store(float *p, f32x16 v)
{
    memcpy(p, &v, sizeof v);
}

static inline f32x16 bf16x16_load(const uint16_t *p)
{
    u16x16 h;
    memcpy(&h, p, sizeof h);
    const u32x16 u = __builtin_convertvector(h, u32x16) << 16;
    f32x16 v;
    memcpy(&v, &u, sizeof v);
    return v;
}

static inline void bf16x16_store(uint16_t *p, f32x16 v)
{
    u32x16 u;
    memcpy(&u, &v, sizeof u);
    const u32x16 nan = (u32x16)((u & 0x7fffffffu) > 0x7f800000u); /* all ones where NaN */
    const u32x16 rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const u32x16 quiet = (u >> 16) | 0x40u;
    const u16x16 h = __builtin_convertvector((nan & quiet) | (~nan & rounded), u16x16);
    memcpy(p, &h, sizeof h);
}

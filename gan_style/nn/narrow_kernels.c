/* The gathers of gan_style.nn.narrow: convolutions with a narrow side (the image-facing 7x7
   layers, 3 -> 64 and 64 -> 3), run as one matrix product over the wide side's channels and a
   per-tap gather on the narrow side's k*k*C columns.

   Layouts (fp32): images channels-last (N, H, W, C); tap columns (N, H, W, k*k*C), tap-major. For
   a tap (dy, dx) and a destination pixel (y, x) the source pixel is (y + dy - shift, x + dx -
   shift). ``flip`` numbers the taps from the kernel's far corner, (k-1-dy)*k + (k-1-dx), as the
   transposed convolution (the input gradient) reads them. Sources outside the source image are
   zeros: the convolution's zero padding. */

#include <stdint.h>
#include <string.h>

typedef int64_t i64;

static inline i64 min64(i64 a, i64 b) { return a < b ? a : b; }
static inline i64 max64(i64 a, i64 b) { return a > b ? a : b; }
static inline i64 tap_index(i64 dy, i64 dx, i64 k, i64 flip) { return flip ? (k - 1 - dy) * k + (k - 1 - dx) : dy * k + dx; }

/* ROW(..., c) with c a compile-time constant where it is 1-4 (the image side), so that the
   per-channel loops unroll; any other width as it is. */
#define WITH_CONSTANT_WIDTH(c, ROW, ...)                                                                                   \
    switch (c) {                                                                                                           \
    case 1: ROW(__VA_ARGS__, 1); break;                                                                                    \
    case 2: ROW(__VA_ARGS__, 2); break;                                                                                    \
    case 3: ROW(__VA_ARGS__, 3); break;                                                                                    \
    case 4: ROW(__VA_ARGS__, 4); break;                                                                                    \
    default: ROW(__VA_ARGS__, c);                                                                                          \
    }

/* dst[b, y, x, ch] = sum over the k*k taps of src[b, y+dy-shift, x+dx-shift, tap*c + ch]: each
   source value is read once. */
static inline __attribute__((always_inline)) void taps_sum_row(const float *src, float *out, i64 b, i64 y, i64 src_h, i64 src_w,
                                                               i64 dst_w, i64 k, i64 shift, i64 flip, i64 c)
{
    const i64 row = k * k * c;
    memset(out, 0, sizeof(float) * dst_w * c);
    for (i64 dy = 0; dy < k; dy++) {
        const i64 sy = y + dy - shift;
        if (sy < 0 || sy >= src_h)
            continue;
        const float *line = src + (b * src_h + sy) * src_w * row;
        for (i64 dx = 0; dx < k; dx++) {
            const float *tap = line + tap_index(dy, dx, k, flip) * c;
            const i64 x0 = max64(0, shift - dx), x1 = min64(dst_w, src_w + shift - dx); /* sources inside the image */
            for (i64 x = x0; x < x1; x++)
                for (i64 ch = 0; ch < c; ch++)
                    out[x * c + ch] += tap[(x + dx - shift) * row + ch];
        }
    }
}

void gs_taps_sum(const float *src, float *dst, i64 n, i64 src_h, i64 src_w, i64 dst_h, i64 dst_w, i64 k, i64 c, i64 shift,
                 i64 flip)
{
#pragma omp parallel for collapse(2) schedule(static)
    for (i64 b = 0; b < n; b++)
        for (i64 y = 0; y < dst_h; y++) {
            float *out = dst + (b * dst_h + y) * dst_w * c;
            WITH_CONSTANT_WIDTH(c, taps_sum_row, src, out, b, y, src_h, src_w, dst_w, k, shift, flip);
        }
}

/* dst[b, y, x, tap*c + ch] = src[b, y+dy-shift, x+dx-shift, ch], zero outside the source image:
   im2col of a channels-last image, each tap's c values side by side. Each destination pixel's
   k*k*c columns are written in order (the source rows it reads stay in cache). */
static inline __attribute__((always_inline)) void taps_spread_row(const float *src, float *out, i64 b, i64 y, i64 src_h,
                                                                  i64 src_w, i64 dst_w, i64 k, i64 shift, i64 flip, i64 c)
{
    const i64 row = k * k * c;
    for (i64 x = 0; x < dst_w; x++, out += row)
        for (i64 dy = 0; dy < k; dy++) {
            const i64 sy = y + dy - shift;
            const int inside = sy >= 0 && sy < src_h;
            const float *line = src + (b * src_h + (inside ? sy : 0)) * src_w * c;
            for (i64 dx = 0; dx < k; dx++) {
                const i64 sx = x + dx - shift;
                float *tap = out + tap_index(dy, dx, k, flip) * c;
                /* memcpy and memset of c floats, not loops: GCC 12's loop vectoriser, for Ice Lake
                   (-O3 -march=native), miscompiled the copy loop of this branch (wrong values in one
                   tap column; tests/test_narrow.py) */
                if (inside && sx >= 0 && sx < src_w)
                    memcpy(tap, line + sx * c, sizeof(float) * c);
                else
                    memset(tap, 0, sizeof(float) * c);
            }
        }
}

void gs_taps_spread(const float *src, float *dst, i64 n, i64 src_h, i64 src_w, i64 dst_h, i64 dst_w, i64 k, i64 c, i64 shift,
                    i64 flip)
{
#pragma omp parallel for collapse(2) schedule(static)
    for (i64 b = 0; b < n; b++)
        for (i64 y = 0; y < dst_h; y++) {
            float *out = dst + (b * dst_h + y) * dst_w * k * k * c;
            WITH_CONSTANT_WIDTH(c, taps_spread_row, src, out, b, y, src_h, src_w, dst_w, k, shift, flip);
        }
}

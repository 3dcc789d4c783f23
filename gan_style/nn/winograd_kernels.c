/* The Winograd transforms of gan_style.nn.winograd, each fused with its gather or scatter.

   One pass over memory per transform: the PyTorch path gathers the tiles in one copy and
   transforms them in a second, and writes the output tiles with a third (docs/speed.md, session
   g: the transforms were a third of a FastCUT fp32 step, memory-bound). Lavin & Gray (2016),
   eq. (8): Y = A^T [(G g G^T) * (B^T d B)] A, for a x a tiles, a = m + r - 1: F(4x4, 3x3) and
   F(3x3, 4x4) on 6x6 tiles, F(4x4, 5x5) on 8x8 ones. A form is named by its kernel side r.

   Layouts (fp32): images channels-last (N, H, W, C); the transformed tiles (a², tiles, C), the
   order the batched matrix products read them; weights channels-last (C_out, r, r, C_in) and their
   transforms (a², C_out, C_in). C is a multiple of 16 (one AVX-512 vector; two AVX2 ones).
   The coefficients BT<r> (a x a), G<r> (a x r) and AT<r> (m x a), padded to AMAX or RMAX
   columns, are prepended by the loader (gan_style.nn.winograd), computed from the interpolation
   points there, so each transform is a fixed sum the compiler writes out with its zero terms
   skipped. */

#include <stdint.h>
#include <string.h>

typedef int64_t i64;
#define AMAX 8 /* the largest tile side */
#define RMAX 5 /* the largest kernel side */
#define L 16 /* channels per vector step */
#define INLINE static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 8")

/* One vector of L floats (GCC's vector extension: the arithmetic is vectorised as written, one
   AVX-512 register or two AVX2 ones, rather than left to the loop vectoriser); loaded and stored
   with memcpy, which compiles to unaligned vector moves. */
typedef float vec __attribute__((vector_size(L * sizeof(float))));

INLINE vec load(const float *p) { vec v; memcpy(&v, p, sizeof v); return v; }
INLINE void store(float *p, vec v) { memcpy(p, &v, sizeof v); }

/* Coefficient (i, k) of T, or of its transpose: the transforms' adjoints apply T^T. */
#define AS_IS(T, i, k) ((T)[i][k])
#define TRANSPOSED(T, i, k) ((T)[k][i])

/* out[i][l] = sum_k T(i, k) in[k][l] for a compile-time T (rows x depth, read through COEF): a
   zero coefficient's term is dropped when the loops are unrolled */
#define APPLY_LEFT(out, COEF, T, in, rows, depth, cols)                                        \
    UNROLL for (int i_ = 0; i_ < (rows); i_++) UNROLL for (int l_ = 0; l_ < (cols); l_++) {   \
        vec acc_ = {0};                                                                         \
        UNROLL for (int k_ = 0; k_ < (depth); k_++) if (COEF(T, i_, k_) != 0.0f) acc_ += COEF(T, i_, k_) * (in)[k_][l_]; \
        (out)[i_][l_] = acc_;                                                                   \
    }

/* out[i][j] = sum_l in[i][l] T(j, l) */
#define APPLY_RIGHT(out, in, COEF, T, rows, depth, cols)                                       \
    UNROLL for (int i_ = 0; i_ < (rows); i_++) UNROLL for (int j_ = 0; j_ < (cols); j_++) {   \
        vec acc_ = {0};                                                                         \
        UNROLL for (int l_ = 0; l_ < (depth); l_++) if (COEF(T, j_, l_) != 0.0f) acc_ += COEF(T, j_, l_) * (in)[i_][l_]; \
        (out)[i_][j_] = acc_;                                                                   \
    }

/* The transforms are written once, for one tile (or one output channel, for the weights), with
   the form's sizes and coefficients as arguments; the exported functions of each form (FORM below)
   run them over all tiles with constants, so the constants reach the code OpenMP outlines (a form
   passed through a parallel region's arguments would be a runtime value there, its zero terms
   kept and its loops rolled). */
#define FOR_EACH(count, body) _Pragma("omp parallel for schedule(static)") for (i64 it_ = 0; it_ < (count); it_++) body

/* V = B^T d B for tile t (row-major over (N, th, tw)) at stride m of the zero-padded input */
INLINE void input_tile(const int a, const float (*bt)[AMAX], const float *restrict x, float *restrict v,
                       i64 n, i64 h, i64 w, i64 c, i64 th, i64 tw, i64 m, i64 pad_top, i64 pad_left, i64 t)
{
    const i64 tiles = n * th * tw, b = t / (th * tw), y0 = (t / tw) % th * m - pad_top, x0 = t % tw * m - pad_left;
    const float *pixel[AMAX][AMAX];
    for (int k = 0; k < a; k++)
        for (int l = 0; l < a; l++) {
            const i64 y = y0 + k, xx = x0 + l;
            pixel[k][l] = (y >= 0 && y < h && xx >= 0 && xx < w) ? x + ((b * h + y) * w + xx) * c : NULL;
        }
    for (i64 c0 = 0; c0 < c; c0 += L) {
        vec d[AMAX][AMAX], s[AMAX][AMAX], o[AMAX][AMAX];
        for (int k = 0; k < a; k++)
            for (int l = 0; l < a; l++)
                d[k][l] = pixel[k][l] ? load(pixel[k][l] + c0) : (vec){0};
        APPLY_LEFT(s, AS_IS, bt, d, a, a, a);
        APPLY_RIGHT(o, s, AS_IS, bt, a, a, a);
        for (int i = 0; i < a; i++)
            for (int j = 0; j < a; j++)
                store(v + ((i * a + j) * tiles + t) * c + c0, o[i][j]);
    }
}

/* The adjoint of input_tile, into gx (N, H, W, C): the overlapping tiles' B gV B^T summed. Task
   ``task`` owns a block of channels of one image, so the overlaps need no atomics. */
INLINE void input_gradient_block(const int a, const float (*bt)[AMAX], const float *restrict gv, float *restrict gx,
                                 i64 n, i64 h, i64 w, i64 c, i64 th, i64 tw, i64 m, i64 pad_top, i64 pad_left,
                                 i64 block, i64 task)
{
    const i64 tiles = n * th * tw, blocks = c / block, b = task / blocks, cb = task % blocks * block;
    for (i64 p = 0; p < h * w; p++)
        memset(gx + (b * h * w + p) * c + cb, 0, block * sizeof(float));
    for (i64 ti = 0; ti < th; ti++)
        for (i64 tj = 0; tj < tw; tj++) {
            const i64 t = (b * th + ti) * tw + tj, y0 = ti * m - pad_top, x0 = tj * m - pad_left;
            for (i64 c0 = cb; c0 < cb + block; c0 += L) {
                vec g[AMAX][AMAX], s[AMAX][AMAX], d[AMAX][AMAX];
                for (int i = 0; i < a; i++)
                    for (int j = 0; j < a; j++)
                        g[i][j] = load(gv + ((i * a + j) * tiles + t) * c + c0);
                APPLY_LEFT(s, TRANSPOSED, bt, g, a, a, a);
                APPLY_RIGHT(d, s, TRANSPOSED, bt, a, a, a);
                for (int k = 0; k < a; k++) {
                    const i64 y = y0 + k;
                    if (y < 0 || y >= h) continue;
                    for (int l = 0; l < a; l++) {
                        const i64 xx = x0 + l;
                        if (xx < 0 || xx >= w) continue;
                        float *dst = gx + ((b * h + y) * w + xx) * c + c0;
                        store(dst, load(dst) + d[k][l]);
                    }
                }
            }
        }
}

/* Y = A^T M A (+ bias) for tile t into y (N, Ho, Wo, C), cropped at the bottom and right edges. */
INLINE void output_tile(const int mt, const int a, const float (*at)[AMAX], const float *restrict mm, const float *restrict bias,
                        float *restrict y, i64 n, i64 ho, i64 wo, i64 c, i64 th, i64 tw, i64 t)
{
    const i64 tiles = n * th * tw, b = t / (th * tw), y0 = (t / tw) % th * mt, x0 = t % tw * mt;
    for (i64 c0 = 0; c0 < c; c0 += L) {
        const vec shift = bias ? load(bias + c0) : (vec){0};
        vec p[AMAX][AMAX], s[AMAX][AMAX], o[AMAX][AMAX];
        for (int i = 0; i < a; i++)
            for (int j = 0; j < a; j++)
                p[i][j] = load(mm + ((i * a + j) * tiles + t) * c + c0);
        APPLY_LEFT(s, AS_IS, at, p, mt, a, a);
        APPLY_RIGHT(o, s, AS_IS, at, mt, a, mt);
        for (int u = 0; u < mt && y0 + u < ho; u++)
            for (int q = 0; q < mt && x0 + q < wo; q++)
                store(y + ((b * ho + y0 + u) * wo + x0 + q) * c + c0, o[u][q] + shift);
    }
}

/* The adjoint of output_tile: gM = A gY A^T for tile t, gY zero past the edges. */
INLINE void output_gradient_tile(const int mt, const int a, const float (*at)[AMAX], const float *restrict gy, float *restrict gm,
                                 i64 n, i64 ho, i64 wo, i64 c, i64 th, i64 tw, i64 t)
{
    const i64 tiles = n * th * tw, b = t / (th * tw), y0 = (t / tw) % th * mt, x0 = t % tw * mt;
    for (i64 c0 = 0; c0 < c; c0 += L) {
        vec g[AMAX][AMAX], s[AMAX][AMAX], o[AMAX][AMAX];
        for (int u = 0; u < mt; u++)
            for (int q = 0; q < mt; q++)
                g[u][q] = y0 + u < ho && x0 + q < wo ? load(gy + ((b * ho + y0 + u) * wo + x0 + q) * c + c0) : (vec){0};
        APPLY_LEFT(s, TRANSPOSED, at, g, a, mt, mt);
        APPLY_RIGHT(o, s, TRANSPOSED, at, a, mt, a);
        for (int i = 0; i < a; i++)
            for (int j = 0; j < a; j++)
                store(gm + ((i * a + j) * tiles + t) * c + c0, o[i][j]);
    }
}

/* U = G g G^T for output channel o: a channels-last weight (K, r, r, C) into (a², K, C). */
INLINE void kernel_channel(const int r, const int a, const float (*g)[RMAX], const float *restrict wt, float *restrict u,
                           i64 k, i64 c, i64 o)
{
    for (i64 c0 = 0; c0 < c; c0 += L) {
        vec e[AMAX][AMAX], s[AMAX][AMAX], x[AMAX][AMAX];
        for (int i = 0; i < r; i++)
            for (int j = 0; j < r; j++)
                e[i][j] = load(wt + ((o * r + i) * r + j) * c + c0);
        APPLY_LEFT(s, AS_IS, g, e, a, r, r);
        APPLY_RIGHT(x, s, AS_IS, g, a, r, a);
        for (int i = 0; i < a; i++)
            for (int j = 0; j < a; j++)
                store(u + ((i * a + j) * k + o) * c + c0, x[i][j]);
    }
}

/* The adjoint of kernel_channel: dL/dg = G^T (dL/dU) G into a channels-last (K, r, r, C). */
INLINE void kernel_gradient_channel(const int r, const int a, const float (*g)[RMAX], const float *restrict gu, float *restrict gw,
                                    i64 k, i64 c, i64 o)
{
    for (i64 c0 = 0; c0 < c; c0 += L) {
        vec e[AMAX][AMAX], s[AMAX][AMAX], x[AMAX][AMAX];
        for (int i = 0; i < a; i++)
            for (int j = 0; j < a; j++)
                e[i][j] = load(gu + ((i * a + j) * k + o) * c + c0);
        APPLY_LEFT(s, TRANSPOSED, g, e, r, a, a);
        APPLY_RIGHT(x, s, TRANSPOSED, g, r, a, r);
        for (int i = 0; i < r; i++)
            for (int j = 0; j < r; j++)
                store(gw + ((o * r + i) * r + j) * c + c0, x[i][j]);
    }
}

/* The exported functions of the form with kernel side r, output tile m, tile side a. */
#define FORM(r, m, a)                                                                                               \
    void gs_input_transform_##r(const float *x, float *v, i64 n, i64 h, i64 w, i64 c, i64 th, i64 tw, i64 pad_top,   \
                                i64 pad_left)                                                                      \
    { FOR_EACH(n * th * tw, input_tile(a, BT##r, x, v, n, h, w, c, th, tw, m, pad_top, pad_left, it_);) }         \
    void gs_input_gradient_##r(const float *gv, float *gx, i64 n, i64 h, i64 w, i64 c, i64 th, i64 tw, i64 pad_top, \
                               i64 pad_left, i64 block)                                                             \
    { FOR_EACH(n * (c / block), input_gradient_block(a, BT##r, gv, gx, n, h, w, c, th, tw, m, pad_top, pad_left, block, it_);) } \
    void gs_output_transform_##r(const float *mm, const float *bias, float *y, i64 n, i64 ho, i64 wo, i64 c, i64 th, i64 tw) \
    { FOR_EACH(n * th * tw, output_tile(m, a, AT##r, mm, bias, y, n, ho, wo, c, th, tw, it_);) }                  \
    void gs_output_gradient_##r(const float *gy, float *gm, i64 n, i64 ho, i64 wo, i64 c, i64 th, i64 tw)          \
    { FOR_EACH(n * th * tw, output_gradient_tile(m, a, AT##r, gy, gm, n, ho, wo, c, th, tw, it_);) }              \
    void gs_kernel_transform_##r(const float *wt, float *u, i64 k, i64 c)                                         \
    { FOR_EACH(k, kernel_channel(r, a, G##r, wt, u, k, c, it_);) }                                               \
    void gs_kernel_gradient_##r(const float *gu, float *gw, i64 k, i64 c)                                         \
    { FOR_EACH(k, kernel_gradient_channel(r, a, G##r, gu, gw, k, c, it_);) }

FORM(3, 4, 6) /* F(4x4, 3x3) */
FORM(4, 3, 6) /* F(3x3, 4x4) */
FORM(5, 4, 8) /* F(4x4, 5x5) */

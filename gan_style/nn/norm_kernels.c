/* Instance normalisation of channels-last images (gan_style.nn.layers, norm kernel "fused"):
   every sample of a batch in one call, forward and backward, in the image's dtype (fp32 or bf16)
   with fp32 statistics.

   Images are (N, HW, C), contiguous. Per sample and channel (Ulyanov et al. 2016; biased variance):

       x̂ = (x - mean) rstd,   rstd = 1 / sqrt(var + eps),   y = γ x̂ + β                  (forward)
       dx = γ rstd (dy - mean(dy) - x̂ mean(dy x̂)),   dγ = Σ dy x̂,   dβ = Σ dy          (backward)

   An activation may follow (norm kernel "fused" with MeasuredNorm.activation_slope): a (leaky) ReLU
   of negative slope `slope` (0: ReLU) applied to y in the same pass, z = y > 0 ? y : slope y, and
   in the backward dy replaced by dz (y > 0 ? 1 : slope), y recomputed from x and the statistics
   (no saved output, no separate pass over memory).

   The variance is the centred (two-pass) one: E[x²] - E[x]² cancels when |mean| >> std. Sums run
   over blocks of SUM_BLOCK rows, whose partial sums are added up at the end, so that the rounding
   of a sum grows with HW / SUM_BLOCK + SUM_BLOCK, not with HW. The threads split a sample's rows;
   their partial sums meet in `partial` (threads x C floats per quantity). */

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* bf16_load, bf16_store and AS_IS: bf16.h, which the loader puts in front of this file. */

typedef int64_t i64;

#define SUM_BLOCK 128

/* a (leaky) ReLU of negative slope `slope` and the factor its derivative puts on a gradient at y;
   NaN passes through, and ReLU maps -inf to 0 as PyTorch's does */
static inline float activate(float y, float slope)
{
    return y > 0.0f || y != y ? y : slope == 0.0f ? 0.0f : y * slope;
}

static inline float activation_gradient(float y, float g, float slope)
{
    return y > 0.0f ? g : slope == 0.0f ? 0.0f : g * slope;
}

/* activation_gradient() sixteen lanes at a time, for the backward's vector passes (gcc
   vectorises the forward's loops itself): g where y > 0, else g * slope (0 for a ReLU) */
static inline f32x16 activation_gradient16(f32x16 y, f32x16 g, float slope)
{
    const u32x16 positive = (u32x16)(y > 0.0f);
    const f32x16 negative = slope == 0.0f ? (f32x16){0} : g * slope;
    u32x16 kept, other;
    memcpy(&kept, &g, sizeof kept);
    memcpy(&other, &negative, sizeof other);
    const u32x16 out = (positive & kept) | (~positive & other);
    f32x16 v;
    memcpy(&v, &out, sizeof v);
    return v;
}

/* The rows [first, last) of one thread for `rows` rows split among `threads`. */
static inline void row_range(i64 rows, int thread, int threads, i64 *first, i64 *last)
{
    *first = rows * thread / threads;
    *last = rows * (thread + 1) / threads;
}

/* Σ over the team's partial sums of entry `ch` (each thread's `width` sums, one after the other). */
static inline float team_sum(const float *partial, int team, i64 width, i64 ch)
{
    float sum = 0.0f;
    for (int u = 0; u < team; u++)
        sum += partial[u * width + ch];
    return sum;
}

/* total[0..width) = sums over the rows [first, last) of what the statement(s) after `last` add to
   block[0..width) for one `row`, block by block of SUM_BLOCK rows. */
#define BLOCKED_SUMS(total, block, width, first, last, ...)                                                                \
    for (i64 ch = 0; ch < (width); ch++)                                                                                   \
        total[ch] = 0.0f;                                                                                                  \
    for (i64 start = (first); start < (last); start += SUM_BLOCK) {                                                        \
        const i64 stop = start + SUM_BLOCK < (last) ? start + SUM_BLOCK : (last);                                          \
        for (i64 ch = 0; ch < (width); ch++)                                                                               \
            block[ch] = 0.0f;                                                                                              \
        for (i64 row = start; row < stop; row++) {                                                                         \
            __VA_ARGS__                                                                                                    \
        }                                                                                                                  \
        for (i64 ch = 0; ch < (width); ch++)                                                                               \
            total[ch] += block[ch];                                                                                        \
    }


/* forward: y, and the per-(sample, channel) mean and rstd kept for the backward. scale and shift
   are (N, C) fp32 or NULL (γ = 1, β = 0). */
#define FORWARD(NAME, T, LOAD, STORE)                                                                                      \
    void NAME(const T *x, T *y, float *mean, float *rstd, const float *scale, const float *shift, i64 n, i64 hw, i64 c,   \
              float eps, int activation, float slope)                                                                      \
    {                                                                                                                      \
        const int threads = omp_get_max_threads();                                                                         \
        float *partial = malloc(sizeof(float) * threads * c);                                                             \
        for (i64 b = 0; b < n; b++) {                                                                                      \
            const T *xs = x + b * hw * c;                                                                                  \
            T *ys = y + b * hw * c;                                                                                        \
            float *m = mean + b * c, *r = rstd + b * c;                                                                    \
            _Pragma("omp parallel num_threads(threads)")                                                                   \
            {                                                                                                              \
                const int t = omp_get_thread_num(), team = omp_get_num_threads();                                          \
                i64 first, last;                                                                                           \
                row_range(hw, t, team, &first, &last);                                                                     \
                float total[c], block[c];                                                                                  \
                /* pass 1: the mean */                                                                                     \
                BLOCKED_SUMS(total, block, c, first, last, for (i64 ch = 0; ch < c; ch++) block[ch] += LOAD(xs[row * c + ch]);) \
                memcpy(partial + t * c, total, sizeof(float) * c);                                                         \
                _Pragma("omp barrier")                                                                                     \
                _Pragma("omp single")                                                                                      \
                for (i64 ch = 0; ch < c; ch++)                                                                             \
                    m[ch] = team_sum(partial, team, c, ch) / (float)hw;                                                    \
                /* pass 2: the centred variance (omp single ends with a barrier) */                                        \
                BLOCKED_SUMS(total, block, c, first, last, for (i64 ch = 0; ch < c; ch++) {                                \
                    const float d = LOAD(xs[row * c + ch]) - m[ch];                                                        \
                    block[ch] += d * d;                                                                                    \
                })                                                                                                         \
                memcpy(partial + t * c, total, sizeof(float) * c); /* the means' partials were read before the barrier */ \
                _Pragma("omp barrier")                                                                                     \
                _Pragma("omp single")                                                                                      \
                for (i64 ch = 0; ch < c; ch++)                                                                             \
                    r[ch] = 1.0f / sqrtf(team_sum(partial, team, c, ch) / (float)hw + eps);                                \
                /* pass 3: y = x̂ γ + β = (x - mean) a + β, a = γ rstd (centred first: no cancellation) */                \
                float multiplier[c], addend[c];                                                                            \
                for (i64 ch = 0; ch < c; ch++) {                                                                           \
                    multiplier[ch] = r[ch] * (scale ? scale[b * c + ch] : 1.0f);                                           \
                    addend[ch] = shift ? shift[b * c + ch] : 0.0f;                                                         \
                }                                                                                                          \
                for (i64 row = first; row < last; row++)                                                                   \
                    if (activation)                                                                                        \
                        for (i64 ch = 0; ch < c; ch++)                                                                     \
                            ys[row * c + ch] = STORE(activate((LOAD(xs[row * c + ch]) - m[ch]) * multiplier[ch] + addend[ch], slope)); \
                    else                                                                                                   \
                        for (i64 ch = 0; ch < c; ch++)                                                                     \
                            ys[row * c + ch] = STORE((LOAD(xs[row * c + ch]) - m[ch]) * multiplier[ch] + addend[ch]);      \
            }                                                                                                              \
        }                                                                                                                  \
        free(partial);                                                                                                     \
    }

/* backward: dx (may be NULL: only the affine map's gradients), and per (sample, channel) Σ dy
   and Σ dy x̂ (dβ and dγ before summing over samples); with an activation, dy is the activation's
   output gradient and what is summed is the norm's (GRADIENT, below). Channels go sixteen at a
   time in vector registers (f32x16, bf16.h), the last c mod 16 one by one: the same arithmetic. */

/* the norm's output gradient at (row, ch) of the sample: dy, or through the activation */
#define GRADIENT(LOAD, row, ch)                                                                                                  \
    (activation ? activation_gradient((LOAD(xs[(row) * c + (ch)]) - m[ch]) * a[ch] + addend[ch], LOAD(dys[(row) * c + (ch)]), slope) \
                : LOAD(dys[(row) * c + (ch)]))
#define GRADIENT16(LOAD16, row, ch, centred)                                                                             \
    (activation ? activation_gradient16((centred) * f32x16_load(a + (ch)) + f32x16_load(addend + (ch)), LOAD16(dys + (row) * c + (ch)), slope) \
                : LOAD16(dys + (row) * c + (ch)))

#define BACKWARD(NAME, T, LOAD, STORE, LOAD16, STORE16)                                                                    \
    void NAME(const T *dy, const T *x, const float *mean, const float *rstd, const float *scale, const float *shift,      \
              T *dx, float *sum_dy, float *sum_dy_xhat, i64 n, i64 hw, i64 c, int activation, float slope)                 \
    {                                                                                                                      \
        const int threads = omp_get_max_threads();                                                                         \
        const i64 vector_c = c - c % 16;                                                                                   \
        float *partial = malloc(sizeof(float) * threads * 2 * c);                                                         \
        for (i64 b = 0; b < n; b++) {                                                                                      \
            const T *dys = dy + b * hw * c, *xs = x + b * hw * c;                                                          \
            const float *m = mean + b * c, *r = rstd + b * c;                                                              \
            float *sd = sum_dy + b * c, *sdx = sum_dy_xhat + b * c;                                                        \
            _Pragma("omp parallel num_threads(threads)")                                                                   \
            {                                                                                                              \
                const int t = omp_get_thread_num(), team = omp_get_num_threads();                                          \
                i64 first, last;                                                                                           \
                row_range(hw, t, team, &first, &last);                                                                     \
                float total[2 * c], block[2 * c], a[c], addend[c];                                                         \
                for (i64 ch = 0; ch < c; ch++) {                                                                           \
                    a[ch] = r[ch] * (scale ? scale[b * c + ch] : 1.0f);                                                    \
                    addend[ch] = shift ? shift[b * c + ch] : 0.0f;                                                         \
                }                                                                                                          \
                BLOCKED_SUMS(total, block, 2 * c, first, last, {                                                           \
                    for (i64 ch = 0; ch < vector_c; ch += 16) {                                                            \
                        const f32x16 centred = LOAD16(xs + row * c + ch) - f32x16_load(m + ch);                            \
                        const f32x16 g = GRADIENT16(LOAD16, row, ch, centred);                                             \
                        f32x16_store(block + ch, f32x16_load(block + ch) + g);                                             \
                        f32x16_store(block + c + ch, f32x16_load(block + c + ch) + g * centred);                           \
                    }                                                                                                      \
                    for (i64 ch = vector_c; ch < c; ch++) {                                                                \
                        const float g = GRADIENT(LOAD, row, ch);                                                           \
                        block[ch] += g;                                                                                    \
                        block[c + ch] += g * (LOAD(xs[row * c + ch]) - m[ch]);                                             \
                    }                                                                                                      \
                })                                                                                                         \
                memcpy(partial + t * 2 * c, total, sizeof(float) * 2 * c);                                                 \
                _Pragma("omp barrier")                                                                                     \
                _Pragma("omp single")                                                                                      \
                for (i64 ch = 0; ch < c; ch++) {                                                                           \
                    sd[ch] = team_sum(partial, team, 2 * c, ch);                                                           \
                    sdx[ch] = team_sum(partial, team, 2 * c, c + ch) * r[ch];                                              \
                }                                                                                                          \
                if (dx != NULL) {                                                                                          \
                    /* dx = a (dy - mean(dy)) + tilt (x - mean), a = γ rstd, tilt = -a rstd Σdyx̂ / hw; each    \
                       term centred first: a gradient's common mode and an input's mean cancel exactly */                 \
                    T *dxs = dx + b * hw * c;                                                                              \
                    float tilt[c], mean_dy[c];                                                                             \
                    for (i64 ch = 0; ch < c; ch++) {                                                                       \
                        tilt[ch] = -a[ch] * r[ch] * sdx[ch] / (float)hw;                                                   \
                        mean_dy[ch] = sd[ch] / (float)hw;                                                                  \
                    }                                                                                                      \
                    for (i64 row = first; row < last; row++) {                                                             \
                        for (i64 ch = 0; ch < vector_c; ch += 16) {                                                        \
                            const f32x16 centred = LOAD16(xs + row * c + ch) - f32x16_load(m + ch);                        \
                            const f32x16 g = GRADIENT16(LOAD16, row, ch, centred);                                         \
                            STORE16(dxs + row * c + ch, f32x16_load(a + ch) * (g - f32x16_load(mean_dy + ch))              \
                                                            + f32x16_load(tilt + ch) * centred);                           \
                        }                                                                                                  \
                        for (i64 ch = vector_c; ch < c; ch++)                                                              \
                            dxs[row * c + ch] = STORE(a[ch] * (GRADIENT(LOAD, row, ch) - mean_dy[ch])                      \
                                                      + tilt[ch] * (LOAD(xs[row * c + ch]) - m[ch]));                      \
                    }                                                                                                      \
                }                                                                                                          \
            }                                                                                                              \
        }                                                                                                                  \
        free(partial);                                                                                                     \
    }

FORWARD(gs_instance_norm_forward_f32, float, AS_IS, AS_IS)
FORWARD(gs_instance_norm_forward_bf16, uint16_t, bf16_load, bf16_store)
BACKWARD(gs_instance_norm_backward_f32, float, AS_IS, AS_IS, f32x16_load, f32x16_store)
BACKWARD(gs_instance_norm_backward_bf16, uint16_t, bf16_load, bf16_store, bf16x16_load, bf16x16_store)

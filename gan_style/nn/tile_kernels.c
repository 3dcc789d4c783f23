/* Stride-1 convolutions of bf16 channels-last images by the CPU's matrix tiles (AMX), for
   gan_style.nn.tiles: a k x k kernel (3 or 4) over an image with zero padding of 0 or 1 pixel on
   each side. Forward and input gradient in bf16 from fp32 sums (rounded once, as oneDNN's), the
   weight gradient in fp32 (no bf16 rounding of it and no cast back: the gradient the fp32 master
   weight takes).

   Positions are counted on the padded input's rows: pixel (y, x) of the padded image (row width
   W = in_w + 2 pad) is position y W + x, and tap t = (kh, kw) of output position p reads input
   position p + kh W + kw. So each tap reads a contiguous run of the image's rows: every product
   is a plain matrix product over runs of positions, no gathered columns (im2col). An output row
   is computed over the whole padded row width; its last k - 1 positions are dropped (forward) or
   zero (the gradients' dL/dy).

   Tiles: 32 x 32 blocks of the result in four 16 x 16 fp32 accumulators, from two 16-row tiles
   of A and two 16-column tiles of B (32 values of K each, B's in pairs of K rows interleaved:
   "VNNI"). A weight is packed once per version (gs_tile_pack_fp32) in the orders the forward and
   the input gradient read it; the images' operands are built per call in scratch the library keeps.

   For output channel o, input channel i and tap t:

       forward         y[s][p][o]  = b[o] + sum over t, i of x[s][p + offset_t][i] W[o][t][i]
       input gradient  dx[s][P][i] = sum over t, o of D[s][P + (k - 1)(W + 1) - offset_t][o] W[o][t][i]
       weight gradient dW[o][t][i] = sum over s, p of dy[s][p][o] x[s][p + offset_t][i]

   with D = dy on the padded input's grid, k - 1 zero rows above and below it and k - 1 zero
   columns to the left of each row. */

#include <stdint.h>
#include <string.h>

/* bf16_load, bf16_store and the 16-lane helpers: bf16.h, which the loader puts in front of this file. */

typedef int64_t i64;
typedef uint16_t bf16;

#if defined(__AMX_TILE__) && defined(__AMX_BF16__)

#include <immintrin.h>
#include <omp.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

/* Ask Linux for the tile registers (their state is not given to a process unless it asks):
   0 when granted. */
int gs_tiles_init(void)
{
    return (int)syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA);
}

struct tile_config {
    uint8_t palette;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t bytes_per_row[16];
    uint8_t rows[16];
};

/* This thread's eight tiles, each 16 rows of 64 bytes: 16 fp32 or 32 bf16 values a row. */
static void configure_tiles(void)
{
    struct tile_config config;
    memset(&config, 0, sizeof config);
    config.palette = 1;
    for (int t = 0; t < 8; t++) {
        config.rows[t] = 16;
        config.bytes_per_row[t] = 64;
    }
    _tile_loadconfig(&config);
}

/* The kernels' working buffers (dL/dy transposed, the input's row pairs, the weight gradient's
   spilled sums, dL/dy on the input's grid, a padded copy of the input, an image's last rows): the
   calling thread's, kept between calls and grown when a larger
   layer needs more, so that a call allocates nothing (in a training step a Python-side pool cost
   ~6 ms of a 260 ms bf16 FastCUT step: its bookkeeping runs cold there). gs_tiles_release frees
   them; with gs_tiles_poison_scratch(1) every buffer handed out is filled with NaNs first (tests:
   a value read before it is written shows). */
static _Thread_local void *scratch_buffers[4];
static _Thread_local size_t scratch_sizes[4];
static int poison_scratch;

static void *scratch(int slot, size_t bytes)
{
    if (bytes > scratch_sizes[slot]) {
        free(scratch_buffers[slot]);
        scratch_sizes[slot] = (bytes + 4095) / 4096 * 4096;
        scratch_buffers[slot] = aligned_alloc(4096, scratch_sizes[slot]);
        if (scratch_buffers[slot] == NULL)
            scratch_sizes[slot] = 0;
    }
    if (poison_scratch && scratch_buffers[slot] != NULL)
        memset(scratch_buffers[slot], 0xff, bytes); /* 0xffff: a bf16 NaN; 0xffffffff: an fp32 NaN */
    return scratch_buffers[slot];
}

void gs_tiles_release(void)
{
    for (int slot = 0; slot < 4; slot++) {
        free(scratch_buffers[slot]);
        scratch_buffers[slot] = NULL;
        scratch_sizes[slot] = 0;
    }
}

void gs_tiles_poison_scratch(int on)
{
    poison_scratch = on;
}

/* One convolution's sizes: batch images of in_h x in_w pixels, zero padding pad on each side,
   a k x k kernel, stride 1; the padded image's row width and pixels, the output's h x w. */
struct geometry {
    i64 batch, in_h, in_w, pad, k, taps;
    i64 row_width, padded_pixels, h, w;
};

static struct geometry geometry_of(i64 batch, i64 in_h, i64 in_w, i64 k, i64 pad)
{
    const i64 row_width = in_w + 2 * pad, padded_h = in_h + 2 * pad;
    return (struct geometry){batch, in_h, in_w, pad, k, k * k, row_width, padded_h * row_width, padded_h - k + 1, row_width - k + 1};
}

static inline i64 tap_offset(const struct geometry *g, int tap)
{
    return (tap / g->k) * g->row_width + tap % g->k;
}

/* The pixel of image s (images of h x w pixels) that position r of a grid of row_width columns
   holds when the image is laid on it `border` rows down and columns in; NULL where that is outside
   the image (a zero). */
static inline const bf16 *grid_pixel(const bf16 *image, i64 s, i64 r, i64 h, i64 w, i64 channels, i64 row_width, i64 border)
{
    const i64 y = r / row_width - border, x = r % row_width - border;
    if (y < 0 || y >= h || x < 0 || x >= w)
        return NULL;
    return image + ((s * h + y) * w + x) * channels;
}

/* Image s's pixel at padded position r, NULL where that is padding or past the image. */
static inline const bf16 *padded_pixel(const bf16 *x, const struct geometry *g, i64 s, i64 r, i64 channels)
{
    return grid_pixel(x, s, r, g->in_h, g->in_w, channels, g->row_width, g->pad);
}

/* grid[s][r] = the images laid on grids of grid_rows positions (grid_pixel), zeros elsewhere. */
static void lay_on_grid(const bf16 *image, i64 batch, i64 h, i64 w, i64 channels, bf16 *grid, i64 grid_rows, i64 row_width, i64 border)
{
    _Pragma("omp parallel for schedule(static) collapse(2)")
    for (i64 s = 0; s < batch; s++)
        for (i64 r = 0; r < grid_rows; r++) {
            const bf16 *pixel = grid_pixel(image, s, r, h, w, channels, row_width, border);
            bf16 *row = grid + (s * grid_rows + r) * channels;
            if (pixel)
                memcpy(row, pixel, sizeof(bf16) * channels);
            else
                memset(row, 0, sizeof(bf16) * channels);
        }
}

/* 32 values (top[c], bottom[c]) for 16 channels c; a NULL row reads as zeros. */
static inline __m512i interleaved_16(const bf16 *top, const bf16 *bottom)
{
    const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                                23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m256i zero = _mm256_setzero_si256();
    const __m512i rows = _mm512_inserti64x4(_mm512_castsi256_si512(top ? _mm256_loadu_si256((const __m256i *)top) : zero),
                                            bottom ? _mm256_loadu_si256((const __m256i *)bottom) : zero, 1);
    return _mm512_permutexvar_epi16(interleave, rows);
}

/* 16 fp32 values written past the caches where out is 64-byte aligned (a whole line), else stored. */
static inline void stream_or_store(float *out, __m512 values)
{
    if ((uintptr_t)out % 64 == 0)
        _mm512_stream_ps(out, values);
    else
        _mm512_storeu_ps(out, values);
}

/* out[2 c + u] = (u ? bottom : top)[c] for 16 channels; a NULL row reads as zeros. */
static inline void interleave_16(const bf16 *top, const bf16 *bottom, bf16 *out)
{
    _mm512_storeu_si512(out, interleaved_16(top, bottom));
}

/* Accumulators (tiles 0-3) += the 32 x 32 product of two 16-row tiles of A (a_top, a_bottom; rows
   a_stride bytes apart) and two 16-column tiles of B (b_left, b_right; rows b_stride bytes apart),
   K = 32: the one step of both kernels. */
static inline void accumulate_block(const bf16 *a_top, const bf16 *a_bottom, i64 a_stride, const bf16 *b_left, i64 b_stride,
                                    const bf16 *b_right)
{
    _tile_loadd(4, a_top, a_stride);
    _tile_loadd(5, a_bottom, a_stride);
    _tile_loadd(6, b_left, b_stride);
    _tile_loadd(7, b_right, b_stride);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
}

/* out[c][r] = in[r][c] for a 16 x 16 block of bf16 (rows in_stride and out_stride values apart),
   by the 8 x 8 transpose of 16-bit values within each 128-bit lane (three rounds of unpacks): with
   rows r and r + 8 in one register, lane 0 holds the block of rows 0-7 and columns 0-7, lane 1 of
   columns 8-15, lanes 2 and 3 the same of rows 8-15; transposed, register c holds output rows c
   (lanes 0, 2) and c + 8 (lanes 1, 3). */
static inline void transpose_16x16(const bf16 *in, i64 in_stride, bf16 *out, i64 out_stride)
{
    __m512i r[8], a[8], b[8];
    for (int k = 0; k < 8; k++)
        r[k] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(in + k * in_stride))),
                                  _mm256_loadu_si256((const __m256i *)(in + (k + 8) * in_stride)), 1);
    for (int k = 0; k < 8; k += 2) {
        a[k] = _mm512_unpacklo_epi16(r[k], r[k + 1]);
        a[k + 1] = _mm512_unpackhi_epi16(r[k], r[k + 1]);
    }
    for (int k = 0; k < 8; k += 4)
        for (int u = 0; u < 2; u++) {
            b[k + 2 * u] = _mm512_unpacklo_epi32(a[k + u], a[k + u + 2]);
            b[k + 2 * u + 1] = _mm512_unpackhi_epi32(a[k + u], a[k + u + 2]);
        }
    const __m512i rows_c_and_c8 = _mm512_set_epi64(7, 6, 3, 2, 5, 4, 1, 0);
    for (int k = 0; k < 4; k++) {
        const __m512i column[2] = {_mm512_unpacklo_epi64(b[k], b[k + 4]), _mm512_unpackhi_epi64(b[k], b[k + 4])};
        for (int u = 0; u < 2; u++) {
            const __m512i rows = _mm512_permutexvar_epi64(rows_c_and_c8, column[u]);
            _mm256_storeu_si256((__m256i *)(out + (2 * k + u) * out_stride), _mm512_castsi512_si256(rows));
            _mm256_storeu_si256((__m256i *)(out + (2 * k + u + 8) * out_stride), _mm512_extracti64x4_epi64(rows, 1));
        }
    }
}

/* out[c][r] = in[r][c] for a 16 x 16 block of 32-bit values (a pair of bf16): unpacks of 32- and
   64-bit values within 128-bit lanes, then a 4 x 4 transpose of the lanes. */
static inline void transpose_16x16_pairs(const bf16 *in, i64 in_stride, bf16 *out, i64 out_stride)
{
    __m512i r[16], t[16], u[16];
    for (int k = 0; k < 16; k++)
        r[k] = _mm512_loadu_si512(in + k * in_stride);
    for (int k = 0; k < 16; k += 2) {
        t[k] = _mm512_unpacklo_epi32(r[k], r[k + 1]);
        t[k + 1] = _mm512_unpackhi_epi32(r[k], r[k + 1]);
    }
    for (int k = 0; k < 16; k += 4) { /* u[k + m], lane L: column 4 L + m of rows k .. k + 3 */
        u[k] = _mm512_unpacklo_epi64(t[k], t[k + 2]);
        u[k + 1] = _mm512_unpackhi_epi64(t[k], t[k + 2]);
        u[k + 2] = _mm512_unpacklo_epi64(t[k + 1], t[k + 3]);
        u[k + 3] = _mm512_unpackhi_epi64(t[k + 1], t[k + 3]);
    }
    for (int m = 0; m < 4; m++) {
        const __m512i low_ab = _mm512_shuffle_i32x4(u[m], u[4 + m], _MM_SHUFFLE(1, 0, 1, 0));
        const __m512i high_ab = _mm512_shuffle_i32x4(u[m], u[4 + m], _MM_SHUFFLE(3, 2, 3, 2));
        const __m512i low_cd = _mm512_shuffle_i32x4(u[8 + m], u[12 + m], _MM_SHUFFLE(1, 0, 1, 0));
        const __m512i high_cd = _mm512_shuffle_i32x4(u[8 + m], u[12 + m], _MM_SHUFFLE(3, 2, 3, 2));
        _mm512_storeu_si512(out + (m + 0) * out_stride, _mm512_shuffle_i32x4(low_ab, low_cd, _MM_SHUFFLE(2, 0, 2, 0)));
        _mm512_storeu_si512(out + (m + 4) * out_stride, _mm512_shuffle_i32x4(low_ab, low_cd, _MM_SHUFFLE(3, 1, 3, 1)));
        _mm512_storeu_si512(out + (m + 8) * out_stride, _mm512_shuffle_i32x4(high_ab, high_cd, _MM_SHUFFLE(2, 0, 2, 0)));
        _mm512_storeu_si512(out + (m + 12) * out_stride, _mm512_shuffle_i32x4(high_ab, high_cd, _MM_SHUFFLE(3, 1, 3, 1)));
    }
}

/* The forward's and the input gradient's unit of work: a block of 32 positions x 32 channels of
   the result. Items go over the channel blocks first (weight_outer: a thread's share of the weight
   pack stays in its L2 while it walks the positions) or over the positions first (where the image
   operand is the larger). */
struct block_item {
    i64 c0, s, p0; /* the block's first channel, its image, its first position */
};

static inline struct block_item block_of(i64 item, int weight_outer, i64 channel_blocks, i64 batch, i64 blocks)
{
    const i64 channel_block = weight_outer ? item / (batch * blocks) : item % channel_blocks;
    const i64 image_block = weight_outer ? item % (batch * blocks) : item / channel_blocks;
    return (struct block_item){32 * channel_block, image_block / blocks, image_block % blocks * 32};
}

/* sums[p][c] = sum over taps t and the K channels k of A_t[p][k] B[t][k][c] for one block: A_t the
   32 rows from base + direction offset_t (rows of `channels` values, 16 per tile), B the block's
   packed taps from b, in the order read. */
static inline void block_product(const bf16 *base, i64 direction, const struct geometry *g, i64 channels, const bf16 *b,
                                 float sums[32][32])
{
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int tap = 0; tap < g->taps; tap++) {
        const bf16 *a = base + direction * tap_offset(g, tap) * channels;
        for (i64 k0 = 0; k0 < channels; k0 += 32, b += 32 * 32)
            accumulate_block(a + k0, a + 16 * channels + k0, channels * 2, b, 64, b + 16 * 32);
    }
    _tile_stored(0, &sums[0][0], 32 * 4);
    _tile_stored(1, &sums[0][16], 32 * 4);
    _tile_stored(2, &sums[16][0], 32 * 4);
    _tile_stored(3, &sums[16][16], 32 * 4);
}

/* The weight gradient, per tap one product over positions: dW_t = A B_t.
   - A[o][p] = dy at position p, zero at a row's last k - 1 positions (beyond the output's
     columns); dy transposed (the product's K must run along A's rows) and widened, batch x k_pad
     positions per channel, k_pad = h W rounded up to 32 (one tile row), the rest zeros.
   - B_t: the padded input's rows from offset_t, in pairs of rows from even positions; a tap at an
     odd offset reads A one position earlier instead (dW_t = sum_p A[p - 1] x[p - 1 + offset_t],
     offset_t - 1 even). The value before each of A's rows is zero: every image's A ends with a
     padding column (and before the first, the element the scratch holds in front of A). */

/* A, in blocks of 16 pixels x 16 channels; on the way, sums[s][o] = the sum of dy[s][.][.][o] in
   fp32 (the bias's gradient, image by image). */
static void transposed_gradient(const bf16 *dy, bf16 *a, float *sums, const struct geometry *g, i64 c_out, i64 k_pad)
{
    const i64 h = g->h, w = g->w, row_width = g->row_width, a_row = g->batch * k_pad;
    _Pragma("omp parallel for schedule(static) collapse(2)")
    for (i64 s = 0; s < g->batch; s++)
        for (i64 o0 = 0; o0 < c_out; o0 += 16) {
            const bf16 *image = dy + s * h * w * c_out + o0;
            bf16 *rows = a + o0 * a_row + s * k_pad;
            f32x16 sum = {0};
            for (i64 y = 0; y < h; y++) {
                i64 x0 = 0;
                for (; x0 + 16 <= w; x0 += 16)
                    transpose_16x16(image + (y * w + x0) * c_out, c_out, rows + y * row_width + x0, a_row);
                for (; x0 < w; x0++) /* a row's last pixels, where w is not a multiple of 16 */
                    for (int o = 0; o < 16; o++)
                        rows[o * a_row + y * row_width + x0] = image[(y * w + x0) * c_out + o];
                for (i64 x = 0; x < w; x++)
                    sum += bf16x16_load(image + (y * w + x) * c_out);
            }
            f32x16_store(sums + s * c_out + o0, sum);
            for (i64 o = 0; o < 16; o++) {
                for (i64 y = 0; y < h; y++)
                    memset(rows + o * a_row + y * row_width + w, 0, sizeof(bf16) * (row_width - w));
                memset(rows + o * a_row + h * row_width, 0, sizeof(bf16) * (k_pad - h * row_width));
            }
        }
}

/* B: pairs[s][j][i][u] = the padded image s at position 2 j + u, channel i; zeros for padding
   and past the image (only ever multiplied by A's zero columns there). */
static void paired_rows(const bf16 *x, bf16 *pairs, const struct geometry *g, i64 c_in, i64 pair_rows)
{
    _Pragma("omp parallel for schedule(static) collapse(2)")
    for (i64 s = 0; s < g->batch; s++)
        for (i64 j = 0; j < pair_rows; j++) {
            const bf16 *top = padded_pixel(x, g, s, 2 * j, c_in), *bottom = padded_pixel(x, g, s, 2 * j + 1, c_in);
            bf16 *out = pairs + (s * pair_rows + j) * c_in * 2;
            for (i64 i = 0; i < c_in; i += 16)
                interleave_16(top ? top + i : NULL, bottom ? bottom + i : NULL, out + 2 * i);
        }
}

/* x: batch x in_h x in_w x c_in, dy: batch x h x w x c_out (bf16, channels-last); dw: c_out x
   k k x c_in fp32 (written, not accumulated); db: c_out fp32, the bias's gradient (dy summed over
   images and pixels). c_in and c_out multiples of 32. Scratch: A after one element more, the
   pairs, the bias's sums per image. 0, or -1 where the scratch could not be allocated.

   Per 32 x 32 block of (output, input) channels the positions go in runs of at most 8 tile rows:
   the run's A (32 channels x 256 positions, 16 KB) and the input pairs its taps read (21 KB for a
   3x3 kernel at 32x32) stay in L1 while the taps' sums go from the accumulators to a buffer of
   the thread's and back between runs (4 KB each way per tap). Running each tap over all
   positions instead read both operands from L2 at every step: up to 1.9x slower (256 channels at
   32x32 0.95, 64 channels at 128x128 0.53 of the time). Spilling to dW itself, whose rows are
   9 KB apart, crowded a few L1 sets: 1.16x slower at 256 channels, alone. After the last run the
   sums go to dW by streaming stores: its 2.4 MB (256 channels) are not read from memory before
   they are written, and the optimiser reads them much later (in a bf16 FastCUT step, the weight
   gradients took 0.86 of the time). */
int gs_tile_weight_gradient_bf16(const bf16 *x, const bf16 *dy, float *dw, float *db, i64 batch, i64 in_h, i64 in_w, i64 c_in,
                                 i64 c_out, i64 k, i64 pad)
{
    const struct geometry g = geometry_of(batch, in_h, in_w, k, pad);
    const i64 k_pad = (g.h * g.row_width + 31) / 32 * 32, a_row = batch * k_pad;
    const i64 pair_rows = k_pad / 2 + tap_offset(&g, (int)g.taps - 1) / 2 + 1; /* the last tap's run, in pairs */
    bf16 *a_before = scratch(0, sizeof(bf16) * (c_out * a_row + 1)), *pairs = scratch(1, sizeof(bf16) * batch * pair_rows * c_in * 2);
    float *sums = scratch(2, sizeof(float) * batch * c_out);
    float *spills = scratch(3, sizeof(float) * omp_get_max_threads() * g.taps * 32 * 32);
    if (a_before == NULL || pairs == NULL || sums == NULL || spills == NULL)
        return -1;
    bf16 *a = a_before + 1;
    a_before[0] = 0;
    transposed_gradient(dy, a, sums, &g, c_out, k_pad);
    for (i64 o = 0; o < c_out; o++) {
        db[o] = 0.0f;
        for (i64 s = 0; s < batch; s++)
            db[o] += sums[s * c_out + o];
    }
    paired_rows(x, pairs, &g, c_in, pair_rows);
    const i64 longest = k == 3 ? 8 : 12; /* a 4x4 kernel's 16 taps: fewer runs, fewer spills (0.87 of the time at 256 -> 512, 16x16) */
    const i64 steps = k_pad / 32, runs = (steps + longest - 1) / longest, run_steps = (steps + runs - 1) / runs;
    _Pragma("omp parallel")
    {
        configure_tiles();
        float *own_spills = spills + omp_get_thread_num() * g.taps * 32 * 32; /* per tap, the four accumulators one after the other */
        _Pragma("omp for schedule(static) collapse(2)")
        for (i64 o0 = 0; o0 < c_out; o0 += 32)
            for (i64 i0 = 0; i0 < c_in; i0 += 32)
                for (i64 s = 0; s < batch; s++)
                    for (i64 k0 = 0; k0 < k_pad; k0 += 32 * run_steps) {
                        const i64 k1 = k0 + 32 * run_steps < k_pad ? k0 + 32 * run_steps : k_pad;
                        const int first = s == 0 && k0 == 0, last = s == batch - 1 && k1 == k_pad;
                        const bf16 *image_pairs = pairs + s * pair_rows * c_in * 2 + i0 * 2;
                        for (int tap = 0; tap < g.taps; tap++) {
                            const i64 offset = tap_offset(&g, tap), shift = offset & 1; /* the input row of position 0 */
                            float *spill = own_spills + tap * 32 * 32;
                            if (first) {
                                _tile_zero(0);
                                _tile_zero(1);
                                _tile_zero(2);
                                _tile_zero(3);
                            } else {
                                _tile_loadd(0, spill, 64);
                                _tile_loadd(1, spill + 256, 64);
                                _tile_loadd(2, spill + 512, 64);
                                _tile_loadd(3, spill + 768, 64);
                            }
                            const bf16 *a_top = a + o0 * a_row + s * k_pad - shift, *a_bottom = a_top + 16 * a_row;
                            for (i64 kk = k0; kk < k1; kk += 32) {
                                const bf16 *b = image_pairs + ((offset - shift) / 2 + kk / 2) * c_in * 2;
                                accumulate_block(a_top + kk, a_bottom + kk, a_row * 2, b, c_in * 4, b + 32);
                            }
                            _tile_stored(0, spill, 64);
                            _tile_stored(1, spill + 256, 64);
                            _tile_stored(2, spill + 512, 64);
                            _tile_stored(3, spill + 768, 64);
                            if (last) /* dW's rows past the caches: no read of its lines before they are written */
                                for (int r = 0; r < 32; r++) {
                                    float *out = dw + ((o0 + r) * g.taps + tap) * c_in + i0;
                                    const float *sums_row = spill + (r / 16) * 512 + (r % 16) * 16;
                                    stream_or_store(out, _mm512_loadu_ps(sums_row));
                                    stream_or_store(out + 16, _mm512_loadu_ps(sums_row + 256));
                                }
                        }
                    }
        _mm_sfence();
        _tile_release();
    }
    return 0;
}

/* The input gradient, over the padded input's positions (the padding's own dropped): A tiles are
   16 consecutive rows of D, B tiles the weight's input-gradient pack. Blocks of 32 positions x 32
   input channels.

   Over the channel blocks first where the weight is larger than D (block_of): walking them inside
   each block of positions read the whole pack (1.2 MB at 256 channels, 3x3) per block, more than
   L2 keeps beside D (15 % slower at 256 channels, 32x32). */

/* dy: batch x h x w x c_out, dx: batch x in_h x in_w x c_in (bf16, channels-last; written).
   Scratch: D, batch x d_rows x c_out, with k - 1 zero rows above and below and room for the last
   block's reads. 0, or -1 where it could not be allocated. */
int gs_tile_input_gradient_bf16(const bf16 *dy, const bf16 *packed, bf16 *dx, i64 batch, i64 in_h, i64 in_w, i64 c_in, i64 c_out,
                                i64 k, i64 pad)
{
    const struct geometry g = geometry_of(batch, in_h, in_w, k, pad);
    const i64 row_width = g.row_width, pixels = g.padded_pixels, blocks = (pixels + 31) / 32;
    const i64 d_rows = (g.h + 2 * (k - 1)) * row_width + 64, lead = (k - 1) * (row_width + 1); /* D's row of dy's first pixel */
    bf16 *d = scratch(0, sizeof(bf16) * batch * d_rows * c_out);
    if (d == NULL)
        return -1;
    lay_on_grid(dy, batch, g.h, g.w, c_out, d, d_rows, row_width, k - 1);
    _Pragma("omp parallel")
    {
        configure_tiles();
        float sums[32][32];
        const i64 channel_blocks = c_in / 32, items = channel_blocks * batch * blocks;
        const int weight_outer = g.taps * c_in > batch * d_rows; /* the weight (k k c_in rows of c_out) larger than D */
        _Pragma("omp for schedule(static)")
        for (i64 item = 0; item < items; item++) {
            const struct block_item block = block_of(item, weight_outer, channel_blocks, batch, blocks);
            const i64 i0 = block.c0, s = block.s, p0 = block.p0;
            block_product(d + (s * d_rows + p0 + lead) * c_out, -1, &g, c_out, packed + i0 * g.taps * c_out, sums);
            for (i64 p = 0; p < 32 && p0 + p < pixels; p++) {
                const i64 y = (p0 + p) / row_width - pad, x = (p0 + p) % row_width - pad;
                if (y < 0 || y >= in_h || x < 0 || x >= in_w) /* the padding's own gradient */
                    continue;
                bf16 *out = dx + ((s * in_h + y) * in_w + x) * c_in + i0;
                bf16x16_store(out, f32x16_load(sums[p]));
                bf16x16_store(out + 16, f32x16_load(sums[p] + 16));
            }
        }
        _tile_release();
    }
    return 0;
}

/* The forward, over the output rows' positions (each row's last k - 1 dropped): A tiles are 16
   consecutive rows of the padded image (x itself without padding; else a copy with zero borders,
   in scratch); B tiles the weight's forward pack. Blocks of 32 positions x 32 output channels;
   the bias added to the fp32 sums before the one rounding, as oneDNN's bf16 convolution does.
   Without padding, a block whose taps would read past the image's last row reads a copy of its
   rows with zeros after them (per thread). */

/* x: batch x in_h x in_w x c_in, y: batch x h x w x c_out (bf16, channels-last); bias: c_out bf16
   or NULL. 0, or -1 where the scratch could not be allocated. */
int gs_tile_forward_bf16(const bf16 *x, const bf16 *packed, const bf16 *bias, bf16 *y, i64 batch, i64 in_h, i64 in_w, i64 c_in,
                         i64 c_out, i64 k, i64 pad)
{
    const struct geometry g = geometry_of(batch, in_h, in_w, k, pad);
    const i64 row_width = g.row_width, positions = g.h * row_width, blocks = (positions + 31) / 32;
    const i64 reach = 32 + tap_offset(&g, (int)g.taps - 1); /* rows a block's taps read, from its first */
    const i64 image_rows = g.padded_pixels + (pad ? reach : 0);
    bf16 *padded = pad ? scratch(1, sizeof(bf16) * batch * image_rows * c_in) : NULL;
    bf16 *tail = pad ? NULL : scratch(0, sizeof(bf16) * omp_get_max_threads() * reach * c_in);
    if (pad ? padded == NULL : tail == NULL)
        return -1;
    if (pad)
        lay_on_grid(x, batch, in_h, in_w, c_in, padded, image_rows, row_width, pad);
    const bf16 *image = pad ? padded : x;
    _Pragma("omp parallel")
    {
        configure_tiles();
        float sums[32][32];
        bf16 *own_tail = pad ? NULL : tail + omp_get_thread_num() * reach * c_in;
        const i64 channel_blocks = c_out / 32, items = channel_blocks * batch * blocks;
        const int weight_outer = g.taps * c_out > batch * image_rows; /* the weight (k k c_out rows of c_in) larger than x */
        _Pragma("omp for schedule(static)")
        for (i64 item = 0; item < items; item++) {
            const struct block_item block = block_of(item, weight_outer, channel_blocks, batch, blocks);
            const i64 o0 = block.c0, s = block.s, p0 = block.p0;
            const i64 rows_there = pad ? image_rows : g.padded_pixels;
            const bf16 *rows = image + (s * rows_there + p0) * c_in;
            if (!pad && p0 + reach > g.padded_pixels) { /* the image's last blocks: their rows, then zeros */
                memcpy(own_tail, rows, sizeof(bf16) * (g.padded_pixels - p0) * c_in);
                /* only outputs that are dropped read the zeros, but no NaN is computed */
                memset(own_tail + (g.padded_pixels - p0) * c_in, 0, sizeof(bf16) * (reach - (g.padded_pixels - p0)) * c_in);
                rows = own_tail;
            }
            block_product(rows, 1, &g, c_in, packed + o0 * g.taps * c_in, sums);
            const f32x16 bias_low = bias ? bf16x16_load(bias + o0) : (f32x16){0}, bias_high = bias ? bf16x16_load(bias + o0 + 16) : (f32x16){0};
            for (i64 p = 0; p < 32 && p0 + p < positions; p++) {
                const i64 row = (p0 + p) / row_width, column = (p0 + p) % row_width;
                if (column >= g.w)
                    continue;
                bf16 *out = y + ((s * g.h + row) * g.w + column) * c_out + o0;
                bf16x16_store(out, f32x16_load(sums[p]) + bias_low);
                bf16x16_store(out + 16, f32x16_load(sums[p] + 16) + bias_high);
            }
        }
        _tile_release();
    }
    return 0;
}

/* Both packs of one weight version, straight from the fp32 master (channels-last c_out x taps x
   c_in), each value rounded to bf16 once (to nearest even, as its bf16 cast):

       forward[ob][t][ib][half][j][c][u]        = W[o = 32 ob + 16 half + c][t][i = 32 ib + 2 j + u]
       input_gradient[ib][t][ob][half][j][c][u] = W[o = 32 ob + 2 j + u][t][i = 32 ib + 16 half + c]

   each 16 x 32 (j, c u) piece one B tile, 1 KB, in the order the kernels read them. One pass
   instead of the cast and two packs of it, each reading the weight again (0.15 against 0.29 ms for
   a 256-channel 3x3 weight, out of cache). The input gradient's pack, read only in the backward,
   is written past the caches (streaming stores: no read of its lines before they are written;
   0.80 of the pack's time). Per 16 output channels and tap, 32 input channels at a
   time: their bf16 block, transposed in pairs for the forward, its rows interleaved in pairs for
   the input gradient. */
void gs_tile_pack_fp32(const float *weight, bf16 *forward, bf16 *input_gradient, i64 c_in, i64 c_out, i64 taps)
{
    _Pragma("omp parallel")
    {
        _Pragma("omp for schedule(static) collapse(2)")
        for (i64 g = 0; g < c_out / 16; g++) /* output channels 16 g .. 16 g + 15: half g % 2 of block g / 2 */
            for (int tap = 0; tap < taps; tap++)
                for (i64 ib = 0; ib < c_in / 32; ib++) {
                    bf16 block[16][32];
                    for (int r = 0; r < 16; r++) {
                        const float *row = weight + ((16 * g + r) * taps + tap) * c_in + 32 * ib;
                        bf16x16_store(block[r], f32x16_load(row));
                        bf16x16_store(block[r] + 16, f32x16_load(row + 16));
                    }
                    transpose_16x16_pairs(&block[0][0], 32, forward + ((((g / 2) * taps + tap) * (c_in / 32) + ib) * 2 + g % 2) * 16 * 32, 32);
                    for (int half = 0; half < 2; half++) {
                        bf16 *out = input_gradient + (((ib * taps + tap) * (c_out / 32) + g / 2) * 2 + half) * 16 * 32 + 8 * (g % 2) * 32;
                        for (int q = 0; q < 8; q++) {
                            const __m512i pairs = interleaved_16(block[2 * q] + 16 * half, block[2 * q + 1] + 16 * half);
                            if ((uintptr_t)(out + q * 32) % 64 == 0) /* past the caches: read only in the backward */
                                _mm512_stream_si512((__m512i *)(out + q * 32), pairs);
                            else
                                _mm512_storeu_si512(out + q * 32, pairs);
                        }
                    }
                }
        _mm_sfence(); /* this thread's streaming stores done before the loop's barrier */
    }
}

#else /* no tile unit to compile for: the Python side then keeps PyTorch's convolution */

int gs_tiles_init(void)
{
    return -1;
}

void gs_tiles_release(void)
{
}

void gs_tiles_poison_scratch(int on)
{
    (void)on;
}

int gs_tile_weight_gradient_bf16(const bf16 *x, const bf16 *dy, float *dw, float *db, i64 batch, i64 in_h, i64 in_w, i64 c_in,
                                 i64 c_out, i64 k, i64 pad)
{
    (void)x, (void)dy, (void)dw, (void)db, (void)batch, (void)in_h, (void)in_w, (void)c_in, (void)c_out, (void)k, (void)pad;
    return -1;
}

int gs_tile_input_gradient_bf16(const bf16 *dy, const bf16 *packed, bf16 *dx, i64 batch, i64 in_h, i64 in_w, i64 c_in, i64 c_out,
                                i64 k, i64 pad)
{
    (void)dy, (void)packed, (void)dx, (void)batch, (void)in_h, (void)in_w, (void)c_in, (void)c_out, (void)k, (void)pad;
    return -1;
}

int gs_tile_forward_bf16(const bf16 *x, const bf16 *packed, const bf16 *bias, bf16 *y, i64 batch, i64 in_h, i64 in_w, i64 c_in,
                         i64 c_out, i64 k, i64 pad)
{
    (void)x, (void)packed, (void)bias, (void)y, (void)batch, (void)in_h, (void)in_w, (void)c_in, (void)c_out, (void)k, (void)pad;
    return -1;
}

void gs_tile_pack_fp32(const float *weight, bf16 *forward, bf16 *input_gradient, i64 c_in, i64 c_out, i64 taps)
{
    (void)weight, (void)forward, (void)input_gradient, (void)c_in, (void)c_out, (void)taps;
}

#endif

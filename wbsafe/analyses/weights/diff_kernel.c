/* One fused pass over a block of rows of a base and a tuned tensor: wbsafe's weight-diff
 * kernel (see diff_kernel.py, which builds and loads this file; the torch path in
 * weight_diff.dense_stats computes the same figures and is used where this cannot be).
 *
 * For rows [0, n_rows) of `rowlen` entries, with w = base and d = tuned - base in float32:
 *   acc[0] += sum w*w      acc[1] += sum d*d      acc[2] += sum w*d      (float64)
 *   acc[3]  = max(acc[3], max |d|)                *changed += count of changed entries
 *   rows_out (if not NULL): [n_rows][3] float64, each row's (sum w*w, sum d*d, sum w*d)
 *   d_out (if not NULL): d, [n_rows * rowlen] float32
 * An entry is changed when tol == 0 and d != 0 (tuned != base as numbers: -0.0 against
 * +0.0 is no change), or when tol > 0 and |d| > tol * |w|. Sums run in float32 over blocks of at most BLOCK entries (vector lanes
 * in parallel) and add up in float64. A NaN makes the sums NaN, which the caller checks;
 * max |d| skips NaN. Storage dtypes: 0 float32, 1 bfloat16, 2 float16 (where the compiler
 * has _Float16), little-endian.
 *
 * Built without -ffast-math (NaN must survive) and with -ffp-contract=off (every build
 * rounds the same way); `omp simd` reductions let the compiler vectorise the sums
 * (-fopenmp-simd, no OpenMP runtime). On x86-64, where the compiler supports target_clones,
 * the loops are cloned for x86-64-v3 and v4 and picked at load time, so one build runs on
 * any x86-64; elsewhere diff_kernel.py builds without -DWB_CLONES.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 4096

#if defined(WB_CLONES)
#define WB_TARGETS __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define WB_TARGETS
#endif

/* Loads by memcpy: a tensor may sit at any byte offset in its file's map, and memcpy is
 * the portable unaligned load (compilers emit a plain, vectorisable load for it). */
static inline float ld_f32(const void *p, int64_t i) {
    float f;
    memcpy(&f, (const char *)p + 4 * i, sizeof f);
    return f;
}

static inline float ld_bf16(const void *p, int64_t i) {
    uint16_t h;
    memcpy(&h, (const char *)p + 2 * i, sizeof h);
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

#if defined(__FLT16_MAX__)
static inline float ld_f16(const void *p, int64_t i) {
    _Float16 h;
    memcpy(&h, (const char *)p + 2 * i, sizeof h);
    return (float)h;
}
#define WB_HAS_F16 1
#else
#define WB_HAS_F16 0
#endif

#define WB_INLINE static inline __attribute__((always_inline))

WB_INLINE float load(const void *p, int64_t i, const int dtype) {
    switch (dtype) {
        case 0:
            return ld_f32(p, i);
        case 1:
            return ld_bf16(p, i);
#if WB_HAS_F16
        default:
            return ld_f16(p, i);
#else
        default:
            return 0.0f;
#endif
    }
}

/* Entries [o, o + n) (n <= BLOCK): out[0..3] = Σw², Σd², Σw·d, max|d|; returns the changed
 * count. dtypes, `exact` and whether d_out is NULL are constants where this is inlined, so
 * each instance is one branch-free vector loop. */
WB_INLINE int32_t block(const void *w, const void *t, int64_t o, int64_t n, const int w_dtype,
                        const int t_dtype, const int exact, float tol, float *d_out,
                        float out[4]) {
    float a = 0.0f, b = 0.0f, c = 0.0f, m = 0.0f;
    int32_t cc = 0;
#pragma omp simd reduction(+ : a, b, c, cc) reduction(max : m)
    for (int64_t k = 0; k < n; k++) {
        const float x = load(w, o + k, w_dtype);
        const float d = load(t, o + k, t_dtype) - x;
        const float ad = fabsf(d);
        a += x * x;
        b += d * d;
        c += x * d;
        m = ad > m ? ad : m;
        cc += exact ? d != 0.0f : ad > tol * fabsf(x);
        if (d_out) d_out[o + k] = d;
    }
    out[0] = a;
    out[1] = b;
    out[2] = c;
    out[3] = m;
    return cc;
}

WB_INLINE void rows(const void *w, const void *t, int64_t n_rows, int64_t rowlen, float tol,
                    double *acc, int64_t *changed, double *rows_out, float *d_out,
                    const int w_dtype, const int t_dtype) {
    double tw2 = 0.0, td2 = 0.0, twd = 0.0;
    float mx = (float)acc[3];
    int64_t ch = 0;
    for (int64_t r = 0; r < n_rows; r++) {
        double rw2 = 0.0, rd2 = 0.0, rwd = 0.0;
        for (int64_t s = 0; s < rowlen; s += BLOCK) {
            const int64_t o = r * rowlen + s;
            const int64_t n = rowlen - s < BLOCK ? rowlen - s : BLOCK;
            float part[4];
            if (tol == 0.0f && d_out)
                ch += block(w, t, o, n, w_dtype, t_dtype, 1, 0.0f, d_out, part);
            else if (tol == 0.0f)
                ch += block(w, t, o, n, w_dtype, t_dtype, 1, 0.0f, NULL, part);
            else if (d_out)
                ch += block(w, t, o, n, w_dtype, t_dtype, 0, tol, d_out, part);
            else
                ch += block(w, t, o, n, w_dtype, t_dtype, 0, tol, NULL, part);
            rw2 += part[0];
            rd2 += part[1];
            rwd += part[2];
            mx = part[3] > mx ? part[3] : mx;
        }
        if (rows_out) {
            rows_out[3 * r] = rw2;
            rows_out[3 * r + 1] = rd2;
            rows_out[3 * r + 2] = rwd;
        }
        tw2 += rw2;
        td2 += rd2;
        twd += rwd;
    }
    acc[0] += tw2;
    acc[1] += td2;
    acc[2] += twd;
    acc[3] = mx;
    *changed += ch;
}

/* One specialised, target-cloned function per (base dtype, tuned dtype). */
#define WB_KERNEL(NAME, WD, TD)                                                             \
    WB_TARGETS static void NAME(const void *w, const void *t, int64_t n_rows, int64_t rowlen, \
                                float tol, double *acc, int64_t *changed, double *rows_out,   \
                                float *d_out) {                                               \
        rows(w, t, n_rows, rowlen, tol, acc, changed, rows_out, d_out, WD, TD);               \
    }

WB_KERNEL(k_f32_f32, 0, 0)
WB_KERNEL(k_f32_bf16, 0, 1)
WB_KERNEL(k_bf16_f32, 1, 0)
WB_KERNEL(k_bf16_bf16, 1, 1)
#if WB_HAS_F16
WB_KERNEL(k_f16_f16, 2, 2)
WB_KERNEL(k_f16_f32, 2, 0)
WB_KERNEL(k_f32_f16, 0, 2)
WB_KERNEL(k_f16_bf16, 2, 1)
WB_KERNEL(k_bf16_f16, 1, 2)
#endif

typedef void (*wb_kernel)(const void *, const void *, int64_t, int64_t, float, double *,
                          int64_t *, double *, float *);

/* Which storage dtypes this build reads: bit i set for dtype code i. */
int wb_dtypes(void) { return WB_HAS_F16 ? 7 : 3; }

/* Version of the calling convention below; the loader checks it. */
int wb_abi(void) { return 1; }

/* Returns 0, or -1 when the dtype pair is not supported by this build (nothing written). */
int wb_diff_rows(const void *w, int w_dtype, const void *t, int t_dtype, int64_t n_rows,
                 int64_t rowlen, float tol, double *acc, int64_t *changed, double *rows_out,
                 float *d_out) {
    static const wb_kernel table[3][3] = {
        {k_f32_f32, k_f32_bf16,
#if WB_HAS_F16
         k_f32_f16
#else
         0
#endif
        },
        {k_bf16_f32, k_bf16_bf16,
#if WB_HAS_F16
         k_bf16_f16
#else
         0
#endif
        },
#if WB_HAS_F16
        {k_f16_f32, k_f16_bf16, k_f16_f16},
#else
        {0, 0, 0},
#endif
    };
    if (w_dtype < 0 || w_dtype > 2 || t_dtype < 0 || t_dtype > 2) return -1;
    const wb_kernel k = table[w_dtype][t_dtype];
    if (!k) return -1;
    k(w, t, n_rows, rowlen, tol, acc, changed, rows_out, d_out);
    return 0;
}

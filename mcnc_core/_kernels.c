/* mcnc_core._kernels: the decoder's output GEMM and a streaming copy, for x86-64 CPUs.
 *
 * gemm(a, b, c, m, k, n, lda, ldc, stream): C[m, n] = A[m, k] @ B[k, n], float32, row-major
 *   (B dense: row stride n). Every output element is computed the same way whatever the tiling:
 *   acc = 0; for p in 0..k-1: acc = fma(A[i, p], B[p, j], acc) -- so its bits depend only on its
 *   own row of A, never on m, the block, the thread or the output address. Training's forward and
 *   reconstruction both call it (mcnc_core.generator), which keeps them bit-identical.
 *   With stream != 0 the result goes to memory with streaming (non-temporal) stores: the decoder
 *   writes outputs far larger than any cache, and ordinary stores would first read every line of
 *   the destination (on the VM this project measures on, ~8 GB/s against 20-40 GB/s streaming).
 *   Needs AVX-512F (gemm_available()); the caller falls back to torch's GEMM otherwise.
 *
 *   out_kind (0 float32, 1 float16, 2 bfloat16): the float32 accumulators are rounded to the output
 *   dtype in registers and stored as such (ldc counts output elements), so a half-precision output
 *   costs no float32 pass over memory. The rounding is torch's, bit for bit (checked over every
 *   float32 bit pattern, tests/core/test_native_cast.py): float16 is the hardware's vcvtps2ph with
 *   round-to-nearest-even (what torch's CPU cast runs: denormals kept, NaN quieted with its payload
 *   truncated); bfloat16 is torch's integer round-to-nearest-even, ((x >> 16) & 1) + 0x7fff added
 *   then shifted, with every NaN written as 0xffff (torch's vectorised cast; vcvtneps2bf16 would
 *   flush denormals and keep NaN payloads, so it is not used).
 *
 * copy(dst, src, count): count float32 values with streaming stores (AVX-512, AVX or SSE2).
 * cast(dst, src, count, out_kind): count float32 values rounded to float16/bfloat16 as above and
 *   written with streaming stores (AVX-512F; cast_available()).
 *
 * Addresses are plain integers (Tensor.data_ptr()); the GIL is released while a kernel runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { OUT_F32 = 0, OUT_F16 = 1, OUT_BF16 = 2 }; /* gemm's and cast's out_kind */

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define MCNC_X86 1

/* ---------------------------------------------------------------- streaming copy */
__attribute__((target("avx512f"))) static void copy_avx512(float *dst, const float *src, size_t n) {
    size_t i = 0;
    while (i < n && ((uintptr_t)(dst + i) & 63)) { dst[i] = src[i]; i++; }
    for (; i + 16 <= n; i += 16) _mm512_stream_ps(dst + i, _mm512_loadu_ps(src + i));
    for (; i < n; i++) dst[i] = src[i];
    _mm_sfence();
}

__attribute__((target("avx"))) static void copy_avx(float *dst, const float *src, size_t n) {
    size_t i = 0;
    while (i < n && ((uintptr_t)(dst + i) & 31)) { dst[i] = src[i]; i++; }
    for (; i + 8 <= n; i += 8) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
    for (; i < n; i++) dst[i] = src[i];
    _mm_sfence();
}

static void copy_sse2(float *dst, const float *src, size_t n) {
    size_t i = 0;
    while (i < n && ((uintptr_t)(dst + i) & 15)) { dst[i] = src[i]; i++; }
    for (; i + 4 <= n; i += 4) _mm_stream_ps(dst + i, _mm_loadu_ps(src + i));
    for (; i < n; i++) dst[i] = src[i];
    _mm_sfence();
}


/* ---------------------------------------------------------------- float32 -> float16 / bfloat16 */

__attribute__((target("avx512f"))) static inline __m256i to_f16(__m512 v) {
    return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

__attribute__((target("avx512f"))) static inline __m256i to_bf16(__m512 v) {
    __m512i x = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(x, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    __mmask16 ordered = _mm512_cmp_ps_mask(v, v, _CMP_ORD_Q); /* NaN lanes -> 0xffff, as torch */
    r = _mm512_mask_blend_epi32(ordered, _mm512_set1_epi32(0xffff), r);
    return _mm512_cvtepi32_epi16(r);
}

__attribute__((target("avx512f"))) static inline __m256i to_half(__m512 v, int kind) {
    return kind == OUT_F16 ? to_f16(v) : to_bf16(v);
}

/* 16 half values: streamed when whole and 32-byte aligned, else stored normally (same bits). */
__attribute__((target("avx512f"))) static inline void store_half16(uint16_t *dst, __m256i h, int lanes, int stream) {
    if (lanes == 16) {
        if (stream && !((uintptr_t)dst & 31))
            _mm256_stream_si256((__m256i *)dst, h);
        else
            _mm256_storeu_si256((__m256i *)dst, h);
    } else {
        uint16_t tmp[16];
        _mm256_storeu_si256((__m256i *)tmp, h);
        memcpy(dst, tmp, (size_t)lanes * sizeof(uint16_t));
    }
}

__attribute__((target("avx512f"))) static void cast_avx512(uint16_t *dst, const float *src, size_t n, int kind) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) store_half16(dst + i, to_half(_mm512_loadu_ps(src + i), kind), 16, 1);
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        store_half16(dst + i, to_half(_mm512_maskz_loadu_ps(m, src + i), kind), (int)(n - i), 0);
    }
    _mm_sfence();
}

/* ---------------------------------------------------------------- GEMM, AVX-512 */
#define TILE_COLS 64 /* 4 vectors of 16; with 6 rows: 24 accumulators + 4 of B + 1 of A = 29 of 32 zmm */

__attribute__((target("avx512f"))) static inline void store_row(float *dst, __m512 v, __mmask16 mask, int stream) {
    /* a full, 64-byte-aligned vector can stream; anything else is stored normally (same bits) */
    if (stream && mask == (__mmask16)0xFFFF && !((uintptr_t)dst & 63))
        _mm512_stream_ps(dst, v);
    else
        _mm512_mask_storeu_ps(dst, mask, v);
}

/* R rows (1..6) x up to 64 columns (masks m0..m3) of C. R is a compile-time constant at each
 * call site, so the row loops unroll and the accumulators stay in registers. */
#define GEMM_TILE(R)                                                                                     \
    __attribute__((target("avx512f"))) static void tile_##R(const float *a, size_t lda, const float *b,  \
                                                            size_t ldb, void *c, size_t ldc, size_t k,   \
                                                            const __mmask16 *mk, const int *lanes,       \
                                                            int stream, int kind) {                      \
        __m512 acc[R][4];                                                                                \
        _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                                              \
            _Pragma("GCC unroll 4") for (int t = 0; t < 4; t++) acc[r][t] = _mm512_setzero_ps();         \
        for (size_t p = 0; p < k; p++) {                                                                 \
            const float *bp = b + p * ldb;                                                               \
            __m512 b0 = _mm512_load_ps(bp);                                                              \
            __m512 b1 = _mm512_load_ps(bp + 16);                                                         \
            __m512 b2 = _mm512_load_ps(bp + 32);                                                         \
            __m512 b3 = _mm512_load_ps(bp + 48);                                                         \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) {                                        \
                __m512 ar = _mm512_set1_ps(a[r * lda + p]);                                              \
                acc[r][0] = _mm512_fmadd_ps(ar, b0, acc[r][0]);                                          \
                acc[r][1] = _mm512_fmadd_ps(ar, b1, acc[r][1]);                                          \
                acc[r][2] = _mm512_fmadd_ps(ar, b2, acc[r][2]);                                          \
                acc[r][3] = _mm512_fmadd_ps(ar, b3, acc[r][3]);                                          \
            }                                                                                            \
        }                                                                                                \
        if (kind == OUT_F32) {                                                                           \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                                          \
                _Pragma("GCC unroll 4") for (int t = 0; t < 4; t++)                                      \
                    if (mk[t]) store_row((float *)c + r * ldc + 16 * t, acc[r][t], mk[t], stream);       \
        } else {                                                                                         \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                                          \
                _Pragma("GCC unroll 4") for (int t = 0; t < 4; t++)                                      \
                    if (mk[t]) store_half16((uint16_t *)c + r * ldc + 16 * t, to_half(acc[r][t], kind),  \
                                            lanes[t], stream);                                           \
        }                                                                                                \
    }

GEMM_TILE(6)
GEMM_TILE(4)
GEMM_TILE(2)
GEMM_TILE(1)

__attribute__((target("avx512f"))) static void gemm_avx512(const float *a, const float *b, void *c, size_t m,
                                                           size_t k, size_t n, size_t lda, size_t ldc, int stream,
                                                           int kind, float *pack) {
    /* Column slabs outer. Each 64-column slab of B is first copied into ``pack`` (k x 64, zero
     * padded, 64-byte aligned): read in place, its rows sit n floats apart, and with n a multiple
     * of 1024 they all map to the same few L1 sets (4 KiB aliasing) and miss on every load. The
     * slab then stays in L1 while every row tile of A sweeps it; each tile writes 256-byte row
     * segments (whole cache lines, which streaming stores write without reading them). */
    for (size_t j = 0; j < n; j += TILE_COLS) {
        size_t cols = n - j < TILE_COLS ? n - j : TILE_COLS;
        __mmask16 mk[4];
        int lanes[4];
        for (int t = 0; t < 4; t++) {
            long left = (long)cols - 16 * t;
            lanes[t] = left >= 16 ? 16 : left <= 0 ? 0 : (int)left;
            mk[t] = left >= 16 ? (__mmask16)0xFFFF : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1);
        }
        size_t esz = kind == OUT_F32 ? sizeof(float) : sizeof(uint16_t);
        char *cj = (char *)c + j * esz;
        for (size_t p = 0; p < k; p++)
            for (int t = 0; t < 4; t++)
                _mm512_store_ps(pack + p * TILE_COLS + 16 * t, _mm512_maskz_loadu_ps(mk[t], b + p * n + j + 16 * t));
        size_t i = 0;
#define ROW(i) (cj + (i) * ldc * esz)
        for (; i + 6 <= m; i += 6) tile_6(a + i * lda, lda, pack, TILE_COLS, ROW(i), ldc, k, mk, lanes, stream, kind);
        for (; i + 4 <= m; i += 4) tile_4(a + i * lda, lda, pack, TILE_COLS, ROW(i), ldc, k, mk, lanes, stream, kind);
        for (; i + 2 <= m; i += 2) tile_2(a + i * lda, lda, pack, TILE_COLS, ROW(i), ldc, k, mk, lanes, stream, kind);
        for (; i < m; i++) tile_1(a + i * lda, lda, pack, TILE_COLS, ROW(i), ldc, k, mk, lanes, stream, kind);
#undef ROW
    }
    if (stream) _mm_sfence();
}
#endif

typedef void (*copy_fn)(float *, const float *, size_t);

static void copy_memcpy(float *dst, const float *src, size_t n) { memcpy(dst, src, n * sizeof(float)); }

static copy_fn chosen_copy = copy_memcpy;
static int have_gemm = 0;

static void pick(void) {
#ifdef MCNC_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) {
        chosen_copy = copy_avx512;
        have_gemm = 1;
    } else if (__builtin_cpu_supports("avx")) {
        chosen_copy = copy_avx;
    } else {
        chosen_copy = copy_sse2;
    }
#endif
}

static int nonnull(unsigned long long p, const char *what) {
    if (p == 0) {
        PyErr_Format(PyExc_ValueError, "%s is a null address", what);
        return 0;
    }
    return 1;
}

static PyObject *kernels_copy(PyObject *self, PyObject *args) {
    unsigned long long dst, src;
    Py_ssize_t count;
    (void)self;
    if (!PyArg_ParseTuple(args, "KKn", &dst, &src, &count)) return NULL;
    if (count < 0) {
        PyErr_SetString(PyExc_ValueError, "count must be >= 0");
        return NULL;
    }
    if (count > 0 && (!nonnull(dst, "dst") || !nonnull(src, "src"))) return NULL;
    Py_BEGIN_ALLOW_THREADS
    chosen_copy((float *)(uintptr_t)dst, (const float *)(uintptr_t)src, (size_t)count);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *kernels_gemm(PyObject *self, PyObject *args) {
    unsigned long long a, b, c;
    Py_ssize_t m, k, n, lda, ldc;
    int stream, kind = OUT_F32;
    (void)self;
    if (!PyArg_ParseTuple(args, "KKKnnnnnp|i", &a, &b, &c, &m, &k, &n, &lda, &ldc, &stream, &kind)) return NULL;
    if (kind < OUT_F32 || kind > OUT_BF16) {
        PyErr_Format(PyExc_ValueError, "out_kind must be 0 (float32), 1 (float16) or 2 (bfloat16), got %d", kind);
        return NULL;
    }
    if (!have_gemm) {
        PyErr_SetString(PyExc_RuntimeError, "this CPU has no AVX-512F: use torch's GEMM (gemm_available() is False)");
        return NULL;
    }
    if (m < 0 || k < 0 || n < 0 || lda < k || ldc < n) {
        PyErr_SetString(PyExc_ValueError, "need m, k, n >= 0, lda >= k and ldc >= n");
        return NULL;
    }
    if (m == 0 || n == 0) Py_RETURN_NONE;
    if (!nonnull(a, "a") || !nonnull(b, "b") || !nonnull(c, "c")) return NULL;
#ifdef MCNC_X86
    float *pack = aligned_alloc(64, (size_t)k * TILE_COLS * sizeof(float) + 64);
    if (pack == NULL) return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    gemm_avx512((const float *)(uintptr_t)a, (const float *)(uintptr_t)b, (void *)(uintptr_t)c, (size_t)m,
                (size_t)k, (size_t)n, (size_t)lda, (size_t)ldc, stream, kind, pack);
    Py_END_ALLOW_THREADS
    free(pack);
#endif
    Py_RETURN_NONE;
}


static PyObject *kernels_cast(PyObject *self, PyObject *args) {
    unsigned long long dst, src;
    Py_ssize_t count;
    int kind;
    (void)self;
    if (!PyArg_ParseTuple(args, "KKni", &dst, &src, &count, &kind)) return NULL;
    if (!have_gemm) {
        PyErr_SetString(PyExc_RuntimeError, "this CPU has no AVX-512F: use torch's cast (cast_available() is False)");
        return NULL;
    }
    if (kind != OUT_F16 && kind != OUT_BF16) {
        PyErr_Format(PyExc_ValueError, "out_kind must be 1 (float16) or 2 (bfloat16), got %d", kind);
        return NULL;
    }
    if (count < 0) {
        PyErr_SetString(PyExc_ValueError, "count must be >= 0");
        return NULL;
    }
    if (count == 0) Py_RETURN_NONE;
    if (!nonnull(dst, "dst") || !nonnull(src, "src")) return NULL;
#ifdef MCNC_X86
    Py_BEGIN_ALLOW_THREADS
    cast_avx512((uint16_t *)(uintptr_t)dst, (const float *)(uintptr_t)src, (size_t)count, kind);
    Py_END_ALLOW_THREADS
#endif
    Py_RETURN_NONE;
}

static PyObject *kernels_gemm_available(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyBool_FromLong(have_gemm);
}

static PyMethodDef methods[] = {
    {"copy", kernels_copy, METH_VARARGS,
     "copy(dst, src, count): count float32 values with streaming stores; GIL released."},
    {"gemm", kernels_gemm, METH_VARARGS,
     "gemm(a, b, c, m, k, n, lda, ldc, stream, out_kind=0): C = A @ B in float32 (row-major, B's row stride n); "
     "each element a sequential fma chain over k, rounded to float16 (out_kind 1) or bfloat16 (2) as torch "
     "does; streaming stores when stream; GIL released."},
    {"cast", kernels_cast, METH_VARARGS,
     "cast(dst, src, count, out_kind): float32 to float16 (1) or bfloat16 (2), torch's rounding, streaming "
     "stores; GIL released."},
    {"gemm_available", kernels_gemm_available, METH_NOARGS, "Whether gemm and cast can run on this CPU (AVX-512F)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", NULL, -1, methods};

PyMODINIT_FUNC PyInit__kernels(void) {
    pick();
    return PyModule_Create(&module);
}

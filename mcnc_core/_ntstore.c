/* mcnc_core._ntstore: copy float32 into memory with non-temporal (streaming) stores.
 *
 * Why: the decoder produces each output slice in cache and then writes it to the output tensor,
 * which is far larger than any cache. Ordinary stores first read every destination cache line
 * (read-for-ownership) and then write it back: on the 2-core VM this project measures on, that
 * caps output writes at ~8 GB/s whatever the thread count, while streaming stores write the same
 * bytes at 20-40 GB/s (docs/benchmarks.md). A copy changes no bit: weights are the same with or
 * without this module (mcnc_core.decode falls back to Tensor.copy_ when it is missing).
 *
 * copy(dst_address, src_address, count): copies `count` float32 values; the GIL is released.
 * The widest streaming store the CPU has is picked at run time (AVX-512, AVX, SSE2); other
 * architectures use memcpy.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define MCNC_X86 1

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
#endif

typedef void (*copy_fn)(float *, const float *, size_t);

static void copy_memcpy(float *dst, const float *src, size_t n) { memcpy(dst, src, n * sizeof(float)); }

static copy_fn pick(void) {
#ifdef MCNC_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return copy_avx512;
    if (__builtin_cpu_supports("avx")) return copy_avx;
    return copy_sse2;
#else
    return copy_memcpy;
#endif
}

static copy_fn chosen;

static PyObject *ntstore_copy(PyObject *self, PyObject *args) {
    unsigned long long dst, src;
    Py_ssize_t count;
    (void)self;
    if (!PyArg_ParseTuple(args, "KKn", &dst, &src, &count)) return NULL;
    if (count < 0) {
        PyErr_SetString(PyExc_ValueError, "count must be >= 0");
        return NULL;
    }
    if (count > 0 && (dst == 0 || src == 0)) {
        PyErr_SetString(PyExc_ValueError, "null address");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    chosen((float *)(uintptr_t)dst, (const float *)(uintptr_t)src, (size_t)count);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *ntstore_kind(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
#ifdef MCNC_X86
    if (chosen == copy_avx512) return PyUnicode_FromString("avx512");
    if (chosen == copy_avx) return PyUnicode_FromString("avx");
    if (chosen == copy_sse2) return PyUnicode_FromString("sse2");
#endif
    return PyUnicode_FromString("memcpy");
}

static PyMethodDef methods[] = {
    {"copy", ntstore_copy, METH_VARARGS,
     "copy(dst_address, src_address, count): count float32 values, streaming stores, GIL released."},
    {"kind", ntstore_kind, METH_NOARGS, "The store instructions in use: avx512, avx, sse2 or memcpy."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ntstore", NULL, -1, methods};

PyMODINIT_FUNC PyInit__ntstore(void) {
    chosen = pick();
    return PyModule_Create(&module);
}

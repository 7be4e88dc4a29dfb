/*
 * beeswax_plugin.h: the beeswax plugin ABI, version 1.0, for C plugins.
 *
 * A plugin is a native shared library or a wasm32 module exporting the functions declared
 * below. Every number here mirrors plugin-sdk/src/abi.rs; the byte layouts of configs,
 * schedules, tensors, images and parameters are documented in plugin-sdk/src/wire.rs and
 * plugin-sdk/README.md. All multi-byte values are little-endian.
 *
 * Build a WASM plugin without any C library:
 *   clang --target=wasm32 -O2 -ffreestanding -nostdlib -Wl,--no-entry -Wl,--export-dynamic \
 *         -I plugin-sdk/include -o my.wasm my.c
 * and define BEESWAX_WASM_RUNTIME before including this header in exactly one file: it then
 * provides beeswax_alloc/beeswax_free (a size-class allocator over memory.grow) and
 * memcpy/memset, which clang may call.
 */
#ifndef BEESWAX_PLUGIN_H
#define BEESWAX_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- version: beeswax_abi_version() returns (MAJOR << 16) | MINOR ---------------------- */
#define BEESWAX_ABI_MAJOR 1
#define BEESWAX_ABI_MINOR 0
#define BEESWAX_ABI_VERSION ((uint32_t)((BEESWAX_ABI_MAJOR << 16) | BEESWAX_ABI_MINOR))

/* ---- status codes of the fallible exports ---------------------------------------------- */
#define BEESWAX_OK 0
#define BEESWAX_INVALID_INPUT 1
#define BEESWAX_UNSUPPORTED 2
#define BEESWAX_INTERNAL 3
#define BEESWAX_OUT_OF_MEMORY 4

/* ---- capability bits (beeswax_capabilities) --------------------------------------------- */
#define BEESWAX_CAP_SCHEDULER 1u
#define BEESWAX_CAP_POSTPROCESSOR 2u
#define BEESWAX_CAP_PREPROCESSOR 4u

/* ---- tensors ---------------------------------------------------------------------------- */
#define BEESWAX_DTYPE_F32 0u
#define BEESWAX_DTYPE_F64 1u
#define BEESWAX_MAX_RANK 8u

/* ---- scheduler config codes and flags --------------------------------------------------- */
#define BEESWAX_PREDICTION_EPSILON 0u
#define BEESWAX_PREDICTION_V 1u
#define BEESWAX_PREDICTION_SAMPLE 2u
#define BEESWAX_SPACING_DEFAULT 0u
#define BEESWAX_SPACING_LINSPACE 1u
#define BEESWAX_SPACING_LEADING 2u
#define BEESWAX_SPACING_TRAILING 3u
#define BEESWAX_FLAG_KARRAS_SIGMAS (1u << 0)
#define BEESWAX_FLAG_EXPONENTIAL_SIGMAS (1u << 1)
#define BEESWAX_FLAG_BETA_SIGMAS (1u << 2)
#define BEESWAX_FLAG_RESCALE_ZERO_SNR (1u << 3)
#define BEESWAX_FLAG_FINAL_SIGMA_MIN (1u << 4)
#define BEESWAX_FLAG_CONTINUOUS_TIMESTEPS (1u << 5)
#define BEESWAX_FLAG_LOG_LINEAR (1u << 6)
#define BEESWAX_FLAG_HAS_SIGMA_MIN (1u << 7)
#define BEESWAX_FLAG_HAS_SIGMA_MAX (1u << 8)
/* The model is a flow-matching one (FLUX); see FLAG_FLOW_MODEL in the Rust SDK. */
#define BEESWAX_FLAG_FLOW_MODEL (1u << 9)
#define BEESWAX_SCHEDULE_WANTS_NOISE 1u
#define BEESWAX_PARAM_NUMBER 0u
#define BEESWAX_PARAM_STRING 1u

/* A byte buffer in the plugin's memory, allocated with beeswax_alloc; the host frees it. */
typedef struct {
    uint8_t *ptr;
    size_t len;
} beeswax_buf;

#if defined(__wasm__)
/* Put before an exported definition: BEESWAX_EXPORT(beeswax_abi_version) uint32_t beeswax_abi_version(void) {...} */
#define BEESWAX_EXPORT(sym) __attribute__((export_name(#sym), visibility("default")))
/* The only host import: a log line tagged with the plugin's name (level 0 error .. 3 debug). */
__attribute__((import_module("beeswax"), import_name("log"))) void beeswax_log(int32_t level,
                                                                              const uint8_t *msg,
                                                                              size_t len);
#else
#define BEESWAX_EXPORT(sym) __attribute__((visibility("default")))
#endif

/* ---- the exports (declare the ones you implement; see README.md) ------------------------ */
uint32_t beeswax_abi_version(void);
uint32_t beeswax_capabilities(void);
uint8_t *beeswax_alloc(size_t len); /* 8-byte aligned; NULL on failure */
void beeswax_free(uint8_t *ptr, size_t len);
int32_t beeswax_scheduler_new(const uint8_t *config, size_t len, beeswax_buf *out);
int32_t beeswax_scheduler_scale(uint64_t handle, uint32_t index, const uint8_t *in, size_t len,
                                beeswax_buf *out);
int32_t beeswax_scheduler_step(uint64_t handle, uint32_t index, const uint8_t *in, size_t len,
                               beeswax_buf *out);
int32_t beeswax_scheduler_add_noise(uint64_t handle, uint32_t index, const uint8_t *in,
                                    size_t len, beeswax_buf *out);
void beeswax_scheduler_drop(uint64_t handle);
int32_t beeswax_postprocess(const uint8_t *params, size_t params_len, const uint8_t *image,
                            size_t image_len, beeswax_buf *out);
int32_t beeswax_preprocess(const uint8_t *params, size_t params_len, const uint8_t *input,
                           size_t input_len, beeswax_buf *out);

/* ---- helpers ---------------------------------------------------------------------------- */
static inline uint32_t beeswax_read_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline uint64_t beeswax_read_u64(const uint8_t *p) {
    return (uint64_t)beeswax_read_u32(p) | ((uint64_t)beeswax_read_u32(p + 4) << 32);
}

static inline double beeswax_read_f64(const uint8_t *p) {
    union { uint64_t u; double d; } v;
    v.u = beeswax_read_u64(p);
    return v.d;
}

static inline void beeswax_write_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}

static inline void beeswax_write_u64(uint8_t *p, uint64_t v) {
    beeswax_write_u32(p, (uint32_t)v);
    beeswax_write_u32(p + 4, (uint32_t)(v >> 32));
}

static inline void beeswax_write_f64(uint8_t *p, double d) {
    union { uint64_t u; double d; } v;
    v.d = d;
    beeswax_write_u64(p, v.u);
}

static inline size_t beeswax_pad8(size_t n) { return (n + 7u) & ~(size_t)7u; }

/* Stores a copy of a NUL-terminated message in *out and returns status. */
static inline int32_t beeswax_error(beeswax_buf *out, int32_t status, const char *msg) {
    size_t n = 0;
    while (msg[n]) n++;
    out->ptr = beeswax_alloc(n);
    out->len = out->ptr ? n : 0;
    for (size_t i = 0; out->ptr && i < n; i++) out->ptr[i] = (uint8_t)msg[i];
    return status;
}

/* A tensor view into an input buffer (data is 8-byte aligned, read in place). */
typedef struct {
    uint32_t dtype, rank;
    uint32_t dims[BEESWAX_MAX_RANK];
    size_t count;         /* number of elements */
    const uint8_t *data;  /* count * 4 (f32) or count * 8 (f64) bytes */
    size_t encoded_len;   /* bytes from the tensor's start to the next tensor */
} beeswax_tensor;

/* Parses a tensor at `p` with `avail` bytes; returns 0 on success, -1 if malformed. */
static inline int beeswax_tensor_parse(const uint8_t *p, size_t avail, beeswax_tensor *t) {
    if (avail < 8) return -1;
    t->dtype = beeswax_read_u32(p);
    t->rank = beeswax_read_u32(p + 4);
    if (t->rank > BEESWAX_MAX_RANK || (t->dtype != BEESWAX_DTYPE_F32 && t->dtype != BEESWAX_DTYPE_F64)) return -1;
    size_t head = beeswax_pad8(8 + 4 * (size_t)t->rank);
    if (avail < head) return -1;
    size_t count = 1;
    for (uint32_t i = 0; i < t->rank; i++) {
        t->dims[i] = beeswax_read_u32(p + 8 + 4 * i);
        if (t->dims[i] && count > (SIZE_MAX / 8) / t->dims[i]) return -1;
        count *= t->dims[i];
    }
    size_t bytes = count * (t->dtype == BEESWAX_DTYPE_F64 ? 8 : 4);
    if (avail - head < bytes) return -1;
    t->count = count;
    t->data = p + head;
    t->encoded_len = head + beeswax_pad8(bytes);
    if (t->encoded_len > avail) t->encoded_len = avail;
    return 0;
}

/* Allocates an output tensor shaped like `like`; returns its data pointer (NULL on OOM). */
static inline uint8_t *beeswax_tensor_alloc_like(const beeswax_tensor *like, beeswax_buf *out) {
    size_t head = beeswax_pad8(8 + 4 * (size_t)like->rank);
    size_t bytes = like->count * (like->dtype == BEESWAX_DTYPE_F64 ? 8 : 4);
    size_t total = head + beeswax_pad8(bytes);
    uint8_t *p = beeswax_alloc(total);
    if (!p) return 0;
    for (size_t i = 0; i < total; i++) p[i] = 0;
    beeswax_write_u32(p, like->dtype);
    beeswax_write_u32(p + 4, like->rank);
    for (uint32_t i = 0; i < like->rank; i++) beeswax_write_u32(p + 8 + 4 * i, like->dims[i]);
    out->ptr = p;
    out->len = total;
    return p + head;
}

/* Looks up number parameter `name` in an encoded parameter list; returns `fallback` if absent. */
static inline double beeswax_param_number(const uint8_t *p, size_t len, const char *name,
                                          double fallback) {
    if (len < 4) return fallback;
    uint32_t count = beeswax_read_u32(p);
    size_t pos = 4, name_len = 0;
    while (name[name_len]) name_len++;
    for (uint32_t i = 0; i < count; i++) {
        if (len - pos < 8) return fallback;
        uint32_t kind = beeswax_read_u32(p + pos), nlen = beeswax_read_u32(p + pos + 4);
        pos += 8;
        if (len - pos < nlen) return fallback;
        int same = nlen == name_len;
        for (size_t j = 0; same && j < nlen; j++) same = p[pos + j] == (uint8_t)name[j];
        pos += nlen;
        if (kind == BEESWAX_PARAM_NUMBER) {
            if (len - pos < 8) return fallback;
            if (same) return beeswax_read_f64(p + pos);
            pos += 8;
        } else {
            if (len - pos < 4) return fallback;
            uint32_t vlen = beeswax_read_u32(p + pos);
            pos += 4;
            if (len - pos < vlen) return fallback;
            pos += vlen;
        }
    }
    return fallback;
}

#ifdef BEESWAX_WASM_RUNTIME
/* ---- a tiny runtime for -nostdlib wasm32 plugins ---------------------------------------- */
extern unsigned char __heap_base;
static uintptr_t beeswax_heap_top;
static uint8_t *beeswax_free_lists[32];

void *memcpy(void *dst, const void *src, size_t n) {
    uint8_t *d = (uint8_t *)dst;
    const uint8_t *s = (const uint8_t *)src;
    while (n--) *d++ = *s++;
    return dst;
}

void *memset(void *dst, int c, size_t n) {
    uint8_t *d = (uint8_t *)dst;
    while (n--) *d++ = (uint8_t)c;
    return dst;
}

static inline unsigned beeswax_size_class(size_t len) {
    unsigned c = 4; /* 16 bytes */
    while (c < 31 && ((size_t)1 << c) < len) c++;
    return c;
}

BEESWAX_EXPORT(beeswax_alloc) uint8_t *beeswax_alloc(size_t len) {
    if (len == 0) return (uint8_t *)8;
    if (len > ((size_t)1 << 30)) return 0;
    unsigned c = beeswax_size_class(len);
    if (beeswax_free_lists[c]) {
        uint8_t *p = beeswax_free_lists[c];
        beeswax_free_lists[c] = *(uint8_t **)p;
        return p;
    }
    if (!beeswax_heap_top) beeswax_heap_top = ((uintptr_t)&__heap_base + 15) & ~(uintptr_t)15;
    size_t size = (size_t)1 << c;
    uintptr_t end = beeswax_heap_top + size;
    size_t have = __builtin_wasm_memory_size(0) * 65536u;
    if (end > have) {
        size_t pages = (end - have + 65535u) / 65536u;
        if (__builtin_wasm_memory_grow(0, pages) == (size_t)-1) return 0;
    }
    uint8_t *p = (uint8_t *)beeswax_heap_top;
    beeswax_heap_top = end;
    return p;
}

BEESWAX_EXPORT(beeswax_free) void beeswax_free(uint8_t *ptr, size_t len) {
    if (!ptr || len == 0) return;
    unsigned c = beeswax_size_class(len);
    *(uint8_t **)ptr = beeswax_free_lists[c];
    beeswax_free_lists[c] = ptr;
}
#endif /* BEESWAX_WASM_RUNTIME */

#ifdef __cplusplus
}
#endif
#endif /* BEESWAX_PLUGIN_H */

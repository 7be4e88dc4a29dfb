#!/usr/bin/env bash
# The machine's own ceilings, to read the Benchmarks table against: the f32 FMA peak (a loop
# of 12 independent fused multiply-adds on the widest vectors the CPU has, AVX-512 or AVX2,
# in inline assembly so that no compiler can fold it) on 1 and on all threads, and one
# thread's read and write bandwidth over buffers from 1 MB to 1 GB (where the caches end).
#
#   scripts/cpu-ceilings.sh
#
# Needs a C compiler (cc, clang or gcc) and an x86-64 CPU with AVX2 at least (the program is
# built for AVX2; AVX-512 is used where the CPU has it); prints plain lines. Never run in CI.
set -euo pipefail

CC=${CC:-$(command -v cc || command -v clang || command -v gcc)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cat > "$work/ceilings.c" <<'EOF'
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <immintrin.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define FMA12(op, r) \
    op " %%" r "14,%%" r "15,%%" r "0\n" op " %%" r "14,%%" r "15,%%" r "1\n" \
    op " %%" r "14,%%" r "15,%%" r "2\n" op " %%" r "14,%%" r "15,%%" r "3\n" \
    op " %%" r "14,%%" r "15,%%" r "4\n" op " %%" r "14,%%" r "15,%%" r "5\n" \
    op " %%" r "14,%%" r "15,%%" r "6\n" op " %%" r "14,%%" r "15,%%" r "7\n" \
    op " %%" r "14,%%" r "15,%%" r "8\n" op " %%" r "14,%%" r "15,%%" r "9\n" \
    op " %%" r "14,%%" r "15,%%" r "10\n" op " %%" r "14,%%" r "15,%%" r "11\n"

static int wide; /* 1: AVX-512 (16 lanes), 0: AVX2 (8 lanes) */

__attribute__((target("avx512f"))) static void fma512(long n) {
    __asm__ volatile("vxorps %%xmm14,%%xmm14,%%xmm14\n vxorps %%xmm15,%%xmm15,%%xmm15\n"
                     "1:\n" FMA12("vfmadd231ps", "zmm") "dec %0\n jnz 1b\n"
                     : "+r"(n)::"memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5",
                       "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm14", "xmm15");
}

__attribute__((target("avx2,fma"))) static void fma256(long n) {
    __asm__ volatile("vxorps %%xmm14,%%xmm14,%%xmm14\n vxorps %%xmm15,%%xmm15,%%xmm15\n"
                     "1:\n" FMA12("vfmadd231ps", "ymm") "dec %0\n jnz 1b\n"
                     : "+r"(n)::"memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5",
                       "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm14", "xmm15");
}

static void *spin(void *arg) {
    long n = (long)arg;
    if (wide) fma512(n); else fma256(n);
    return NULL;
}

static void peak(int threads) {
    const long n = 100000000;
    pthread_t t[256];
    double best = 1e30;
    for (int round = 0; round < 3; round++) {
        double t0 = now();
        for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, spin, (void *)n);
        for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
        double dt = now() - t0;
        if (dt < best) best = dt;
    }
    double lanes = wide ? 16 : 8;
    printf("FMA peak, %d thread(s), %s: %.0f GFLOP/s\n", threads, wide ? "AVX-512" : "AVX2",
           threads * n * 12.0 * lanes * 2 / best / 1e9);
}

static volatile float sink;

static void bandwidth(void) {
    size_t sizes[] = {1 << 20, 8 << 20, 32 << 20, 64 << 20, 256 << 20, 1024u << 20};
    for (int s = 0; s < 6; s++) {
        size_t n = sizes[s] / sizeof(__m256);
        __m256 *a = aligned_alloc(64, sizes[s]);
        if (!a) return;
        memset(a, 0, sizes[s]);
        size_t reps = ((size_t)2048 << 20) / sizes[s];
        if (reps < 2) reps = 2;
        /* Four sums, so that the adds' latency does not bound the loads. */
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        double t0 = now();
        for (size_t r = 0; r < reps; r++)
            for (size_t i = 0; i + 4 <= n; i += 4) {
                s0 = _mm256_add_ps(s0, a[i]);
                s1 = _mm256_add_ps(s1, a[i + 1]);
                s2 = _mm256_add_ps(s2, a[i + 2]);
                s3 = _mm256_add_ps(s3, a[i + 3]);
            }
        double read = reps * (double)sizes[s] / (now() - t0) / 1e9;
        __m256 acc = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
        t0 = now();
        for (size_t r = 0; r < reps; r++)
            for (size_t i = 0; i < n; i++) a[i] = acc;
        double write = reps * (double)sizes[s] / (now() - t0) / 1e9;
        /* Read back what was written, so that neither loop is dead code to the compiler. */
        sink = _mm256_cvtss_f32(a[n - 1]);
        printf("one thread over %4zu MB: read %5.1f GB/s, write %5.1f GB/s\n", sizes[s] >> 20,
               read, write);
        free(a);
    }
}

int main(void) {
    __builtin_cpu_init();
    wide = __builtin_cpu_supports("avx512f");
    int threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (threads > 256) threads = 256;
    peak(1);
    if (threads > 1) peak(threads);
    bandwidth();
    return 0;
}
EOF

"$CC" -O2 -mavx2 -mfma -pthread "$work/ceilings.c" -o "$work/ceilings"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) threads"
"$work/ceilings"

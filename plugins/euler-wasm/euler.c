/*
 * euler-wasm: the Euler sampler (diffusers' EulerDiscreteScheduler, Karras et al. 2022
 * algorithm 2 without churn) as a beeswax WASM plugin in plain C, without any C library.
 *
 * It reproduces beeswax's built-in `euler` step for step: the schedule is computed in double
 * precision from the alphas_cumprod the host sends, and the tensor arithmetic mirrors the
 * built-in's float32 operations one by one, so final latents agree to rounding.
 * Supported config: timestep_spacing linspace (default) / leading / trailing, prediction_type
 * epsilon / v_prediction / sample, final_sigmas_type zero / sigma_min, rescale_betas_zero_snr.
 * Karras, exponential and beta sigmas, log-linear interpolation and continuous timesteps are
 * refused with BEESWAX_UNSUPPORTED (they need exp/log/pow, which this libc-free build lacks).
 *
 * Build: see build.sh beside this file.
 */
#define BEESWAX_WASM_RUNTIME
#include "beeswax_plugin.h"

typedef struct {
    uint32_t steps;
    uint32_t prediction;
    double init_noise_sigma;
    double *timesteps; /* steps */
    double *sigmas;    /* steps + 1 */
} euler;

BEESWAX_EXPORT(beeswax_abi_version) uint32_t beeswax_abi_version(void) { return BEESWAX_ABI_VERSION; }

BEESWAX_EXPORT(beeswax_capabilities) uint32_t beeswax_capabilities(void) { return BEESWAX_CAP_SCHEDULER; }

/* np.interp(x, arange(n), values) */
static double interp(double x, const double *v, uint32_t n) {
    if (x != x) return x;
    if (x <= 0.0) return v[0];
    double top = (double)(n - 1);
    if (x >= top) return v[n - 1];
    double jf = __builtin_floor(x);
    uint32_t j = (uint32_t)jf;
    if (x == jf) return v[j];
    double slope = v[j + 1] - v[j];
    return slope * (x - jf) + v[j];
}

BEESWAX_EXPORT(beeswax_scheduler_new)
int32_t beeswax_scheduler_new(const uint8_t *cfg, size_t len, beeswax_buf *out) {
    if (len < 48) return beeswax_error(out, BEESWAX_INVALID_INPUT, "euler-wasm: scheduler config is too short");
    uint32_t steps = beeswax_read_u32(cfg), n = beeswax_read_u32(cfg + 4);
    uint32_t prediction = beeswax_read_u32(cfg + 8), spacing = beeswax_read_u32(cfg + 12);
    uint32_t offset = beeswax_read_u32(cfg + 16), flags = beeswax_read_u32(cfg + 20);
    if (n < 2 || (len - 48) / 8 < n) return beeswax_error(out, BEESWAX_INVALID_INPUT, "euler-wasm: alphas_cumprod missing");
    if (steps == 0 || steps > n) return beeswax_error(out, BEESWAX_INVALID_INPUT, "euler-wasm: steps must be in 1..=num_train_timesteps");
    if (prediction > BEESWAX_PREDICTION_SAMPLE) return beeswax_error(out, BEESWAX_UNSUPPORTED, "euler-wasm: unknown prediction_type");
    if (flags & (BEESWAX_FLAG_KARRAS_SIGMAS | BEESWAX_FLAG_EXPONENTIAL_SIGMAS | BEESWAX_FLAG_BETA_SIGMAS))
        return beeswax_error(out, BEESWAX_UNSUPPORTED, "euler-wasm: karras, exponential and beta sigmas are not supported; use the built-in euler");
    if (flags & BEESWAX_FLAG_LOG_LINEAR)
        return beeswax_error(out, BEESWAX_UNSUPPORTED, "euler-wasm: interpolation_type log_linear is not supported; use linear");
    if ((flags & BEESWAX_FLAG_CONTINUOUS_TIMESTEPS) && prediction == BEESWAX_PREDICTION_V)
        return beeswax_error(out, BEESWAX_UNSUPPORTED, "euler-wasm: timestep_type continuous is not supported");

    /* train sigmas from alphas_cumprod (Euler keeps the last one finite under zero SNR) */
    double *train = (double *)beeswax_alloc(8 * (size_t)n);
    euler *e = (euler *)beeswax_alloc(sizeof(euler));
    double *ts = (double *)beeswax_alloc(8 * (size_t)steps);
    double *sig = (double *)beeswax_alloc(8 * ((size_t)steps + 1));
    if (!train || !e || !ts || !sig) return beeswax_error(out, BEESWAX_OUT_OF_MEMORY, "euler-wasm: out of memory");
    for (uint32_t i = 0; i < n; i++) {
        double a = beeswax_read_f64(cfg + 48 + 8 * (size_t)i);
        if (i == n - 1 && (flags & BEESWAX_FLAG_RESCALE_ZERO_SNR)) a = 1.0 / 16777216.0;
        train[i] = __builtin_sqrt((1.0 - a) / a);
    }

    /* timesteps, as diffusers' set_timesteps (numpy arithmetic) */
    double t = (double)n;
    if (spacing == BEESWAX_SPACING_DEFAULT || spacing == BEESWAX_SPACING_LINSPACE) {
        if (steps == 1) {
            ts[0] = 0.0;
        } else {
            double step = (t - 1.0) / (double)(steps - 1);
            for (uint32_t i = 0; i < steps; i++) ts[steps - 1 - i] = (double)i * step + 0.0;
            ts[0] = t - 1.0;
        }
    } else if (spacing == BEESWAX_SPACING_LEADING) {
        uint32_t ratio = n / steps;
        for (uint32_t i = 0; i < steps; i++) ts[i] = (double)((steps - 1 - i) * ratio + offset);
    } else if (spacing == BEESWAX_SPACING_TRAILING) {
        double step = -(t / (double)steps);
        double delta = (t + step) - t;
        for (uint32_t i = 0; i < steps; i++) {
            double v = i == 0 ? t : t + (double)i * delta;
            ts[i] = __builtin_rint(v) - 1.0;
        }
    } else {
        return beeswax_error(out, BEESWAX_UNSUPPORTED, "euler-wasm: unknown timestep_spacing");
    }

    double max = 0.0;
    for (uint32_t i = 0; i < steps; i++) {
        sig[i] = interp(ts[i], train, n);
        if (sig[i] > max) max = sig[i];
    }
    sig[steps] = (flags & BEESWAX_FLAG_FINAL_SIGMA_MIN) ? train[0] : 0.0;
    if (sig[steps] > max) max = sig[steps];
    for (uint32_t i = 0; i <= steps; i++) {
        double s = sig[i];
        int ok = s - s == 0.0 && (s > 0.0 || (i == steps && s == 0.0));
        if (!ok) return beeswax_error(out, BEESWAX_INVALID_INPUT, "euler-wasm: a sigma is not a positive number (check beta_start and trained_betas)");
    }
    beeswax_free((uint8_t *)train, 8 * (size_t)n);
    e->steps = steps;
    e->prediction = prediction;
    e->timesteps = ts;
    e->sigmas = sig;
    e->init_noise_sigma = spacing == BEESWAX_SPACING_LEADING ? __builtin_sqrt(max * max + 1.0) : max;

    size_t total = 24 + 8 * (size_t)steps;
    uint8_t *p = beeswax_alloc(total);
    if (!p) return beeswax_error(out, BEESWAX_OUT_OF_MEMORY, "euler-wasm: out of memory");
    beeswax_write_u64(p, (uint64_t)(uintptr_t)e);
    beeswax_write_u32(p + 8, 0);
    beeswax_write_u32(p + 12, steps);
    beeswax_write_f64(p + 16, e->init_noise_sigma);
    for (uint32_t i = 0; i < steps; i++) beeswax_write_f64(p + 24 + 8 * (size_t)i, ts[i]);
    out->ptr = p;
    out->len = total;
    return BEESWAX_OK;
}

static euler *handle_of(uint64_t h, uint32_t index, beeswax_buf *out, int32_t *status) {
    euler *e = (euler *)(uintptr_t)h;
    if (!e) {
        *status = beeswax_error(out, BEESWAX_INVALID_INPUT, "euler-wasm: null handle");
        return 0;
    }
    if (index >= e->steps) {
        *status = beeswax_error(out, BEESWAX_INVALID_INPUT, "euler-wasm: step index out of range");
        return 0;
    }
    return e;
}

/* out[i] = a[i] * m + add, in the tensor's dtype (candle's affine). */
#define AFFINE(T, o, a, m, add, n) do { T m_ = (T)(m), d_ = (T)(add); \
    for (size_t i_ = 0; i_ < (n); i_++) { T v_ = (a)[i_] * m_; (o)[i_] = v_ + d_; } } while (0)

BEESWAX_EXPORT(beeswax_scheduler_scale)
int32_t beeswax_scheduler_scale(uint64_t h, uint32_t index, const uint8_t *in, size_t len, beeswax_buf *out) {
    int32_t status = 0;
    euler *e = handle_of(h, index, out, &status);
    if (!e) return status;
    beeswax_tensor x;
    if (beeswax_tensor_parse(in, len, &x)) return beeswax_error(out, BEESWAX_INVALID_INPUT, "euler-wasm: malformed sample tensor");
    uint8_t *o = beeswax_tensor_alloc_like(&x, out);
    if (!o) return beeswax_error(out, BEESWAX_OUT_OF_MEMORY, "euler-wasm: out of memory");
    double s = e->sigmas[index];
    double m = 1.0 / __builtin_sqrt(s * s + 1.0);
    if (x.dtype == BEESWAX_DTYPE_F32) AFFINE(float, (float *)o, (const float *)x.data, m, 0.0, x.count);
    else AFFINE(double, (double *)o, (const double *)x.data, m, 0.0, x.count);
    return BEESWAX_OK;
}

#define EULER_STEP(T) do { \
    const T *mo = (const T *)a.data, *sm = (const T *)b.data; T *o = (T *)ov; \
    T hat = (T)sigma_hat, inv_hat = (T)(1.0 / sigma_hat), dtt = (T)dt; \
    T c_out = (T)(-sigma / __builtin_sqrt(sigma * sigma + 1.0)), c_in = (T)(1.0 / (sigma * sigma + 1.0)); \
    for (size_t i = 0; i < a.count; i++) { \
        T pred; \
        if (e->prediction == BEESWAX_PREDICTION_EPSILON) { T t1 = mo[i] * hat; t1 = t1 + (T)0; pred = sm[i] - t1; } \
        else if (e->prediction == BEESWAX_PREDICTION_V) { T t1 = mo[i] * c_out; t1 = t1 + (T)0; T t2 = sm[i] * c_in; t2 = t2 + (T)0; pred = t1 + t2; } \
        else pred = mo[i]; \
        T d = sm[i] - pred; d = d * inv_hat; d = d + (T)0; \
        T u = d * dtt; u = u + (T)0; \
        o[i] = sm[i] + u; \
    } } while (0)

BEESWAX_EXPORT(beeswax_scheduler_step)
int32_t beeswax_scheduler_step(uint64_t h, uint32_t index, const uint8_t *in, size_t len, beeswax_buf *out) {
    int32_t status = 0;
    euler *e = handle_of(h, index, out, &status);
    if (!e) return status;
    beeswax_tensor a, b;
    if (beeswax_tensor_parse(in, len, &a) || beeswax_tensor_parse(in + a.encoded_len, len - a.encoded_len, &b))
        return beeswax_error(out, BEESWAX_INVALID_INPUT, "euler-wasm: malformed step tensors");
    if (a.count != b.count || a.dtype != b.dtype)
        return beeswax_error(out, BEESWAX_INVALID_INPUT, "euler-wasm: model output and sample differ in size or dtype");
    uint8_t *ov = beeswax_tensor_alloc_like(&b, out);
    if (!ov) return beeswax_error(out, BEESWAX_OUT_OF_MEMORY, "euler-wasm: out of memory");
    double sigma = e->sigmas[index];
    double sigma_hat = sigma * (0.0 + 1.0);
    double dt = e->sigmas[index + 1] - sigma_hat;
    if (a.dtype == BEESWAX_DTYPE_F32) EULER_STEP(float);
    else EULER_STEP(double);
    return BEESWAX_OK;
}

BEESWAX_EXPORT(beeswax_scheduler_add_noise)
int32_t beeswax_scheduler_add_noise(uint64_t h, uint32_t index, const uint8_t *in, size_t len, beeswax_buf *out) {
    int32_t status = 0;
    euler *e = handle_of(h, index, out, &status);
    if (!e) return status;
    beeswax_tensor a, b;
    if (beeswax_tensor_parse(in, len, &a) || beeswax_tensor_parse(in + a.encoded_len, len - a.encoded_len, &b))
        return beeswax_error(out, BEESWAX_INVALID_INPUT, "euler-wasm: malformed add_noise tensors");
    if (a.count != b.count || a.dtype != b.dtype)
        return beeswax_error(out, BEESWAX_INVALID_INPUT, "euler-wasm: original and noise differ in size or dtype");
    uint8_t *ov = beeswax_tensor_alloc_like(&a, out);
    if (!ov) return beeswax_error(out, BEESWAX_OUT_OF_MEMORY, "euler-wasm: out of memory");
    double s = e->sigmas[index];
    if (a.dtype == BEESWAX_DTYPE_F32) {
        const float *x = (const float *)a.data, *z = (const float *)b.data; float *o = (float *)ov; float m = (float)s;
        for (size_t i = 0; i < a.count; i++) { float v = z[i] * m; v = v + 0.0f; o[i] = x[i] + v; }
    } else {
        const double *x = (const double *)a.data, *z = (const double *)b.data; double *o = (double *)ov;
        for (size_t i = 0; i < a.count; i++) { double v = z[i] * s; v = v + 0.0; o[i] = x[i] + v; }
    }
    return BEESWAX_OK;
}

BEESWAX_EXPORT(beeswax_scheduler_drop) void beeswax_scheduler_drop(uint64_t h) {
    euler *e = (euler *)(uintptr_t)h;
    if (!e) return;
    beeswax_free((uint8_t *)e->timesteps, 8 * (size_t)e->steps);
    beeswax_free((uint8_t *)e->sigmas, 8 * ((size_t)e->steps + 1));
    beeswax_free((uint8_t *)e, sizeof(euler));
}

/*
 * sharpen-wasm: an unsharp-mask post-processor as a beeswax WASM plugin in plain C.
 *
 * Each colour channel becomes p + amount * (p - blur(p)) where blur is the 3x3 binomial
 * kernel [1 2 1; 2 4 2; 1 2 1] / 16 (edges clamped); differences below `threshold` (0..255)
 * are left alone so flat areas keep their grain. Alpha is copied unchanged.
 * Parameters (manifest `[plugin.params]`): amount (default 0.6, 0..=5), threshold (default 0).
 *
 * Build: see build.sh beside this file.
 */
#define BEESWAX_WASM_RUNTIME
#include "beeswax_plugin.h"

BEESWAX_EXPORT(beeswax_abi_version) uint32_t beeswax_abi_version(void) { return BEESWAX_ABI_VERSION; }

BEESWAX_EXPORT(beeswax_capabilities) uint32_t beeswax_capabilities(void) { return BEESWAX_CAP_POSTPROCESSOR; }

static uint32_t clampi(int64_t v, int64_t lo, int64_t hi) { return (uint32_t)(v < lo ? lo : v > hi ? hi : v); }

BEESWAX_EXPORT(beeswax_postprocess)
int32_t beeswax_postprocess(const uint8_t *params, size_t params_len, const uint8_t *img, size_t len, beeswax_buf *out) {
    double amount = beeswax_param_number(params, params_len, "amount", 0.6);
    double threshold = beeswax_param_number(params, params_len, "threshold", 0.0);
    if (!(amount >= 0.0 && amount <= 5.0)) return beeswax_error(out, BEESWAX_INVALID_INPUT, "sharpen-wasm: parameter amount must be between 0 and 5");
    if (!(threshold >= 0.0 && threshold <= 255.0)) return beeswax_error(out, BEESWAX_INVALID_INPUT, "sharpen-wasm: parameter threshold must be between 0 and 255");
    if (len < 16) return beeswax_error(out, BEESWAX_INVALID_INPUT, "sharpen-wasm: image header missing");
    uint32_t w = beeswax_read_u32(img), h = beeswax_read_u32(img + 4), c = beeswax_read_u32(img + 8);
    if (c != 3 && c != 4) return beeswax_error(out, BEESWAX_INVALID_INPUT, "sharpen-wasm: RGB or RGBA image expected");
    if (w == 0 || h == 0 || (uint64_t)w * h * c > (uint64_t)(len - 16)) return beeswax_error(out, BEESWAX_INVALID_INPUT, "sharpen-wasm: image data is shorter than width x height x channels");
    size_t bytes = (size_t)w * h * c, total = 16 + beeswax_pad8(bytes);
    uint8_t *o = beeswax_alloc(total);
    if (!o) return beeswax_error(out, BEESWAX_OUT_OF_MEMORY, "sharpen-wasm: out of memory");
    for (size_t i = 0; i < 16; i++) o[i] = img[i];
    for (size_t i = 16 + bytes; i < total; i++) o[i] = 0;
    const uint8_t *src = img + 16;
    uint8_t *dst = o + 16;
    static const int k[3] = {1, 2, 1};
    for (uint32_t y = 0; y < h; y++) {
        for (uint32_t x = 0; x < w; x++) {
            for (uint32_t ch = 0; ch < c; ch++) {
                size_t at = ((size_t)y * w + x) * c + ch;
                if (ch == 3) { dst[at] = src[at]; continue; }
                int sum = 0;
                for (int dy = -1; dy <= 1; dy++) {
                    uint32_t yy = clampi((int64_t)y + dy, 0, h - 1);
                    for (int dx = -1; dx <= 1; dx++) {
                        uint32_t xx = clampi((int64_t)x + dx, 0, w - 1);
                        sum += k[dy + 1] * k[dx + 1] * src[((size_t)yy * w + xx) * c + ch];
                    }
                }
                double p = src[at], diff = p - sum / 16.0;
                double mag = diff < 0 ? -diff : diff;
                double v = mag < threshold ? p : p + amount * diff;
                dst[at] = (uint8_t)clampi((int64_t)__builtin_floor(v + 0.5), 0, 255);
            }
        }
    }
    out->ptr = o;
    out->len = total;
    return BEESWAX_OK;
}

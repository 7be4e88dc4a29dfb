/*
 * mask-grow-wasm: an inpainting pre-processor as a beeswax WASM plugin in plain C.
 *
 * Grows (dilates) the repaint mask by `pixels` in every direction, so that inpainting also
 * repaints a margin around the object the mask was drawn on (ComfyUI's GrowMask, A1111's
 * habit of drawing masks generously). The picture passes through unchanged.
 * Parameters (manifest `[plugin.params]`): pixels (default 8, 0..=256).
 *
 * Input and output: the picture, then the mask (1 channel, 255 = repaint), each a 16-byte
 * header (width, height, channels, 0 as little-endian u32) and its bytes padded to 8.
 * Build: see build.sh beside this file.
 */
#define BEESWAX_WASM_RUNTIME
#include "beeswax_plugin.h"

BEESWAX_EXPORT(beeswax_abi_version) uint32_t beeswax_abi_version(void) { return BEESWAX_ABI_VERSION; }

BEESWAX_EXPORT(beeswax_capabilities) uint32_t beeswax_capabilities(void) { return BEESWAX_CAP_PREPROCESSOR; }

/* Size of one encoded image (header + padded data), or 0 when it does not fit in `len`. */
static size_t encoded_size(const uint8_t *p, size_t len, uint32_t want_channels) {
    if (len < 16) return 0;
    uint32_t w = beeswax_read_u32(p), h = beeswax_read_u32(p + 4), c = beeswax_read_u32(p + 8);
    if (c != want_channels || w == 0 || h == 0) return 0;
    uint64_t bytes = (uint64_t)w * h * c;
    if (bytes > (uint64_t)(len - 16)) return 0;
    size_t total = 16 + beeswax_pad8((size_t)bytes);
    return total <= len ? total : 0;
}

BEESWAX_EXPORT(beeswax_preprocess)
int32_t beeswax_preprocess(const uint8_t *params, size_t params_len, const uint8_t *in, size_t len, beeswax_buf *out) {
    double grow = beeswax_param_number(params, params_len, "pixels", 8.0);
    if (!(grow >= 0.0 && grow <= 256.0)) return beeswax_error(out, BEESWAX_INVALID_INPUT, "mask-grow-wasm: parameter pixels must be between 0 and 256");
    size_t image_size = encoded_size(in, len, 3);
    if (!image_size) return beeswax_error(out, BEESWAX_INVALID_INPUT, "mask-grow-wasm: an RGB picture is expected first");
    const uint8_t *mask = in + image_size;
    size_t mask_size = encoded_size(mask, len - image_size, 1);
    if (!mask_size) return beeswax_error(out, BEESWAX_INVALID_INPUT, "mask-grow-wasm: a 1-channel mask is expected after the picture");
    uint32_t w = beeswax_read_u32(mask), h = beeswax_read_u32(mask + 4);
    if (w != beeswax_read_u32(in) || h != beeswax_read_u32(in + 4)) return beeswax_error(out, BEESWAX_INVALID_INPUT, "mask-grow-wasm: picture and mask differ in size");
    uint8_t *o = beeswax_alloc(image_size + mask_size);
    if (!o) return beeswax_error(out, BEESWAX_OUT_OF_MEMORY, "mask-grow-wasm: out of memory");
    for (size_t i = 0; i < image_size + 16; i++) o[i] = in[i];
    for (size_t i = image_size + 16; i < image_size + mask_size; i++) o[i] = 0;
    const uint8_t *src = mask + 16;
    uint8_t *dst = o + image_size + 16;
    int64_t r = (int64_t)grow;
    /* Square dilation, separable: the maximum over rows, then over columns. */
    uint8_t *rows = beeswax_alloc((size_t)w * h);
    if (!rows) return beeswax_error(out, BEESWAX_OUT_OF_MEMORY, "mask-grow-wasm: out of memory");
    for (int64_t y = 0; y < h; y++) {
        for (int64_t x = 0; x < w; x++) {
            uint8_t m = 0;
            for (int64_t xx = x - r < 0 ? 0 : x - r; xx <= x + r && xx < w; xx++) {
                uint8_t v = src[y * w + xx];
                if (v > m) m = v;
            }
            rows[y * w + x] = m;
        }
    }
    for (int64_t y = 0; y < h; y++) {
        for (int64_t x = 0; x < w; x++) {
            uint8_t m = 0;
            for (int64_t yy = y - r < 0 ? 0 : y - r; yy <= y + r && yy < h; yy++) {
                uint8_t v = rows[yy * w + x];
                if (v > m) m = v;
            }
            dst[y * w + x] = m;
        }
    }
    beeswax_free(rows, (size_t)w * h);
    out->ptr = o;
    out->len = image_size + mask_size;
    return BEESWAX_OK;
}

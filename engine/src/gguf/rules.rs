//! Which type each tensor gets when `beeswax quantize` writes a model, after ComfyUI-GGUF's
//! `convert.py` and patched `llama-quantize` and stable-diffusion.cpp's
//! `tensor_should_be_converted`:
//!
//! 1. Tensors outside the denoiser (the VAE and text encoders of a single-file checkpoint) keep
//!    their stored float type, losslessly (F64 becomes F32).
//! 2. 1-D tensors (biases, norm scales) and tensors of at most [`SMALL`] elements: F32.
//! 3. With a float target (F32, F16, BF16): everything else gets the target.
//! 4. Layers the tools keep in high precision: the input and output projections and the
//!    time/guidance/class embeddings ([`HIGH_PRECISION`]): their input type, losslessly.
//! 5. A row length (last dimension) not a multiple of the target's block size: for a K-quant
//!    whose rows are multiples of 32, llama.cpp's fallback (Q4_K → Q5_0, Q5_K → Q5_1,
//!    Q6_K → Q8_0); otherwise F16, or BF16 for a BF16 input (lossless; F16 could overflow).
//!    3x3 and 1x1 convolutions land here.
//! 6. Everything else (the linear layers): the target.

use super::naming::strip_known_prefix;
use super::types::GgmlType;

/// Tensors with at most this many elements stay F32 (ComfyUI-GGUF's threshold).
pub const SMALL: usize = 1024;

/// Name fragments of layers kept in high precision: FLUX's `img_in`, `txt_in`, `time_in`,
/// `vector_in`, `guidance_in`, `final_layer` (and their diffusers names), the UNets' time and
/// class embeddings, SD3's embedders.
pub const HIGH_PRECISION: [&str; 16] = [
    "img_in.",
    "txt_in.",
    "time_in.",
    "vector_in.",
    "guidance_in.",
    "final_layer.",
    "x_embedder.",
    "context_embedder.",
    "time_text_embed.",
    "t_embedder.",
    "y_embedder.",
    "pos_embed",
    "embedding",
    "time_embed.",
    "label_emb.",
    "norm_out.",
];

/// The stored type for tensor `name` of `shape` (PyTorch order), read as `source` (F32, F16
/// or BF16: the lossless float type of the input), when the target is `target`.
/// `in_denoiser` is false for the other components of a single-file checkpoint.
pub fn choose_type(
    name: &str,
    shape: &[usize],
    source: GgmlType,
    target: GgmlType,
    in_denoiser: bool,
) -> GgmlType {
    if !in_denoiser {
        return source;
    }
    let elements: usize = shape.iter().product();
    if shape.len() <= 1 || elements <= SMALL {
        return GgmlType::F32;
    }
    if target.is_float() {
        return target;
    }
    let key = strip_known_prefix(name);
    let float = if source == GgmlType::F32 {
        GgmlType::F16
    } else {
        source
    };
    // Diffusers FLUX's final projection is a top-level `proj_out` (BFL: final_layer.linear).
    if HIGH_PRECISION.iter().any(|h| key.contains(h)) || key.starts_with("proj_out.") {
        return source;
    }
    let row = shape.last().copied().unwrap_or(1);
    if row % target.block_size() == 0 {
        return target;
    }
    let fallback = match target {
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        _ => return float,
    };
    if row % fallback.block_size() == 0 {
        fallback
    } else {
        float
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use GgmlType::*;

    #[test]
    fn rules() {
        let q = |name: &str, shape: &[usize], target| choose_type(name, shape, F32, target, true);
        assert_eq!(q("a.bias", &[3072], Q4_K), F32);
        assert_eq!(q("a.weight", &[16, 64], Q8_0), F32); // small
        assert_eq!(
            q("double_blocks.0.img_attn.qkv.weight", &[96, 64], Q8_0),
            Q8_0
        );
        assert_eq!(q("img_in.weight", &[96, 64], Q8_0), F32);
        assert_eq!(
            q("model.diffusion_model.time_embed.0.weight", &[96, 64], Q8_0),
            F32
        );
        assert_eq!(q("proj_out.weight", &[96, 64], Q8_0), F32);
        assert_eq!(q("x.proj_out.weight", &[96, 64], Q8_0), Q8_0);
        assert_eq!(q("conv.weight", &[64, 32, 3, 3], Q8_0), F16);
        assert_eq!(q("ff.weight", &[64, 320], Q4_K), Q5_0);
        assert_eq!(q("ff.weight", &[64, 320], Q6_K), Q8_0);
        assert_eq!(q("ff.weight", &[64, 512], Q4_K), Q4_K);
        assert_eq!(q("ff.weight", &[64, 40], Q4_K), F16);
        assert_eq!(q("ff.weight", &[64, 40], F16), F16);
        assert_eq!(
            choose_type("conv.weight", &[64, 32, 3, 3], BF16, Q8_0, true),
            BF16
        );
        assert_eq!(
            choose_type("vae.weight", &[64, 64], BF16, Q8_0, false),
            BF16
        );
    }
}

//! The original Black Forest Labs layout of the FLUX.1 transformer, as single-file and GGUF
//! checkpoints store it (`double_blocks.N.img_attn.qkv`, `single_blocks.N.linear1`, `time_in`,
//! ...), mapped onto diffusers' names, in which the model is written.
//!
//! The map is data: [`tensor_map`] lists, for every tensor the diffusers model loads, the BFL
//! tensor it comes from and which [`Part`] of it: the fused `qkv` and `linear1` matrices are
//! split by rows (q, k, v and, for `linear1`, the MLP input), and `final_layer.adaLN_modulation.1`
//! holds `(shift, scale)` where diffusers' `norm_out.linear` holds `(scale, shift)`. The same
//! table serves the loader ([`var_builder`]), LoRA key mapping and quantized files.
//!
//! This is the inverse of diffusers' `convert_flux_transformer_checkpoint_to_diffusers`; the
//! fixture script checks its own writer against that converter.

use std::collections::HashMap;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::config::FluxConfig;
use crate::weights::gemm_layout;

/// The prefix ComfyUI-saved checkpoints put before every transformer key.
pub const COMFY_PREFIX: &str = "model.diffusion_model.";

/// Which part of a BFL tensor a diffusers tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// All of it.
    Whole,
    /// Rows `start..start + len` (dim 0) of a fused matrix or bias.
    Rows {
        /// First row.
        start: usize,
        /// Row count.
        len: usize,
    },
    /// All of it with its two halves (dim 0) swapped.
    SwappedHalves,
}

/// Where one diffusers tensor lives in a BFL checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BflTensor {
    /// The BFL tensor name (without any prefix).
    pub name: String,
    /// The part of it.
    pub part: Part,
}

/// Every tensor of the diffusers `FluxTransformer2DModel` described by `config`, with its BFL
/// source, in model order.
pub fn tensor_map(config: &FluxConfig) -> Vec<(String, BflTensor)> {
    let mut map = Vec::new();
    let tte = "time_text_embed";
    let mut embedders = vec![
        ("timestep_embedder", "time_in"),
        ("text_embedder", "vector_in"),
    ];
    if config.guidance_embeds {
        embedders.insert(1, ("guidance_embedder", "guidance_in"));
    }
    for (d, b) in embedders {
        linear(
            &mut map,
            &format!("{tte}.{d}.linear_1"),
            &format!("{b}.in_layer"),
            Part::Whole,
        );
        linear(
            &mut map,
            &format!("{tte}.{d}.linear_2"),
            &format!("{b}.out_layer"),
            Part::Whole,
        );
    }
    linear(&mut map, "context_embedder", "txt_in", Part::Whole);
    linear(&mut map, "x_embedder", "img_in", Part::Whole);
    for i in 0..config.num_layers {
        double_block(&mut map, i, config.inner_dim());
    }
    for i in 0..config.num_single_layers {
        single_block(&mut map, i, config.inner_dim(), config.mlp_dim());
    }
    let final_mod = "final_layer.adaLN_modulation.1";
    linear(&mut map, "norm_out.linear", final_mod, Part::SwappedHalves);
    linear(&mut map, "proj_out", "final_layer.linear", Part::Whole);
    map
}

/// Rows of the `i`-th `inner`-wide slice of a fused matrix, `len` rows long.
fn rows(i: usize, inner: usize, len: usize) -> Part {
    Part::Rows {
        start: i * inner,
        len,
    }
}

/// `transformer_blocks.i` from `double_blocks.i`.
fn double_block(map: &mut Vec<(String, BflTensor)>, i: usize, inner: usize) {
    let (d, b) = (
        format!("transformer_blocks.{i}"),
        format!("double_blocks.{i}"),
    );
    let pairs = [
        ("norm1.linear", "img_mod.lin", Part::Whole),
        ("norm1_context.linear", "txt_mod.lin", Part::Whole),
        ("attn.to_q", "img_attn.qkv", rows(0, inner, inner)),
        ("attn.to_k", "img_attn.qkv", rows(1, inner, inner)),
        ("attn.to_v", "img_attn.qkv", rows(2, inner, inner)),
        ("attn.add_q_proj", "txt_attn.qkv", rows(0, inner, inner)),
        ("attn.add_k_proj", "txt_attn.qkv", rows(1, inner, inner)),
        ("attn.add_v_proj", "txt_attn.qkv", rows(2, inner, inner)),
        ("attn.to_out.0", "img_attn.proj", Part::Whole),
        ("attn.to_add_out", "txt_attn.proj", Part::Whole),
        ("ff.net.0.proj", "img_mlp.0", Part::Whole),
        ("ff.net.2", "img_mlp.2", Part::Whole),
        ("ff_context.net.0.proj", "txt_mlp.0", Part::Whole),
        ("ff_context.net.2", "txt_mlp.2", Part::Whole),
    ];
    for (dm, bm, part) in pairs {
        linear(map, &format!("{d}.{dm}"), &format!("{b}.{bm}"), part);
    }
    for (dm, bm) in [
        ("norm_q", "img_attn.norm.query_norm"),
        ("norm_k", "img_attn.norm.key_norm"),
        ("norm_added_q", "txt_attn.norm.query_norm"),
        ("norm_added_k", "txt_attn.norm.key_norm"),
    ] {
        map.push(scale(&format!("{d}.attn.{dm}"), &format!("{b}.{bm}")));
    }
}

/// `single_transformer_blocks.i` from `single_blocks.i`.
fn single_block(map: &mut Vec<(String, BflTensor)>, i: usize, inner: usize, mlp: usize) {
    let (d, b) = (
        format!("single_transformer_blocks.{i}"),
        format!("single_blocks.{i}"),
    );
    let pairs = [
        ("norm.linear", "modulation.lin", Part::Whole),
        ("attn.to_q", "linear1", rows(0, inner, inner)),
        ("attn.to_k", "linear1", rows(1, inner, inner)),
        ("attn.to_v", "linear1", rows(2, inner, inner)),
        ("proj_mlp", "linear1", rows(3, inner, mlp)),
        ("proj_out", "linear2", Part::Whole),
    ];
    for (dm, bm, part) in pairs {
        linear(map, &format!("{d}.{dm}"), &format!("{b}.{bm}"), part);
    }
    map.push(scale(
        &format!("{d}.attn.norm_q"),
        &format!("{b}.norm.query_norm"),
    ));
    map.push(scale(
        &format!("{d}.attn.norm_k"),
        &format!("{b}.norm.key_norm"),
    ));
}

/// A linear layer: its weight and bias come from the same part of the BFL weight and bias.
fn linear(map: &mut Vec<(String, BflTensor)>, diffusers: &str, bfl: &str, part: Part) {
    for suffix in ["weight", "bias"] {
        map.push((
            format!("{diffusers}.{suffix}"),
            BflTensor {
                name: format!("{bfl}.{suffix}"),
                part,
            },
        ));
    }
}

/// A query/key RMSNorm: diffusers' `weight` is BFL's `scale`.
fn scale(diffusers: &str, bfl: &str) -> (String, BflTensor) {
    (
        format!("{diffusers}.weight"),
        BflTensor {
            name: format!("{bfl}.scale"),
            part: Part::Whole,
        },
    )
}

/// A [`VarBuilder`] serving diffusers names from `file`, a BFL-layout checkpoint (with or
/// without ComfyUI's `model.diffusion_model.` prefix). Tensors keep `file`'s dtype conversion;
/// split and swapped ones get the same GEMM-friendly layout as whole ones.
pub fn var_builder(file: VarBuilder<'static>, config: &FluxConfig) -> VarBuilder<'static> {
    let prefix = if file.contains_tensor(&format!("{COMFY_PREFIX}img_in.weight")) {
        COMFY_PREFIX
    } else {
        ""
    };
    let (dtype, device) = (file.dtype(), file.device().clone());
    let backend = BflBackend {
        file,
        prefix,
        map: tensor_map(config).into_iter().collect(),
    };
    VarBuilder::from_backend(Box::new(backend), dtype, device)
}

struct BflBackend {
    file: VarBuilder<'static>,
    prefix: &'static str,
    map: HashMap<String, BflTensor>,
}

impl BflBackend {
    fn source(&self, name: &str) -> candle_core::Result<&BflTensor> {
        self.map.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "{name} is not a tensor of the FLUX.1 transformer described by the config; the \
                 Black Forest Labs layout has no counterpart for it"
            ))
        })
    }

    fn read(&self, name: &str, dtype: DType) -> candle_core::Result<Tensor> {
        let src = self.source(name)?;
        let full = format!("{}{}", self.prefix, src.name);
        let tensor = self
            .file
            .get_unchecked_dtype(&full, dtype)
            .map_err(|e| candle_core::Error::Msg(format!("{full} (for diffusers' {name}): {e}")))?;
        let rows = tensor.dim(0)?;
        let part = match src.part {
            Part::Whole => return Ok(tensor),
            Part::Rows { start, len } if start + len <= rows => tensor.narrow(0, start, len)?,
            Part::Rows { start, len } => {
                return Err(candle_core::Error::Msg(format!(
                    "{full} has {rows} rows; {name} needs rows {start}..{}: the checkpoint \
                     does not fit the transformer's config (width {})",
                    start + len,
                    len
                )))
            }
            Part::SwappedHalves => {
                let half = rows / 2;
                Tensor::cat(
                    &[tensor.narrow(0, half, half)?, tensor.narrow(0, 0, half)?],
                    0,
                )?
            }
        };
        gemm_layout(name, part.contiguous()?)
    }
}

impl SimpleBackend for BflBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.read(name, dtype)?.to_device(dev)?;
        if tensor.shape() != &s {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!(
                    "shape mismatch for {name} (from {}{})",
                    self.prefix,
                    self.source(name)?.name
                ),
                expected: s,
                got: tensor.shape().clone(),
            }
            .bt());
        }
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.read(name, dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.map.get(name).is_some_and(|src| {
            self.file
                .contains_tensor(&format!("{}{}", self.prefix, src.name))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> FluxConfig {
        FluxConfig {
            num_layers: 1,
            num_single_layers: 1,
            attention_head_dim: 4,
            num_attention_heads: 2,
            joint_attention_dim: 3,
            pooled_projection_dim: 5,
            in_channels: 4,
            guidance_embeds: true,
            axes_dims_rope: vec![2, 2],
            ..Default::default()
        }
    }

    #[test]
    fn map_covers_every_bfl_tensor_once() {
        let map = tensor_map(&tiny());
        let names: std::collections::HashSet<_> = map.iter().map(|(d, _)| d.clone()).collect();
        assert_eq!(names.len(), map.len(), "duplicate diffusers names");
        let q = map
            .iter()
            .find(|(d, _)| d == "single_transformer_blocks.0.proj_mlp.weight")
            .unwrap();
        assert_eq!(q.1.name, "single_blocks.0.linear1.weight");
        assert_eq!(q.1.part, Part::Rows { start: 24, len: 32 });
        let norm = map
            .iter()
            .find(|(d, _)| d == "transformer_blocks.0.attn.norm_added_k.weight")
            .unwrap();
        assert_eq!(norm.1.name, "double_blocks.0.txt_attn.norm.key_norm.scale");
        assert!(map
            .iter()
            .any(|(d, b)| d.starts_with("time_text_embed.guidance")
                && b.name.starts_with("guidance_in.")));
        let schnell = tensor_map(&FluxConfig {
            guidance_embeds: false,
            ..tiny()
        });
        assert!(!schnell
            .iter()
            .any(|(_, b)| b.name.starts_with("guidance_in")));
    }

    #[test]
    fn fused_rows_split_and_final_halves_swap() {
        let dev = Device::Cpu;
        let config = tiny();
        let inner = config.inner_dim();
        let ramp = |rows: usize, cols: usize| {
            Tensor::arange(0f32, (rows * cols) as f32, &dev)
                .unwrap()
                .reshape((rows, cols))
                .unwrap()
        };
        let mut tensors = HashMap::new();
        tensors.insert(
            format!("{COMFY_PREFIX}img_in.weight"),
            ramp(inner, config.in_channels),
        );
        tensors.insert(
            format!("{COMFY_PREFIX}double_blocks.0.img_attn.qkv.weight"),
            ramp(3 * inner, inner),
        );
        tensors.insert(
            format!("{COMFY_PREFIX}final_layer.adaLN_modulation.1.bias"),
            Tensor::arange(0f32, (2 * inner) as f32, &dev).unwrap(),
        );
        let file = VarBuilder::from_tensors(tensors, DType::F32, &dev);
        let vb = var_builder(file, &config);
        let k = vb
            .get((inner, inner), "transformer_blocks.0.attn.to_k.weight")
            .unwrap();
        assert_eq!(
            k.get(0)
                .unwrap()
                .get(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            (inner * inner) as f32
        );
        let swapped: Vec<f32> = vb
            .get(2 * inner, "norm_out.linear.bias")
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(swapped[0], inner as f32);
        assert_eq!(swapped[inner], 0.0);
        assert!(vb.contains_tensor("x_embedder.weight"));
        assert!(!vb.contains_tensor("context_embedder.weight"));
        let err = vb
            .get((inner, 3), "context_embedder.weight")
            .unwrap_err()
            .to_string();
        assert!(err.contains("txt_in.weight"), "{err}");
    }
}

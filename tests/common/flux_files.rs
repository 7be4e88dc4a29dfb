//! FLUX single files made from the miniature diffusers models: the transformer in the BFL
//! layout (optionally under ComfyUI's `model.diffusion_model.`) and the other components of a
//! ComfyUI all-in-one checkpoint (CLIP-L, T5, the VAE in LDM names).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use super::command::Dir;
use super::{load, model_dir};

/// The diffusers transformer of the miniature model `name` written as a BFL-layout single file
/// at `out`, every key under `prefix` (`""`, or ComfyUI's `model.diffusion_model.`), with the
/// `extra` tensors beside it (an all-in-one ComfyUI checkpoint's other components).
pub fn bfl_file(name: &str, prefix: &str, extra: HashMap<String, Tensor>, out: &Path) {
    use beeswax::models::flux::{bfl, FluxConfig};
    let dir = model_dir(name);
    let config = FluxConfig::from_file(&dir.join("transformer/config.json")).unwrap();
    let diffusers = load(&format!(
        "models/{name}/transformer/diffusion_pytorch_model.safetensors"
    ));
    let mut parts: HashMap<String, Vec<(usize, Tensor)>> = HashMap::new();
    for (d, source) in bfl::tensor_map(&config) {
        let t = diffusers[&d].clone();
        let (start, t) = match source.part {
            bfl::Part::Whole => (0, t),
            bfl::Part::Rows { start, .. } => (start, t),
            bfl::Part::SwappedHalves => (0, beeswax::weights::swap_halves(&t).unwrap()),
        };
        parts.entry(source.name).or_default().push((start, t));
    }
    let mut tensors = extra;
    for (name, mut pieces) in parts {
        pieces.sort_by_key(|(start, _)| *start);
        let pieces: Vec<Tensor> = pieces.into_iter().map(|(_, t)| t).collect();
        let whole = Tensor::cat(&pieces, 0).unwrap();
        tensors.insert(format!("{prefix}{name}"), whole);
    }
    candle_core::safetensors::save(&tensors, out).unwrap();
}

/// The LDM name of diffusers VAE key `key` for a VAE of `levels` levels, and whether the
/// tensor becomes a 1x1 convolution there (the inverse of `checkpoint::keymap::ldm_to_vae`,
/// which the test checks).
pub fn ldm_vae_name(key: &str, levels: usize) -> (String, bool) {
    let (part, rest) = key.split_once('.').unwrap();
    let resnet = |r: &str| r.replace("conv_shortcut", "nin_shortcut");
    let index = |r: &str| -> (usize, String) {
        let (n, tail) = r.split_once('.').unwrap();
        (n.parse().unwrap(), tail.to_string())
    };
    let mut conv = false;
    let mapped = if let Some(r) = rest.strip_prefix("down_blocks.") {
        let (n, r) = index(r);
        match r.strip_prefix("resnets.") {
            Some(r) => {
                let (j, r) = index(r);
                format!("down.{n}.block.{j}.{}", resnet(&r))
            }
            None => format!(
                "down.{n}.downsample.{}",
                r.strip_prefix("downsamplers.0.").unwrap()
            ),
        }
    } else if let Some(r) = rest.strip_prefix("up_blocks.") {
        let (i, r) = index(r);
        let n = levels - 1 - i;
        match r.strip_prefix("resnets.") {
            Some(r) => {
                let (j, r) = index(r);
                format!("up.{n}.block.{j}.{}", resnet(&r))
            }
            None => format!(
                "up.{n}.upsample.{}",
                r.strip_prefix("upsamplers.0.").unwrap()
            ),
        }
    } else if let Some(r) = rest.strip_prefix("mid_block.resnets.") {
        let (j, r) = index(r);
        format!("mid.block_{}.{}", j + 1, resnet(&r))
    } else if let Some(r) = rest.strip_prefix("mid_block.attentions.0.") {
        let (module, tail) = r.rsplit_once('.').unwrap();
        let ldm = match module {
            "group_norm" => "norm",
            "to_q" => "q",
            "to_k" => "k",
            "to_v" => "v",
            _ => "proj_out",
        };
        conv = module != "group_norm" && tail == "weight";
        format!("mid.attn_1.{ldm}.{tail}")
    } else if let Some(r) = rest.strip_prefix("conv_norm_out.") {
        format!("norm_out.{r}")
    } else {
        rest.to_string()
    };
    let ldm = format!("{part}.{mapped}");
    let back = beeswax::checkpoint::keymap::ldm_to_vae(&ldm, levels);
    assert_eq!(back.as_deref(), Some(key), "{ldm}");
    (ldm, conv)
}

/// A copy of the folder `name` without its weight files: configs and tokenizers only.
pub fn config_only(name: &str, dir: &Dir) -> PathBuf {
    let out = dir.join(format!("{name}-configs"));
    super::command::copy_dir(&model_dir(name), &out);
    for component in ["text_encoder", "text_encoder_2", "vae", "transformer"] {
        for entry in std::fs::read_dir(out.join(component)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "safetensors") {
                std::fs::remove_file(path).unwrap();
            }
        }
    }
    out
}

/// The tensors of an all-in-one ComfyUI FLUX checkpoint besides the transformer: CLIP-L under
/// `text_encoders.clip_l.transformer.`, T5 under `text_encoders.t5xxl.transformer.`, the VAE
/// in LDM names under `vae.`.
pub fn comfy_components(name: &str) -> HashMap<String, Tensor> {
    let mut out = HashMap::new();
    for (component, prefix) in [
        ("text_encoder/model", "text_encoders.clip_l.transformer."),
        ("text_encoder_2/model", "text_encoders.t5xxl.transformer."),
    ] {
        for (k, t) in load(&format!("models/{name}/{component}.safetensors")) {
            out.insert(format!("{prefix}{k}"), t);
        }
    }
    let vae = load(&format!(
        "models/{name}/vae/diffusion_pytorch_model.safetensors"
    ));
    let levels = vae
        .keys()
        .filter_map(|k| {
            k.strip_prefix("encoder.down_blocks.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .unwrap()
        + 1;
    for (k, t) in vae {
        let (ldm, conv) = ldm_vae_name(&k, levels);
        let t = if conv {
            t.unsqueeze(2).unwrap().unsqueeze(3).unwrap()
        } else {
            t
        };
        out.insert(format!("vae.{ldm}"), t);
    }
    out
}

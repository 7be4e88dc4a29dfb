//! Original-layout (CompVis/SGM "LDM") names ↔ diffusers names, the inverse of diffusers'
//! `convert_ldm_unet_checkpoint`: one function per direction for the UNet, used both by the
//! single-file loader (file keys → component keys) and by LoRAs whose kohya names spell LDM
//! modules (`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`).
//!
//! The UNet numbering depends on the layers per block `L` only: down level `i`, layer `j` is
//! `input_blocks.{1 + i·(L+1) + j}` (`.0` resnet, `.1` attention; `.0.op` the downsampler at
//! `j = L`); up level `i`, layer `j` is `output_blocks.{i·(L+1) + j}` (`.0` resnet, `.1`
//! attention, the upsampler last: `.1.conv` without attention, `.2.conv` with it);
//! `middle_block.{0,1,2}` resnet, attention, resnet.

/// Renames inside a resnet: diffusers → LDM.
const RESNET: [(&str, &str); 6] = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
];

/// Top-level modules: diffusers → LDM.
const TOP: [(&str, &str); 7] = [
    ("conv_in", "input_blocks.0.0"),
    ("time_embedding.linear_1", "time_embed.0"),
    ("time_embedding.linear_2", "time_embed.2"),
    ("add_embedding.linear_1", "label_emb.0.0"),
    ("add_embedding.linear_2", "label_emb.0.2"),
    ("conv_norm_out", "out.0"),
    ("conv_out", "out.2"),
];

fn rename(rest: &str, table: &[(&str, &str)], forward: bool) -> Option<String> {
    table.iter().find_map(|(d, l)| {
        let (from, to) = if forward { (d, l) } else { (l, d) };
        match rest.strip_prefix(from) {
            Some("") => Some(to.to_string()),
            Some(tail) if tail.starts_with('.') => Some(format!("{to}{tail}")),
            _ => None,
        }
    })
}

/// `a.b.rest` → (`a`, `b` as a number, `rest`).
fn split_index<'a>(name: &'a str, head: &str) -> Option<(usize, &'a str)> {
    let tail = name.strip_prefix(head)?.strip_prefix('.')?;
    let (n, rest) = tail.split_once('.').unwrap_or((tail, ""));
    Some((n.parse().ok()?, rest))
}

/// The LDM name of diffusers UNet key `key` (a module path, or a tensor key ending in
/// `.weight`/`.bias`) for a UNet with `layers` layers per block; `None` if it is not a UNet key.
pub fn unet_to_ldm(key: &str, layers: usize) -> Option<String> {
    if let Some(top) = rename(key, &TOP, true) {
        return Some(top);
    }
    let step = layers + 1;
    if let Some((i, rest)) = split_index(key, "down_blocks") {
        if let Some((j, rest)) = split_index(rest, "resnets") {
            let r = rename(rest, &RESNET, true).unwrap_or_else(|| rest.to_string());
            return Some(format!("input_blocks.{}.0.{r}", 1 + i * step + j));
        }
        if let Some((j, rest)) = split_index(rest, "attentions") {
            return Some(format!("input_blocks.{}.1.{rest}", 1 + i * step + j));
        }
        let rest = rest.strip_prefix("downsamplers.0.conv")?;
        return Some(format!("input_blocks.{}.0.op{rest}", (i + 1) * step));
    }
    if let Some(rest) = key.strip_prefix("mid_block.") {
        if let Some((j, rest)) = split_index(rest, "resnets") {
            let r = rename(rest, &RESNET, true).unwrap_or_else(|| rest.to_string());
            return Some(format!("middle_block.{}.{r}", 2 * j));
        }
        let (_, rest) = split_index(rest, "attentions")?;
        return Some(format!("middle_block.1.{rest}"));
    }
    let (i, rest) = split_index(key, "up_blocks")?;
    if let Some((j, rest)) = split_index(rest, "resnets") {
        let r = rename(rest, &RESNET, true).unwrap_or_else(|| rest.to_string());
        return Some(format!("output_blocks.{}.0.{r}", i * step + j));
    }
    if let Some((j, rest)) = split_index(rest, "attentions") {
        return Some(format!("output_blocks.{}.1.{rest}", i * step + j));
    }
    // The upsampler's slot depends on whether the level has attention: the caller passes
    // `up_blocks.{i}.upsamplers.0...` and gets both candidates through `unet_upsampler`.
    None
}

/// The LDM names an up level's upsampler may have (`.1.conv` without attention, `.2.conv`
/// with it), for diffusers key `up_blocks.{i}.upsamplers.0.conv{rest}`.
pub fn unet_upsampler(key: &str, layers: usize, with_attention: bool) -> Option<String> {
    let (i, rest) = split_index(key, "up_blocks")?;
    let rest = rest.strip_prefix("upsamplers.0.conv")?;
    let slot = if with_attention { 2 } else { 1 };
    Some(format!(
        "output_blocks.{}.{slot}.conv{rest}",
        i * (layers + 1) + layers
    ))
}

/// The diffusers name of LDM UNet key `key` for a UNet with `layers` layers per block.
pub fn ldm_to_unet(key: &str, layers: usize) -> Option<String> {
    if let Some(top) = rename(key, &TOP, false) {
        return Some(top);
    }
    let step = layers + 1;
    let resnet = |rest: &str| rename(rest, &RESNET, false).unwrap_or_else(|| rest.to_string());
    if let Some((n, rest)) = split_index(key, "input_blocks") {
        if n == 0 {
            return None;
        }
        let (i, j) = ((n - 1) / step, (n - 1) % step);
        let (k, rest) = split_index(&format!("x.{rest}"), "x").map(|(k, r)| (k, r.to_string()))?;
        return match (j == layers, k) {
            (true, 0) => Some(format!(
                "down_blocks.{i}.downsamplers.0.conv{}",
                rest.strip_prefix("op")?
            )),
            (false, 0) => Some(format!("down_blocks.{i}.resnets.{j}.{}", resnet(&rest))),
            (false, 1) => Some(format!("down_blocks.{i}.attentions.{j}.{rest}")),
            _ => None,
        };
    }
    if let Some((n, rest)) = split_index(key, "middle_block") {
        return match n {
            0 | 2 => Some(format!("mid_block.resnets.{}.{}", n / 2, resnet(rest))),
            1 => Some(format!("mid_block.attentions.0.{rest}")),
            _ => None,
        };
    }
    let (n, rest) = split_index(key, "output_blocks")?;
    let (i, j) = (n / step, n % step);
    let (k, rest) = split_index(&format!("x.{rest}"), "x").map(|(k, r)| (k, r.to_string()))?;
    match k {
        0 => Some(format!("up_blocks.{i}.resnets.{j}.{}", resnet(&rest))),
        1 | 2 if rest.starts_with("conv") => Some(format!(
            "up_blocks.{i}.upsamplers.0.conv{}",
            rest.strip_prefix("conv")?
        )),
        1 => Some(format!("up_blocks.{i}.attentions.{j}.{rest}")),
        _ => None,
    }
}

/// The LDM name of every diffusers UNet tensor key in `keys` (layers per block and which up
/// levels have attention read from the keys themselves); keys of other components are left
/// out.
pub fn unet_ldm_names<'a>(keys: impl Iterator<Item = &'a str> + Clone) -> Vec<(&'a str, String)> {
    let layers = keys
        .clone()
        .filter_map(|k| split_index(k.strip_prefix("down_blocks.0.")?, "resnets"))
        .map(|(j, _)| j + 1)
        .max()
        .unwrap_or(0);
    if layers == 0 {
        return Vec::new();
    }
    let all: Vec<&'a str> = keys.collect();
    let attention = |i: usize| {
        let head = format!("up_blocks.{i}.attentions.");
        all.iter().any(|k| k.starts_with(&head))
    };
    all.iter()
        .copied()
        .filter_map(|k| {
            let ldm = match unet_to_ldm(k, layers) {
                Some(l) => l,
                None => {
                    let (i, _) = split_index(k, "up_blocks")?;
                    unet_upsampler(k, layers, attention(i))?
                }
            };
            Some((k, ldm))
        })
        .collect()
}

/// Renames inside a VAE resnet: LDM → diffusers.
const VAE_RESNET: [(&str, &str); 1] = [("nin_shortcut", "conv_shortcut")];

/// Renames inside the VAE's mid attention: LDM → diffusers (`q`, `k`, `v`, `proj_out` are 1x1
/// convolutions in LDM files, linear layers in diffusers: see [`vae_needs_squeeze`]).
const VAE_ATTENTION: [(&str, &str); 5] = [
    ("norm", "group_norm"),
    ("q", "to_q"),
    ("k", "to_k"),
    ("v", "to_v"),
    ("proj_out", "to_out.0"),
];

/// The diffusers name of LDM VAE key `key` (below `first_stage_model.`) for a VAE with
/// `levels` resolution levels (`len(block_out_channels)`): the decoder's `up.{n}` is counted
/// from the bottom, diffusers' `up_blocks.{levels - 1 - n}` from the top.
pub fn ldm_to_vae(key: &str, levels: usize) -> Option<String> {
    let (part, rest) = key.split_once('.')?;
    if part != "encoder" && part != "decoder" {
        return matches!(part, "quant_conv" | "post_quant_conv").then(|| key.to_string());
    }
    let resnet = |r: &str| rename(r, &VAE_RESNET, true).unwrap_or_else(|| r.to_string());
    let mapped = if let Some((n, r)) = split_index(rest, "down") {
        if let Some((j, r)) = split_index(r, "block") {
            format!("down_blocks.{n}.resnets.{j}.{}", resnet(r))
        } else {
            format!(
                "down_blocks.{n}.downsamplers.0.{}",
                r.strip_prefix("downsample.")?
            )
        }
    } else if let Some((n, r)) = split_index(rest, "up") {
        let i = levels.checked_sub(1 + n)?;
        if let Some((j, r)) = split_index(r, "block") {
            format!("up_blocks.{i}.resnets.{j}.{}", resnet(r))
        } else {
            format!(
                "up_blocks.{i}.upsamplers.0.{}",
                r.strip_prefix("upsample.")?
            )
        }
    } else if let Some(r) = rest.strip_prefix("mid.block_1.") {
        format!("mid_block.resnets.0.{}", resnet(r))
    } else if let Some(r) = rest.strip_prefix("mid.block_2.") {
        format!("mid_block.resnets.1.{}", resnet(r))
    } else if let Some(r) = rest.strip_prefix("mid.attn_1.") {
        format!(
            "mid_block.attentions.0.{}",
            rename(r, &VAE_ATTENTION, true)?
        )
    } else if let Some(r) = rest.strip_prefix("norm_out.") {
        format!("conv_norm_out.{r}")
    } else if rest.starts_with("conv_in.") || rest.starts_with("conv_out.") {
        rest.to_string()
    } else {
        return None;
    };
    Some(format!("{part}.{mapped}"))
}

/// Whether the diffusers VAE key (from [`ldm_to_vae`]) is a linear weight stored as a 1x1
/// convolution in LDM files.
pub fn vae_needs_squeeze(diffusers_key: &str) -> bool {
    diffusers_key.contains("mid_block.attentions.0.")
        && !diffusers_key.contains("group_norm")
        && diffusers_key.ends_with(".weight")
}

/// The transformers `CLIPTextModel` key(s) of OpenCLIP key `key` (below the encoder's prefix,
/// e.g. `cond_stage_model.model.`) for a text model of `width` and `layers` layers: fused
/// `in_proj` tensors give q, k and v by rows (`(key, Some(row_start))`), `text_projection` is
/// transposed (flagged by [`OpenClipPart::Transposed`]). Blocks past `layers` (SD 2.x's 24th)
/// map to nothing.
pub fn open_clip_to_clip(key: &str, width: usize, layers: usize) -> Vec<(String, OpenClipPart)> {
    let whole = |k: String| vec![(k, OpenClipPart::Whole)];
    match key {
        "token_embedding.weight" => {
            return whole("text_model.embeddings.token_embedding.weight".into())
        }
        "positional_embedding" => {
            return whole("text_model.embeddings.position_embedding.weight".into())
        }
        "text_projection" => {
            return vec![("text_projection.weight".into(), OpenClipPart::Transposed)]
        }
        _ => {}
    }
    if let Some(r) = key.strip_prefix("ln_final.") {
        return whole(format!("text_model.final_layer_norm.{r}"));
    }
    let Some((i, r)) = split_index(key, "transformer.resblocks") else {
        return Vec::new();
    };
    if i >= layers {
        return Vec::new();
    }
    let layer = format!("text_model.encoder.layers.{i}");
    let fused = |kind: &str| {
        ["q", "k", "v"]
            .iter()
            .enumerate()
            .map(|(n, p)| {
                (
                    format!("{layer}.self_attn.{p}_proj.{kind}"),
                    OpenClipPart::Rows(n * width),
                )
            })
            .collect::<Vec<_>>()
    };
    match r {
        "attn.in_proj_weight" => fused("weight"),
        "attn.in_proj_bias" => fused("bias"),
        _ => {
            let table = [
                ("ln_1", "layer_norm1"),
                ("ln_2", "layer_norm2"),
                ("attn.out_proj", "self_attn.out_proj"),
                ("mlp.c_fc", "mlp.fc1"),
                ("mlp.c_proj", "mlp.fc2"),
            ];
            rename(r, &table, true).map_or_else(Vec::new, |m| whole(format!("{layer}.{m}")))
        }
    }
}

/// How an OpenCLIP tensor becomes a transformers one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenClipPart {
    /// As stored.
    Whole,
    /// `width` rows from this one (one of q, k, v of a fused projection).
    Rows(usize),
    /// Transposed (`text_projection` is `[width, projection]` in OpenCLIP).
    Transposed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vae_and_open_clip_names() {
        for (l, d) in [
            (
                "encoder.down.1.block.0.nin_shortcut.weight",
                "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "encoder.down.0.downsample.conv.bias",
                "encoder.down_blocks.0.downsamplers.0.conv.bias",
            ),
            (
                "decoder.up.3.block.2.conv1.weight",
                "decoder.up_blocks.0.resnets.2.conv1.weight",
            ),
            (
                "decoder.up.1.upsample.conv.weight",
                "decoder.up_blocks.2.upsamplers.0.conv.weight",
            ),
            (
                "decoder.mid.attn_1.proj_out.weight",
                "decoder.mid_block.attentions.0.to_out.0.weight",
            ),
            (
                "encoder.mid.attn_1.norm.bias",
                "encoder.mid_block.attentions.0.group_norm.bias",
            ),
            ("encoder.norm_out.weight", "encoder.conv_norm_out.weight"),
            ("post_quant_conv.weight", "post_quant_conv.weight"),
        ] {
            assert_eq!(ldm_to_vae(l, 4).as_deref(), Some(d), "{l}");
        }
        assert!(vae_needs_squeeze(
            "decoder.mid_block.attentions.0.to_q.weight"
        ));
        assert!(!vae_needs_squeeze(
            "decoder.mid_block.attentions.0.to_q.bias"
        ));
        let q = open_clip_to_clip("transformer.resblocks.1.attn.in_proj_weight", 8, 2);
        assert_eq!(
            q[2],
            (
                "text_model.encoder.layers.1.self_attn.v_proj.weight".into(),
                OpenClipPart::Rows(16)
            )
        );
        assert!(open_clip_to_clip("transformer.resblocks.2.ln_1.weight", 8, 2).is_empty());
        assert_eq!(
            open_clip_to_clip("transformer.resblocks.0.mlp.c_proj.bias", 8, 2)[0].0,
            "text_model.encoder.layers.0.mlp.fc2.bias"
        );
    }

    #[test]
    fn unet_names_round_trip() {
        for (d, l) in [
            ("conv_in.weight", "input_blocks.0.0.weight"),
            (
                "down_blocks.1.resnets.1.conv1.weight",
                "input_blocks.5.0.in_layers.2.weight",
            ),
            (
                "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight",
                "input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight",
            ),
            (
                "down_blocks.0.downsamplers.0.conv.bias",
                "input_blocks.3.0.op.bias",
            ),
            (
                "mid_block.resnets.1.time_emb_proj.weight",
                "middle_block.2.emb_layers.1.weight",
            ),
            (
                "mid_block.attentions.0.proj_in.weight",
                "middle_block.1.proj_in.weight",
            ),
            (
                "up_blocks.2.resnets.2.conv_shortcut.weight",
                "output_blocks.8.0.skip_connection.weight",
            ),
            (
                "up_blocks.0.attentions.1.norm.bias",
                "output_blocks.1.1.norm.bias",
            ),
            ("add_embedding.linear_2.weight", "label_emb.0.2.weight"),
            ("conv_out.bias", "out.2.bias"),
        ] {
            assert_eq!(unet_to_ldm(d, 2).as_deref(), Some(l), "{d}");
            assert_eq!(ldm_to_unet(l, 2).as_deref(), Some(d), "{l}");
        }
        for (with_attention, l) in [
            (true, "output_blocks.2.2.conv.weight"),
            (false, "output_blocks.2.1.conv.weight"),
        ] {
            let d = "up_blocks.0.upsamplers.0.conv.weight";
            assert_eq!(unet_upsampler(d, 2, with_attention).as_deref(), Some(l));
            assert_eq!(ldm_to_unet(l, 2).as_deref(), Some(d));
        }
    }
}

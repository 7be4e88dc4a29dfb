//! Which model weight a LoRA module changes.
//!
//! Kohya names flatten the diffusers module path with `_`
//! (`lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q` is
//! `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`), which cannot be split back
//! unambiguously (`to_q`, `proj_in`, `transformer_blocks`), so the index goes the other way: it
//! spells every weight of the loaded model in each layout and looks the module name up.
//!
//! Text-encoder names use `text_model.` in kohya files (`lora_te_text_model_encoder_...`) and in
//! transformers-4 diffusers files, but not in transformers-5 ones; the model's own file may
//! have either, so both spellings map to the key the loaded file really has.

use std::collections::HashMap;

/// The network a weight belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// The denoising UNet.
    Unet,
    /// The CLIP text encoder.
    TextEncoder,
}

/// A model weight a LoRA module changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The network.
    pub component: Component,
    /// The weight's key in that network's weights file (e.g. `...attn1.to_q.weight`).
    pub key: String,
}

/// Every spelling of every LoRA-able model weight (linear and convolution weights).
#[derive(Debug, Clone, Default)]
pub struct TargetIndex {
    names: HashMap<String, Target>,
}

impl TargetIndex {
    /// Indexes the weights named `unet` (keys and ranks) and `text_encoder`.
    pub fn new<'a>(
        unet: impl IntoIterator<Item = (&'a str, usize)>,
        text_encoder: impl IntoIterator<Item = (&'a str, usize)>,
    ) -> Self {
        let mut names = HashMap::new();
        let layers = |keys: &mut dyn Iterator<Item = (&'a str, usize)>| -> Vec<(&'a str, &'a str)> {
            keys.filter(|(_, rank)| *rank == 2 || *rank == 4)
                .filter_map(|(key, _)| Some((key, key.strip_suffix(".weight")?)))
                .collect()
        };
        for (key, module) in layers(&mut unet.into_iter()) {
            let target = Target {
                component: Component::Unet,
                key: key.to_string(),
            };
            for name in [
                format!("lora_unet_{}", module.replace('.', "_")),
                format!("unet.{module}"),
                module.to_string(),
            ] {
                names.insert(name, target.clone());
            }
        }
        for (key, module) in layers(&mut text_encoder.into_iter()) {
            let target = Target {
                component: Component::TextEncoder,
                key: key.to_string(),
            };
            let bare = module.strip_prefix("text_model.").unwrap_or(module);
            for name in [
                format!("lora_te_text_model_{}", bare.replace('.', "_")),
                format!("text_encoder.text_model.{bare}"),
                format!("text_encoder.{bare}"),
                format!("text_model.{bare}"),
                bare.to_string(),
            ] {
                names.insert(name, target.clone());
            }
        }
        Self { names }
    }

    /// The weight LoRA module `name` (as normalised by [`super::file::split_key`]) changes.
    pub fn resolve(&self, name: &str) -> Option<&Target> {
        self.names.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_finds_the_weight() {
        let unet = [
            (
                "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
                2,
            ),
            ("down_blocks.0.attentions.0.proj_in.weight", 4),
            ("down_blocks.0.attentions.0.proj_in.bias", 1),
        ];
        let te = [("text_model.encoder.layers.0.self_attn.q_proj.weight", 2)];
        let index = TargetIndex::new(unet, te);
        let to_q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight";
        for name in [
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        ] {
            let t = index.resolve(name).unwrap();
            assert_eq!(
                (t.component, t.key.as_str()),
                (Component::Unet, to_q),
                "{name}"
            );
        }
        let q_proj = "text_model.encoder.layers.0.self_attn.q_proj.weight";
        for name in [
            "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
            "text_encoder.encoder.layers.0.self_attn.q_proj",
        ] {
            let t = index.resolve(name).unwrap();
            assert_eq!(
                (t.component, t.key.as_str()),
                (Component::TextEncoder, q_proj)
            );
        }
        assert!(index
            .resolve("lora_unet_down_blocks_0_attentions_0_proj_in")
            .is_some());
        assert!(index
            .resolve("lora_te1_text_model_encoder_layers_0_self_attn_q_proj")
            .is_none());
        assert!(index
            .resolve("lora_unet_input_blocks_1_1_proj_in")
            .is_none());
    }
}

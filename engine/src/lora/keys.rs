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

use crate::checkpoint::keymap::unet_ldm_names;
use crate::family::{LoraNames, Role};

/// A model weight a LoRA module changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The network's component name (`unet`, `text_encoder`, `text_encoder_2`, ...).
    pub component: String,
    /// What the network does.
    pub role: Role,
    /// The weight's key in that network's weights (e.g. `...attn1.to_q.weight`).
    pub key: String,
}

/// One component to index: its name, role, LoRA spellings and weights (keys and ranks).
pub struct IndexedComponent<'a, I: IntoIterator<Item = (&'a str, usize)>> {
    /// The component's name.
    pub name: &'a str,
    /// What it does.
    pub role: Role,
    /// How LoRA files name its modules.
    pub lora: &'a LoraNames,
    /// Its weights.
    pub weights: I,
}

/// Every spelling of every LoRA-able model weight (linear and convolution weights).
#[derive(Debug, Clone, Default)]
pub struct TargetIndex {
    names: HashMap<String, Target>,
}

impl TargetIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the weights of one component, in every layout's spelling: kohya
    /// (`{kohya}_{module with _}`), diffusers/PEFT (`{peft}.{module}`) and, when the
    /// component claims them, bare module names. Text encoders are spelt with and without
    /// transformers-4's `text_model.`.
    pub fn add<'a, I: IntoIterator<Item = (&'a str, usize)>>(
        &mut self,
        component: IndexedComponent<'a, I>,
    ) {
        let names = component.lora;
        let weights: Vec<(&str, usize)> = component.weights.into_iter().collect();
        // kohya's SDXL files name the UNet's original (LDM/SGM) modules.
        let ldm: HashMap<&str, String> = match component.role {
            Role::Denoiser => unet_ldm_names(weights.iter().map(|(k, _)| *k))
                .into_iter()
                .collect(),
            Role::TextEncoder => HashMap::new(),
        };
        for &(key, rank) in &weights {
            let Some(module) = key.strip_suffix(".weight") else {
                continue;
            };
            if rank != 2 && rank != 4 {
                continue;
            }
            let target = Target {
                component: component.name.to_string(),
                role: component.role,
                key: key.to_string(),
            };
            for name in spellings(names, component.role, module) {
                self.names.insert(name, target.clone());
            }
            if let Some(l) = ldm.get(key).and_then(|l| l.strip_suffix(".weight")) {
                let name = format!("{}_{}", names.kohya, l.replace('.', "_"));
                self.names.entry(name).or_insert(target);
            }
        }
    }

    /// The weight LoRA module `name` (as normalised by [`super::file::split_key`]) changes.
    pub fn resolve(&self, name: &str) -> Option<&Target> {
        self.names.get(name)
    }
}

fn spellings(names: &LoraNames, role: Role, module: &str) -> Vec<String> {
    let (kohya, peft) = (&names.kohya, &names.peft);
    match role {
        Role::Denoiser => {
            let mut v = vec![
                format!("{kohya}_{}", module.replace('.', "_")),
                format!("{peft}.{module}"),
            ];
            if names.bare {
                v.push(module.to_string());
            }
            v
        }
        Role::TextEncoder => {
            let bare = module.strip_prefix("text_model.").unwrap_or(module);
            let mut v = vec![
                format!("{kohya}_text_model_{}", bare.replace('.', "_")),
                format!("{peft}.text_model.{bare}"),
                format!("{peft}.{bare}"),
            ];
            if names.bare {
                v.push(format!("text_model.{bare}"));
                v.push(bare.to_string());
            }
            v
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(kohya: &str, peft: &str) -> LoraNames {
        LoraNames {
            kohya: kohya.into(),
            peft: peft.into(),
            bare: true,
        }
    }

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
        let mut index = TargetIndex::new();
        let (unet_names, te_names) = (names("lora_unet", "unet"), names("lora_te", "text_encoder"));
        index.add(IndexedComponent {
            name: "unet",
            role: Role::Denoiser,
            lora: &unet_names,
            weights: unet,
        });
        index.add(IndexedComponent {
            name: "text_encoder",
            role: Role::TextEncoder,
            lora: &te_names,
            weights: te,
        });
        let to_q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight";
        for name in [
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        ] {
            let t = index.resolve(name).unwrap();
            assert_eq!(
                (t.component.as_str(), t.key.as_str()),
                ("unet", to_q),
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
                (t.component.as_str(), t.key.as_str()),
                ("text_encoder", q_proj)
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

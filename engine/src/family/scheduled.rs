//! A prompt's conditioning over the sampling steps, as a family's [`super::Networks::encode`]
//! returns it: one [`Conditioning`] per distinct text of each `AND` sub-prompt, and which one
//! each step uses (AUTOMATIC1111's prompt editing and alternation). A plain prompt is one
//! conditioning for every step ([`ScheduledConditioning::fixed`]): the denoise loop then does
//! no per-step work.

use std::sync::Arc;

use candle_core::Tensor;

use super::Conditioning;
use crate::prompt::schedule::entry_index;
use crate::prompt::{Embedding, EncodedPrompt};
use crate::Result;

/// One `AND` sub-prompt (the whole prompt without `AND`).
#[derive(Debug, Clone)]
pub struct ScheduledPart {
    /// Composable-diffusion weight (A1111's trailing `:w`; 1 by default).
    pub weight: f64,
    /// `(end_step, index into conds)`, sorted: step `i` (0-based) uses the first entry whose
    /// end is at or after `i`.
    pub schedule: Vec<(usize, usize)>,
    /// One conditioning per distinct text.
    pub conds: Vec<Conditioning>,
}

/// A prompt's conditioning over the sampling steps.
#[derive(Debug, Clone)]
pub struct ScheduledConditioning {
    /// The sub-prompts (at least one).
    pub parts: Vec<ScheduledPart>,
    /// The empty prompt's conditioning (one chunk), when the job pads prompts to the same
    /// chunk count (`pad_prompts`).
    pub empty: Option<Conditioning>,
    /// The textual-inversion embeddings the prompt uses (for `TI hashes`).
    pub embeddings: Vec<Arc<Embedding>>,
}

impl ScheduledConditioning {
    /// The same conditioning at every step.
    pub fn fixed(cond: Conditioning) -> Self {
        Self {
            parts: vec![ScheduledPart {
                weight: 1.0,
                schedule: vec![(usize::MAX, 0)],
                conds: vec![cond],
            }],
            empty: None,
            embeddings: Vec::new(),
        }
    }

    /// An encoded prompt plan made family conditioning: `finish(part, text, context)` turns
    /// the context `[1, S, D]` of distinct text `text` of sub-prompt `part` into its
    /// conditioning (SDXL adds its pooled embedding and time ids there).
    pub fn from_prompt<F>(encoded: EncodedPrompt, mut finish: F) -> Result<Self>
    where
        F: FnMut(usize, usize, Tensor) -> Result<Conditioning>,
    {
        let parts = encoded
            .parts
            .into_iter()
            .enumerate()
            .map(|(p, part)| {
                let conds = part
                    .conds
                    .into_iter()
                    .enumerate()
                    .map(|(t, context)| finish(p, t, context))
                    .collect::<Result<Vec<_>>>()?;
                Ok(ScheduledPart {
                    weight: part.weight,
                    schedule: part.schedule,
                    conds,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            parts,
            empty: None,
            embeddings: Vec::new(),
        })
    }

    /// Which distinct text each sub-prompt uses at step `step` (0-based): equal keys mean
    /// equal conditioning.
    pub fn key_at_step(&self, step: usize) -> Vec<usize> {
        self.parts
            .iter()
            .map(|part| {
                let entry = entry_index(part.schedule.iter().map(|&(end, _)| end), step);
                part.schedule[entry].1
            })
            .collect()
    }

    /// The conditioning and weight of each sub-prompt at step `step` (0-based).
    pub fn at_step(&self, step: usize) -> Vec<(&Conditioning, f64)> {
        self.parts
            .iter()
            .zip(self.key_at_step(step))
            .map(|(part, text)| (&part.conds[text], part.weight))
            .collect()
    }

    /// Whether every step uses the same conditioning.
    pub fn is_static(&self) -> bool {
        self.parts.iter().all(|p| p.conds.len() == 1)
    }

    /// Whether guidance must combine several sub-prompts or weights (`AND`, `:w`): anything
    /// but one sub-prompt of weight 1.
    pub fn is_composite(&self) -> bool {
        self.parts.len() != 1 || self.parts[0].weight != 1.0
    }

    /// Every conditioning repeated `n` times along the batch (one row per image).
    pub fn repeat(&self, n: usize) -> Result<Self> {
        let parts = self
            .parts
            .iter()
            .map(|part| {
                Ok(ScheduledPart {
                    weight: part.weight,
                    schedule: part.schedule.clone(),
                    conds: part
                        .conds
                        .iter()
                        .map(|c| c.repeat(n))
                        .collect::<Result<Vec<_>>>()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            parts,
            empty: self.empty.as_ref().map(|e| e.repeat(n)).transpose()?,
            embeddings: self.embeddings.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn cond(v: f32) -> Conditioning {
        Conditioning::from_context(
            (Tensor::ones((1, 2, 3), DType::F32, &Device::Cpu).unwrap() * v as f64).unwrap(),
        )
    }

    fn first(c: &Conditioning) -> f32 {
        c.context.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0]
    }

    #[test]
    fn steps_pick_their_entry() {
        let s = ScheduledConditioning {
            parts: vec![
                ScheduledPart {
                    weight: 1.0,
                    schedule: vec![(4, 0), (8, 1)],
                    conds: vec![cond(1.0), cond(2.0)],
                },
                ScheduledPart {
                    weight: 0.5,
                    schedule: vec![(8, 0)],
                    conds: vec![cond(3.0)],
                },
            ],
            empty: None,
            embeddings: Vec::new(),
        };
        let texts: Vec<f32> = (0..8).map(|i| first(s.at_step(i)[0].0)).collect();
        assert_eq!(texts, [1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0]);
        assert_eq!(s.key_at_step(5), [1, 0]);
        assert_eq!(s.at_step(0)[1].1, 0.5);
        assert!(!s.is_static() && s.is_composite());
        let r = s.repeat(3).unwrap();
        assert_eq!(r.at_step(7)[0].0.context.dims(), [3, 2, 3]);
        let f = ScheduledConditioning::fixed(cond(4.0));
        assert!(f.is_static() && !f.is_composite());
        assert_eq!(first(f.at_step(1000)[0].0), 4.0);
    }
}

//! Classifier-free guidance over scheduled conditioning, as AUTOMATIC1111's CFG denoiser: each
//! step takes the prompt's and the negative prompt's conditioning of that step
//! ([`crate::family::ScheduledConditioning::at_step`]); `AND` sub-prompts of different lengths
//! are stacked after repeating their last token (A1111's `stack_conds`); with `pad_prompts` the
//! shorter of prompt and negative prompt gets empty-prompt chunks; prompt and negative prompt
//! of the same length run as one denoiser call, else as two (A1111 ≥ 1.6); the outputs combine
//! as `uncond + Σ wᵢ · scale · (condᵢ − uncond)` (composable diffusion, plain CFG for one
//! sub-prompt of weight 1).

use candle_core::Tensor;

use super::stages::TextConditioning;
use crate::family::{Conditioning, Model};
use crate::models::repeat_batch;
use crate::prompt::weighting::{combine_composable, pad_with_last_token};
use crate::Result;

/// The conditioning of one step, ready for the denoiser.
pub struct StepConditioning {
    /// Which text each sub-prompt of the prompt and of the negative prompt uses: steps with
    /// the same key share this value.
    key: (Vec<usize>, Vec<usize>),
    /// The sub-prompts stacked along the batch: `[parts · batch, S, D]`.
    conds: Conditioning,
    /// Each sub-prompt's weight.
    weights: Vec<f64>,
    /// The negative prompt, when guiding.
    uncond: Option<Conditioning>,
    /// `[uncond; conds]` when they have the same length: one denoiser call.
    both: Option<Conditioning>,
}

impl StepConditioning {
    /// The conditioning of step `step` (counted from the first step run, as A1111 counts),
    /// reusing `previous` when the step uses the same texts.
    pub fn at_step(text: &TextConditioning, step: usize, previous: Option<Self>) -> Result<Self> {
        let key = (
            text.cond.key_at_step(step),
            text.uncond
                .as_ref()
                .map_or(Vec::new(), |u| u.key_at_step(step)),
        );
        if let Some(previous) = previous.filter(|p| p.key == key) {
            return Ok(previous);
        }
        let parts = text.cond.at_step(step);
        let weights = parts.iter().map(|(_, w)| *w).collect();
        let mut conds = stack(&parts.iter().map(|(c, _)| *c).collect::<Vec<_>>())?;
        let mut uncond = text.uncond.as_ref().map(|u| u.at_step(step)[0].0.clone());
        if let (Some(u), Some(empty)) = (&mut uncond, &text.cond.empty) {
            pad_chunks(&mut conds, u, empty)?;
        }
        let both = match &uncond {
            Some(u) if u.tokens()? == conds.tokens()? => Some(Conditioning::cat(&[u, &conds])?),
            _ => None,
        };
        Ok(Self {
            key,
            conds,
            weights,
            uncond,
            both,
        })
    }

    /// The guided denoiser output for `input` `[batch, C, h, w]` at timestep `t`: the
    /// denoiser gets the guidance `scale` (families with distilled guidance embed it), the
    /// negative and positive passes combine at `cfg_scale`.
    pub fn predict(
        &self,
        model: &Model,
        input: &Tensor,
        t: f64,
        scale: f64,
        cfg_scale: f64,
    ) -> Result<Tensor> {
        let net = &model.networks;
        let parts = self.weights.len();
        let batch = input.dim(0)?;
        let repeated = |n: usize| repeat_batch(input, n);
        let (uncond, conds) = match (&self.uncond, &self.both) {
            (None, _) => (None, net.predict(&repeated(parts)?, t, &self.conds, scale)?),
            (Some(_), Some(both)) => {
                let out = net.predict(&repeated(parts + 1)?, t, both, scale)?;
                (
                    Some(out.narrow(0, 0, batch)?),
                    out.narrow(0, batch, parts * batch)?,
                )
            }
            (Some(u), None) => (
                Some(net.predict(input, t, u, scale)?),
                net.predict(&repeated(parts)?, t, &self.conds, scale)?,
            ),
        };
        let Some(uncond) = uncond else {
            // Without guidance the prompt is one sub-prompt of weight 1 (`encode_prompts`).
            return Ok(conds);
        };
        if parts == 1 && self.weights[0] == 1.0 {
            return Ok((&uncond + ((conds - &uncond)? * cfg_scale)?)?);
        }
        let each = (0..parts)
            .map(|k| Ok((conds.narrow(0, k * batch, batch)?, self.weights[k])))
            .collect::<Result<Vec<_>>>()?;
        Ok(combine_composable(&uncond, &each, cfg_scale)?)
    }
}

/// Sub-prompts stacked along the batch, shorter contexts padded with their last token.
fn stack(parts: &[&Conditioning]) -> Result<Conditioning> {
    if let [one] = parts {
        return Ok((*one).clone());
    }
    let len = parts
        .iter()
        .map(|p| p.tokens())
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .max()
        .unwrap_or(0);
    let padded = parts
        .iter()
        .map(|p| {
            Ok(Conditioning {
                context: pad_with_last_token(&p.context, len)?,
                ..(*p).clone()
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Conditioning::cat(&padded.iter().collect::<Vec<_>>())
}

/// A1111's `pad_cond_uncond`: the shorter of `conds` and `uncond` gets copies of `empty`'s
/// context (one chunk) appended until both have as many whole chunks.
fn pad_chunks(
    conds: &mut Conditioning,
    uncond: &mut Conditioning,
    empty: &Conditioning,
) -> Result<()> {
    let chunk = empty.tokens()?;
    let (c, u) = (conds.tokens()?, uncond.tokens()?);
    let (short, missing) = match c.cmp(&u) {
        std::cmp::Ordering::Less => (conds, (u - c) / chunk),
        std::cmp::Ordering::Greater => (uncond, (c - u) / chunk),
        std::cmp::Ordering::Equal => return Ok(()),
    };
    if missing == 0 {
        return Ok(());
    }
    let rows = short.context.dim(0)?;
    let filler = empty.context.narrow(0, 0, 1)?.repeat((rows, missing, 1))?;
    short.context = Tensor::cat(&[&short.context, &filler], 1)?;
    Ok(())
}

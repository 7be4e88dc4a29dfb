//! `beeswax generate --init-image ...`: image-to-image, inpainting and outpainting from the
//! command line: read the picture and mask, then run the job the flags describe.

use std::ops::ControlFlow;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use beeswax::image_in::{
    mask_from_picture, outpaint, read_image, AlphaMask, Limits, Mask, RgbImage,
};
use beeswax::pipeline::{
    image_to_image, inpaint, Generated, ImageToImage, Inpaint, InpaintArea, MaskedContent,
    StableDiffusion, StepProgress, TextToImage,
};
use candle_core::{Device, Tensor};

use crate::args::GenerateArgs;

/// The picture (outpaint canvas included) and, for inpainting, its mask.
pub struct ImageInput {
    /// The picture to start from.
    pub picture: RgbImage,
    /// What to repaint; `None` for plain image-to-image.
    pub mask: Option<Mask>,
    /// The noise to add to the picture's latents, if given.
    pub init_noise: Option<Tensor>,
}

/// Reads `--init-image`, `--mask` (or builds the `--outpaint` canvas and mask) and
/// `--init-noise`; `None` without `--init-image`.
pub fn read(a: &GenerateArgs) -> Result<Option<ImageInput>> {
    let Some(path) = &a.init_image else {
        return Ok(None);
    };
    let limits = Limits::default();
    let picture = read_image(path, "--init-image", &limits)?.rgb;
    let mask = match &a.mask {
        Some(p) => Some(mask_from_picture(
            &read_image(p, "--mask", &limits)?,
            AlphaMask::OpaqueRepaints,
        )),
        None => None,
    };
    let (picture, mask) = match a.outpaint {
        Some(pad) => {
            let (canvas, mask) = outpaint(&picture, pad, mask_blur(a) as usize);
            (canvas, Some(mask))
        }
        None => (picture, mask),
    };
    let init_noise = match &a.init_noise {
        Some(p) => Some(read_noise(p)?),
        None => None,
    };
    Ok(Some(ImageInput {
        picture,
        mask,
        init_noise,
    }))
}

/// The default job size for `input`: the picture's size rounded down to a multiple of `f`
/// (as diffusers does), except with `--inpaint-area masked` (the pack's or model's size).
pub fn default_size(
    a: &GenerateArgs,
    input: &ImageInput,
    f: usize,
) -> (Option<usize>, Option<usize>) {
    if matches!(area(a), InpaintArea::Masked { .. }) && input.mask.is_some() {
        return (None, None);
    }
    let round = |v: usize| Some((v / f * f).max(f));
    (round(input.picture.width), round(input.picture.height))
}

/// Runs the image-to-image or inpainting job for `base` on `input`.
pub fn run(
    model: &StableDiffusion,
    base: TextToImage,
    input: &ImageInput,
    a: &GenerateArgs,
    on_step: &mut dyn FnMut(StepProgress) -> ControlFlow<()>,
) -> beeswax::Result<Generated> {
    let image = ImageToImage {
        base,
        init_image: input.picture.clone(),
        strength: strength(a),
        resize: a.resize.unwrap_or_default(),
        sample_posterior: a.sample_posterior,
        init_noise: input.init_noise.clone(),
    };
    match &input.mask {
        None => image_to_image(model, &image, on_step),
        Some(mask) => inpaint(
            model,
            &Inpaint {
                image,
                mask: mask.clone(),
                mask_blur: mask_blur(a),
                area: area(a),
                masked_content: a.masked_content.unwrap_or(if a.outpaint.is_some() {
                    MaskedContent::Fill
                } else {
                    MaskedContent::Original
                }),
            },
            on_step,
        ),
    }
}

/// AUTOMATIC1111's extra `parameters` fields for image jobs, inserted before `Version:`.
pub fn annotate(parameters: String, a: &GenerateArgs, input: &ImageInput) -> String {
    let mut extra = format!(", Denoising strength: {}", strength(a));
    if input.mask.is_some() {
        extra.push_str(&format!(", Mask blur: {}", mask_blur(a)));
    }
    match parameters.rfind(", Version: ") {
        Some(at) => format!("{}{extra}{}", &parameters[..at], &parameters[at..]),
        None => parameters + &extra,
    }
}

fn strength(a: &GenerateArgs) -> f64 {
    a.strength.unwrap_or(0.75)
}

fn mask_blur(a: &GenerateArgs) -> f32 {
    a.mask_blur.unwrap_or(4.0)
}

fn area(a: &GenerateArgs) -> InpaintArea {
    match a.inpaint_area.as_deref() {
        Some("masked") => InpaintArea::Masked {
            padding: a.inpaint_padding.unwrap_or(32),
        },
        _ => InpaintArea::Whole,
    }
}

/// Reads tensor `noise` from a safetensors file.
fn read_noise(path: &Path) -> Result<Tensor> {
    let mut tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("reading --init-noise {}", path.display()))?;
    let names: Vec<String> = tensors.keys().cloned().collect();
    tensors.remove("noise").ok_or_else(|| {
        anyhow!(
            "--init-noise {}: no tensor named `noise` (found: {})",
            path.display(),
            names.join(", ")
        )
    })
}

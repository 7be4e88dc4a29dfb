//! `beeswax generate --init-image ...`: reading the picture and mask of image-to-image,
//! inpainting and outpainting jobs from the command line, as the job's input request.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use beeswax::image_in::{mask_from_picture, outpaint, read_image, AlphaMask, Limits};
use beeswax::pipeline::{ImageRequest, InputRequest, MaskRequest, MaskedContent};
use beeswax::weights::SafetensorsFile;
use candle_core::{DType, Device, Tensor};

use crate::args::GenerateArgs;

/// The job's input: `--init-image` with `--mask` (or the `--outpaint` canvas and mask) and
/// `--init-noise`; else `--init-latents`; else plain text to image.
pub fn read(a: &GenerateArgs) -> Result<InputRequest> {
    let Some(path) = &a.init_image else {
        return Ok(match &a.init_latents {
            Some(p) => InputRequest::Latents(read_tensor(p, "latents", "--init-latents")?),
            None => InputRequest::Text,
        });
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
    let blur = a.mask_blur.unwrap_or(beeswax::defaults::MASK_BLUR as f32);
    let (picture, mask) = match a.outpaint {
        Some(pad) => {
            let (canvas, mask) = outpaint(&picture, pad, blur as usize);
            (canvas, Some(mask))
        }
        None => (picture, mask),
    };
    let init_noise = match &a.init_noise {
        Some(p) => Some(read_tensor(p, "noise", "--init-noise")?),
        None => None,
    };
    let content = a.masked_content.or(a.outpaint.map(|_| MaskedContent::Fill));
    Ok(InputRequest::Image(ImageRequest {
        picture,
        strength: a.strength,
        resize: a.resize,
        sample_posterior: a.sample_posterior,
        init_noise,
        mask: mask.map(|mask| MaskRequest {
            mask,
            blur: Some(blur),
            only_masked: (a.inpaint_area.as_deref() == Some("masked")).then_some(a.inpaint_padding),
            content,
        }),
    }))
}

/// Reads tensor `name` (as f32) from the safetensors file `path` given as `flag`.
fn read_tensor(path: &Path, name: &str, flag: &str) -> Result<Tensor> {
    let file = SafetensorsFile::open(path).with_context(|| format!("reading {flag}"))?;
    if file.info(name).is_none() {
        return Err(anyhow!(
            "{flag} {}: no tensor named `{name}` (found: {})",
            path.display(),
            file.names().join(", ")
        ));
    }
    Ok(file.read(name, DType::F32, &Device::Cpu)?)
}

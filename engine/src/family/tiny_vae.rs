//! Finding and loading a tiny autoencoder (TAESD, TAESDXL, TAEF1) in the layouts people have:
//! a diffusers `AutoencoderTiny` folder (`config.json` + `diffusion_pytorch_model.safetensors`),
//! one safetensors file in diffusers' names, or the original decoder/encoder pair
//! (`taesd_decoder.safetensors` and `taesd_encoder.safetensors`, also as a folder holding them,
//! as in ComfyUI's `models/vae_approx`). The encoder is optional: without it the autoencoder
//! decodes only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};

use crate::model_files;
use crate::models::config_file::read_json;
use crate::models::taesd::{TinyConfig, TinyDecoder, TinyEncoder};
use crate::weights::{in_file, SafetensorsFile, WeightSource};
use crate::{Error, Result};

/// A loaded tiny autoencoder.
#[derive(Debug)]
pub struct TinyVae {
    /// Its config (diffusers' defaults for the original files, with their latent channels).
    pub config: TinyConfig,
    /// The encoder, when the files have one.
    pub encoder: Option<TinyEncoder>,
    /// The decoder.
    pub decoder: TinyDecoder,
    /// Where it was loaded from (for messages).
    pub path: PathBuf,
}

/// Where the weights are.
enum Files {
    /// Diffusers names in one file, with the config (a folder's, or the defaults).
    Diffusers {
        file: PathBuf,
        config: Option<PathBuf>,
    },
    /// The original pair.
    Original {
        decoder: PathBuf,
        encoder: Option<PathBuf>,
    },
}

/// Whether `path` looks like a tiny autoencoder rather than a `AutoencoderKL` VAE.
pub fn is_tiny(path: &Path) -> bool {
    locate(path).is_ok()
}

/// Why `path` is not a tiny autoencoder, if it is not.
pub fn check_files(path: &Path) -> Result<()> {
    locate(path).map(drop)
}

fn invalid(path: &Path, message: impl Into<String>) -> Error {
    Error::Config {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The weights of the original pair beside `decoder` (`X_decoder.safetensors`).
fn original_pair(decoder: &Path) -> Option<Files> {
    let name = decoder.file_name()?.to_str()?;
    let stem = name.strip_suffix("_decoder.safetensors")?;
    let encoder = decoder.with_file_name(format!("{stem}_encoder.safetensors"));
    Some(Files::Original {
        decoder: decoder.to_path_buf(),
        encoder: encoder.is_file().then_some(encoder),
    })
}

fn locate(path: &Path) -> Result<Files> {
    if path.is_dir() {
        let config = path.join("config.json");
        if config.is_file() {
            let class: serde_json::Value = read_json(&config)?;
            if class.get("_class_name").and_then(|c| c.as_str()) != Some("AutoencoderTiny") {
                return Err(invalid(
                    &config,
                    "not an AutoencoderTiny config (`_class_name`)",
                ));
            }
            let file = model_files::weights(path, "", "diffusion_pytorch_model")?;
            return Ok(Files::Diffusers {
                file,
                config: Some(config),
            });
        }
        let entries = std::fs::read_dir(path).map_err(|e| invalid(path, e.to_string()))?;
        let mut decoders: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with("_decoder.safetensors"))
            })
            .collect();
        decoders.sort();
        return match decoders.as_slice() {
            [one] => original_pair(one).ok_or_else(|| invalid(path, "unreadable file name")),
            [] => Err(invalid(
                path,
                "holds neither an AutoencoderTiny config.json nor a `*_decoder.safetensors` \
                 file (TAESD's original layout)",
            )),
            _ => Err(invalid(
                path,
                "holds several `*_decoder.safetensors` files: name the one to use",
            )),
        };
    }
    let file = SafetensorsFile::open(path)?;
    if file.info("decoder.layers.0.weight").is_some() {
        return Ok(Files::Diffusers {
            file: path.to_path_buf(),
            config: None,
        });
    }
    if file.info("1.weight").is_some() && file.info("3.conv.0.weight").is_some() {
        if let Some(pair) = original_pair(path) {
            return Ok(pair);
        }
        return Ok(Files::Original {
            decoder: path.to_path_buf(),
            encoder: None,
        });
    }
    Err(invalid(
        path,
        "is not a tiny autoencoder: no `decoder.layers.0.weight` (diffusers) and no \
         `1.weight`/`3.conv.0.weight` (a TAESD decoder file)",
    ))
}

/// The shape `[out, in, k, k]` of the convolution `key`.
fn conv_shape(file: &SafetensorsFile, key: &str) -> Result<[usize; 4]> {
    match file.info(key).map(|i| i.shape.as_slice()) {
        Some(&[o, i, kh, kw]) => Ok([o, i, kh, kw]),
        Some(other) => Err(invalid(
            file.path(),
            format!("`{key}` has shape {other:?}, expected a convolution [out, in, k, k]"),
        )),
        None => Err(invalid(file.path(), format!("no convolution `{key}`"))),
    }
}

impl TinyVae {
    /// Loads the tiny autoencoder at `path` (a folder or a file; see the module docs).
    pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let (config, encoder, decoder) = match locate(path)? {
            Files::Diffusers { file, config } => {
                let sf = Arc::new(SafetensorsFile::open(&file)?);
                let config = match config {
                    Some(c) => read_json::<TinyConfig>(&c)?,
                    None => {
                        let mut config = TinyConfig::default();
                        decoder_layout(&sf, "decoder.layers.", 0, &mut config)?;
                        if sf.info("encoder.layers.0.weight").is_some() {
                            encoder_layout(&sf, "encoder.layers.", &mut config)?;
                        }
                        config
                    }
                };
                check(&config, path)?;
                let vb = WeightSource::new(sf.clone(), "").var_builder(dtype, device);
                let encoder = if sf.info("encoder.layers.0.weight").is_some() {
                    let enc = TinyEncoder::new(vb.pp("encoder"), &config, true);
                    Some(in_file(&file, enc)?)
                } else {
                    None
                };
                let dec = TinyDecoder::new(vb.pp("decoder"), &config, true);
                (config, encoder, in_file(&file, dec)?)
            }
            Files::Original { decoder, encoder } => {
                let sf = Arc::new(SafetensorsFile::open(&decoder)?);
                let mut config = TinyConfig::default();
                decoder_layout(&sf, "", 1, &mut config)?;
                let encoder = match encoder {
                    Some(file) => {
                        let sf = Arc::new(SafetensorsFile::open(&file)?);
                        encoder_layout(&sf, "", &mut config)?;
                        Some((file, sf))
                    }
                    None => None,
                };
                check(&config, path)?;
                let vb = WeightSource::new(sf, "").var_builder(dtype, device);
                let dec = in_file(&decoder, TinyDecoder::new(vb, &config, false))?;
                let enc = match encoder {
                    Some((file, sf)) => {
                        let vb = WeightSource::new(sf, "").var_builder(dtype, device);
                        Some(in_file(&file, TinyEncoder::new(vb, &config, false))?)
                    }
                    None => None,
                };
                (config, enc, dec)
            }
        };
        Ok(Self {
            config,
            encoder,
            decoder,
            path: path.to_path_buf(),
        })
    }
}

/// Residual blocks from index `i` on (a block has `conv.0.weight`); returns the count and the
/// first index after them.
fn blocks_from(file: &SafetensorsFile, p: &str, mut i: usize) -> (usize, usize) {
    let start = i;
    while file.info(&format!("{p}{i}.conv.0.weight")).is_some() {
        i += 1;
    }
    (i - start, i)
}

/// The decoder's stages, read from its keys (`p` the layers' prefix, `first` the index of the
/// first conv: 1 in the original layout, whose `0` is the clamp, 0 in diffusers'): the conv,
/// an activation, then per stage its blocks, an upsampling (no weights) and a conv, and after
/// the last stage's blocks the output conv.
fn decoder_layout(
    file: &SafetensorsFile,
    p: &str,
    first: usize,
    config: &mut TinyConfig,
) -> Result<()> {
    let [channels, latent, ..] = conv_shape(file, &format!("{p}{first}.weight"))?;
    config.latent_channels = latent;
    let mut stages = Vec::new();
    let mut i = first + 2;
    loop {
        let (count, next) = blocks_from(file, p, i);
        stages.push(count);
        if file.info(&format!("{p}{next}.weight")).is_some() {
            config.out_channels = conv_shape(file, &format!("{p}{next}.weight"))?[0];
            break;
        }
        // An upsampling layer, then the stage's conv.
        if file.info(&format!("{p}{}.weight", next + 1)).is_none() || stages.len() > 16 {
            return Err(invalid(
                file.path(),
                format!("not a TAESD decoder: no convolution at layer {}", next + 1),
            ));
        }
        i = next + 2;
    }
    config.decoder_block_out_channels = vec![channels; stages.len()];
    config.num_decoder_blocks = stages;
    Ok(())
}

/// The encoder's stages (`p` the layers' prefix): `0` conv, then per stage its blocks and the
/// next stage's strided conv, the last conv going to the latent channels.
fn encoder_layout(file: &SafetensorsFile, p: &str, config: &mut TinyConfig) -> Result<()> {
    let channels = conv_shape(file, &format!("{p}0.weight"))?[0];
    let mut stages = Vec::new();
    let mut i = 1;
    loop {
        let (count, next) = blocks_from(file, p, i);
        stages.push(count);
        let conv = format!("{p}{next}.weight");
        if file.info(&conv).is_none() || stages.len() > 16 {
            return Err(invalid(
                file.path(),
                format!("not a TAESD encoder: no convolution at layer {next}"),
            ));
        }
        let after = format!("{p}{}.weight", next + 1);
        let block_after = format!("{p}{}.conv.0.weight", next + 1);
        if file.info(&after).is_none() && file.info(&block_after).is_none() {
            let latent = conv_shape(file, &conv)?[0];
            if latent != config.latent_channels {
                return Err(invalid(
                    file.path(),
                    format!(
                        "the encoder makes {latent} latent channels, the decoder reads {}",
                        config.latent_channels
                    ),
                ));
            }
            break;
        }
        i = next + 1;
    }
    config.encoder_block_out_channels = vec![channels; stages.len()];
    config.num_encoder_blocks = stages;
    Ok(())
}

fn check(config: &TinyConfig, path: &Path) -> Result<()> {
    config.validate().map_err(|message| invalid(path, message))
}

//! diffusers' `AutoencoderTiny` (TAESD, TAESDXL, TAEF1): a small convolutional autoencoder
//! trained to match a family's VAE, for fast final decoding and live previews.
//!
//! Weights come in two layouts: diffusers' (`encoder.layers.N.*`, `decoder.layers.N.*`, with
//! `config.json`) and the original one of madebyollin/taesd (`taesd_encoder.safetensors` and
//! `taesd_decoder.safetensors`, `N.*` keys, as ComfyUI's `vae_approx` folder holds them). The
//! original decoder's index 0 is its clamp layer, so its convolutions sit one index later.

use candle_core::{Result, Tensor};
use candle_nn::{conv2d, conv2d_no_bias, Conv2d, Conv2dConfig, VarBuilder};
use serde::Deserialize;

use crate::kernels::{conv2d as fast_conv, conv2d_relu as conv_relu, conv2d_upsampled};

/// `AutoencoderTiny`'s `config.json`, with diffusers' defaults (the original TAESD).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct TinyConfig {
    /// Image channels in.
    pub in_channels: usize,
    /// Image channels out.
    pub out_channels: usize,
    /// Channels of each encoder block.
    pub encoder_block_out_channels: Vec<usize>,
    /// Channels of each decoder block.
    pub decoder_block_out_channels: Vec<usize>,
    /// Activation: `relu` (the trained models), `silu`/`swish` or `gelu`.
    pub act_fn: String,
    /// Upsampling: only `nearest` (what every trained model uses).
    pub upsample_fn: String,
    /// Latent channels (4 for SD and SDXL, 16 for FLUX).
    pub latent_channels: usize,
    /// Upsampling between decoder blocks.
    pub upsampling_scaling_factor: usize,
    /// Residual blocks after each encoder convolution.
    pub num_encoder_blocks: Vec<usize>,
    /// Residual blocks of each decoder stage.
    pub num_decoder_blocks: Vec<usize>,
    /// Latents are divided by this before decoding (1.0: TAESD works in the denoiser's space).
    pub scaling_factor: f64,
    /// Added after the scaling before decoding.
    pub shift_factor: f64,
}

impl Default for TinyConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            encoder_block_out_channels: vec![64; 4],
            decoder_block_out_channels: vec![64; 4],
            act_fn: "relu".into(),
            upsample_fn: "nearest".into(),
            latent_channels: 4,
            upsampling_scaling_factor: 2,
            num_encoder_blocks: vec![1, 3, 3, 3],
            num_decoder_blocks: vec![3, 3, 3, 1],
            scaling_factor: 1.0,
            shift_factor: 0.0,
        }
    }
}

impl TinyConfig {
    /// Checks what the networks rely on; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let enc = (&self.encoder_block_out_channels, &self.num_encoder_blocks);
        let dec = (&self.decoder_block_out_channels, &self.num_decoder_blocks);
        if enc.0.is_empty() || enc.0.len() != enc.1.len() {
            return Err(format!(
                "`encoder_block_out_channels` ({}) and `num_encoder_blocks` ({}) must be \
                 non-empty and of the same length",
                enc.0.len(),
                enc.1.len()
            ));
        }
        if dec.0.is_empty() || dec.0.len() != dec.1.len() {
            return Err(format!(
                "`decoder_block_out_channels` ({}) and `num_decoder_blocks` ({}) must be \
                 non-empty and of the same length",
                dec.0.len(),
                dec.1.len()
            ));
        }
        if enc.0.windows(2).any(|w| w[0] != w[1]) || dec.0.windows(2).any(|w| w[0] != w[1]) {
            return Err(
                "every block of the encoder (and of the decoder) must have the same \
                 channels: AutoencoderTiny's blocks chain without a channel change"
                    .into(),
            );
        }
        if Activation::parse(&self.act_fn).is_none() {
            return Err(format!(
                "`act_fn` `{}` is not supported: use relu, silu, swish or gelu",
                self.act_fn
            ));
        }
        if self.upsample_fn != "nearest" {
            return Err(format!(
                "`upsample_fn` `{}` is not supported: use nearest",
                self.upsample_fn
            ));
        }
        if self.upsampling_scaling_factor == 0 || self.latent_channels == 0 {
            return Err(
                "`upsampling_scaling_factor` and `latent_channels` must be positive".into(),
            );
        }
        Ok(())
    }

    /// Pixels per latent pixel along a side when decoding.
    pub fn scale_factor(&self) -> usize {
        let stages = self.num_decoder_blocks.len().saturating_sub(1) as u32;
        self.upsampling_scaling_factor.pow(stages)
    }
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    Relu,
    Silu,
    Gelu,
}

impl Activation {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "relu" => Some(Self::Relu),
            "silu" | "swish" => Some(Self::Silu),
            "gelu" => Some(Self::Gelu),
            _ => None,
        }
    }

    fn forward(self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::Relu => xs.relu(),
            Self::Silu => candle_nn::ops::silu(xs),
            Self::Gelu => xs.gelu_erf(),
        }
    }
}

fn conv3(vb: VarBuilder, in_c: usize, out_c: usize, stride: usize, bias: bool) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        stride,
        ..Default::default()
    };
    if bias {
        conv2d(in_c, out_c, 3, cfg, vb)
    } else {
        conv2d_no_bias(in_c, out_c, 3, cfg, vb)
    }
}

/// `AutoencoderTinyBlock`: `act(conv(act(conv(act(conv(x)))))+ skip(x))`, the outer
/// activation always ReLU.
#[derive(Debug)]
struct Block {
    convs: [Conv2d; 3],
    act: Activation,
}

impl Block {
    fn new(vb: VarBuilder, channels: usize, act: Activation) -> Result<Self> {
        let conv = vb.pp("conv");
        Ok(Self {
            convs: [
                conv3(conv.pp("0"), channels, channels, 1, true)?,
                conv3(conv.pp("2"), channels, channels, 1, true)?,
                conv3(conv.pp("4"), channels, channels, 1, true)?,
            ],
            act,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let inner = |conv: &Conv2d, xs: &Tensor| match self.act {
            Activation::Relu => conv_relu(conv, xs, None),
            act => act.forward(&fast_conv(conv, xs, None, 1.0)?),
        };
        let h = inner(&self.convs[0], xs)?;
        let h = inner(&self.convs[1], &h)?;
        conv_relu(&self.convs[2], &h, Some(xs))
    }
}

/// One layer of the encoder's or decoder's `Sequential`.
#[derive(Debug)]
enum Layer {
    Conv(Conv2d),
    Block(Block),
    Act(Activation),
    Upsample(usize),
}

impl Layer {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::Conv(conv) => fast_conv(conv, xs, None, 1.0),
            Self::Block(block) => block.forward(xs),
            Self::Act(act) => act.forward(xs),
            Self::Upsample(k) => {
                let (_, _, h, w) = xs.dims4()?;
                xs.upsample_nearest2d(h * k, w * k)
            }
        }
    }
}

/// Where the layers' weights are: diffusers' `layers.N` under the network's prefix, or the
/// original `N` shifted by `offset`.
fn layer_vb<'a>(
    vb: &VarBuilder<'a>,
    diffusers: bool,
    index: usize,
    offset: usize,
) -> VarBuilder<'a> {
    if diffusers {
        vb.pp("layers").pp(index.to_string())
    } else {
        vb.pp((index + offset).to_string())
    }
}

/// `EncoderTiny`: pixels in [-1, 1] to latents (deterministic).
#[derive(Debug)]
pub struct TinyEncoder {
    layers: Vec<Layer>,
}

impl TinyEncoder {
    /// Loads the encoder from `vb`: diffusers' `encoder` prefix (`diffusers`), or the root of
    /// an original `taesd_encoder` file.
    pub fn new(vb: VarBuilder, config: &TinyConfig, diffusers: bool) -> Result<Self> {
        let act = Activation::parse(&config.act_fn).unwrap_or(Activation::Relu);
        let mut layers = Vec::new();
        let at = |i: usize| layer_vb(&vb, diffusers, i, 0);
        for (i, (&c, &blocks)) in config
            .encoder_block_out_channels
            .iter()
            .zip(&config.num_encoder_blocks)
            .enumerate()
        {
            let conv = if i == 0 {
                conv3(at(layers.len()), config.in_channels, c, 1, true)?
            } else {
                conv3(at(layers.len()), c, c, 2, false)?
            };
            layers.push(Layer::Conv(conv));
            for _ in 0..blocks {
                layers.push(Layer::Block(Block::new(at(layers.len()), c, act)?));
            }
        }
        let last = config.encoder_block_out_channels[config.encoder_block_out_channels.len() - 1];
        let out = conv3(at(layers.len()), last, config.latent_channels, 1, true)?;
        layers.push(Layer::Conv(out));
        Ok(Self { layers })
    }

    /// `[B, 3, H, W]` in [-1, 1] to latents `[B, C, H/f, W/f]`.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let mut xs = ((pixels + 1.0)? / 2.0)?;
        for layer in &self.layers {
            xs = layer.forward(&xs)?;
        }
        Ok(xs)
    }
}

/// `DecoderTiny`: latents to pixels in [-1, 1].
#[derive(Debug)]
pub struct TinyDecoder {
    layers: Vec<Layer>,
}

impl TinyDecoder {
    /// Loads the decoder from `vb`: diffusers' `decoder` prefix (`diffusers`), or the root of
    /// an original `taesd_decoder` file (whose layer 0 is the clamp).
    pub fn new(vb: VarBuilder, config: &TinyConfig, diffusers: bool) -> Result<Self> {
        let act = Activation::parse(&config.act_fn).unwrap_or(Activation::Relu);
        let at = |i: usize| layer_vb(&vb, diffusers, i, 1);
        let channels = &config.decoder_block_out_channels;
        let mut layers = vec![Layer::Conv(conv3(
            at(0),
            config.latent_channels,
            channels[0],
            1,
            true,
        )?)];
        layers.push(Layer::Act(act));
        let stages = config.num_decoder_blocks.len();
        for (i, (&c, &blocks)) in channels.iter().zip(&config.num_decoder_blocks).enumerate() {
            let last = i + 1 == stages;
            for _ in 0..blocks {
                layers.push(Layer::Block(Block::new(at(layers.len()), c, act)?));
            }
            if !last {
                layers.push(Layer::Upsample(config.upsampling_scaling_factor));
            }
            let out = if last { config.out_channels } else { c };
            layers.push(Layer::Conv(conv3(at(layers.len()), c, out, 1, last)?));
        }
        Ok(Self { layers })
    }

    /// Latents `[B, C, h, w]` (already divided by the scaling factor) to pixels in [-1, 1].
    pub fn forward(&self, latents: &Tensor) -> Result<Tensor> {
        // The clamp: tanh(x / 3) * 3.
        let mut xs = ((latents / 3.0)?.tanh()? * 3.0)?;
        let mut layers = self.layers.iter().peekable();
        while let Some(layer) = layers.next() {
            // A 2x upsampling and the convolution after it in one pass.
            xs = match (layer, layers.peek()) {
                (Layer::Upsample(2), Some(Layer::Conv(conv))) => {
                    layers.next();
                    conv2d_upsampled(conv, &xs)?
                }
                _ => layer.forward(&xs)?,
            };
        }
        (xs * 2.0)? - 1.0
    }
}

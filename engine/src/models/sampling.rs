//! diffusers' `Downsample2D` and `Upsample2D` (the conv variants used by SD's UNet and VAE).

use candle_core::{Result, Tensor};
use candle_nn::{conv2d, Conv2d, Conv2dConfig, VarBuilder};

use super::resnet::conv3x3;
use crate::kernels::{conv2d as fast_conv, conv2d_upsampled};

/// A stride-2 3x3 convolution. With `padding == 0` (the VAE encoder) the input is first padded
/// by one on the right and bottom, as diffusers does.
#[derive(Debug)]
pub struct Downsample2D {
    conv: Conv2d,
    padding: usize,
}

impl Downsample2D {
    /// Loads `conv` under `vb` (the `downsamplers.0` prefix).
    pub fn new(vb: VarBuilder, channels: usize, padding: usize) -> Result<Self> {
        let cfg = Conv2dConfig {
            padding,
            stride: 2,
            ..Default::default()
        };
        Ok(Self {
            conv: conv2d(channels, channels, 3, cfg, vb.pp("conv"))?,
            padding,
        })
    }

    /// Halves height and width.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if self.padding == 0 {
            let xs = xs.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?;
            fast_conv(&self.conv, &xs, None, 1.0)
        } else {
            fast_conv(&self.conv, xs, None, 1.0)
        }
    }
}

/// Nearest-neighbour upsampling followed by a 3x3 convolution.
#[derive(Debug)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    /// Loads `conv` under `vb` (the `upsamplers.0` prefix).
    pub fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        Ok(Self {
            conv: conv3x3(channels, channels, vb.pp("conv"))?,
        })
    }

    /// Upsamples to `size` (height, width) when given, else doubles both sides.
    pub fn forward(&self, xs: &Tensor, size: Option<(usize, usize)>) -> Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        match size {
            Some((th, tw)) if (th, tw) != (2 * h, 2 * w) => {
                fast_conv(&self.conv, &xs.upsample_nearest2d(th, tw)?, None, 1.0)
            }
            _ => conv2d_upsampled(&self.conv, xs),
        }
    }
}

//! Seeded starting noise that matches PyTorch's CPU generator.
//!
//! `torch.randn(shape, generator=torch.Generator().manual_seed(seed))` on the CPU draws from a
//! Mersenne Twister (MT19937) and turns uniforms into normals with Box-Muller in blocks of 16.
//! Reproducing that here means a seed gives the same starting noise in beeswax as in diffusers
//! and in AUTOMATIC1111 with its "CPU" RNG source, so images can be compared across tools.
//!
//! Within a batch, image `i` gets its own generator seeded with `seed + i`, as AUTOMATIC1111
//! does: any image of a batch can be regenerated alone from the seed written in its PNG.

use candle_core::{DType, Device, Tensor};

/// Draws standard-normal noise shaped like a tensor; stochastic schedulers take their noise
/// from here so that a job's seed fixes every random number it uses.
pub trait NoiseSource {
    /// Standard-normal noise with the shape, dtype and device of `like`.
    fn randn_like(&mut self, like: &Tensor) -> candle_core::Result<Tensor>;
}

const N: usize = 624;
const M: usize = 397;

/// PyTorch's CPU generator: MT19937 plus torch's uniform and normal transforms.
#[derive(Clone)]
pub struct TorchGenerator {
    state: Box<[u32; N]>,
    index: usize,
    /// Box-Muller yields two normals; the scalar path keeps the second one for the next call.
    cached_normal: Option<f64>,
}

impl TorchGenerator {
    /// `torch.Generator().manual_seed(seed)`; like torch, only the low 32 bits seed the twister.
    pub fn new(seed: u64) -> Self {
        let mut state = Box::new([0u32; N]);
        state[0] = seed as u32;
        for j in 1..N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(j as u32);
        }
        Self {
            state,
            index: N,
            cached_normal: None,
        }
    }

    fn twist(&mut self) {
        for i in 0..N {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % N] & 0x7fff_ffff);
            let mut next = self.state[(i + M) % N] ^ (y >> 1);
            if y & 1 != 0 {
                next ^= 0x9908_b0df;
            }
            self.state[i] = next;
        }
        self.index = 0;
    }

    /// The next raw 32-bit output of the twister.
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn uniform_f32(&mut self) -> f32 {
        ((self.next_u32() & 0x00ff_ffff) as f64 / (1u64 << 24) as f64) as f32
    }

    fn uniform_f64(&mut self) -> f64 {
        let hi = self.next_u32() as u64;
        let lo = self.next_u32() as u64;
        (((hi << 32) | lo) & ((1u64 << 53) - 1)) as f64 / (1u64 << 53) as f64
    }

    fn normal_f64(&mut self) -> f64 {
        if let Some(v) = self.cached_normal.take() {
            return v;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.cached_normal = Some(r * theta.sin());
        r * theta.cos()
    }

    /// `torch.randn(n)` as f32: n values, the same as PyTorch's CPU generator gives.
    pub fn randn(&mut self, n: usize) -> Vec<f32> {
        if n < 16 {
            return (0..n).map(|_| self.normal_f64() as f32).collect();
        }
        let mut data: Vec<f32> = (0..n).map(|_| self.uniform_f32()).collect();
        for start in (0..n - 15).step_by(16) {
            box_muller_16(&mut data[start..start + 16]);
        }
        if n % 16 != 0 {
            let tail = n - 16;
            for v in &mut data[tail..] {
                *v = self.uniform_f32();
            }
            box_muller_16(&mut data[tail..]);
        }
        data
    }
}

/// Turns 16 uniforms in [0, 1) into 16 standard normals, pairing element j with j + 8.
fn box_muller_16(data: &mut [f32]) {
    for j in 0..8 {
        let u1 = 1.0 - data[j];
        let u2 = data[j + 8];
        let radius = (-2.0 * u1.ln()).sqrt();
        let theta = (2.0 * std::f64::consts::PI * u2 as f64) as f32;
        data[j] = radius * theta.cos();
        data[j + 8] = radius * theta.sin();
    }
}

/// One generator per image of a batch, seeded `seed + i`.
pub struct BatchNoise {
    generators: Vec<TorchGenerator>,
}

impl BatchNoise {
    /// Generators for `batch` images starting at `seed`.
    pub fn new(seed: u64, batch: usize) -> Self {
        Self {
            generators: (0..batch)
                .map(|i| TorchGenerator::new(seed.wrapping_add(i as u64)))
                .collect(),
        }
    }

    /// Standard-normal f32 noise of `shape` (batch first) on `device`; each image's part comes
    /// from its own generator, which then goes on to the next draw.
    pub fn randn(&mut self, shape: &[usize], device: &Device) -> candle_core::Result<Tensor> {
        let batch = shape.first().copied().unwrap_or(1);
        if batch != self.generators.len() {
            candle_core::bail!(
                "noise for a batch of {batch} asked of generators for {}",
                self.generators.len()
            );
        }
        let per_image: usize = shape.iter().skip(1).product();
        let mut data = Vec::with_capacity(batch * per_image);
        for generator in &mut self.generators {
            data.extend(generator.randn(per_image));
        }
        Tensor::from_vec(data, shape, &Device::Cpu)?.to_device(device)
    }
}

impl NoiseSource for BatchNoise {
    fn randn_like(&mut self, like: &Tensor) -> candle_core::Result<Tensor> {
        self.randn(like.dims(), like.device())?
            .to_dtype(like.dtype())
    }
}

/// Standard-normal noise for a batch, image `i` seeded with `seed + i`.
pub fn seeded_noise(
    seed: u64,
    shape: &[usize],
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    BatchNoise::new(seed, shape.first().copied().unwrap_or(1))
        .randn(shape, device)?
        .to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_matches_the_reference_sequence() {
        // The C++ standard fixes the 10000th output of mt19937 seeded 5489 at 4123659995.
        let mut g = TorchGenerator::new(5489);
        let mut last = 0;
        for _ in 0..10_000 {
            last = g.next_u32();
        }
        assert_eq!(last, 4_123_659_995);
    }

    #[test]
    fn batch_images_are_independent_of_batch_size() {
        let two = seeded_noise(7, &[2, 4, 4, 4], DType::F32, &Device::Cpu).unwrap();
        let second = seeded_noise(8, &[1, 4, 4, 4], DType::F32, &Device::Cpu).unwrap();
        let diff = (two.get(1).unwrap() - second.get(0).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0);
    }
}

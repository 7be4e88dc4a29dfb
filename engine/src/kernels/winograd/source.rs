//! What a Winograd convolution reads: its input as stored, as its 2x upsampling, or mapped
//! by a group norm and SiLU as it is read ([`Source`]).

use super::super::group_norm::ChannelAffine;
use super::Shape;

/// The convolution's input: `[images, c, h, w]` as stored, or (`up`) `[images, c, h/2, w/2]`
/// read as its nearest-neighbour 2x upsampling (each value covering 2x2 pixels), which is
/// never materialised: the input transform widens each row it reads.
///
/// With `pre`, each value is mapped as it is read (a group norm and SiLU before the
/// convolution, [`ChannelAffine`]): the convolution sees `pre(x)`, zero-padded.
#[derive(Debug, Clone, Copy)]
pub(in crate::kernels) struct Source<'a> {
    pub x: &'a [f32],
    pub up: bool,
    pub pre: Option<Pre<'a>>,
}

/// The map a [`Source`] applies as it is read: plane `p` of `x` (image · c + channel) is mapped
/// as `affine`'s plane `first + p`.
#[derive(Debug, Clone, Copy)]
pub(in crate::kernels) struct Pre<'a> {
    pub affine: &'a ChannelAffine,
    pub first: usize,
}

impl Source<'_> {
    /// Rows and columns of a stored input plane, for a convolution of shape `s`.
    pub(super) fn plane(&self, s: &Shape) -> (usize, usize) {
        if self.up {
            (s.h / 2, s.w / 2)
        } else {
            (s.h, s.w)
        }
    }

    /// Whether rows reach the convolution changed (mapped by `pre` or widened by `up`), so
    /// that they are copied ([`Source::row_into`]) rather than read where they are stored
    /// ([`Source::stored_row`]).
    pub(super) fn copies_rows(&self) -> bool {
        self.pre.is_some() || self.up
    }

    /// Row `sy` of input plane `p` (image · c + channel) as stored.
    #[inline(always)]
    pub(super) fn stored_row(&self, s: &Shape, p: usize, sy: usize) -> &[f32] {
        let (ih, iw) = self.plane(s);
        &self.x[(p * ih + sy) * iw..][..iw]
    }

    /// Row `iy` (below `s.h`) of input plane `p` (image · c + channel) as the convolution
    /// sees it, mapped by `pre` and widened when `up`, into `dst` (`s.w` values); `mapped`
    /// holds the mapped stored row.
    #[inline(always)]
    pub(super) fn row_into(
        &self,
        s: &Shape,
        p: usize,
        iy: usize,
        dst: &mut [f32],
        mapped: &mut Vec<f32>,
    ) {
        let iw = self.plane(s).1;
        let sy = if self.up { iy / 2 } else { iy };
        let stored = self.stored_row(s, p, sy);
        let row = match self.pre {
            Some(pre) => {
                mapped.resize(iw, 0.0);
                pre.affine.apply(pre.first + p, stored, mapped);
                &mapped[..]
            }
            None => stored,
        };
        if self.up {
            for (pair, &v) in dst.chunks_exact_mut(2).zip(row) {
                (pair[0], pair[1]) = (v, v);
            }
        } else {
            dst.copy_from_slice(row);
        }
    }
}

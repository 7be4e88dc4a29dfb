//! Whether a picture file is whole: the `image` crate decodes many truncated PNGs and JPEGs
//! without an error (the missing rows come out grey or black), so the file's structure is
//! walked first, without decoding: a PNG must reach its `IEND` chunk, a JPEG its end-of-image
//! marker, a WebP file must be as long as its RIFF header says. Anything else wrong with the
//! structure is left to the decoder, which reports it; only "the data ends early" is found here.

use image::ImageFormat;

/// Whether `bytes` (a picture in `format`) end before the format's end marker.
pub fn is_truncated(bytes: &[u8], format: ImageFormat) -> bool {
    match format {
        ImageFormat::Png => png_truncated(bytes),
        ImageFormat::Jpeg => jpeg_truncated(bytes),
        ImageFormat::WebP => webp_truncated(bytes),
        _ => false,
    }
}

/// Walks the chunks after the 8-byte signature (length, type, data, CRC) up to `IEND`.
fn png_truncated(bytes: &[u8]) -> bool {
    let mut at = 8usize;
    loop {
        let Some(header) = at.checked_add(8).and_then(|end| bytes.get(at..end)) else {
            return true;
        };
        let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if &header[4..8] == b"IEND" {
            return at + 12 > bytes.len();
        }
        match at
            .checked_add(12)
            .and_then(|a| a.checked_add(length))
            .filter(|&next| next <= bytes.len())
        {
            Some(next) => at = next,
            None => return true,
        }
    }
}

/// Walks the markers after SOI: segments by their length, entropy-coded data after each SOS
/// up to the next marker, until EOI.
fn jpeg_truncated(bytes: &[u8]) -> bool {
    let mut at = 2usize;
    loop {
        match bytes.get(at) {
            None => return true,
            // Not a marker where one belongs: a corrupt file, for the decoder to report.
            Some(&b) if b != 0xFF => return false,
            Some(_) => {}
        }
        while bytes.get(at) == Some(&0xFF) {
            at += 1;
        }
        let Some(&marker) = bytes.get(at) else {
            return true;
        };
        at += 1;
        match marker {
            0xD9 => return false,
            0x01 | 0xD0..=0xD7 => {}
            _ => {
                let Some(length) = bytes.get(at..at + 2) else {
                    return true;
                };
                at += u16::from_be_bytes([length[0], length[1]]) as usize;
                if at > bytes.len() {
                    return true;
                }
                if marker == 0xDA {
                    match next_marker(bytes, at) {
                        Some(next) => at = next,
                        None => return true,
                    }
                }
            }
        }
    }
}

/// The position of the next marker (an `FF` not followed by `00`, a restart marker or fill)
/// in entropy-coded data from `at`; `None` when the data ends first.
fn next_marker(bytes: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let ff = at + bytes.get(at..)?.iter().position(|&b| b == 0xFF)?;
        match *bytes.get(ff + 1)? {
            0x00 | 0xD0..=0xD7 | 0xFF => at = ff + 1,
            _ => return Some(ff),
        }
    }
}

/// A RIFF file says its length after `RIFF`: the data must be at least that long.
fn webp_truncated(bytes: &[u8]) -> bool {
    let Some(size) = bytes.get(4..8) else {
        return true;
    };
    let size = u32::from_le_bytes([size[0], size[1], size[2], size[3]]) as u64;
    (bytes.len() as u64) < 8 + size
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(format: ImageFormat) -> Vec<u8> {
        let picture = image::RgbImage::from_fn(40, 24, |x, y| {
            image::Rgb([(x * 6) as u8, (y * 10) as u8, ((x * y) % 256) as u8])
        });
        let mut bytes = std::io::Cursor::new(Vec::new());
        picture.write_to(&mut bytes, format).unwrap();
        bytes.into_inner()
    }

    #[test]
    fn whole_files_are_whole_and_every_cut_is_found() {
        for format in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP] {
            let bytes = encoded(format);
            assert!(!is_truncated(&bytes, format), "{format:?}");
            // Trailing bytes after the end marker (camera trailers) are allowed.
            let mut trailing = bytes.clone();
            trailing.extend_from_slice(b"trailer");
            assert!(
                !is_truncated(&trailing, format),
                "{format:?} with a trailer"
            );
            for cut in [bytes.len() - 1, bytes.len() - 2, bytes.len() / 2, 20] {
                assert!(
                    is_truncated(&bytes[..cut], format),
                    "{format:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn byte_stuffing_and_restart_markers_are_not_markers() {
        // SOI, SOS with a 2-byte header, entropy data with FF00 and RST0, then EOI.
        let jpeg = [
            0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02, 0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56, 0xFF,
            0xD9,
        ];
        assert!(!jpeg_truncated(&jpeg));
        assert!(jpeg_truncated(&jpeg[..13]));
        assert!(jpeg_truncated(&jpeg[..14]));
    }
}

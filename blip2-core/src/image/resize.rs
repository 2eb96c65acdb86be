//! Pillow's `Image.resize` for 8-bit images, reproduced exactly.
//!
//! transformers' PIL image processor resizes with Pillow, and BLIP-2's pixel values depend on its
//! every rounding: a separable convolution whose filter is stretched by the scale factor when
//! downscaling (antialiasing), weights normalised per output pixel and then quantised to 22-bit
//! fixed point, the horizontal pass first with its result rounded and clamped to 8 bits, then the
//! vertical pass. The `image` crate's `CatmullRom` uses the same kernel but float weights and no
//! intermediate rounding, which moves pixels by one level; hence this module.

use crate::config::Resample;

/// Fixed-point precision of Pillow's 8-bit resampling weights.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// A filter kernel: its function and its support radius at scale 1, as Pillow defines them.
type Kernel = (fn(f64) -> f64, f64);

fn kernel(filter: Resample) -> Option<Kernel> {
    fn box_filter(x: f64) -> f64 {
        if x > -0.5 && x <= 0.5 {
            1.0
        } else {
            0.0
        }
    }
    fn triangle(x: f64) -> f64 {
        let x = x.abs();
        if x < 1.0 {
            1.0 - x
        } else {
            0.0
        }
    }
    fn hamming(x: f64) -> f64 {
        let x = x.abs();
        if x == 0.0 {
            1.0
        } else if x >= 1.0 {
            0.0
        } else {
            let x = x * std::f64::consts::PI;
            x.sin() / x * (0.54 + 0.46 * x.cos())
        }
    }
    fn bicubic(x: f64) -> f64 {
        // Keys' cubic convolution with a = -0.5, in Pillow's operation order.
        const A: f64 = -0.5;
        let x = x.abs();
        if x < 1.0 {
            ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            (((x - 5.0) * x + 8.0) * x - 4.0) * A
        } else {
            0.0
        }
    }
    fn sinc(x: f64) -> f64 {
        if x == 0.0 {
            1.0
        } else {
            let x = x * std::f64::consts::PI;
            x.sin() / x
        }
    }
    fn lanczos(x: f64) -> f64 {
        if (-3.0..3.0).contains(&x) {
            sinc(x) * sinc(x / 3.0)
        } else {
            0.0
        }
    }
    match filter {
        Resample::Nearest => None,
        Resample::Box => Some((box_filter, 0.5)),
        Resample::Bilinear => Some((triangle, 1.0)),
        Resample::Hamming => Some((hamming, 1.0)),
        Resample::Bicubic => Some((bicubic, 2.0)),
        Resample::Lanczos => Some((lanczos, 3.0)),
    }
}

/// The fixed-point weights of one resampling pass: for output index `i`, input indices
/// `start[i] .. start[i] + len[i]` with weights `weights[i * ksize ..]`.
struct Coefficients {
    ksize: usize,
    start: Vec<usize>,
    len: Vec<usize>,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` followed by `normalize_coeffs_8bpc`.
fn coefficients(
    in_size: usize,
    out_size: usize,
    filter: fn(f64) -> f64,
    support: f64,
) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = support * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut start = Vec::with_capacity(out_size);
    let mut len = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates toward zero; negative values are clamped to 0 right after.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = filter((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut weights[xx * ksize..xx * ksize + n];
        for (dst, &w) in row.iter_mut().zip(&k[..n]) {
            let w = if ww != 0.0 { w / ww } else { w };
            let scaled = w * (1u32 << PRECISION_BITS) as f64;
            *dst = if w < 0.0 {
                (scaled - 0.5) as i32
            } else {
                (scaled + 0.5) as i32
            };
        }
        start.push(xmin);
        len.push(n);
    }
    Coefficients {
        ksize,
        start,
        len,
        weights,
    }
}

#[inline]
fn clip8(acc: i32) -> u8 {
    if acc >= (1 << PRECISION_BITS << 8) {
        255
    } else if acc <= 0 {
        0
    } else {
        (acc >> PRECISION_BITS) as u8
    }
}

/// Resizes a packed RGB8 image (`width * height * 3` bytes, row-major) to `out_w x out_h` the way
/// Pillow's `Image.resize(size, resample)` does (no `box`, no `reducing_gap`).
///
/// Returns `None` for [`Resample::Nearest`], which is not a convolution.
pub fn resize_rgb8(
    src: &[u8],
    width: usize,
    height: usize,
    out_w: usize,
    out_h: usize,
    filter: Resample,
) -> Option<Vec<u8>> {
    const C: usize = 3;
    debug_assert_eq!(src.len(), width * height * C);
    let (kernel_fn, support) = kernel(filter)?;
    if out_w == width && out_h == height {
        return Some(src.to_vec());
    }

    // Horizontal pass (skipped, as in Pillow, when the width does not change).
    let (tmp, tmp_w) = if out_w != width {
        let co = coefficients(width, out_w, kernel_fn, support);
        let mut out = vec![0u8; out_w * height * C];
        for y in 0..height {
            let row = &src[y * width * C..(y + 1) * width * C];
            let out_row = &mut out[y * out_w * C..(y + 1) * out_w * C];
            for xx in 0..out_w {
                let k = &co.weights[xx * co.ksize..xx * co.ksize + co.len[xx]];
                let first = co.start[xx];
                let mut acc = [1i32 << (PRECISION_BITS - 1); C];
                for (x, &w) in k.iter().enumerate() {
                    let px = &row[(first + x) * C..(first + x) * C + C];
                    for c in 0..C {
                        acc[c] += px[c] as i32 * w;
                    }
                }
                for c in 0..C {
                    out_row[xx * C + c] = clip8(acc[c]);
                }
            }
        }
        (std::borrow::Cow::Owned(out), out_w)
    } else {
        (std::borrow::Cow::Borrowed(src), width)
    };

    // Vertical pass.
    if out_h == height {
        return Some(tmp.into_owned());
    }
    let co = coefficients(height, out_h, kernel_fn, support);
    let stride = tmp_w * C;
    let mut out = vec![0u8; out_h * stride];
    let mut acc = vec![0i32; stride];
    for yy in 0..out_h {
        acc.fill(1 << (PRECISION_BITS - 1));
        let k = &co.weights[yy * co.ksize..yy * co.ksize + co.len[yy]];
        let first = co.start[yy];
        for (y, &w) in k.iter().enumerate() {
            let row = &tmp[(first + y) * stride..(first + y + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += p as i32 * w;
            }
        }
        for (o, &a) in out[yy * stride..(yy + 1) * stride].iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bicubic_weights_are_normalised_fixed_point() {
        let (f, support) = kernel(Resample::Bicubic).unwrap();
        let co = coefficients(100, 30, f, support);
        for i in 0..30 {
            let sum: i64 = co.weights[i * co.ksize..i * co.ksize + co.len[i]]
                .iter()
                .map(|&w| w as i64)
                .sum();
            // Rounding each weight moves the sum by at most half a unit per tap.
            assert!(
                (sum - (1 << PRECISION_BITS)).abs() <= co.ksize as i64,
                "{sum}"
            );
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let src = vec![77u8; 13 * 9 * 3];
        for filter in [
            Resample::Bicubic,
            Resample::Bilinear,
            Resample::Lanczos,
            Resample::Box,
            Resample::Hamming,
        ] {
            let out = resize_rgb8(&src, 13, 9, 7, 20, filter).unwrap();
            assert!(out.iter().all(|&v| v == 77), "{filter:?}");
        }
    }

    #[test]
    fn nearest_is_not_a_convolution() {
        assert!(resize_rgb8(&[0; 3], 1, 1, 2, 2, Resample::Nearest).is_none());
    }
}

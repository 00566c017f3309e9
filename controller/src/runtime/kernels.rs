//! Small dense kernels for the `native` backend: a register-tiled `y = x W + b` for the
//! few-row, wide-weight products of an action, and vectorizable `exp`/`silu`.
//!
//! The matrix product keeps a tile of rows × 16 columns of `y` in registers and streams
//! the weights panel by panel ([`Packed`], contiguous), so each weight is loaded once per
//! tile of candidate rows. AVX-512F (explicit intrinsics), AVX2+FMA and baseline
//! versions are picked at run time by CPU feature.

/// Rows of `y` accumulated together: 8 with AVX-512 (8 × 16 floats = 8 zmm
/// accumulators, so an action's 8 candidates stream each weight once), 4 otherwise
/// (8 ymm accumulators).
const MR_AVX512: usize = 8;
const MR: usize = 4;
/// Columns of `y` accumulated together.
const NR: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    Avx512,
    Avx2Fma,
    Baseline,
}

/// Every kernel variant this CPU can run, the fastest first.
fn runnable_isas() -> impl Iterator<Item = Isa> {
    #[cfg(target_arch = "x86_64")]
    let (avx512, avx2) = {
        let fma = is_x86_feature_detected!("fma");
        (
            fma && is_x86_feature_detected!("avx512f"),
            fma && is_x86_feature_detected!("avx2"),
        )
    };
    #[cfg(not(target_arch = "x86_64"))]
    let (avx512, avx2) = (false, false);
    [
        (Isa::Avx512, avx512),
        (Isa::Avx2Fma, avx2),
        (Isa::Baseline, true),
    ]
    .into_iter()
    .filter_map(|(isa, runs)| runs.then_some(isa))
}

/// The variant this CPU runs (tests run every one: a robot computer without AVX-512 runs
/// one this machine's pick would leave untested).
fn isa() -> Isa {
    runnable_isas().next().unwrap_or(Isa::Baseline)
}

/// Which kernel this CPU runs (for benchmark reports).
pub fn kernel_name() -> &'static str {
    match isa() {
        Isa::Avx512 => "avx512f",
        Isa::Avx2Fma => "avx2+fma",
        Isa::Baseline => "baseline",
    }
}

/// A weight matrix `[k, n]` laid out for the kernels: the full 16-column panels, each
/// `k × 16` contiguous (so a tile streams its weights sequentially and the prefetcher
/// keeps up), then the last `n % 16` columns row-major.
#[derive(Clone, Debug)]
pub struct Packed {
    pub k: usize,
    pub n: usize,
    panels: Vec<f32>,
    tail: Vec<f32>,
}

impl Packed {
    /// Packs a row-major `[k, n]` matrix.
    pub fn new(w: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(w.len(), k * n, "weight is not [{k}, {n}]");
        let full = n / NR * NR;
        let mut panels = Vec::with_capacity(k * full);
        for j0 in (0..full).step_by(NR) {
            for kk in 0..k {
                panels.extend_from_slice(&w[kk * n + j0..kk * n + j0 + NR]);
            }
        }
        let mut tail = Vec::with_capacity(k * (n - full));
        for kk in 0..k {
            tail.extend_from_slice(&w[kk * n + full..(kk + 1) * n]);
        }
        Packed { k, n, panels, tail }
    }
}

/// `y [rows, n] = x [rows, k] · w [k, n] (+ bias [n]) (+ y if accumulate)`.
pub fn dense(
    x: &[f32],
    rows: usize,
    w: &Packed,
    bias: Option<&[f32]>,
    accumulate: bool,
    y: &mut [f32],
) {
    dense_on(isa(), x, rows, w, bias, accumulate, y)
}

/// [`dense`] by the variant for `isa`, which the CPU must support.
fn dense_on(
    isa: Isa,
    x: &[f32],
    rows: usize,
    w: &Packed,
    bias: Option<&[f32]>,
    accumulate: bool,
    y: &mut [f32],
) {
    assert!(x.len() >= rows * w.k && y.len() >= rows * w.n);
    if let Some(b) = bias {
        assert_eq!(b.len(), w.n);
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports the features the function is compiled for, and the
        // lengths were checked above.
        Isa::Avx512 => unsafe { dense_avx512(x, rows, w, bias, accumulate, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2Fma => unsafe { dense_avx2(x, rows, w, bias, accumulate, y) },
        _ => dense_generic::<false, MR>(x, rows, w, bias, accumulate, y),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn dense_avx512(
    x: &[f32],
    rows: usize,
    w: &Packed,
    bias: Option<&[f32]>,
    acc: bool,
    y: &mut [f32],
) {
    let mut r0 = 0;
    while r0 + MR_AVX512 <= rows {
        // SAFETY: `dense` checked the lengths; tiles stay inside them.
        unsafe { tile_avx512::<MR_AVX512>(x, r0, w, bias, acc, y) };
        r0 += MR_AVX512;
    }
    if r0 + MR <= rows {
        // SAFETY: as above.
        unsafe { tile_avx512::<MR>(x, r0, w, bias, acc, y) };
        r0 += MR;
    }
    while r0 < rows {
        // SAFETY: as above.
        unsafe { tile_avx512::<1>(x, r0, w, bias, acc, y) };
        r0 += 1;
    }
    tail_columns::<true>(x, rows, w, bias, acc, y);
}

/// Rows `r0..r0 + M`, all full panels, in 16-wide zmm tiles: each weight vector is
/// loaded once and multiplied into all M rows' accumulators.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn tile_avx512<const M: usize>(
    x: &[f32],
    r0: usize,
    w: &Packed,
    bias: Option<&[f32]>,
    accumulate: bool,
    y: &mut [f32],
) {
    use std::arch::x86_64::*;
    let (k, n) = (w.k, w.n);
    let yp = y.as_mut_ptr();
    // SAFETY (whole body): reads stay inside x (rows·k) and the panel (k·NR); writes
    // inside y (rows·n); `dense` checked those lengths.
    let xrows: [*const f32; M] = std::array::from_fn(|r| unsafe { x.as_ptr().add((r0 + r) * k) });
    for (p, panel) in w.panels.chunks_exact(k * NR).enumerate() {
        let j0 = p * NR;
        unsafe {
            let mut acc = [_mm512_setzero_ps(); M];
            let mut wp = panel.as_ptr();
            for kk in 0..k {
                let wv = _mm512_loadu_ps(wp);
                for (a, xr) in acc.iter_mut().zip(&xrows) {
                    *a = _mm512_fmadd_ps(_mm512_set1_ps(*xr.add(kk)), wv, *a);
                }
                wp = wp.add(NR);
            }
            for (r, a) in acc.iter().enumerate() {
                let mut v = *a;
                if let Some(b) = bias {
                    v = _mm512_add_ps(v, _mm512_loadu_ps(b.as_ptr().add(j0)));
                }
                let out = yp.add((r0 + r) * n + j0);
                if accumulate {
                    v = _mm512_add_ps(v, _mm512_loadu_ps(out));
                }
                _mm512_storeu_ps(out, v);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dense_avx2(
    x: &[f32],
    rows: usize,
    w: &Packed,
    bias: Option<&[f32]>,
    acc: bool,
    y: &mut [f32],
) {
    dense_generic::<true, MR>(x, rows, w, bias, acc, y)
}

#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    // `mul_add` is one instruction where FMA exists and a slow libm call where it does
    // not, so the baseline build multiplies and adds.
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// Portable version (auto-vectorized under the caller's target features).
#[inline(always)]
fn dense_generic<const FMA: bool, const ROWS: usize>(
    x: &[f32],
    rows: usize,
    w: &Packed,
    bias: Option<&[f32]>,
    accumulate: bool,
    y: &mut [f32],
) {
    let mut r0 = 0;
    while r0 + ROWS <= rows {
        row_block::<ROWS, FMA>(x, r0, w, bias, accumulate, y);
        r0 += ROWS;
    }
    while r0 < rows {
        row_block::<1, FMA>(x, r0, w, bias, accumulate, y);
        r0 += 1;
    }
    tail_columns::<FMA>(x, rows, w, bias, accumulate, y);
}

#[inline(always)]
fn row_block<const M: usize, const FMA: bool>(
    x: &[f32],
    r0: usize,
    w: &Packed,
    bias: Option<&[f32]>,
    accumulate: bool,
    y: &mut [f32],
) {
    let (k, n) = (w.k, w.n);
    let xs: [&[f32]; M] = std::array::from_fn(|r| &x[(r0 + r) * k..(r0 + r + 1) * k]);
    for (p, panel) in w.panels.chunks_exact(k * NR).enumerate() {
        let j0 = p * NR;
        let mut acc = [[0.0f32; NR]; M];
        for (kk, wrow) in panel.chunks_exact(NR).enumerate() {
            for r in 0..M {
                let a = xs[r][kk];
                for j in 0..NR {
                    acc[r][j] = madd::<FMA>(a, wrow[j], acc[r][j]);
                }
            }
        }
        for r in 0..M {
            let out = &mut y[(r0 + r) * n + j0..(r0 + r) * n + j0 + NR];
            for j in 0..NR {
                let mut v = acc[r][j];
                if let Some(b) = bias {
                    v += b[j0 + j];
                }
                out[j] = if accumulate { out[j] + v } else { v };
            }
        }
    }
}

/// The last `n % 16` columns of every row (narrow outputs: the action or Q heads).
#[inline(always)]
fn tail_columns<const FMA: bool>(
    x: &[f32],
    rows: usize,
    w: &Packed,
    bias: Option<&[f32]>,
    accumulate: bool,
    y: &mut [f32],
) {
    let (k, n) = (w.k, w.n);
    let full = n / NR * NR;
    let t = n - full;
    if t == 0 {
        return;
    }
    for r in 0..rows {
        for j in 0..t {
            let mut v = 0.0f32;
            for kk in 0..k {
                v = madd::<FMA>(x[r * k + kk], w.tail[kk * t + j], v);
            }
            if let Some(b) = bias {
                v += b[full + j];
            }
            let out = &mut y[r * n + full + j];
            *out = if accumulate { *out + v } else { v };
        }
    }
}

/// `exp(x)` to a few ulp for `x` in `[−87, 88]` (clamped outside), written so that the
/// compiler vectorizes it: `x = i·ln 2 + g` (Cody-Waite split of ln 2, `|g| ≤ ½ ln 2`),
/// `exp(x) = 2^i · p(g)` with a degree-6 Taylor polynomial.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let i = (x * std::f32::consts::LOG2_E).round_ties_even();
    let g = (x - i * LN2_HI) - i * LN2_LO;
    let p = 1.0
        + g * (1.0
            + g * (0.5
                + g * (1.0 / 6.0 + g * (1.0 / 24.0 + g * (1.0 / 120.0 + g * (1.0 / 720.0))))));
    p * f32::from_bits(((i as i32 + 127) as u32) << 23)
}

#[inline(always)]
fn silu_loop(src: &[f32], dst: &mut [f32]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = x / (1.0 + exp(-x));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn silu_avx512(src: &[f32], dst: &mut [f32]) {
    silu_loop(src, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_avx2(src: &[f32], dst: &mut [f32]) {
    silu_loop(src, dst)
}

/// `silu` of `src` into `dst`, vectorized for the CPU (the baseline x86-64 build has no
/// vector rounding instruction, so `exp` would stay scalar there).
pub fn silu_into(src: &[f32], dst: &mut [f32]) {
    silu_on(isa(), src, dst)
}

/// [`silu_into`] by the variant for `isa`, which the CPU must support.
fn silu_on(isa: Isa, src: &[f32], dst: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has the features.
        Isa::Avx512 => unsafe { silu_avx512(src, dst) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2Fma => unsafe { silu_avx2(src, dst) },
        _ => silu_loop(src, dst),
    }
}

/// `x · sigmoid(x)` in place (through a copy-free element loop).
pub fn silu(v: &mut [f32]) {
    // In place: read and write the same element; the loop has no cross-element
    // dependence, so splitting it into chunks through a small stack buffer keeps the
    // vectorized path without aliasing.
    let mut buf = [0.0f32; 256];
    for chunk in v.chunks_mut(256) {
        let n = chunk.len();
        buf[..n].copy_from_slice(chunk);
        silu_into(&buf[..n], chunk);
    }
}

/// Layer normalisation of each `width`-wide row of `src` into `dst` (biased variance),
/// then `· gamma + beta`.
pub fn layer_norm(
    src: &[f32],
    width: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    dst: &mut [f32],
) {
    for (row, out) in src.chunks_exact(width).zip(dst.chunks_exact_mut(width)) {
        let mean = row.iter().sum::<f32>() / width as f32;
        let var = row.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / width as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for (((o, &x), &g), &b) in out.iter_mut().zip(row).zip(gamma).zip(beta) {
            *o = (x - mean) * inv * g + b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_matches_naive_for_odd_shapes() {
        let mut s = 1u32;
        let mut rnd = || {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            (s >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        for &(rows, k, n) in &[
            (1, 3, 2),
            (5, 17, 33),
            (8, 64, 256),
            (16, 7, 1),
            (3, 40, 16),
        ] {
            let x: Vec<f32> = (0..rows * k).map(|_| rnd()).collect();
            let w: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..n).map(|_| rnd()).collect();
            // Every variant this CPU runs (the robot's may pick another than ours), and
            // every way the native runtime calls it: overwriting or adding to `y`, with
            // a bias or without (the input layers have none).
            for isa in runnable_isas() {
                for accumulate in [false, true] {
                    for bias in [None, Some(&b[..])] {
                        let mut y = vec![0.5; rows * n];
                        dense_on(
                            isa,
                            &x,
                            rows,
                            &Packed::new(&w, k, n),
                            bias,
                            accumulate,
                            &mut y,
                        );
                        for r in 0..rows {
                            for j in 0..n {
                                let start = if accumulate { 0.5 } else { 0.0 };
                                let want = start
                                    + bias.map_or(0.0, |b| b[j])
                                    + (0..k).map(|i| x[r * k + i] * w[i * n + j]).sum::<f32>();
                                assert!(
                                    (y[r * n + j] - want).abs() < 1e-5,
                                    "{isa:?}, accumulate {accumulate}, bias {}: {rows}x{k}x{n} \
                                     at {r},{j}",
                                    bias.is_some()
                                );
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(runnable_isas().next(), Some(isa()));
    }

    /// SiLU by every variant this CPU runs, against `x · sigmoid(x)` in f64.
    #[test]
    fn silu_matches_its_definition_in_every_variant() {
        let src: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.07).collect();
        for isa in runnable_isas() {
            let mut dst = vec![0.0; src.len()];
            silu_on(isa, &src, &mut dst);
            for (&x, &y) in src.iter().zip(&dst) {
                let want = x as f64 / (1.0 + (-x as f64).exp());
                assert!(
                    (y as f64 - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "{isa:?}: silu({x}) = {y}, want {want}"
                );
            }
        }
    }

    #[test]
    fn exp_is_accurate() {
        let mut x = -80.0f32;
        while x < 80.0 {
            let rel = (exp(x) - x.exp()).abs() / x.exp();
            assert!(rel < 3e-7, "exp({x}): rel err {rel}");
            x += 0.37;
        }
        assert!(exp(-1000.0) > 0.0 && exp(-1000.0) < 1e-37);
        assert!(exp(1000.0).is_finite());
    }
}

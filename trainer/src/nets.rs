//! The networks, as burn modules: diffusion denoiser, edit policy, critic ensemble,
//! Gaussian actor (RLPD baseline) and the SAC temperature.
//!
//! Parameters are initialised from our own seeded generator (not burn's global one) so
//! that a seed fixes every weight on every backend, by the rule `net.init` names
//! ([`InitScheme`]): PyTorch's default (every preset's), or the public EXPO code's (flax)
//! with `net.init = "reference"`.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::activation::relu;
use burn::tensor::{DType, Device, FloatDType, Int, Tensor, TensorData};
use sim::rng::Rng;
use std::f32::consts::TAU;

/// `[rows, cols]` tensor from a row-major slice.
pub fn tensor2(data: Vec<f32>, rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(data, [rows, cols]), device)
}

fn uniform(rng: &mut Rng, n: usize, bound: f32) -> Vec<f32> {
    (0..n).map(|_| rng.range(-bound, bound)).collect()
}

/// How dense layers are initialised (`net.init`). LayerNorm scales start at 1 and shifts
/// at 0, and the denoiser's Fourier frequencies are `N(0, 0.2²)`, under both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum InitScheme {
    /// As the public EXPO code (flax): Glorot-uniform weights, `U(±√(6 / (fan_in +
    /// fan_out)))`, in every dense layer but the residual blocks' two, which have flax's
    /// default LeCun normal (standard deviation `1/√fan_in`, truncated at two of them);
    /// biases zero. The edit policy's (and the RLPD actor's) mean and log-std are one
    /// layer here, two heads there: each half is drawn with the fans of its own head.
    /// Opt-in (`--set net.init='"reference"'`) until its learning curves are measured
    /// against `torch`'s (BENCHMARKS.md, "Initialisation").
    #[serde(rename = "reference")]
    Reference,
    /// PyTorch's default, `U(±1/√fan_in)` for weights and biases: every preset's, this
    /// trainer's only initialisation before 2026-12-02, and what a saved config without
    /// `net.init` (a run started before the key existed) means.
    #[serde(rename = "torch")]
    Torch,
}

impl InitScheme {
    pub(crate) fn before_the_key() -> InitScheme {
        InitScheme::Torch
    }
}

/// Which rule a dense layer's weights follow under [`InitScheme::Reference`] (under
/// [`InitScheme::Torch`] every layer is the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    Glorot,
    LecunNormal,
}

/// The seeded generator every network's parameters are drawn from, and the rule.
pub struct Init {
    rng: Rng,
    scheme: InitScheme,
}

impl Init {
    pub fn new(seed: u64, scheme: InitScheme) -> Self {
        Init {
            rng: Rng::new(seed),
            scheme,
        }
    }

    /// `Init::new(seed, InitScheme::Reference)`.
    pub fn reference(seed: u64) -> Self {
        Self::new(seed, InitScheme::Reference)
    }

    pub fn scheme(&self) -> InitScheme {
        self.scheme
    }

    /// `n` weights of a layer with these fans, row-major.
    fn weights(&mut self, n: usize, fan_in: usize, fan_out: usize, kernel: Kernel) -> Vec<f32> {
        match (self.scheme, kernel) {
            (InitScheme::Torch, _) => uniform(&mut self.rng, n, 1.0 / (fan_in as f32).sqrt()),
            (InitScheme::Reference, Kernel::Glorot) => {
                let bound = (6.0 / (fan_in + fan_out) as f32).sqrt();
                uniform(&mut self.rng, n, bound)
            }
            (InitScheme::Reference, Kernel::LecunNormal) => {
                // flax's `variance_scaling(1, "fan_in", "truncated_normal")`: a standard
                // normal truncated to [−2, 2] has standard deviation 0.8796, so the scale
                // is divided by it to give the variance 1/fan_in.
                let scale = (1.0 / fan_in as f32).sqrt() / 0.879_625_7;
                (0..n).map(|_| scale * self.truncated_normal()).collect()
            }
        }
    }

    /// `n` biases of a layer with this fan-in.
    fn biases(&mut self, n: usize, fan_in: usize) -> Vec<f32> {
        match self.scheme {
            InitScheme::Torch => uniform(&mut self.rng, n, 1.0 / (fan_in as f32).sqrt()),
            InitScheme::Reference => vec![0.0; n],
        }
    }

    /// A standard normal draw within [−2, 2] (rejection: 95.4% are accepted).
    fn truncated_normal(&mut self) -> f32 {
        loop {
            let z = self.rng.normal();
            if z.abs() <= 2.0 {
                return z;
            }
        }
    }
}

/// Fully connected layer `y = x W + b` with `W: [in, out]`.
#[derive(Module, Debug)]
pub struct Dense {
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
}

impl Dense {
    /// A `[d_in, d_out]` layer (Glorot under [`InitScheme::Reference`]).
    pub fn new(d_in: usize, d_out: usize, bias: bool, init: &mut Init, device: &Device) -> Self {
        Self::drawn(d_in, d_out, bias, Kernel::Glorot, 1, init, device)
    }

    /// A `[d_in, d_out]` layer whose weights follow `kernel`, drawn as `heads` layers of
    /// `d_out / heads` outputs side by side (their fans), with one bias vector.
    fn drawn(
        d_in: usize,
        d_out: usize,
        bias: bool,
        kernel: Kernel,
        heads: usize,
        init: &mut Init,
        device: &Device,
    ) -> Self {
        debug_assert_eq!(d_out % heads, 0);
        let w = init.weights(d_in * d_out, d_in, d_out / heads, kernel);
        let b = bias.then(|| {
            Param::from_tensor(Tensor::from_data(
                TensorData::new(init.biases(d_out, d_in), [d_out]),
                device,
            ))
        });
        Dense {
            weight: Param::from_tensor(tensor2(w, d_in, d_out, device)),
            bias: b,
        }
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let y = x.matmul(self.weight.val());
        match &self.bias {
            Some(b) => y + b.val().unsqueeze_dim(0),
            None => y,
        }
    }

    pub fn d_out(&self) -> usize {
        self.weight.shape().dims::<2>()[1]
    }
}

/// Layer normalisation over the last axis with learnable scale and shift.
#[derive(Module, Debug)]
pub struct Norm {
    pub gamma: Param<Tensor<1>>,
    pub beta: Param<Tensor<1>>,
}

/// Shared with the exported graphs.
pub const LAYER_NORM_EPS: f64 = shared_model::graphs::LAYER_NORM_EPS as f64;

impl Norm {
    pub fn new(d: usize, device: &Device) -> Self {
        Norm {
            gamma: Param::from_tensor(Tensor::ones([d], device)),
            beta: Param::from_tensor(Tensor::zeros([d], device)),
        }
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        // f16 reaches only 65,504: deviations from the mean beyond 256 would square to inf
        // and the whole row normalize to 0, silently (measured on burn-flex). Half chains
        // (`compute.chain_precision = "f16"`) take the statistics in f32: two casts of
        // `[R, hidden]` per norm. bf16 has f32's range.
        let normalized = if x.dtype() == DType::F16 {
            normalize_last(x.cast(FloatDType::F32)).cast(FloatDType::F16)
        } else {
            normalize_last(x)
        };
        normalized * self.gamma.val().unsqueeze_dim(0) + self.beta.val().unsqueeze_dim(0)
    }
}

/// `(x − mean) / √(var + ε)` over the last axis (biased variance), in 7 tensor
/// operations: the centred values are computed once and reused for the variance
/// (burn's `var_mean_bias` centres twice and divides separately: 9).
///
/// The scale is `(var + ε)^−½` multiplied in rather than `√(var + ε)` divided by: the
/// same forward count, and a backward pass of 6 operations instead of 10 (autodiff's
/// division backward takes a reciprocal, a square, a negation and a division).
fn normalize_last<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    normalize_last_with_scale(x).0
}

/// [`normalize_last`]'s normalized values and its inverse scale `(var + ε)^−½` (last axis
/// of size 1), which the critic's written-out backward pass needs.
fn normalize_last_with_scale<const D: usize>(x: Tensor<D>) -> (Tensor<D>, Tensor<D>) {
    let centred = x.clone() - x.mean_dim(D - 1);
    let var = centred.clone().square().mean_dim(D - 1);
    let inv = (var + LAYER_NORM_EPS).powf_scalar(-0.5);
    (centred * inv.clone(), inv)
}

/// True on backends with native single-pass activations (the CPU ones). On the cubecl
/// (GPU) backends every tensor operation is a kernel launch, and burn composes the
/// activations there from elementary operations.
pub(crate) fn native_activations(device: &Device) -> bool {
    use burn::backend::DispatchDevice;
    match device.clone().inner().as_dispatch() {
        DispatchDevice::Flex(_) => true,
        #[cfg(feature = "ndarray")]
        DispatchDevice::NdArray(_) => true,
        _ => false,
    }
}

/// SiLU `x·σ(x)`. Under autodiff, burn's. Outside it (the denoising chains, acting):
/// - on the GPU backends `x / (1 + e^−x)`: 4 operations where burn's composed sigmoid
///   (`exp(−ln(1 + e^−x))`) makes 7. Not under autodiff: the backward pass of that
///   formula multiplies a zero gradient by `e^−x = ∞` for `x < −88` and gives NaN, where
///   burn's sigmoid node is stable;
/// - on the CPU backends the same formula in one pass over the host buffer
///   ([`silu_in_place`]): burn-flex's sigmoid calls libm's `expf` element by element,
///   which was 45% of a `cpu` preset training step (BENCHMARKS.md, "SiLU on the CPU").
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let device = x.device();
    if device.is_autodiff() {
        burn::tensor::activation::silu(x)
    } else if native_activations(&device) && x.dtype() == DType::F32 {
        silu_host(x)
    } else {
        silu_composed(x)
    }
}

/// [`silu_in_place`] on a CPU tensor's values (without copies where the tensor is the
/// only handle to its buffer: burn-flex hands it out and takes it back as is).
pub fn silu_host<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let device = x.device();
    let mut data = x.into_data();
    let values = data
        .as_mut_slice::<f32>()
        .expect("the trainer's float tensors are f32");
    silu_in_place(values);
    Tensor::from_data(data, &device)
}

/// `x ← x / (1 + e^−x)`, with [`exp_f32`]: a loop the compiler vectorizes (16 lanes
/// where the CPU has AVX-512, 8 with AVX2, chosen at run time: the first of
/// [`silu_kernels`], picked once). Every lane does the same IEEE operations, so the
/// result does not depend on the CPU. `x → −∞` gives `−0`, `x → +∞` gives `x`, NaN stays
/// NaN.
pub fn silu_in_place(values: &mut [f32]) {
    static CHOSEN: std::sync::OnceLock<SiluKernel> = std::sync::OnceLock::new();
    CHOSEN.get_or_init(|| silu_kernels()[0].1)(values);
}

/// A SiLU loop over values in place.
pub type SiluKernel = fn(&mut [f32]);

/// Every SiLU loop this CPU can run, named, fastest first and the plain one last:
/// [`silu_in_place`] runs the first; the test that they agree to the bit and
/// `examples/ops.rs`, which times them side by side, run all.
pub fn silu_kernels() -> Vec<(&'static str, SiluKernel)> {
    let mut kernels: Vec<(&'static str, SiluKernel)> = vec![];
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // Safety: AVX-512F is present (checked just above).
            kernels.push(("avx512", |v| unsafe { silu_avx512(v) }));
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // Safety: AVX2 is present (checked just above).
            kernels.push(("avx2", |v| unsafe { silu_avx2(v) }));
        }
    }
    kernels.push(("plain", silu_loop));
    kernels
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn silu_avx512(values: &mut [f32]) {
    silu_loop(values);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn silu_avx2(values: &mut [f32]) {
    silu_loop(values);
}

#[inline(always)]
fn silu_loop(values: &mut [f32]) {
    for x in values {
        *x = *x / (1.0 + exp_f32(-*x));
    }
}

/// `e^x` in f32 without branches or library calls (so that it vectorizes), within 2
/// ulp of the correctly rounded value for `x` in [−87.3, 88.7] (tested against f64).
/// Cody–Waite range reduction `x = n·ln 2 + r`, |r| ≤ ln 2 / 2, then a degree-6
/// polynomial for `e^r` (the coefficients of Cephes' `expf`) and `2^n` put into the
/// exponent bits. Below −87.3 it gives about 1.2e−38 (not 0), above 88.7 about 3.4e38
/// or +∞; NaN gives NaN.
#[inline(always)]
#[allow(clippy::excessive_precision)] // the constants as published; each rounds to its f32
pub fn exp_f32(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split into a part exact in a few bits and the rest: n·LN2_HI has no rounding
    // error for the n that occur here.
    const LN2_HI: f32 = 0.693_359_375;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2^23 rounds to the nearest integer (ties to even) without `roundps`.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.336_55, 88.722_83);
    let t = x * LOG2_E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.987_569_2e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5.000_000_1e-1;
    let er = p * (r * r) + r + 1.0;
    // 2^n as 2^h · 2^(n−h), h = ⌊n/2⌋, each made by putting its power + 127 in the
    // exponent field: n reaches 128 near the top of the range, where 2^n alone would
    // overflow although e^x does not.
    // Wrapping integer operations: they cannot overflow for a number (NaN makes garbage
    // bits, multiplied into NaN), and the release profile's overflow checks would
    // otherwise keep the loop from vectorizing.
    let n = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let h = n >> 1;
    let pow2 = |k: i32| f32::from_bits((k.wrapping_add(127) << 23) as u32);
    er * pow2(h) * pow2(n.wrapping_sub(h))
}

/// The GPU backends' inference SiLU, `x / (1 + e^−x)`, on any device (tests compare it
/// with burn's). Exact at the limits: `x → −∞` gives `−0`, `x → +∞` gives `x`.
pub fn silu_composed<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.clone() / ((x * -1.0).exp() + 1.0)
}

/// Sizes of the denoiser.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DenoiserSize {
    pub hidden: usize,
    pub blocks: usize,
    /// Width of the residual blocks' inner layer (4x hidden in the reference).
    pub expanded: usize,
    /// Fourier features (half cosines, half sines).
    pub fourier: usize,
    /// Width of the time MLP.
    pub time_hidden: usize,
}

/// `module` with every float parameter cast to `dtype` (a copy where it changes).
pub fn cast_params<M: Module>(module: M, dtype: FloatDType) -> M {
    struct Cast(FloatDType);
    impl ModuleMapper for Cast {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let dtype = self.0;
            param.map(|t| t.cast(dtype))
        }
    }
    module.map(&mut Cast(dtype))
}

/// Residual block: `x + Dense(swish(Dense(LayerNorm(x))))`.
#[derive(Module, Debug)]
pub struct ResBlock {
    pub norm: Norm,
    pub up: Dense,
    pub down: Dense,
}

impl ResBlock {
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let h = self
            .down
            .forward(silu(self.up.forward(self.norm.forward(x.clone()))));
        x + h
    }

    /// This block with `up`'s weight and bias and `down`'s weight negated, for
    /// [`ResBlock::forward_negated`] (inference copies; the parameters keep their ids).
    pub fn negated(&self) -> ResBlock {
        let neg = |d: &Dense, bias: bool| Dense {
            weight: d.weight.clone().map(|w| -w),
            bias: match (&d.bias, bias) {
                (Some(b), true) => Some(b.clone().map(|b| -b)),
                (b, _) => b.clone(),
            },
        };
        ResBlock {
            norm: self.norm.clone(),
            up: neg(&self.up, true),
            down: neg(&self.down, false),
        }
    }

    /// [`ResBlock::forward`] with [`silu_composed`], computed by this block's
    /// [`ResBlock::negated`] form in one elementwise pass fewer: the same values, bit for
    /// bit but for the sign of an exact zero.
    ///
    /// With `up` negated its product is `m = −z` directly, and `m / (1 + e^m)` is
    /// `−silu(z)` without the pass that negates `z` for `e^−z`; the negated `down` turns
    /// the sign back. Every step is exact in IEEE arithmetic: a sign flip is exact, and
    /// round-to-nearest (or TF32's and the half types' rounding) is symmetric, so each
    /// product, sum, exponential and quotient is the original's with its sign flipped,
    /// or the same. The one exception is an exact zero: a sum that cancels is +0 both
    /// ways, so a zero may come out with the other sign (and a NaN with another sign
    /// bit); no value differs. The inputs of the `[R, expanded]` activations are the GPU backends'
    /// largest elementwise traffic (the candidate chains' 40,960 × 1,024 at the `paper`
    /// preset, BENCHMARKS.md "Where the GPU time goes").
    pub fn forward_negated(&self, x: Tensor<2>) -> Tensor<2> {
        let m = self.up.forward(self.norm.forward(x.clone()));
        let neg_silu = m.clone() / (m.exp() + 1.0);
        x + self.down.forward(neg_silu)
    }
}

/// How a chain evaluates the denoiser's residual blocks (see [`Denoiser::chain_blocks`]).
pub enum ChainBlocks {
    /// [`ResBlock::forward`] with the denoiser's own blocks (the CPU backends, whose SiLU
    /// is one pass over the host buffer already).
    Own,
    /// [`ResBlock::forward_negated`] with these negated copies (the GPU backends).
    Negated(Vec<ResBlock>),
}

/// Conditional MLP-ResNet noise predictor `ε̂(x_t, s, t)`.
///
/// The reference concatenates `[x_t, s, time features]` into its first dense layer. We
/// keep that layer's parameters as three blocks (`input_action`, `input_obs`,
/// `input_time`), which is the same function, so that sampling can project the
/// observation once per chain and the time features once per step instead of once per
/// row and step.
#[derive(Module, Debug)]
pub struct Denoiser {
    /// Learnable Fourier frequencies `[1, fourier/2]`.
    pub fourier: Param<Tensor<2>>,
    pub time_in: Dense,
    pub time_out: Dense,
    pub input_action: Dense,
    pub input_obs: Dense,
    pub input_time: Dense,
    pub blocks: Vec<ResBlock>,
    pub output: Dense,
}

impl Denoiser {
    pub fn new(
        obs_dim: usize,
        act_dim: usize,
        size: DenoiserSize,
        init: &mut Init,
        device: &Device,
    ) -> Self {
        let half = size.fourier / 2;
        // Reference init for the learnable frequencies: N(0, 0.2²).
        let freqs: Vec<f32> = (0..half).map(|_| 0.2 * init.rng.normal()).collect();
        // The split first layer is initialised as the single layer over the concatenation:
        // its fans, the concatenation's.
        let fan_in = act_dim + obs_dim + size.time_hidden;
        let block = |d_in: usize, bias: bool, init: &mut Init| {
            let w = init.weights(d_in * size.hidden, fan_in, size.hidden, Kernel::Glorot);
            let b = bias.then(|| {
                Param::from_tensor(Tensor::from_data(
                    TensorData::new(init.biases(size.hidden, fan_in), [size.hidden]),
                    device,
                ))
            });
            Dense {
                weight: Param::from_tensor(tensor2(w, d_in, size.hidden, device)),
                bias: b,
            }
        };
        // The residual blocks' layers have flax's default initialiser in the reference.
        let lecun = |d_in, d_out, init: &mut Init| {
            Dense::drawn(d_in, d_out, true, Kernel::LecunNormal, 1, init, device)
        };
        Denoiser {
            fourier: Param::from_tensor(tensor2(freqs, 1, half, device)),
            time_in: Dense::new(size.fourier, size.time_hidden, true, init, device),
            time_out: Dense::new(size.time_hidden, size.time_hidden, true, init, device),
            input_action: block(act_dim, true, init),
            input_obs: block(obs_dim, false, init),
            input_time: block(size.time_hidden, false, init),
            blocks: (0..size.blocks)
                .map(|_| ResBlock {
                    norm: Norm::new(size.hidden, device),
                    up: lecun(size.hidden, size.expanded, init),
                    down: lecun(size.expanded, size.hidden, init),
                })
                .collect(),
            output: Dense::new(size.hidden, act_dim, true, init, device),
        }
    }

    /// This denoiser with the layers that run once per chain step, the first layer's
    /// action block, the residual blocks and the output layer, in `dtype`
    /// (`compute.chain_precision`). The time and observation projections, computed once
    /// per chain, stay f32 (the Fourier features of t = 10 would lose their phase in
    /// bf16). [`crate::agent::run_chain`] casts its inputs to match.
    pub fn with_step_precision(self, dtype: FloatDType) -> Self {
        if dtype == FloatDType::F32 {
            return self;
        }
        Denoiser {
            input_action: cast_params(self.input_action, dtype),
            blocks: cast_params(self.blocks, dtype),
            output: cast_params(self.output, dtype),
            ..self
        }
    }

    /// The type of the per-step layers ([`Denoiser::with_step_precision`]).
    pub fn step_dtype(&self) -> FloatDType {
        self.input_action.weight.val().dtype().into()
    }

    /// Time conditioning for integer steps `t` (`[R, 1]`, as floats): `[R, time_hidden]`,
    /// already projected by the first layer's time block: `[R, hidden]`.
    pub fn time_projection(&self, t: Tensor<2>) -> Tensor<2> {
        let f = t.matmul(self.fourier.val()) * TAU;
        let feats = Tensor::cat(vec![f.clone().cos(), f.sin()], 1);
        let emb = self.time_out.forward(silu(self.time_in.forward(feats)));
        self.input_time.forward(emb)
    }

    /// Observation block of the first layer (no bias): `[R, hidden]`.
    pub fn obs_projection(&self, obs: Tensor<2>) -> Tensor<2> {
        self.input_obs.forward(obs)
    }

    /// `ε̂` from the noisy action `[R, A]` and the two projections (`[R, hidden]`, or
    /// `[1, hidden]` for a time projection shared by all rows).
    pub fn forward_projected(
        &self,
        noisy: Tensor<2>,
        obs_proj: Tensor<2>,
        time_proj: Tensor<2>,
    ) -> Tensor<2> {
        self.forward_projected_with(&ChainBlocks::Own, noisy, obs_proj, time_proj)
    }

    /// The residual blocks as a chain that runs outside autodiff evaluates them: negated
    /// copies ([`ResBlock::forward_negated`], one elementwise pass fewer per block and
    /// step) where SiLU is composed of tensor operations, the blocks themselves where it
    /// is one host pass or burn's autodiff node ([`silu`]). Made once per chain: `3 × blocks` small negations
    /// against `blocks × steps` passes saved over `[R, expanded]`.
    pub fn chain_blocks(&self) -> ChainBlocks {
        let weight = self.input_action.weight.val();
        let device = weight.device();
        if device.is_autodiff() || native_activations(&device) && weight.dtype() == DType::F32 {
            ChainBlocks::Own
        } else {
            self.negated_blocks()
        }
    }

    /// [`ChainBlocks::Negated`] on any backend (tests compare it with the plain blocks).
    pub fn negated_blocks(&self) -> ChainBlocks {
        ChainBlocks::Negated(self.blocks.iter().map(ResBlock::negated).collect())
    }

    /// [`Denoiser::forward_projected`] with the residual blocks evaluated as `blocks`
    /// says. Not for autodiff: [`ResBlock::forward_negated`]'s composed SiLU has no
    /// stable backward pass ([`silu`]).
    pub fn forward_projected_with(
        &self,
        blocks: &ChainBlocks,
        noisy: Tensor<2>,
        obs_proj: Tensor<2>,
        time_proj: Tensor<2>,
    ) -> Tensor<2> {
        let mut x = self.input_action.forward(noisy) + obs_proj + time_proj;
        match blocks {
            ChainBlocks::Own => {
                for b in &self.blocks {
                    x = b.forward(x);
                }
            }
            ChainBlocks::Negated(negated) => {
                for b in negated {
                    x = b.forward_negated(x);
                }
            }
        }
        self.output.forward(silu(x))
    }

    /// `ε̂(x_t, s, t)` for per-row steps `t` (`[R, 1]` floats).
    pub fn forward(&self, noisy: Tensor<2>, obs: Tensor<2>, t: Tensor<2>) -> Tensor<2> {
        let tp = self.time_projection(t);
        let op = self.obs_projection(obs);
        self.forward_projected(noisy, op, tp)
    }
}

/// Plain MLP with ReLU between layers (optionally LayerNorm before each ReLU).
#[derive(Module, Debug)]
pub struct Mlp {
    pub layers: Vec<Dense>,
    pub norms: Vec<Norm>,
}

impl Mlp {
    /// `widths` are the hidden widths; the output layer is `d_out` wide, linear, drawn as
    /// `out_heads` layers side by side (see [`InitScheme::Reference`]).
    pub fn new(
        d_in: usize,
        widths: &[usize],
        d_out: usize,
        out_heads: usize,
        layer_norm: bool,
        init: &mut Init,
        device: &Device,
    ) -> Self {
        let mut layers = vec![];
        let mut norms = vec![];
        let mut d = d_in;
        for &w in widths {
            layers.push(Dense::new(d, w, true, init, device));
            if layer_norm {
                norms.push(Norm::new(w, device));
            }
            d = w;
        }
        let out = Dense::drawn(d, d_out, true, Kernel::Glorot, out_heads, init, device);
        layers.push(out);
        Mlp { layers, norms }
    }

    pub fn forward(&self, mut x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(x);
            if i < last {
                if let Some(n) = self.norms.get(i) {
                    x = n.forward(x);
                }
                x = relu(x);
            }
        }
        x
    }
}

/// Range the policies' log standard deviation is squashed (or clipped) into.
pub use shared_model::graphs::{LOG_STD_CLIP_MIN, LOG_STD_MAX, LOG_STD_MIN, LogStdHead};

/// Tanh-Gaussian head over an MLP: `(mean, log_std)` of the pre-tanh Gaussian.
#[derive(Module, Debug)]
pub struct GaussianPolicy {
    pub mlp: Mlp,
    pub act_dim: usize,
    /// The log-std head is [`LogStdHead::Clip`] (else [`LogStdHead::Tanh`]); from the
    /// config, not saved with the weights.
    pub clip_log_std: bool,
}

impl GaussianPolicy {
    pub fn new(
        d_in: usize,
        widths: &[usize],
        act_dim: usize,
        head: LogStdHead,
        init: &mut Init,
        device: &Device,
    ) -> Self {
        GaussianPolicy {
            // Mean and log-std: two heads in the reference.
            mlp: Mlp::new(d_in, widths, 2 * act_dim, 2, false, init, device),
            act_dim,
            clip_log_std: head == LogStdHead::Clip,
        }
    }

    pub fn log_std_head(&self) -> LogStdHead {
        if self.clip_log_std {
            LogStdHead::Clip
        } else {
            LogStdHead::Tanh
        }
    }

    /// `(mean, log_std)`, each `[R, A]`.
    pub fn forward(&self, x: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let out = self.mlp.forward(x);
        let rows = out.dims()[0];
        let a = self.act_dim;
        let mean = out.clone().slice([0..rows, 0..a]);
        let raw = out.slice([0..rows, a..2 * a]);
        let log_std = match self.log_std_head() {
            LogStdHead::Tanh => {
                LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (raw.tanh() + 1.0)
            }
            LogStdHead::Clip => raw.clamp(LOG_STD_CLIP_MIN, LOG_STD_MAX),
        };
        (mean, log_std)
    }

    /// Reparameterised sample `tanh(mean + std · ε)` and its log-density (`[R, 1]`), with
    /// the tanh change of variables. `noise` is standard normal `[R, A]`.
    pub fn sample(&self, x: Tensor<2>, noise: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let (mean, log_std) = self.forward(x);
        let u = mean + log_std.clone().exp() * noise.clone();
        let a = u.clone().tanh();
        // log N(u; mean, std) = −½ε² − log std − ½ log 2π, per dimension.
        let log_normal = noise.square() * -0.5 - log_std - 0.5 * (TAU).ln();
        // log |d tanh(u)/du| = log(1 − tanh²(u)), computed stably as
        // 2 (log 2 − u − softplus(−2u)).
        let log_det = (u.clone() * -1.0 - softplus(u * -2.0) + std::f32::consts::LN_2) * 2.0;
        let log_prob = (log_normal - log_det).sum_dim(1);
        (a, log_prob)
    }
}

/// `ln(1 + eˣ)`, stable for large |x|.
fn softplus(x: Tensor<2>) -> Tensor<2> {
    relu(x.clone()) + (x.abs() * -1.0).exp().log1p()
}

/// Linear layer of an ensemble: member `e` maps `x_e [R, in]` with `W_e [in, out]`.
#[derive(Module, Debug)]
pub struct EnsembleDense {
    /// `[E, in, out]`
    pub weight: Param<Tensor<3>>,
    /// `[E, 1, out]`
    pub bias: Param<Tensor<3>>,
}

impl EnsembleDense {
    /// Every member drawn as one `[d_in, d_out]` layer (Glorot under
    /// [`InitScheme::Reference`]).
    pub fn new(
        members: usize,
        d_in: usize,
        d_out: usize,
        init: &mut Init,
        device: &Device,
    ) -> Self {
        let w = init.weights(members * d_in * d_out, d_in, d_out, Kernel::Glorot);
        let b = init.biases(members * d_out, d_in);
        EnsembleDense {
            weight: Param::from_tensor(Tensor::from_data(
                TensorData::new(w, [members, d_in, d_out]),
                device,
            )),
            bias: Param::from_tensor(Tensor::from_data(
                TensorData::new(b, [members, 1, d_out]),
                device,
            )),
        }
    }
}

/// LayerNorm with per-member parameters `[E, 1, H]`.
#[derive(Module, Debug)]
pub struct EnsembleNorm {
    pub gamma: Param<Tensor<3>>,
    pub beta: Param<Tensor<3>>,
}

/// Ensemble of Q networks `[s, a] → (Dense → LayerNorm → ReLU) x L → Dense(1)`,
/// evaluated as batched matrix products over the member axis.
#[derive(Module, Debug)]
pub struct CriticEnsemble {
    pub layers: Vec<EnsembleDense>,
    pub norms: Vec<EnsembleNorm>,
}

impl CriticEnsemble {
    pub fn new(
        members: usize,
        d_in: usize,
        widths: &[usize],
        init: &mut Init,
        device: &Device,
    ) -> Self {
        let mut layers = vec![];
        let mut norms = vec![];
        let mut d = d_in;
        for &w in widths {
            layers.push(EnsembleDense::new(members, d, w, init, device));
            norms.push(EnsembleNorm {
                gamma: Param::from_tensor(Tensor::ones([members, 1, w], device)),
                beta: Param::from_tensor(Tensor::zeros([members, 1, w], device)),
            });
            d = w;
        }
        layers.push(EnsembleDense::new(members, d, 1, init, device));
        CriticEnsemble { layers, norms }
    }

    pub fn members(&self) -> usize {
        self.layers[0].weight.shape().dims::<3>()[0]
    }

    /// An ensemble of this one's first `k` members (their values, new parameter ids): the
    /// shape of a `k`-member subset ([`crate::optim::MemberGather`]).
    pub fn first_members(&self, k: usize) -> Self {
        let take = |p: &Param<Tensor<3>>| {
            let t = p.val();
            let [_, a, b] = t.dims();
            Param::from_tensor(t.slice([0..k, 0..a, 0..b]))
        };
        CriticEnsemble {
            layers: (self.layers.iter())
                .map(|l| EnsembleDense {
                    weight: take(&l.weight),
                    bias: take(&l.bias),
                })
                .collect(),
            norms: (self.norms.iter())
                .map(|n| EnsembleNorm {
                    gamma: take(&n.gamma),
                    beta: take(&n.beta),
                })
                .collect(),
        }
    }

    /// Q of every member for inputs `[R, in]`: `[E, R]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.forward_members(x, None)
    }

    /// Q of the members listed in `subset` (all when `None`): `[|subset|, R]`.
    pub fn forward_members(&self, x: Tensor<2>, subset: Option<&[usize]>) -> Tensor<2> {
        // One upload of the member indices, shared by every parameter's selection.
        let ids = subset.map(|idx| member_ids(idx, &x.device()));
        self.forward_selected(x, ids.as_ref())
    }

    /// Q of the members whose indices `ids` holds (all when `None`), the indices already
    /// on the device (a captured graph may not upload): `[|ids|, R]`.
    pub fn forward_selected(&self, x: Tensor<2>, ids: Option<&Tensor<1, Int>>) -> Tensor<2> {
        let pick = |t: Tensor<3>| match ids {
            Some(ids) => t.select(0, ids.clone()),
            None => t,
        };
        let [rows, d_in] = x.dims();
        let e = ids.map_or(self.members(), |ids| ids.dims()[0]);
        let mut h: Tensor<3> = x.unsqueeze_dim::<3>(0).expand([e, rows, d_in]);
        let last = self.layers.len() - 1;
        for (i, l) in self.layers.iter().enumerate() {
            h = h.matmul(pick(l.weight.val())) + pick(l.bias.val());
            if i < last {
                let n = &self.norms[i];
                h = relu(normalize_last(h) * pick(n.gamma.val()) + pick(n.beta.val()));
            }
        }
        h.reshape([e, rows])
    }

    /// The critic step's gradients without autodiff: Q of every member for inputs
    /// `x: [R, in]`, the errors `Q − y` `[E, R]` against targets `y: [1, R]`, and the
    /// gradient of the TD loss `mean_{e,r} (Q_e(x_r) − y_r)²` for every parameter (by
    /// id), all on the plain device. The loss itself is left to the caller (it is a
    /// metric: the critic loop sums the squared errors of its slices, [`crate::agent`]).
    /// The backward pass is written out (layer norm's in its closed form), about 18
    /// operations per hidden layer where burn's autodiff graph takes about 30:
    /// on a GPU each is a kernel launch, and the critic loop is most of a step's
    /// operations (issue 14). `trainer/tests/networks.rs` checks it against autodiff.
    /// `self` may be the autodiff module: its parameters are read through `valid()`.
    ///
    /// Each member's Q and gradients depend on that member alone, so the members split
    /// into `threads` consecutive groups, each on its own thread ([`crate::split`]), give
    /// the one-thread values to the bit (tested); use 1 on a GPU.
    pub fn td_loss_and_grads(
        &self,
        x: Tensor<2>,
        y: Tensor<2>,
        threads: usize,
    ) -> (Tensor<2>, Tensor<2>, burn::optim::GradientsParams) {
        let rows = x.dims()[0];
        let e = self.members();
        // dL/dQ = 2 (Q − y) / (E·R): the whole ensemble's E in every group.
        let scale = 2.0 / (e * rows) as f32;
        let plain = |p: &Param<Tensor<3>>| p.val().inner();
        let params = MemberParams {
            layers: (self.layers.iter())
                .map(|l| [plain(&l.weight), plain(&l.bias)])
                .collect(),
            norms: (self.norms.iter())
                .map(|n| [plain(&n.gamma), plain(&n.beta)])
                .collect(),
        };
        let parts = crate::split::in_threads(e, threads, |m| {
            params
                .members(m)
                .td_q_and_grads(x.clone(), y.clone(), scale)
        });
        let (mut qs, mut diffs, mut groups) = (vec![], vec![], vec![]);
        for (q, diff, grads) in parts {
            qs.push(q);
            diffs.push(diff);
            groups.push(grads);
        }
        let (q, diff) = (crate::split::join(qs), crate::split::join(diffs));
        let grads = MemberParams::join(groups);
        let mut registered = burn::optim::GradientsParams::new();
        for (l, [w, b]) in self.layers.iter().zip(grads.layers) {
            registered.register(l.weight.id, w);
            registered.register(l.bias.id, b);
        }
        for (n, [gamma, beta]) in self.norms.iter().zip(grads.norms) {
            registered.register(n.gamma.id, gamma);
            registered.register(n.beta.id, beta);
        }
        (q, diff, registered)
    }
}

/// The plain values of a group of critic members' parameters (or of their gradients):
/// each dense layer's `[weight, bias]` and each hidden layer norm's `[gamma, beta]`, all
/// with the members first (`[E, ..]`).
#[derive(Clone)]
struct MemberParams {
    layers: Vec<[Tensor<3>; 2]>,
    norms: Vec<[Tensor<3>; 2]>,
}

impl MemberParams {
    /// Members `m` of every tensor (all of them: the tensors as they are).
    fn members(&self, m: std::ops::Range<usize>) -> Self {
        if m.len() == self.layers[0][0].dims()[0] {
            return self.clone();
        }
        let take = |t: &Tensor<3>| {
            let [_, a, b] = t.dims();
            t.clone().slice([m.clone(), 0..a, 0..b])
        };
        MemberParams {
            layers: self.layers.iter().map(|p| p.each_ref().map(take)).collect(),
            norms: self.norms.iter().map(|p| p.each_ref().map(take)).collect(),
        }
    }

    /// Groups of consecutive members joined along the member axis, in order.
    fn join(mut groups: Vec<Self>) -> Self {
        if groups.len() == 1 {
            return groups.pop().expect("one group");
        }
        let column = |pick: &dyn Fn(&Self) -> &Tensor<3>| {
            crate::split::join(groups.iter().map(|g| pick(g).clone()).collect())
        };
        let layers = (0..groups[0].layers.len())
            .map(|i| [0, 1].map(|j| column(&|g| &g.layers[i][j])))
            .collect();
        let norms = (0..groups[0].norms.len())
            .map(|i| [0, 1].map(|j| column(&|g| &g.norms[i][j])))
            .collect();
        MemberParams { layers, norms }
    }

    /// [`CriticEnsemble::td_loss_and_grads`] for these members: Q `[E, R]`, `Q − y` and
    /// the gradients (in the layout of `self`), with `dL/dQ = scale · (Q − y)`.
    fn td_q_and_grads(
        &self,
        x: Tensor<2>,
        y: Tensor<2>,
        scale: f32,
    ) -> (Tensor<2>, Tensor<2>, Self) {
        let [rows, d_in] = x.dims();
        let e = self.layers[0][0].dims()[0];
        let last = self.layers.len() - 1;
        // Forward, keeping each hidden layer's input, normalized values, inverse scale and
        // output.
        let mut h: Tensor<3> = x.unsqueeze_dim::<3>(0).expand([e, rows, d_in]);
        let mut saved = Vec::with_capacity(last);
        for i in 0..last {
            let ([w, b], [gamma, beta]) = (&self.layers[i], &self.norms[i]);
            let (xhat, inv) = normalize_last_with_scale(h.clone().matmul(w.clone()) + b.clone());
            // ReLU with its mask kept for the backward pass (as burn's relu: 0 where the
            // input is ≤ 0), so that the backward pass does not compare again.
            let pre = xhat.clone() * gamma.clone() + beta.clone();
            let off = pre.clone().lower_equal_elem(0.0);
            let out = pre.mask_fill(off.clone(), 0.0);
            saved.push((h, xhat, inv, off));
            h = out;
        }
        let [w, b] = &self.layers[last];
        let q = (h.clone().matmul(w.clone()) + b.clone()).reshape([e, rows]);

        // Backward, from dL/dQ as `[E, R, 1]`.
        let mut layers = vec![];
        let mut norms = vec![];
        let diff = q.clone() - y;
        let dq = (diff.clone() * scale).reshape([e, rows, 1]);
        layers.push([h.swap_dims(1, 2).matmul(dq.clone()), dq.clone().sum_dim(1)]);
        let mut dh = dq.matmul(w.clone().swap_dims(1, 2)); // [E, R, width]
        for i in (0..last).rev() {
            let ([w, _], [gamma, _]) = (&self.layers[i], &self.norms[i]);
            let (h_in, xhat, inv, off) = saved.pop().expect("one saved entry per layer");
            // ReLU: no gradient where the output is 0 (as burn's relu_backward).
            let da = dh.mask_fill(off, 0.0);
            norms.push([
                (da.clone() * xhat.clone()).sum_dim(1),
                da.clone().sum_dim(1),
            ]);
            // Layer norm: dz = inv · (d x̂ − mean(d x̂) − x̂ · mean(d x̂ · x̂)).
            let dxhat = da * gamma.clone();
            let dz = (dxhat.clone()
                - dxhat.clone().mean_dim(2)
                - xhat.clone() * (dxhat * xhat).mean_dim(2))
                * inv;
            layers.push([
                h_in.swap_dims(1, 2).matmul(dz.clone()),
                dz.clone().sum_dim(1),
            ]);
            if i == 0 {
                break; // the inputs are data: no gradient
            }
            dh = dz.matmul(w.clone().swap_dims(1, 2));
        }
        // Collected from the last layer back: into the parameters' order.
        layers.reverse();
        norms.reverse();
        (q, diff, MemberParams { layers, norms })
    }
}

/// Ensemble member indices on `device`, for [`CriticEnsemble::forward_selected`].
pub fn member_ids(subset: &[usize], device: &Device) -> Tensor<1, Int> {
    let ids: Vec<i64> = subset.iter().map(|&i| i as i64).collect();
    Tensor::<1, Int>::from_data(TensorData::new(ids, [subset.len()]), device)
}

/// SAC temperature `α = exp(log_α)`.
#[derive(Module, Debug)]
pub struct Temperature {
    pub log_alpha: Param<Tensor<1>>,
}

impl Temperature {
    pub fn new(initial: f32, device: &Device) -> Self {
        Temperature {
            log_alpha: Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![initial.ln()], [1]),
                device,
            )),
        }
    }

    pub fn alpha(&self) -> Tensor<1> {
        self.log_alpha.val().exp()
    }

    /// `ln α` held at most [`MAX_LOG_TEMPERATURE`], a new leaf as the optimizer's.
    pub fn bounded(self) -> Self {
        Temperature {
            log_alpha: self.log_alpha.map(|t| {
                Tensor::from_inner(t.inner().clamp_max(MAX_LOG_TEMPERATURE)).require_grad()
            }),
        }
    }
}

/// The largest `ln α` the temperature takes (α ≈ 1.1e13). A temperature whose target
/// entropy cannot be reached (the edit policy's without `adjust_target_entropy`) rises
/// by about the learning rate each update; near `ln α` = 43 its gradient `α · gap`
/// squared overflows f32, Adam's second moment turns infinite and every later step is
/// zero: the temperature froze for good, even once the gap changed sign. At 30 the
/// gradient stays below the 1.84e19 whose square overflows for any gap under 1.7e6,
/// while no run we measured came near (`ln α` ≈ 5.8 after 10^4 `cpu` updates). The
/// start, `expo.init_temperature`, is held to the same bound.
pub const MAX_LOG_TEMPERATURE: f32 = 30.0;

#[cfg(test)]
mod tests {
    use super::*;

    /// `exp_f32` within 2 ulp of the correctly rounded `e^x` (from f64) over its whole
    /// range, and its ends.
    #[test]
    fn exp_is_within_two_ulp() {
        let mut worst = 0.0f64;
        let n = 2_000_000;
        for i in 0..=n {
            let x = -87.3f32 + (88.7 + 87.3) * i as f32 / n as f32;
            let exact = (x as f64).exp();
            let ulp = f32::EPSILON as f64 * 2f64.powi((exact as f32).log2().floor() as i32);
            let err = (exp_f32(x) as f64 - exact).abs() / ulp;
            worst = worst.max(err);
        }
        eprintln!("exp_f32: worst error {worst:.3} ulp");
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(100.0) > 3.4e38 && exp_f32(f32::INFINITY) > 3.4e38);
        assert!(exp_f32(-100.0) < 1.2e-38 && exp_f32(f32::NEG_INFINITY) >= 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
    }

    /// The vectorized loops (AVX-512 and AVX2, each where this CPU has it) and the
    /// run-time choice give the plain loop's bits.
    #[test]
    fn silu_does_not_depend_on_the_cpu() {
        let xs: Vec<f32> = (0..10_007).map(|i| (i as f32 - 5000.0) * 0.0173).collect();
        let mut plain = xs.clone();
        silu_loop(&mut plain);
        let mut chosen = xs.clone();
        silu_in_place(&mut chosen);
        let mut runs = vec![("run-time choice", chosen)];
        for (name, kernel) in silu_kernels() {
            let mut v = xs.clone();
            kernel(&mut v);
            runs.push((name, v));
        }
        for (name, v) in runs {
            let same = v
                .iter()
                .zip(&plain)
                .all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{name}");
        }
    }

    fn values<const D: usize>(p: &Param<Tensor<D>>) -> Vec<f32> {
        p.val().into_data().try_to_vec::<f32>().unwrap()
    }

    /// Mean and standard deviation.
    fn moments(v: &[f32]) -> (f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        (mean, var.sqrt())
    }

    /// Under the reference scheme: Glorot-uniform weights (bound `√(6/(in+out))`, the
    /// spread of a uniform: bound/√3) in the plain layers, the critics' and the policy
    /// heads (each head with its own fan-out), LeCun normal truncated at two standard
    /// deviations in the residual blocks, zero biases; the first layer's three blocks
    /// drawn with the fans of the whole concatenation. Fails with the fans swapped, a
    /// wrong scale or nonzero biases.
    #[test]
    fn reference_scheme_draws_the_public_codes_rules() {
        let d = Device::flex();
        let mut init = Init::reference(5);
        let size = DenoiserSize {
            hidden: 256,
            blocks: 2,
            expanded: 1024,
            fourier: 32,
            time_hidden: 128,
        };
        let den = Denoiser::new(20, 6, size, &mut init, &d);
        let glorot = |w: &[f32], fan_in: usize, fan_out: usize, what: &str| {
            let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
            let (mean, std) = moments(w);
            let max = w.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
            assert!(
                max <= bound && max > 0.95 * bound,
                "{what}: max {max}, bound {bound}"
            );
            let want = bound / 3f64.sqrt();
            assert!(
                (std / want - 1.0).abs() < 0.05,
                "{what}: std {std}, want {want}"
            );
            // Five standard errors of the mean.
            let tolerance = 5.0 * want / (w.len() as f64).sqrt();
            assert!(mean.abs() < tolerance, "{what}: mean {mean}");
        };
        glorot(&values(&den.time_in.weight), 32, 128, "time_in");
        glorot(&values(&den.time_out.weight), 128, 128, "time_out");
        let first: Vec<f32> = [&den.input_action, &den.input_obs, &den.input_time]
            .iter()
            .flat_map(|l| values(&l.weight))
            .collect();
        glorot(&first, 6 + 20 + 128, 256, "first layer");
        glorot(&values(&den.output.weight), 256, 6, "output");
        for b in &den.blocks {
            for (l, fan_in) in [(&b.up, 256), (&b.down, 1024)] {
                let w = values(&l.weight);
                let (mean, std) = moments(&w);
                let want = 1.0 / (fan_in as f64).sqrt();
                assert!(
                    (std / want - 1.0).abs() < 0.03,
                    "block: std {std}, want {want}"
                );
                assert!(mean.abs() < 0.02 * want, "block: mean {mean}");
                let max = w.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
                // Truncated at 2 standard deviations of the underlying normal.
                assert!(max <= 2.0 * want / 0.879_625_7 + 1e-6, "block: max {max}");
            }
        }
        let biases = [&den.time_in, &den.time_out, &den.input_action, &den.output]
            .into_iter()
            .chain(den.blocks.iter().flat_map(|b| [&b.up, &b.down]))
            .flat_map(|l| values(l.bias.as_ref().expect("a bias")));
        assert!(biases.into_iter().all(|b| b == 0.0));

        let critic = CriticEnsemble::new(10, 26, &[256, 256], &mut init, &d);
        for (l, (fan_in, fan_out)) in critic.layers.iter().zip([(26, 256), (256, 256), (256, 1)]) {
            glorot(&values(&l.weight), fan_in, fan_out, "critic layer");
            assert!(values(&l.bias).iter().all(|&b| b == 0.0));
        }
        let policy = GaussianPolicy::new(26, &[256, 256], 6, LogStdHead::Tanh, &mut init, &d);
        let head = policy.mlp.layers.last().expect("an output layer");
        // [256, 12]: the mean's columns and the log-std's, each a [256, 6] head.
        glorot(&values(&head.weight), 256, 6, "policy heads");
        assert!(
            values(head.bias.as_ref().unwrap())
                .iter()
                .all(|&b| b == 0.0)
        );
    }

    /// The `torch` scheme is the draws of this trainer before `net.init` existed, to the
    /// bit (so that a saved config without the key rebuilds its run's networks): per
    /// layer the weights, then the biases, `U(±1/√fan_in)` from the one generator.
    #[test]
    fn torch_scheme_is_the_draws_before_the_key() {
        let d = Device::flex();
        let mut init = Init::new(9, InitScheme::Torch);
        let policy = GaussianPolicy::new(7, &[16], 3, LogStdHead::Tanh, &mut init, &d);
        let critic = CriticEnsemble::new(4, 7, &[8], &mut init, &d);
        let mut rng = Rng::new(9);
        let mut draw = |n: usize, fan_in: usize| uniform(&mut rng, n, 1.0 / (fan_in as f32).sqrt());
        let mut want = vec![];
        for (fan_in, fan_out) in [(7, 16), (16, 6)] {
            want.push(draw(fan_in * fan_out, fan_in));
            want.push(draw(fan_out, fan_in));
        }
        for (fan_in, fan_out) in [(7, 8), (8, 1)] {
            want.push(draw(4 * fan_in * fan_out, fan_in));
            want.push(draw(4 * fan_out, fan_in));
        }
        let mut got = vec![];
        for l in &policy.mlp.layers {
            got.push(values(&l.weight));
            got.push(values(l.bias.as_ref().unwrap()));
        }
        for l in &critic.layers {
            got.push(values(&l.weight));
            got.push(values(&l.bias));
        }
        assert_eq!(got, want);
    }
}

//! Network-level checks: log-densities, sampler shapes and clipping, ensemble subsets,
//! Polyak updates.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, FloatDType, Tensor};
use shared_model::DiffusionSchedule;
use sim::rng::Rng;
use trainer::agent::{
    Stream, edited_log_prob, polyak, random_subset, sample_chain, target_entropy,
};
use trainer::nets::{
    CriticEnsemble, Denoiser, DenoiserSize, GaussianPolicy, Init, LogStdHead, Norm, cast_params,
    silu, silu_composed, tensor2,
};

fn dev() -> Device {
    Device::flex()
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn scale_module<M: Module>(m: M, k: f32) -> M {
    struct Scale(f32);
    impl ModuleMapper for Scale {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let k = self.0;
            p.map(|t| t * k)
        }
    }
    m.map(&mut Scale(k))
}

/// Density of `y = base + β tanh(u)`, `u ~ N(m, s²)`, in one dimension (f64 reference).
fn edited_density(y: f64, base: f64, beta: f64, m: f64, s: f64) -> f64 {
    let a = (y - base) / beta;
    let u = a.atanh();
    let normal =
        (-(u - m).powi(2) / (2.0 * s * s)).exp() / (s * (2.0 * std::f64::consts::PI).sqrt());
    normal / (beta * (1.0 - a * a))
}

#[test]
fn tanh_gaussian_log_prob_with_edit_scale_matches_the_density() {
    let d = dev();
    for head in [LogStdHead::Tanh, LogStdHead::Clip] {
        tanh_gaussian_log_prob_matches(GaussianPolicy::new(
            3,
            &[16],
            1,
            head,
            &mut Init::reference(3),
            &d,
        ));
    }
}

fn tanh_gaussian_log_prob_matches(policy: GaussianPolicy) {
    let d = dev();
    let x = tensor2(vec![0.2, -0.4, 0.9, 1.0, 0.5, -0.1], 2, 3, &d);
    let (mean, log_std) = policy.forward(x.clone());
    let (m, ls) = (values(mean), values(log_std));
    let noise = vec![0.7f32, -1.3];
    let (a, logp) = policy.sample(x, tensor2(noise.clone(), 2, 1, &d));
    let beta = 0.05f32;
    let logp = values(edited_log_prob(logp, 1, beta));
    let a = values(a);
    for i in 0..2 {
        let base = 0.3;
        let y = base + beta as f64 * a[i] as f64;
        let want = edited_density(y, base, beta as f64, m[i] as f64, (ls[i] as f64).exp()).ln();
        assert!(
            (logp[i] as f64 - want).abs() < 1e-3,
            "row {i}: {} vs {want}",
            logp[i]
        );
        // The sample is the reparameterised tanh(mean + std·ε).
        let u = m[i] as f64 + (ls[i] as f64).exp() * noise[i] as f64;
        assert!((a[i] as f64 - u.tanh()).abs() < 1e-5);
    }
}

/// The edited action `base + β·a` with `a` in (−1, 1)^A has entropy at most
/// `A·ln 2β` (uniform over its box). The plain target −A/2 is above that for the `cpu`
/// preset's β; the adjusted one is below it.
#[test]
fn adjusted_target_entropy_is_reachable_for_small_edit_scales() {
    let (a, beta) = (2usize, 0.05f32);
    let max_entropy = a as f32 * (2.0 * beta).ln();
    assert!((max_entropy - -4.6052).abs() < 1e-3);
    let plain = target_entropy(-0.5, a, None);
    assert_eq!(plain, -1.0);
    assert!(plain > max_entropy, "plain target {plain} is out of reach");
    let adjusted = target_entropy(-0.5, a, Some(beta));
    assert!((adjusted - (-1.0 + 2.0 * 0.05f32.ln())).abs() < 1e-6);
    assert!((adjusted - -6.9915).abs() < 1e-3, "{adjusted}");
    assert!(adjusted < max_entropy);
    // β = 1 leaves the target alone.
    assert_eq!(target_entropy(-0.5, 3, Some(1.0)), -1.5);
}

#[test]
fn sampler_gives_actions_in_bounds_with_the_right_shape() {
    let d = dev();
    let mut rng = Rng::new(1);
    let size = DenoiserSize {
        hidden: 16,
        blocks: 1,
        expanded: 32,
        fourier: 8,
        time_hidden: 16,
    };
    // Large weights: unclipped samples would leave [-1, 1].
    let den = scale_module(
        Denoiser::new(5, 3, size, &mut Init::reference(101), &d),
        4.0,
    );
    let sched = DiffusionSchedule::vp(4, 0.1, 10.0);
    let obs = tensor2((0..35).map(|i| i as f32 * 0.1).collect(), 7, 5, &d);
    let out = sample_chain(&den, &sched, obs, 3, &mut Stream::host(&mut rng));
    assert_eq!(out.dims(), [7, 3]);
    let v = values(out);
    assert!(v.iter().all(|x| (-1.0..=1.0).contains(x)), "{v:?}");
    assert!(
        v.iter().any(|x| x.abs() == 1.0),
        "clipping never engaged: {v:?}"
    );
}

/// `compute.chain_precision`: the same chains (same draws) with the per-step layers in
/// f16 and bf16 end near the f32 chains, further in bf16 (7 mantissa bits) than in f16
/// (10), and not equal to them (the casts happened). The chain stays f32 and in bounds.
#[test]
fn chains_in_half_precision_stay_near_the_f32_chains() {
    let d = dev();
    let size = DenoiserSize {
        hidden: 32,
        blocks: 2,
        expanded: 128,
        fourier: 8,
        time_hidden: 16,
    };
    let den = Denoiser::new(5, 3, size, &mut Init::reference(7), &d);
    let sched = DiffusionSchedule::vp(6, 0.1, 10.0);
    let obs = tensor2(
        (0..200).map(|i| (i as f32 * 0.73).sin()).collect(),
        40,
        5,
        &d,
    );
    let chain = |den: &Denoiser| {
        let out = sample_chain(
            den,
            &sched,
            obs.clone(),
            3,
            &mut Stream::host(&mut Rng::new(3)),
        );
        assert_eq!(out.dtype(), burn::tensor::DType::F32);
        values(out)
    };
    let full = chain(&den);
    let mut worst = vec![];
    for dtype in [FloatDType::F16, FloatDType::BF16] {
        let low = den.clone().with_step_precision(dtype);
        assert_eq!(low.step_dtype(), dtype);
        let v = chain(&low);
        assert!(
            v.iter().all(|x| (-1.0..=1.0).contains(x)),
            "{dtype:?}: {v:?}"
        );
        let diffs: Vec<f32> = full.iter().zip(&v).map(|(a, b)| (a - b).abs()).collect();
        let max = diffs.iter().cloned().fold(0.0f32, f32::max);
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        eprintln!("{dtype:?}: mean |difference| {mean:e}, max {max:e}");
        assert!(
            max > 0.0,
            "{dtype:?}: the chains equal the f32 chains to the bit"
        );
        worst.push(mean);
    }
    // Samples spread over [-1, 1]; a wrong cast or layer would move them by tenths. Seen
    // on flex: mean 6.1e-4 (max 1.6e-2) in f16, 3.2e-3 (max 5.8e-2) in bf16: a chain's
    // steps amplify a rounding, a few samples far more than most.
    assert!(worst[0] < 2e-3, "f16: mean {}", worst[0]);
    assert!(worst[1] < 1.2e-2, "bf16: mean {}", worst[1]);
    assert!(worst[0] < worst[1], "{worst:?}");
    // The f32 setting is this denoiser unchanged.
    assert_eq!(
        chain(&den.clone().with_step_precision(FloatDType::F32)),
        full
    );
}

/// f16 reaches only 65,504: a layer norm whose input deviates from its mean by more than
/// 256 would square it to inf and normalize the row to 0 (it did, on burn-flex). The norm
/// takes its statistics in f32 for f16 inputs, so such rows normalize as in f32 (within
/// f16's rounding of the input and output).
#[test]
fn a_layer_norm_in_f16_survives_deviations_whose_squares_overflow() {
    let d = dev();
    let x: Vec<f32> = (0..64)
        .map(|i| if i % 2 == 0 { 400.0 } else { -400.0 + i as f32 })
        .collect();
    let x = tensor2(x, 2, 32, &d);
    let norm = Norm::new(32, &d);
    let full = values(norm.forward(x.clone()));
    let half = cast_params(norm, FloatDType::F16).forward(x.cast(FloatDType::F16));
    assert_eq!(half.dtype(), burn::tensor::DType::F16);
    let half = values(half.cast(FloatDType::F32));
    for (a, b) in full.iter().zip(&half) {
        assert!((a - b).abs() < 1e-2, "f32 {a} against f16 {b}");
    }
    assert!(full.iter().all(|v| v.abs() > 0.9), "{full:?}");
}

/// The GPU backends' chains evaluate the residual blocks from negated copies
/// (`ResBlock::forward_negated`, one elementwise pass fewer per block and step). The
/// denoiser's output must be the composed SiLU's to the bit, in f32 and the half types,
/// over pre-activations from −60 to 60 (where `e^±z` nears f32's range).
#[test]
fn negated_blocks_give_the_composed_silus_output_to_the_bit() {
    let d = dev();
    let size = DenoiserSize {
        hidden: 16,
        blocks: 2,
        expanded: 64,
        fourier: 8,
        time_hidden: 16,
    };
    // Parameters scaled up so that the expanded layer's inputs spread far into both
    // tails, and shifted so that the biases (initialised to 0) count.
    struct Spread;
    impl ModuleMapper for Spread {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
            p.map(|t| t * 6.0 + 0.25)
        }
    }
    let den = Denoiser::new(4, 2, size, &mut Init::reference(5), &d).map(&mut Spread);
    let rows = 32;
    let obs = tensor2(
        (0..rows * 4)
            .map(|i| (i as f32 * 0.37).sin() * 3.0)
            .collect(),
        rows,
        4,
        &d,
    );
    let noisy = tensor2(
        (0..rows * 2).map(|i| (i as f32 * 0.91).cos()).collect(),
        rows,
        2,
        &d,
    );
    let bits = |t: Tensor<2>| -> Vec<u32> {
        values(t.cast(FloatDType::F32))
            .iter()
            .map(|v| v.to_bits())
            .collect()
    };
    for dtype in [FloatDType::F32, FloatDType::F16, FloatDType::BF16] {
        let den = den.clone().with_step_precision(dtype);
        let op = den.obs_projection(obs.clone()).cast(dtype);
        let tp = den
            .time_projection(tensor2(vec![3.0], 1, 1, &d))
            .cast(dtype);
        let x = noisy.clone().cast(dtype);
        // The composed SiLU written out, as the blocks computed it before.
        let mut h = den.input_action.forward(x.clone()) + op.clone() + tp.clone();
        let mut widest = 0.0f32;
        for b in &den.blocks {
            let z = b.up.forward(b.norm.forward(h.clone()));
            widest = widest.max(values(z.clone().abs().cast(FloatDType::F32).max()).remove(0));
            h = h.clone() + b.down.forward(silu_composed(z));
        }
        let reference = den.output.forward(silu(h));
        let negated = den.forward_projected_with(&den.negated_blocks(), x, op, tp);
        assert_eq!(negated.dtype(), reference.dtype(), "{dtype:?}");
        assert!(widest > 60.0, "{dtype:?}: |z| reaches only {widest}");
        assert_eq!(bits(negated), bits(reference), "{dtype:?}");
    }
}

#[test]
fn denoiser_shared_time_projection_equals_per_row_time() {
    let d = dev();
    let size = DenoiserSize {
        hidden: 16,
        blocks: 2,
        expanded: 32,
        fourier: 8,
        time_hidden: 16,
    };
    let den = Denoiser::new(4, 2, size, &mut Init::reference(2), &d);
    let obs = tensor2((0..12).map(|i| (i as f32).sin()).collect(), 3, 4, &d);
    let x = tensor2(vec![0.1, -0.2, 0.3, 0.0, -0.5, 0.9], 3, 2, &d);
    let per_row = den.forward(x.clone(), obs.clone(), tensor2(vec![2.0; 3], 3, 1, &d));
    let shared = den.forward_projected(
        x,
        den.obs_projection(obs),
        den.time_projection(tensor2(vec![2.0], 1, 1, &d)),
    );
    for (a, b) in values(per_row).iter().zip(values(shared)) {
        assert!((a - b).abs() < 1e-5);
    }
}

#[test]
fn ensemble_subset_equals_rows_of_the_full_ensemble() {
    let d = dev();
    let critic = CriticEnsemble::new(6, 5, &[16, 16], &mut Init::reference(4), &d);
    let x = tensor2((0..20).map(|i| (i as f32 * 0.37).cos()).collect(), 4, 5, &d);
    let full = values(critic.forward(x.clone())); // [6, 4]
    let subset = [4usize, 1];
    let part = values(critic.forward_members(x, Some(&subset)));
    for (k, &e) in subset.iter().enumerate() {
        for r in 0..4 {
            assert!((part[k * 4 + r] - full[e * 4 + r]).abs() < 1e-5);
        }
    }
    assert!((full[0] - full[4]).abs() > 1e-4, "members should differ");
}

#[test]
fn random_subsets_are_distinct_and_uniform() {
    let mut rng = Rng::new(0);
    let mut counts = [0usize; 10];
    for _ in 0..20_000 {
        let s = random_subset(&mut rng, 10, 2);
        assert_ne!(s[0], s[1]);
        for i in s {
            counts[i] += 1;
        }
    }
    for c in counts {
        assert!((3_700..4_300).contains(&c), "{counts:?}");
    }
}

#[test]
fn polyak_blends_every_parameter() {
    let d = dev();
    let target = CriticEnsemble::new(3, 4, &[8], &mut Init::reference(5), &d);
    // The online copy shares the target's parameter ids; scale it by 3.
    let online = scale_module(target.clone(), 3.0);
    let w = |c: &CriticEnsemble, l: usize| values(c.layers[l].weight.val());
    let blended = polyak(target.clone(), &online, 0.25);
    for l in 0..2 {
        for (a, b) in w(&target, l).iter().zip(w(&blended, l)) {
            assert!((1.5 * a - b).abs() < 1e-5, "0.75·w + 0.25·3w = 1.5w");
        }
    }
    let gamma = |c: &CriticEnsemble| values(c.norms[0].gamma.val());
    assert!(gamma(&blended).iter().all(|g| (g - 1.5).abs() < 1e-6));
    assert_eq!(w(&polyak(target.clone(), &online, 1.0), 1), w(&online, 1));
    assert_eq!(w(&polyak(target.clone(), &online, 0.0), 1), w(&target, 1));
}

/// The SiLU the GPU backends use for inference (`x / (1 + e^−x)`, fewer kernels than
/// burn's composed sigmoid there), and the CPU's (the same formula in one vectorized
/// pass), against burn's native one, out to the extremes where `e^−x` overflows; and why
/// the formula is kept out of autodiff: its gradient is NaN there.
#[test]
fn composed_silu_matches_burns_and_stays_out_of_autodiff() {
    let xs = [
        -1e4f32, -100.0, -88.0, -20.0, -3.0, -1.0, -0.1, 0.0, 0.1, 1.0, 3.0, 20.0, 100.0, 1e4,
    ];
    let x = || Tensor::<1>::from_floats(xs, &dev());
    let y_ref = values(burn::tensor::activation::silu(x()));
    // The GPU backends' formula, and the CPU's inference SiLU (`nets::silu` outside
    // autodiff on flex: the same formula in one vectorized loop).
    for (which, y) in [
        ("composed", values(silu_composed(x()))),
        ("cpu", values(trainer::nets::silu(x()))),
    ] {
        for (i, v) in xs.iter().enumerate() {
            let tol = 1e-6 * (1.0 + y_ref[i].abs());
            assert!(
                (y[i] - y_ref[i]).abs() <= tol,
                "{which} silu({v}) = {} vs {}",
                y[i],
                y_ref[i]
            );
        }
    }
    // Under autodiff `nets::silu` is burn's; the composed formula's gradient at −1e4 is
    // 0 · ∞. If burn ever makes it finite, the composed form could serve training too.
    let ad = dev().autodiff();
    let x = Tensor::<1>::from_floats([-1e4f32, 1.0], &ad).require_grad();
    let grads = silu_composed(x.clone()).sum().backward();
    let g = values(x.grad(&grads).unwrap());
    assert!(g[0].is_nan() && g[1].is_finite(), "{g:?}");
    let x = Tensor::<1>::from_floats([-1e4f32, 1.0], &ad).require_grad();
    let grads = trainer::nets::silu(x.clone()).sum().backward();
    let g = values(x.grad(&grads).unwrap());
    assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
}

/// The critic step's written-out backward pass against burn's autodiff on the same
/// loss: Q, the loss and every parameter's gradient, for a 3-member ensemble with layer
/// norm and ReLU, on inputs that leave some units inactive.
#[test]
fn critic_gradients_written_out_match_autodiff() {
    let ad = dev().autodiff();
    let (rows, d_in) = (9, 5);
    let critic = CriticEnsemble::new(3, d_in, &[7, 6], &mut Init::reference(11), &ad);
    let mut rng = Rng::new(12);
    let x: Vec<f32> = (0..rows * d_in).map(|_| 2.0 * rng.normal()).collect();
    let y: Vec<f32> = (0..rows).map(|_| rng.normal()).collect();
    let x_plain = tensor2(x.clone(), rows, d_in, &dev());
    let y_plain = tensor2(y.clone(), 1, rows, &dev());

    let q_ad = critic.forward(tensor2(x, rows, d_in, &ad));
    let loss_ad = (q_ad.clone() - tensor2(y, 1, rows, &ad)).square().mean();
    let grads_ad = burn::optim::GradientsParams::from_grads(loss_ad.clone().backward(), &critic);
    let (q, diff, grads) = critic.td_loss_and_grads(x_plain, y_plain.clone(), 1);
    assert_eq!(
        values(diff.clone()),
        values(q.clone() - y_plain),
        "errors Q − y"
    );
    let loss = diff.square().mean();

    let close = |a: &[f32], b: &[f32], what: &str| {
        assert_eq!(a.len(), b.len(), "{what}");
        for (u, v) in a.iter().zip(b) {
            assert!(
                (u - v).abs() <= 1e-5 * (1.0 + v.abs()),
                "{what}: {u} vs {v}"
            );
        }
    };
    close(&values(q), &values(q_ad.inner()), "Q");
    close(&values(loss), &values(loss_ad.inner()), "loss");
    let mut compared = 0;
    let mut inactive = 0;
    for (i, l) in critic.layers.iter().enumerate() {
        for (id, what) in [(l.weight.id, "weight"), (l.bias.id, "bias")] {
            let want = values(grads_ad.get::<3>(id).expect("autodiff gradient"));
            let got = values(grads.get::<3>(id).expect("written-out gradient"));
            assert!(
                want.iter().any(|v| v.abs() > 1e-4),
                "layer {i} {what}: all zero"
            );
            inactive += want.iter().filter(|v| **v == 0.0).count();
            close(&got, &want, &format!("layer {i} {what}"));
            compared += 1;
        }
    }
    for (i, n) in critic.norms.iter().enumerate() {
        for (id, what) in [(n.gamma.id, "gamma"), (n.beta.id, "beta")] {
            let want = values(grads_ad.get::<3>(id).expect("autodiff gradient"));
            let got = values(grads.get::<3>(id).expect("written-out gradient"));
            close(&got, &want, &format!("norm {i} {what}"));
            compared += 1;
        }
    }
    assert_eq!(compared, 10);
    assert_eq!(
        grads.len(),
        10,
        "no gradient for anything but the parameters"
    );
    // Some ReLUs were off for every row of a member, so the mask path was exercised.
    assert!(
        inactive > 0,
        "every unit active: the ReLU mask was not exercised"
    );
}

/// `compute.threads` in the critic step: the members split into groups on their own
/// threads give the one-thread Q, errors and gradients to the bit. 5 members in 2 groups
/// (3 + 2, so the groups differ in size), in 3, and in 5 (one member each).
#[test]
fn critic_gradients_split_by_members_are_the_one_thread_values() {
    let ad = dev().autodiff();
    let (rows, d_in) = (33, 6);
    let critic = CriticEnsemble::new(5, d_in, &[16, 8], &mut Init::reference(21), &ad);
    let mut rng = Rng::new(22);
    let x: Vec<f32> = (0..rows * d_in).map(|_| 2.0 * rng.normal()).collect();
    let y: Vec<f32> = (0..rows).map(|_| rng.normal()).collect();
    let run = |threads: usize| {
        let (q, diff, grads) = critic.td_loss_and_grads(
            tensor2(x.clone(), rows, d_in, &dev()),
            tensor2(y.clone(), 1, rows, &dev()),
            threads,
        );
        let mut all = vec![values(q), values(diff)];
        for l in &critic.layers {
            for id in [l.weight.id, l.bias.id] {
                all.push(values(
                    grads.get::<3>(id).expect("a gradient per parameter"),
                ));
            }
        }
        for n in &critic.norms {
            for id in [n.gamma.id, n.beta.id] {
                all.push(values(
                    grads.get::<3>(id).expect("a gradient per parameter"),
                ));
            }
        }
        assert_eq!(grads.len(), 10, "{threads} threads");
        all
    };
    let one = run(1);
    assert!(one[2].iter().any(|v| *v != 0.0));
    for threads in [2, 3, 5] {
        let split = run(threads);
        for (i, (a, b)) in one.iter().zip(&split).enumerate() {
            assert_eq!(a.len(), b.len(), "{threads} threads, tensor {i}");
            let differing = a.iter().zip(b).filter(|(u, v)| u.to_bits() != v.to_bits());
            assert_eq!(differing.count(), 0, "{threads} threads, tensor {i}");
        }
    }
}

/// Scoring subsets gathered from a critic ensemble's flat buffer
/// (`trainer::optim::MemberGather`, 3 device operations) hold exactly the members that
/// selecting each parameter tensor gives, in the order asked for, with both packings
/// (the GPU's aligned buffer with padding, the CPU's concatenation); and so score the
/// same, to the bit.
#[test]
fn members_gathered_from_the_flat_buffer_are_the_selected_members() {
    use trainer::nets::member_ids;
    use trainer::optim::{FlatLayout, MemberGather, Packing};
    let (rows, d_in) = (9, 5);
    let critic = CriticEnsemble::new(5, d_in, &[7, 6], &mut Init::reference(31), &dev());
    let mut rng = Rng::new(32);
    let x = tensor2(
        (0..rows * d_in).map(|_| rng.normal()).collect(),
        rows,
        d_in,
        &dev(),
    );
    for packing in [Packing::Aligned, Packing::Concatenated] {
        let layout = FlatLayout::of(&critic, packing);
        let flat = layout.params(&critic);
        for subset in [vec![3, 1], vec![0, 4], vec![2, 2], vec![4]] {
            let small = critic.first_members(subset.len());
            let gather = MemberGather::new(&layout, &small, &dev()).unwrap();
            let ids = member_ids(&subset, &dev());
            let gathered = gather.layout().assign(small, &gather.gather(&flat, &ids));
            let pairs = critic
                .layers
                .iter()
                .zip(&gathered.layers)
                .flat_map(|(a, b)| [(&a.weight, &b.weight), (&a.bias, &b.bias)]);
            let norms = critic
                .norms
                .iter()
                .zip(&gathered.norms)
                .flat_map(|(a, b)| [(&a.gamma, &b.gamma), (&a.beta, &b.beta)]);
            let mut compared = 0;
            for (full, got) in pairs.chain(norms) {
                let want = full.val().select(0, ids.clone());
                assert_eq!(
                    values(got.val()),
                    values(want),
                    "{packing:?}, members {subset:?}"
                );
                compared += 1;
            }
            assert_eq!(compared, 10);
            assert_eq!(
                values(gathered.forward(x.clone())),
                values(critic.forward_selected(x.clone(), Some(&ids))),
                "{packing:?}, members {subset:?}: scores"
            );
        }
    }
    // A layout of another network is refused with the reason.
    let other = CriticEnsemble::new(5, d_in, &[7], &mut Init::reference(33), &dev());
    let e = MemberGather::new(
        &FlatLayout::of(&critic, Packing::Aligned),
        &other.first_members(2),
        &dev(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("parameter tensors"), "{e}");
}

//! Micro-benchmark of the op costs that dominate the sampling chain (flex backend;
//! `B=nd` picks burn-ndarray, which needs `--features ndarray`).
use burn::tensor::activation::{relu, silu};
use burn::tensor::{Device, Tensor};
use std::time::Instant;
fn time<F: FnMut()>(n: usize, mut f: F) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_secs_f64() / n as f64 * 1e6
}
fn main() {
    let backend = if std::env::var("B").as_deref() == Ok("nd") {
        "ndarray"
    } else {
        "cpu"
    };
    // The trainer's own parser: it names the missing feature for `nd`.
    let dev: Device = trainer::device::parse(backend).expect("device").device();
    let x = Tensor::<2>::random(
        [512, 256],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &dev,
    );
    let h = Tensor::<2>::random(
        [512, 64],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &dev,
    );
    let w = Tensor::<2>::random(
        [64, 256],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &dev,
    );
    let w2 = Tensor::<2>::random(
        [256, 64],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &dev,
    );
    let b = Tensor::<1>::random([256], burn::tensor::Distribution::Normal(0.0, 1.0), &dev);
    println!(
        "silu [512,256]      {:8.1} us",
        time(200, || {
            let _ = silu(x.clone()).into_data();
        })
    );
    println!(
        "exp [512,256]       {:8.1} us",
        time(200, || {
            let _ = x.clone().exp().into_data();
        })
    );
    println!(
        "tanh [512,256]      {:8.1} us",
        time(200, || {
            let _ = x.clone().tanh().into_data();
        })
    );
    println!(
        "sigmoid [512,256]   {:8.1} us",
        time(200, || {
            let _ = burn::tensor::activation::sigmoid(x.clone()).into_data();
        })
    );
    println!(
        "x*0.5*(1+tanh(x/2)) {:8.1} us",
        time(200, || {
            let _ = (x.clone() * ((x.clone() * 0.5).tanh() + 1.0) * 0.5).into_data();
        })
    );
    println!(
        "relu [512,256]      {:8.1} us",
        time(200, || {
            let _ = relu(x.clone()).into_data();
        })
    );
    println!(
        "add bias [512,256]  {:8.1} us",
        time(200, || {
            let _ = (x.clone() + b.clone().unsqueeze_dim(0)).into_data();
        })
    );
    println!(
        "mm 512x64x256       {:8.1} us",
        time(200, || {
            let _ = h.clone().matmul(w.clone()).into_data();
        })
    );
    println!(
        "mm 512x256x64       {:8.1} us",
        time(200, || {
            let _ = x.clone().matmul(w2.clone()).into_data();
        })
    );
    println!(
        "var_mean [512,64]   {:8.1} us",
        time(200, || {
            let (v, m) = h.clone().var_mean_bias(1);
            let _ = (v.into_data(), m.into_data());
        })
    );
    // The trainer's own SiLU on the host buffer (`nets::silu_in_place`), each loop this
    // CPU has, on a `paper`-preset block's `[1024 chains, 1024]` activations. Each run
    // starts from a fresh copy (repeated SiLU would drift into denormals); the copy alone
    // is timed too.
    let src: Vec<f32> = (0..1024 * 1024)
        .map(|i| (i % 4001) as f32 * 0.005 - 10.0)
        .collect();
    let mut values = src.clone();
    println!(
        "copy [1024,1024]                   {:8.1} us",
        time(200, || values.copy_from_slice(&src))
    );
    for (name, kernel) in trainer::nets::silu_kernels() {
        println!(
            "copy + silu_in_place {name:6} [1024,1024] {:8.1} us",
            time(200, || {
                values.copy_from_slice(&src);
                kernel(&mut values)
            })
        );
    }
    println!(
        "into_data [512,256] {:8.1} us",
        time(200, || {
            let _ = x.clone().into_data();
        })
    );
}

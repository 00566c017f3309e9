//! Micro-benchmark of the op costs that dominate the sampling chain (flex backend).
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
#[allow(deprecated)] // burn-ndarray, kept for the comparison
fn main() {
    let dev = if std::env::var("B").as_deref() == Ok("nd") {
        Device::ndarray()
    } else {
        Device::flex()
    };
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
    println!(
        "into_data [512,256] {:8.1} us",
        time(200, || {
            let _ = x.clone().into_data();
        })
    );
}

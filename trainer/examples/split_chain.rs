//! Experiment (session 10): the hoisted candidates' chain over 512 rows in one pass
//! against two halves on two threads: same bits? how much faster?
use burn::tensor::Tensor;
use shared_model::DiffusionSchedule;
use sim::rng::Rng;
use std::time::Instant;
use trainer::agent::{Stream, chain_noise, chain_times, run_chain};
use trainer::nets::{Denoiser, DenoiserSize, Init, tensor2};

fn main() {
    let d = trainer::device::parse("cpu").unwrap().device();
    let mut rng = Rng::new(1);
    let size = DenoiserSize {
        hidden: 64,
        blocks: 2,
        expanded: 256,
        fourier: 32,
        time_hidden: 64,
    };
    let den = Denoiser::new(10, 2, size, &mut Init::reference(1), &d);
    let sched = DiffusionSchedule::vp(5, 0.1, 10.0);
    let rows = 512;
    let obs = tensor2(
        (0..rows * 10).map(|i| (i % 17) as f32 * 0.1).collect(),
        rows,
        10,
        &d,
    );
    let noise = chain_noise(&mut Stream::host(&mut rng), &sched, rows, 2, &d);
    let times = chain_times(&sched, &d);
    let half = |t: &Tensor<2>, r: std::ops::Range<usize>| t.clone().slice([r, 0..t.dims()[1]]);
    for round in 0..3 {
        let t = Instant::now();
        let mut one = None;
        for _ in 0..50 {
            one = Some(run_chain(
                &den,
                &sched,
                obs.clone(),
                times.clone(),
                noise.clone(),
            ));
        }
        let t_one = t.elapsed().as_secs_f64() / 50.0;
        let t = Instant::now();
        let mut two = None;
        for _ in 0..50 {
            let (a, b) = std::thread::scope(|s| {
                let h = s.spawn(|| {
                    let n = noise.iter().map(|n| half(n, rows / 2..rows)).collect();
                    run_chain(&den, &sched, half(&obs, rows / 2..rows), times.clone(), n)
                });
                let n = noise.iter().map(|n| half(n, 0..rows / 2)).collect();
                let a = run_chain(&den, &sched, half(&obs, 0..rows / 2), times.clone(), n);
                (a, h.join().unwrap())
            });
            two = Some(Tensor::cat(vec![a, b], 0));
        }
        let t_two = t.elapsed().as_secs_f64() / 50.0;
        let (a, b) = (one.unwrap().into_data(), two.unwrap().into_data());
        let (a, b) = (a.as_slice::<f32>().unwrap(), b.as_slice::<f32>().unwrap());
        let same = a
            .iter()
            .zip(b)
            .filter(|(x, y)| x.to_bits() == y.to_bits())
            .count();
        println!(
            "round {round}: one pass {:.2} ms, two threads {:.2} ms; {same}/{} values bitwise equal",
            t_one * 1e3,
            t_two * 1e3,
            a.len()
        );
    }
}

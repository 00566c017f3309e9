//! Transition throughput of the uplink with the trainer busy (BENCHMARKS.md).
//!
//! `cargo run --release -p trainer --example uplink_throughput [-- PRESET TRANSITIONS]`
//! (defaults: `tiny`, 500000; the first tenth is not timed)
//!
//! Starts `finetune --listen` on a freshly trained run of PRESET (`tiny` or `cpu`; push)
//! in this process: it trains one update per transition as they arrive, on the same
//! cores. A client then sends TRANSITIONS synthetic push transitions as fast as the
//! link accepts them (batches of `uplink::records::BATCH`, each acknowledged after the
//! trainer has logged it and synced the log to disk) and reports transitions per second. The trainer's updates
//! lag behind (one per transition, on the same 2 cores); the example exits once the
//! last batch is acknowledged.

use controller::robot_loop::log::{Record, Transition};
use firmware_config::protocol::{MAX_ACT, MAX_OBS};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use trainer::config::Config;
use trainer::finetune::{FinetuneOptions, LiveOptions, finetune};
use trainer::run::{TrainOptions, train};
use uplink::records::{BATCH, open_stream, send_batch};
use uplink::{KEY_LEN, Key, Session};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let preset = args.get(1).map_or("tiny", |s| s.as_str());
    let n: usize = args.get(2).map_or(Ok(500_000), |s| s.parse())?;
    let tmp = tempfile::tempdir()?;
    let run = tmp.path().join("run");
    let mut c = Config::preset(preset)?;
    c.task = sim::TaskId::Push.into();
    c.run.pretrain_steps = 10;
    c.run.online_steps = 10;
    c.run.eval_episodes = 1;
    train(&c, &run, &TrainOptions::default(), &mut ())?;

    let key = Key::from_bytes([1; KEY_LEN]);
    let (tx, rx) = std::sync::mpsc::channel();
    let opts = FinetuneOptions {
        from: run,
        data: vec![],
        out: tmp.path().join("live"),
        updates: usize::MAX,
        with_offline: true,
        checkpoint_every: 0,
        log_every: 1000,
        eval_episodes: 0,
        resume: false,
        stop_after: None,
        keep_interventions: false,
        device: None,
        exports_bundle: false,
        listen: Some(LiveOptions {
            addr: "127.0.0.1:0".into(),
            key: key.clone(),
            publish_every: 0,
            signing_key: None,
            idle_exit: Some(Duration::from_secs(1)),
            bound: Some(tx),
            stop: None,
        }),
    };
    let trainer = std::thread::spawn(move || finetune(&opts, &mut ()));
    let addr = rx.recv_timeout(Duration::from_secs(600))?;

    let spec = sim::TaskId::Push.spec();
    let records: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let mut t = Transition {
                episode: (i / 100) as u32,
                step: (i % 100) as u32,
                obs_dim: spec.obs_dim() as u8,
                act_dim: spec.action_dim() as u8,
                obs: [0.0; MAX_OBS],
                action: [0.0; MAX_ACT],
                reward: 0.0,
                done: i % 100 == 99,
                truncated: false,
                success: false,
                intervention: false,
                teleop: false,
                next_obs: [0.0; MAX_OBS],
                obs_fw_us: 0,
                next_obs_fw_us: 0,
                obs_rx_ns: 0,
                action_sent_ns: 0,
                next_obs_rx_ns: 0,
            };
            t.obs[0] = i as f32 * 1e-4;
            t.next_obs[0] = (i + 1) as f32 * 1e-4;
            let mut v = vec![];
            Record::Transition(t).encode(&mut v);
            v
        })
        .collect();
    let tcp = TcpStream::connect(addr)?;
    tcp.set_nodelay(true)?;
    let mut s = Session::client(tcp, &key)?;
    let mut next = open_stream(&mut s, "throughput")?;
    // Untimed: the first batches set the trainer to work (an update per transition).
    let warm = (n / 10).max(BATCH);
    while (next as usize) < warm {
        let end = warm.min(next as usize + BATCH);
        next = send_batch(&mut s, next, &records[next as usize..end])?.next;
    }
    let clock = Instant::now();
    while (next as usize) < records.len() {
        let end = records.len().min(next as usize + BATCH);
        next = send_batch(&mut s, next, &records[next as usize..end])?.next;
    }
    let secs = clock.elapsed().as_secs_f64();
    let timed = n - warm;
    println!(
        "{preset} preset: {timed} transitions ({} bytes each) acknowledged in {secs:.2} s = {:.0} transitions/s, with the trainer updating on the same cores",
        records[0].len(),
        timed as f64 / secs,
    );
    // The trainer still owes an update per transition; the measurement is done.
    drop((s, trainer));
    std::process::exit(0)
}

//! The sample-efficiency study: every (task, algorithm, seed) as a `trainer train`
//! child process, a few at a time, then one summary table and learning-curve plots.
//!
//! Each run lives in `OUT/TASK/ALGO/seed-S/`. A run directory that already holds a run
//! is continued with `--resume`, so an interrupted study continues where it stopped and
//! finished runs are skipped; its `log.txt` is appended to.

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;
use sim::TaskId;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::config::Algo;
use crate::run::ComputeMay;

/// What to run.
#[derive(Clone, Debug)]
pub struct StudySpec {
    pub tasks: Vec<TaskId>,
    pub algos: Vec<Algo>,
    pub seeds: Vec<u64>,
    pub preset: String,
    pub overrides: Vec<String>,
    /// Child processes at once (one per core: each run is single-threaded).
    pub jobs: usize,
    pub out: PathBuf,
    /// Stop the runs still going after this long (a device lent for minutes): their
    /// evaluations so far stay in their `eval.csv`, without a `done` marker.
    pub time_limit: Option<std::time::Duration>,
}

pub fn algo_name(a: Algo) -> &'static str {
    match a {
        Algo::Expo => "expo",
        Algo::Bc => "bc",
        Algo::IdqlSelect => "idql-select",
        Algo::Rlpd => "rlpd",
    }
}

/// Marks a run whose process failed (its exit status inside): its rows so far are not
/// a curve's, not even with `curves --include-unfinished`, which takes the runs a time
/// limit stopped.
const FAILED: &str = "failed";

/// The keys the study sets for each run itself: a `--set` of one of them would give
/// every run the same value under the study's names (three "seeds" of one seed).
const STUDY_KEYS: [&str; 3] = ["task", "algo", "seed"];

impl StudySpec {
    /// Refuses what would file runs under the wrong names: `--set` of a key the study
    /// sets per run, and a task or algorithm listed twice (two runs in one directory).
    pub fn check(&self) -> Result<()> {
        for o in &self.overrides {
            let key = o.split('=').next().unwrap_or("").trim();
            ensure!(
                !STUDY_KEYS.contains(&key),
                "--set {o}: the study sets `{key}` for each run (--tasks, --algos, --seeds); \
                 it cannot be overridden for all of them"
            );
        }
        for (i, t) in self.tasks.iter().enumerate() {
            ensure!(!self.tasks[..i].contains(t), "--tasks lists {t} twice");
        }
        for (i, a) in self.algos.iter().enumerate() {
            ensure!(
                !self.algos[..i].contains(a),
                "--algos lists {} twice",
                algo_name(*a)
            );
        }
        Ok(())
    }

    /// The configuration of one run, as its child process resolves it.
    fn config(&self, task: TaskId, algo: Algo, seed: u64) -> Result<crate::config::Config> {
        let mut overrides = vec![
            format!("task=\"{task}\""),
            format!("algo=\"{}\"", algo_name(algo)),
            format!("seed={seed}"),
        ];
        overrides.extend(self.overrides.iter().cloned());
        crate::config::Config::resolve(&self.preset, None, &overrides)
            .with_context(|| format!("the {task} / {} runs' configuration", algo_name(algo)))
    }
}

/// Whether the finished run in `dir` is the one `config` asks for: `Ok(true)` when it
/// is, `Ok(false)` when only a larger `run.online_steps` is asked (the run is extended
/// with `--resume`), an error naming the setting otherwise (a study rerun with another
/// preset or `--set` into the same directory would mix its runs in).
fn finished_run_matches(dir: &Path, config: &crate::config::Config) -> Result<bool> {
    let path = dir.join("config.toml");
    let saved = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    // (Of the `compute` settings, those that change the numbers a run computes count.)
    if let Some((key, then, now)) =
        crate::run::difference_except_length(&saved, config, ComputeMay::KeepResults)
            .with_context(|| format!("{}", path.display()))?
    {
        bail!(
            "{}: a finished run with another configuration (`{key}` was {then}, the study \
             asks {now}); give the study another --out",
            dir.display()
        );
    }
    let then: crate::config::Config = toml::from_str(&saved)?;
    let (was, asked) = (then.run.online_steps, config.run.online_steps);
    ensure!(
        was <= asked,
        "{}: a finished run of {was} online steps, the study asks {asked}; give the study \
         another --out",
        dir.display()
    );
    let (e, ask) = (&then.run, &config.run);
    if (e.eval_every, e.eval_episodes) != (ask.eval_every, ask.eval_episodes) {
        eprintln!(
            "note: {} keeps its evaluations (every {} steps, {} episodes); the study asks \
             every {} steps, {} episodes",
            dir.display(),
            e.eval_every,
            e.eval_episodes,
            ask.eval_every,
            ask.eval_episodes
        );
    }
    Ok(was == asked)
}

/// An unfinished run in `dir` with a checkpoint is resumed with `train --resume`, which
/// takes the settings its checkpoint was written with only (its length at least as
/// long): others are refused here, before anything starts. They failed in each child,
/// after the other runs had run. (One without a checkpoint starts over, with any
/// settings; a checkpoint directory without a `state.json` is refused by name, as
/// `train --resume` refuses it; a `state.json` this cannot parse is left to the child.)
fn unfinished_run_resumes(dir: &Path, config: &crate::config::Config) -> Result<()> {
    let Some(checkpoint) = crate::run::checkpoint_to_resume(dir)? else {
        return Ok(());
    };
    let path = checkpoint.join("state.json");
    let state: serde_json::Value = match std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
    {
        Some(v) => v,
        None => return Ok(()),
    };
    let Some(saved) = state["config_toml"].as_str().map(str::to_string) else {
        return Ok(());
    };
    if let Some((key, then, now)) =
        crate::run::difference_except_length(&saved, config, ComputeMay::KeepResults)
            .with_context(|| format!("{}", path.display()))?
    {
        bail!(
            "{}: an unfinished run, resumed with the settings it ran with (`{key}` was \
             {then}, the study asks {now}); give the study the same settings or another --out",
            dir.display()
        );
    }
    let then: crate::config::Config = toml::from_str(&saved)?;
    let (was, asked) = (then.run.online_steps, config.run.online_steps);
    ensure!(
        was <= asked,
        "{}: an unfinished run of {was} online steps, the study asks {asked} (a resume \
         never shortens a run); give the study at least {was} or another --out",
        dir.display()
    );
    Ok(())
}

/// The study's child runs still going. Dropped on an error return (a file the study
/// could not write), it stops them: a `Child` is not killed when dropped, and they
/// would train on unsupervised, their results never marked.
struct Running(Vec<(Child, PathBuf)>);

impl Running {
    /// Kills and reaps every run still going, `say`ing which.
    fn stop_all(&mut self, say: impl Fn(&Path)) {
        for (mut child, dir) in self.0.drain(..) {
            child.kill().ok();
            child.wait().ok();
            say(&dir);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop_all(|dir| {
            eprintln!(
                "study: stopped {} (the study ended with an error)",
                dir.display()
            )
        });
    }
}

/// Runs every missing run of the study with the `trainer` executable `exe`. Returns the
/// directories of the runs that failed (each marked `failed`); the others are done, or
/// were stopped by the time limit.
pub fn run_study(spec: &StudySpec, exe: &Path) -> Result<Vec<PathBuf>> {
    spec.check()?;
    // Every run's configuration first: a bad preset or override fails here, with its
    // reason, instead of in each child run's log; and a finished run of other settings
    // in the directory is refused before anything starts.
    let mut queue = vec![];
    for &task in &spec.tasks {
        for &algo in &spec.algos {
            for &seed in &spec.seeds {
                let config = spec.config(task, algo, seed)?;
                let dir = spec
                    .out
                    .join(task.name())
                    .join(algo_name(algo))
                    .join(format!("seed-{seed}"));
                // A finished run is skipped, or extended: `train --resume` continues it
                // to the new length. Its done mark goes when it starts (below): a
                // refusal of a later run, or a time limit that comes before it starts,
                // leaves it finished.
                if dir.join("done").is_file() {
                    if finished_run_matches(&dir, &config)? {
                        continue;
                    }
                } else {
                    unfinished_run_resumes(&dir, &config)?;
                }
                queue.push((task, algo, seed, dir));
            }
        }
    }
    // One study at a time in a directory (taken once every configuration resolved: a
    // refused study creates nothing): a second one, the first still running (say after
    // an ssh drop), started each unfinished run again beside the first's child, and
    // marked it failed when that child found the run in use.
    std::fs::create_dir_all(&spec.out)
        .with_context(|| format!("creating {}", spec.out.display()))?;
    let _study = crate::run::lock_run_dir(&spec.out)?;
    let total = queue.len();
    println!("study: {total} runs to do, {} at a time", spec.jobs);
    let mut running = Running(vec![]);
    let mut finished = 0;
    let mut failures = vec![];
    queue.reverse();
    let start = std::time::Instant::now();
    while !queue.is_empty() || !running.0.is_empty() {
        if spec
            .time_limit
            .is_some_and(|limit| start.elapsed() >= limit)
        {
            // Killed, not failed: the run's rows so far are kept; `--resume` would
            // continue it from its last checkpoint.
            running.stop_all(|dir| println!("stopped at the time limit: {}", dir.display()));
            println!(
                "study: time limit reached; {finished} of {total} runs finished, {} not started",
                queue.len()
            );
            break;
        }
        while running.0.len() < spec.jobs.max(1) {
            let Some((task, algo, seed, dir)) = queue.pop() else {
                break;
            };
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            // Tried again: no longer a failed run unless it fails again.
            let _ = std::fs::remove_file(dir.join(FAILED));
            // A finished run that is extended is no longer finished once it starts (all
            // its done marks went before any started: a time limit then left the runs it
            // never started out of the summary).
            let done = dir.join("done");
            match std::fs::remove_file(&done) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", done.display()));
                }
                _ => {}
            }
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("log.txt"))
                .with_context(|| format!("opening {}", dir.join("log.txt").display()))?;
            // Only where there is something to continue: `--resume` on an empty directory
            // prints a note into the log of every fresh run.
            let resume = crate::run::ensure_no_run_in(&dir).is_err();
            let mut cmd = Command::new(exe);
            cmd.arg("train")
                .arg("--preset")
                .arg(&spec.preset)
                .args(["--set", &format!("task=\"{task}\"")])
                .args(["--set", &format!("algo=\"{}\"", algo_name(algo))])
                .args(["--set", &format!("seed={seed}")]);
            for o in &spec.overrides {
                cmd.args(["--set", o]);
            }
            cmd.arg("--out").arg(&dir);
            if resume {
                cmd.arg("--resume");
            }
            let child = cmd
                .stdout(log.try_clone()?)
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {}", exe.display()))?;
            running.0.push((child, dir));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        // Finished runs leave `running` one by one, so an error return leaves every
        // other one there for `Running`'s drop to stop.
        let mut i = 0;
        while i < running.0.len() {
            let (child, dir) = &mut running.0[i];
            let status = child
                .try_wait()
                .with_context(|| format!("waiting for the run in {}", dir.display()))?;
            let Some(status) = status else {
                i += 1;
                continue;
            };
            let (_, dir) = running.0.remove(i);
            finished += 1;
            if status.success() {
                let done = dir.join("done");
                std::fs::write(&done, "").with_context(|| format!("writing {}", done.display()))?;
                println!("[{finished}/{total}] done {}", dir.display());
            } else {
                println!(
                    "[{finished}/{total}] FAILED {} (see log.txt)",
                    dir.display()
                );
                let failed = dir.join(FAILED);
                std::fs::write(&failed, format!("{status}\n"))
                    .with_context(|| format!("writing {}", failed.display()))?;
                failures.push(dir);
            }
        }
    }
    Ok(failures)
}

/// The line under a table of `mean ± std` figures.
pub const STD_NOTE: &str = "± is the standard deviation over seeds, divided by the number of seeds (numpy's default, not n − 1).";

/// Mean and standard deviation over seeds of the success rate at each evaluation step.
/// The deviation divides by the number of seeds (numpy's default), not by one less:
/// [`STD_NOTE`] says so under every table that prints it.
#[derive(Clone, Debug, Serialize)]
pub struct Curve {
    pub steps: Vec<usize>,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub seeds: usize,
}

/// Reads `eval.csv` of every finished seed of `task`/`algo` under `out`.
pub fn load_curve(out: &Path, task: TaskId, algo: Algo) -> Result<Option<Curve>> {
    load_runs(out, task, algo, false, None)
}

/// As [`load_curve`]; with `unfinished`, also the seeds stopped before their end (a
/// time-limited study): the curve then ends at the last evaluation every seed reached.
/// With `seeds`, only those (a study's own; other `seed-N` directories are named and
/// left out).
pub fn load_runs(
    out: &Path,
    task: TaskId,
    algo: Algo,
    unfinished: bool,
    seeds_asked: Option<&[u64]>,
) -> Result<Option<Curve>> {
    let dir = out.join(task.name()).join(algo_name(algo));
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(None);
    };
    let mut per_step: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut seeds = 0;
    for e in entries {
        let run = e?.path();
        // Runs are `seed-N`; a copy such as `seed-0-old` is not another seed.
        let Some(seed) = run
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("seed-"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if seeds_asked.is_some_and(|asked| !asked.contains(&seed)) {
            eprintln!(
                "note: {} is not one of this study's seeds: left out of the summary",
                run.display()
            );
            continue;
        }
        let path = run.join("eval.csv");
        let done = path.parent().unwrap().join("done").is_file();
        if !done && run.join(FAILED).is_file() {
            if unfinished {
                eprintln!(
                    "note: {} failed (see its log.txt): left out of the curve",
                    run.display()
                );
            }
            continue;
        }
        if !(done || unfinished && path.is_file()) {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let lines: Vec<&str> = text.lines().skip(1).collect();
        let mut rows = vec![];
        for (i, line) in lines.iter().enumerate() {
            let mut f = line.split(',');
            let row = f
                .next()
                .and_then(|v| v.parse::<usize>().ok())
                .zip(f.next().and_then(|v| v.parse::<f64>().ok()));
            match row {
                Some(row) => rows.push(row),
                // A run stopped at a time limit may have been killed mid-row.
                None if !done && i + 1 == lines.len() => {}
                None => bail!("{}: bad row '{line}'", path.display()),
            }
        }
        // A run stopped before its first evaluation adds nothing (and would empty the
        // curve, which keeps the steps every counted seed reached).
        if rows.is_empty() && !done {
            continue;
        }
        ensure!(
            !rows.is_empty(),
            "{}: a finished run without an evaluation row",
            path.display()
        );
        seeds += 1;
        for (step, rate) in rows {
            per_step.entry(step).or_default().push(rate);
        }
    }
    if seeds == 0 {
        return Ok(None);
    }
    let mut c = Curve {
        steps: vec![],
        mean: vec![],
        std: vec![],
        seeds,
    };
    for (step, v) in per_step {
        if v.len() != seeds {
            continue;
        }
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64;
        c.steps.push(step);
        c.mean.push(m);
        c.std.push(var.sqrt());
    }
    ensure!(
        !c.steps.is_empty(),
        "{}: no evaluation step that all {seeds} seeds reached (their eval.csv files \
         share no step)",
        dir.display()
    );
    Ok(Some(c))
}

/// First evaluation step at which `curve` reaches `level` (mean over seeds).
pub fn steps_to_reach(curve: &Curve, level: f64) -> Option<usize> {
    curve
        .steps
        .iter()
        .zip(&curve.mean)
        .find(|(_, m)| **m >= level - 1e-9)
        .map(|(s, _)| *s)
}

/// Writes `summary.md` (and returns it) and one PNG of learning curves per task, of the
/// finished runs under `out`. With `require_runs` (`--summarize-only`), a directory
/// without any is an error; after a study stopped by its time limit it is not (`trainer
/// curves --include-unfinished` plots those runs), and the files an earlier summary
/// wrote stay: a task without finished runs keeps its plot, and `summary.md` is kept
/// when no run is finished. A plot that cannot be drawn (no font, say) is named on
/// stderr and in the summary; the table is written all the same.
pub fn summarize(
    out: &Path,
    tasks: &[TaskId],
    algos: &[Algo],
    seeds: Option<&[u64]>,
    require_runs: bool,
) -> Result<String> {
    ensure!(
        out.is_dir(),
        "{}: no such study directory (`trainer study --out DIR`)",
        out.display()
    );
    let mut md = String::from(
        "| task | algorithm | seeds | start | final | best | steps to best baseline's final |\n|---|---|---|---|---|---|---|\n",
    );
    let mut verdicts = String::new();
    let mut plot_failures = String::new();
    let mut any_runs = false;
    for &task in tasks {
        let mut curves = vec![];
        for &algo in algos {
            if let Some(c) = load_runs(out, task, algo, false, seeds)? {
                curves.push((algo, c));
            }
        }
        any_runs |= !curves.is_empty();
        let best_baseline = curves
            .iter()
            .filter(|(a, _)| *a != Algo::Expo)
            .filter_map(|(a, c)| c.mean.last().map(|m| (*a, *m)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        for (algo, c) in &curves {
            // `-` without a baseline to reach ("never" read as a failure to reach it).
            let reach = match best_baseline {
                None => "-".to_string(),
                Some((_, level)) => {
                    steps_to_reach(c, level).map_or("never".to_string(), |s| s.to_string())
                }
            };
            md += &format!(
                "| {task} | {} | {} | {:.2} ± {:.2} | {:.2} ± {:.2} | {:.2} | {} |\n",
                algo_name(*algo),
                c.seeds,
                c.mean[0],
                c.std[0],
                c.mean.last().unwrap(),
                c.std.last().unwrap(),
                c.mean.iter().cloned().fold(0.0, f64::max),
                reach
            );
        }
        if let (Some((b_algo, level)), Some((_, expo))) =
            (best_baseline, curves.iter().find(|(a, _)| *a == Algo::Expo))
        {
            let b_curve = &curves.iter().find(|(a, _)| *a == b_algo).unwrap().1;
            let b_steps = *b_curve.steps.last().unwrap();
            // Where the baseline first reached its own final level (its last evaluation
            // at the latest), not its run's length: a baseline that plateaued early took
            // that many steps to get there.
            let b_reach = steps_to_reach(b_curve, level).unwrap_or(b_steps);
            let e_steps = steps_to_reach(expo, level);
            verdicts += &format!(
                "- {task}: best baseline `{}` ends at {:.2} after {} steps, first reached at \
                 step {}; EXPO reaches that {}.\n",
                algo_name(b_algo),
                level,
                b_steps,
                b_reach,
                match e_steps {
                    // The baseline was there at its first evaluation (pretraining alone):
                    // a ratio to zero steps means nothing.
                    Some(s) if b_reach == 0 => format!(
                        "at step {s} (the baseline was there from its first evaluation: no \
                         ratio)"
                    ),
                    Some(s) => format!(
                        "at step {s} ({:.2}x of the baseline's steps)",
                        s as f64 / b_reach as f64
                    ),
                    None => "never within the run".to_string(),
                }
            );
        }
        if curves.is_empty() {
            if out.join(format!("{task}.png")).exists() {
                verdicts +=
                    &format!("- {task}: no finished runs; {task}.png is an earlier summary's.\n");
            }
            continue;
        }
        if let Err(e) = crate::plot::learning_curves(
            &out.join(format!("{task}.png")),
            &format!("{task}: success rate (mean ± std over seeds)"),
            &curves
                .iter()
                .map(|(a, c)| (algo_name(*a), c))
                .collect::<Vec<_>>(),
        ) {
            eprintln!("warning: {e:#}");
            plot_failures += &format!("- {task}.png was not drawn: {e:#}\n");
        }
    }
    ensure!(
        any_runs || !require_runs,
        "{}: no finished runs of {} with {} (a run's eval.csv)",
        out.display(),
        tasks
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(", "),
        algos
            .iter()
            .map(|a| algo_name(*a))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let text = format!("{md}\n{STD_NOTE}\n\n{verdicts}{plot_failures}");
    if any_runs {
        crate::run::replace_file(&out.join("summary.md"), text.as_bytes())?;
    }
    Ok(text)
}

/// One algorithm on one task from several studies (say the `paper` preset's on a GPU
/// beside the `cpu` preset's): one PNG with a curve per study, and a table of each
/// curve's points (returned as markdown). `studies` are (label, study directory).
/// With `unfinished`, runs stopped before their end count too ([`load_runs`]).
pub fn compare(
    studies: &[(String, PathBuf)],
    task: TaskId,
    algo: Algo,
    unfinished: bool,
    png: &Path,
) -> Result<String> {
    let curves: Vec<_> = studies
        .iter()
        .map(|(label, dir)| (label.clone(), dir.clone(), algo))
        .collect();
    compare_curves(&curves, task, unfinished, png)
}

/// One `trainer curves --study LABEL=DIR[@ALGO]`: its label, directory and algorithm
/// (`algo` where none is named). A directory whose own name holds an `@` (`runs@gpu`)
/// is taken whole: it was split at its `@` and its end read as an algorithm.
pub fn parse_curve_spec(spec: &str, algo: Algo) -> Result<(String, PathBuf, Algo)> {
    let (label, rest) = spec
        .split_once('=')
        .with_context(|| format!("--study {spec}: expected LABEL=DIR[@ALGO]"))?;
    ensure!(!rest.is_empty(), "--study {spec}: no directory after '='");
    let (dir, algo) = match rest.rsplit_once('@') {
        Some((dir, a)) if Path::new(rest).is_dir() => {
            ensure!(
                a.parse::<Algo>().is_err() || !Path::new(dir).is_dir(),
                "--study {spec}: both the directory {rest} and the directory {dir} with the \
                 algorithm {a}: write {label}={rest}@ALGO for the first"
            );
            (rest, algo)
        }
        Some((dir, a)) => (
            dir,
            a.parse().with_context(|| {
                format!("--study {spec}: no directory {rest}, and after its '@'")
            })?,
        ),
        None => (rest, algo),
    };
    Ok((label.to_string(), PathBuf::from(dir), algo))
}

/// [`compare`] with each curve's own algorithm: `(label, study directory, algorithm)`,
/// so that a baseline's curve can stand beside EXPO's variants.
pub fn compare_curves(
    studies: &[(String, PathBuf, Algo)],
    task: TaskId,
    unfinished: bool,
    png: &Path,
) -> Result<String> {
    anyhow::ensure!(!studies.is_empty(), "compare: no studies given");
    let mut curves = vec![];
    for &(ref label, ref dir, algo) in studies {
        let c = load_runs(dir, task, algo, unfinished, None)?.with_context(|| {
            format!(
                "{label}: no {}run of {} on {task} under {} (expected {}/seed-*/eval.csv{})",
                if unfinished { "" } else { "finished " },
                algo_name(algo),
                dir.display(),
                dir.join(task.name()).join(algo_name(algo)).display(),
                if unfinished {
                    ""
                } else {
                    " with a `done` marker"
                }
            )
        })?;
        curves.push((label.as_str(), c));
    }
    // One algorithm in the title; several are in the curves' labels.
    let algo = studies[0].2;
    let what = if studies.iter().all(|s| s.2 == algo) {
        format!("{task}, {}", algo_name(algo))
    } else {
        task.to_string()
    };
    crate::plot::learning_curves(
        png,
        &format!("{what}: success rate (mean ± std over seeds)"),
        &curves.iter().map(|(l, c)| (*l, c)).collect::<Vec<_>>(),
    )?;
    let mut md = String::from("| environment step |");
    for (label, c) in &curves {
        md += &format!(" {label} ({} seeds) |", c.seeds);
    }
    md += "\n|---|";
    md += &"---|".repeat(curves.len());
    md += "\n";
    let steps: std::collections::BTreeSet<usize> =
        curves.iter().flat_map(|(_, c)| c.steps.clone()).collect();
    for step in steps {
        md += &format!("| {step} |");
        for (_, c) in &curves {
            md += &match c.steps.iter().position(|s| *s == step) {
                Some(i) => format!(" {:.2} ± {:.2} |", c.mean[i], c.std[i]),
                None => " |".to_string(),
            };
        }
        md += "\n";
    }
    md += &format!("\n{STD_NOTE}\n");
    Ok(md)
}

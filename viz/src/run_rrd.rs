//! `tools viz run DIR`: a training run's metrics as a recording.

use crate::{Recorder, Target, need_dir, read_text};
use anyhow::{Context, Result, bail};
use std::path::Path;

/// What [`run_to_rrd`] wrote: per CSV file, its name and rows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunRrd {
    pub files: Vec<(String, usize)>,
    /// Files whose last line had no end of line, and was left out: a row the trainer
    /// was appending when it was killed (or the disk filled).
    pub torn: Vec<String>,
    /// Files with nothing in them, left out: a header the trainer was writing when it
    /// was killed (or the disk filled). Another file of the run is still drawn.
    pub empty: Vec<String>,
    /// Per file, the cells that held text, an infinity or a `NaN`, left out of the plots,
    /// and where the first one was (they were dropped without a word: a diverged run's
    /// last row, the one that explains its end, just ended the curve). `NaN` in
    /// `train_success_rate` and `train_return`, the trainer's "no episode ended in this
    /// window", is left out unnamed.
    pub not_numbers: Vec<(String, usize, String)>,
}

/// Logs every numeric column of every CSV file in the run directory `dir`
/// (`metrics.csv`, `eval.csv`, `finetune.csv`, …) as `metrics/<file>/<column>`, on the
/// timeline named by the file's first column (`step`, `update`). Empty cells are
/// skipped, and so are text, infinities and `NaN`s, counted in [`RunRrd::not_numbers`]
/// (but for the trainer's per-episode columns' `NaN`); an empty file is left out
/// ([`RunRrd::empty`]) unless every file is; a file whose rows have another number of
/// cells than its header is an error naming the file and line. A last line
/// without an end of line is a row cut short (the trainer appends a row and its end
/// of line; a kill or a full disk can come between): left out and named in
/// [`RunRrd::torn`], so that a crashed run, the one most wanted, can still be looked at.
pub fn run_to_rrd(dir: &Path, target: &Target) -> Result<RunRrd> {
    need_dir(dir, "a training run directory")?;
    let listing = || format!("listing {}", dir.display());
    let mut csvs = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(listing)? {
        let path = entry.with_context(listing)?.path();
        if path.extension().is_some_and(|x| x == "csv") {
            csvs.push(path);
        }
    }
    csvs.sort();
    if csvs.is_empty() {
        bail!(
            "{}: no CSV files (a run directory has metrics.csv and eval.csv)",
            dir.display()
        );
    }
    // Every file is read and checked before the recording is opened: a bad line leaves
    // an earlier recording at `--out` as it was.
    let mut out = RunRrd::default();
    let mut parsed = Vec::new();
    // One entity per file: files whose names become the same path part (`a b.csv`,
    // `a_b.csv`) get `_2`, ... after the first, as columns do (their series were mixed).
    let names: Vec<String> = csvs
        .iter()
        .map(|p| {
            p.file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let stems = crate::paths("", &names);
    for (p, stem) in csvs.iter().zip(stems) {
        let stem = stem.trim_start_matches('/').to_string();
        match parse_csv(p, stem.clone())? {
            Some(csv) => parsed.push(csv),
            None => out.empty.push(stem),
        }
    }
    if parsed.is_empty() {
        bail!(
            "{}: every CSV file is empty ({}.csv)",
            dir.display(),
            out.empty.join(".csv, ")
        );
    }
    Recorder::open("expo_run", target)?.record(|rec| {
        for csv in parsed {
            // A time set stays on the stream until changed: without this, a file's rows
            // would also be filed at the previous file's last value of its own timeline.
            rec.reset_time();
            let timeline = rerun::TimelineName::try_new(csv.timeline.as_str()).map_err(|e| {
                anyhow::anyhow!("{}: first column {:?}: {e}", csv.stem, csv.timeline)
            })?;
            for (x, values) in &csv.rows {
                rec.set_time_sequence(timeline, *x);
                for (e, v) in csv.entities.iter().zip(values) {
                    if let Some(v) = v {
                        rec.log(e.as_str(), &rerun::Scalars::single(*v))?;
                    }
                }
            }
            if csv.torn {
                out.torn.push(csv.stem.clone());
            }
            if let Some((count, first)) = csv.not_numbers {
                out.not_numbers.push((csv.stem.clone(), count, first));
            }
            out.files.push((csv.stem, csv.rows.len()));
        }
        Ok(out)
    })
}

/// The trainer's columns where `NaN` says "no episode ended in this window"
/// (`metrics.csv`), not a diverged value.
const NAN_MEANS_NONE: [&str; 2] = ["train_success_rate", "train_return"];

/// One CSV file of a run, checked.
struct RunCsv {
    stem: String,
    /// The first column's name: the timeline.
    timeline: String,
    /// `metrics/<file>/<column>` of the other columns.
    entities: Vec<String>,
    /// The timeline's value and the other columns' finite numbers (`None`: empty, not a
    /// number, or not finite).
    rows: Vec<(i64, Vec<Option<f64>>)>,
    /// Its last line had no end of line and was left out.
    torn: bool,
    /// How many non-empty cells were not finite numbers, and the first one's place.
    not_numbers: Option<(usize, String)>,
}

/// The file checked, filed under `metrics/<stem>`, or `None` when it holds nothing
/// (not even a header).
fn parse_csv(path: &Path, stem: String) -> Result<Option<RunCsv>> {
    let text = read_text(path)?;
    let mut lines = text.lines();
    let Some(header) = lines.next().filter(|h| !h.trim().is_empty()) else {
        return Ok(None);
    };
    let cols: Vec<&str> = header.split(',').map(str::trim).collect();
    rerun::TimelineName::try_new(cols[0])
        .map_err(|e| anyhow::anyhow!("{}: first column {:?}: {e}", path.display(), cols[0]))?;
    let entities = crate::paths(&format!("metrics/{stem}"), &cols[1..]);
    let mut body: Vec<&str> = lines.collect();
    let torn = !text.ends_with('\n') && body.pop().is_some();
    let mut rows = Vec::new();
    let mut not_numbers: Option<(usize, String)> = None;
    for (i, line) in body.into_iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        if cells.len() != cols.len() {
            bail!(
                "{}:{}: {} cells, the header has {}",
                path.display(),
                i + 2,
                cells.len(),
                cols.len()
            );
        }
        // A step or update count: a whole number (`1e3` and `20.0` are fine).
        let x = match cells[0].parse::<f64>() {
            Ok(x) if x.is_finite() && x.fract() == 0.0 && x.abs() < 2f64.powi(53) => x as i64,
            _ => bail!(
                "{}:{}: {} {:?} is not a whole number",
                path.display(),
                i + 2,
                cols[0],
                cells[0]
            ),
        };
        let values = cells[1..]
            .iter()
            .zip(&cols[1..])
            .map(|(c, col)| {
                let parsed = c.parse::<f64>().ok();
                let v = parsed.filter(|v| v.is_finite());
                // NaN is the trainer's "none" in its per-episode columns (a window in which
                // no episode ended); elsewhere it is a diverged run's row, counted.
                let none = NAN_MEANS_NONE.contains(col) && parsed.is_some_and(f64::is_nan);
                if v.is_none() && !c.is_empty() && !none {
                    let (count, _) = not_numbers
                        .get_or_insert_with(|| (0, format!("line {}, {col} {c:?}", i + 2)));
                    *count += 1;
                }
                v
            })
            .collect();
        rows.push((x, values));
    }
    Ok(Some(RunCsv {
        stem,
        timeline: cols[0].to_string(),
        entities,
        rows,
        torn,
        not_numbers,
    }))
}

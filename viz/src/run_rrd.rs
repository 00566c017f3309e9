//! `tools viz run DIR`: a training run's metrics as a recording.

use crate::{Recorder, Target, need_dir, path_part, read_text};
use anyhow::{Result, bail};
use std::path::Path;

/// What [`run_to_rrd`] wrote: per CSV file, its name and rows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunRrd {
    pub files: Vec<(String, usize)>,
}

/// Logs every numeric column of every CSV file in the run directory `dir`
/// (`metrics.csv`, `eval.csv`, `finetune.csv`, …) as `metrics/<file>/<column>`, on the
/// timeline named by the file's first column (`step`, `update`). Empty cells and
/// non-numbers are skipped; a file whose header is missing or whose rows have another
/// number of cells than its header is an error naming the file and line.
pub fn run_to_rrd(dir: &Path, target: &Target) -> Result<RunRrd> {
    need_dir(dir, "a training run directory")?;
    let mut csvs: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    csvs.sort();
    if csvs.is_empty() {
        bail!(
            "{}: no CSV files (a run directory has metrics.csv and eval.csv)",
            dir.display()
        );
    }
    let r = Recorder::open("expo_run", target)?;
    let mut out = RunRrd::default();
    for path in &csvs {
        let text = read_text(path)?;
        let mut lines = text.lines();
        let Some(header) = lines.next() else {
            bail!("{}: empty file (no header)", path.display());
        };
        let cols: Vec<&str> = header.split(',').map(str::trim).collect();
        let stem = path_part(&path.file_stem().unwrap_or_default().to_string_lossy());
        let timeline = rerun::TimelineName::try_new(cols[0])
            .map_err(|e| anyhow::anyhow!("{}: first column {:?}: {e}", path.display(), cols[0]))?;
        let entities: Vec<String> = cols
            .iter()
            .map(|c| format!("metrics/{stem}/{}", path_part(c)))
            .collect();
        let mut rows = 0;
        for (i, line) in lines.enumerate() {
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
            let Ok(x) = cells[0].parse::<f64>() else {
                bail!(
                    "{}:{}: {} {:?} is not a number",
                    path.display(),
                    i + 2,
                    cols[0],
                    cells[0]
                );
            };
            r.rec.set_time_sequence(timeline, x as i64);
            for (e, c) in entities.iter().zip(&cells).skip(1) {
                if let Ok(v) = c.parse::<f64>()
                    && v.is_finite()
                {
                    r.rec.log(e.as_str(), &rerun::Scalars::single(v))?;
                }
            }
            rows += 1;
        }
        out.files.push((stem, rows));
    }
    r.finish()?;
    Ok(out)
}

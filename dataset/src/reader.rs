//! Reading and deep validation. Every check names the file and what was expected.

use std::collections::{BTreeSet, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use arrow_array::{Array, RecordBatch};

use crate::arrow_io::{self, read_parquet};
use crate::meta::{self, EpisodeMeta, Feature, InfoJson};
use crate::{Dataset, DatasetError, Episode, ValidationReport, cols};

/// Everything [`load`] learned about a dataset on disk.
pub(crate) struct Loaded {
    pub json: InfoJson,
    pub dataset: Dataset,
    pub tasks: Vec<String>,
    pub metas: Vec<EpisodeMeta>,
    /// Distinct task indices of each episode, in order of first appearance.
    pub episode_tasks: Vec<Vec<usize>>,
    /// Each episode's `timestamp` column as stored (a foreign recorder's clock may
    /// start late or drift within LeRobot's tolerance): the statistics describe these.
    pub timestamps: Vec<Vec<f32>>,
    pub data_files: Vec<PathBuf>,
    pub episode_files: Vec<PathBuf>,
    /// Rows of the episodes index beyond `total_episodes`: a writer stopped between
    /// renaming its new index into place and renaming info.json (the commit point).
    pub uncommitted_episodes: usize,
}

/// (chunk_index, file_index) of a data file.
type DataFileKey = (usize, usize);

const FLOAT: &[&str] = &["float32", "float64"];
const BOOL: &[&str] = &["bool"];
const INT: &[&str] = &["int64", "int32"];
/// Most values an observation or action vector may have per frame: far above any robot
/// (the wire protocol carries 32 and 16), and small enough that a corrupt shape such as
/// `[4000000000]` is an error rather than billions of channel names in memory.
pub const MAX_VECTOR_DIM: usize = 1 << 16;

/// Check the features of info.json: required keys, dtypes, scalar shapes.
/// Returns (obs_dim, act_dim).
pub(crate) fn check_features(json: &InfoJson, path: &Path) -> Result<(usize, usize), DatasetError> {
    // Data files live inside the dataset: a template that climbs out of it (`..`) or is
    // absolute would have readers read, and an appending writer create, files elsewhere.
    let template = Path::new(&json.data_path);
    if template.is_absolute()
        || template
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(DatasetError::invalid(
            path,
            format!(
                "`data_path` {:?} must be a relative path inside the dataset (no `..`, \
                 not absolute)",
                json.data_path
            ),
        ));
    }
    for k in cols::REQUIRED {
        if !json.features.contains_key(*k) {
            return Err(DatasetError::invalid(
                path,
                format!("`features` lacks required feature `{k}`"),
            ));
        }
    }
    for (k, f) in &json.features {
        let (dtypes, dim): (&[&str], Option<usize>) = match k.as_str() {
            cols::OBS | cols::NEXT_OBS | cols::ACTION => (FLOAT, None),
            cols::REWARD | cols::TIMESTAMP => (FLOAT, Some(1)),
            cols::DONE | cols::TRUNCATED | cols::SUCCESS | cols::INTERVENTION | cols::TELEOP => {
                (BOOL, Some(1))
            }
            cols::FRAME_INDEX | cols::EPISODE_INDEX | cols::INDEX | cols::TASK_INDEX => {
                (INT, Some(1))
            }
            _ => continue,
        };
        if !dtypes.contains(&f.dtype.as_str()) {
            return Err(DatasetError::invalid(
                path,
                format!(
                    "feature `{k}` has dtype {:?}, expected one of {dtypes:?}",
                    f.dtype
                ),
            ));
        }
        let ok = match dim {
            Some(d) => f.dim() == d,
            None => f.shape.len() == 1 && (1..=MAX_VECTOR_DIM).contains(&f.dim()),
        };
        if !ok {
            return Err(DatasetError::invalid(
                path,
                format!(
                    "feature `{k}` has shape {:?}, expected {}",
                    f.shape,
                    dim.map_or(format!("[n] with 0 < n <= {MAX_VECTOR_DIM}"), |d| format!(
                        "[{d}]"
                    ))
                ),
            ));
        }
        if dim.is_none()
            && let Some(problem) = f.names_problem()
        {
            return Err(DatasetError::invalid(
                path,
                format!("feature `{k}`: {problem}"),
            ));
        }
    }
    let dim = |k: &str| json.features.get(k).map_or(0, Feature::dim);
    let od = dim(cols::OBS);
    if let Some(n) = json.features.get(cols::NEXT_OBS)
        && n.dim() != od
    {
        return Err(DatasetError::invalid(
            path,
            format!(
                "feature `{}` has shape {:?}, expected [{od}] like `{}`",
                cols::NEXT_OBS,
                n.shape,
                cols::OBS
            ),
        ));
    }
    json.action_mapping()
        .map_err(|why| DatasetError::invalid(path, why))?;
    Ok((od, dim(cols::ACTION)))
}

/// Decoded columns of (part of) one data file. Optional columns are `Some`
/// exactly when info.json declares the feature.
#[derive(Default)]
pub(crate) struct FileData {
    obs: Vec<f32>,
    next_obs: Option<Vec<f32>>,
    action: Vec<f32>,
    reward: Option<Vec<f32>>,
    done: Option<Vec<bool>>,
    truncated: Option<Vec<bool>>,
    success: Option<Vec<bool>>,
    intervention: Option<Vec<bool>>,
    teleop: Option<Vec<bool>>,
    timestamp: Vec<f32>,
    frame_index: Vec<i64>,
    episode_index: Vec<i64>,
    index: Vec<i64>,
    task_index: Vec<i64>,
}

fn extend<T>(dst: &mut Option<Vec<T>>, src: Option<Vec<T>>) {
    if let (Some(d), Some(s)) = (dst, src) {
        d.extend(s);
    }
}

impl FileData {
    fn append(&mut self, o: FileData) {
        self.obs.extend(o.obs);
        extend(&mut self.next_obs, o.next_obs);
        self.action.extend(o.action);
        extend(&mut self.reward, o.reward);
        extend(&mut self.done, o.done);
        extend(&mut self.truncated, o.truncated);
        extend(&mut self.success, o.success);
        extend(&mut self.intervention, o.intervention);
        extend(&mut self.teleop, o.teleop);
        self.timestamp.extend(o.timestamp);
        self.frame_index.extend(o.frame_index);
        self.episode_index.extend(o.episode_index);
        self.index.extend(o.index);
        self.task_index.extend(o.task_index);
    }
}

/// Decode one record batch, type-checking every declared feature. `first_row` is the
/// batch's first row's place in its file (errors name rows of the file).
pub(crate) fn decode_batch(
    batch: &RecordBatch,
    path: &Path,
    json: &InfoJson,
    od: usize,
    ad: usize,
    first_row: usize,
) -> Result<FileData, DatasetError> {
    let has = |k: &str| json.features.contains_key(k);
    let get = |k: &str| -> Result<&dyn Array, DatasetError> {
        batch.column_by_name(k).map(|c| c.as_ref()).ok_or_else(|| {
            DatasetError::column(
                path,
                k,
                "column missing (declared in meta/info.json features)",
            )
        })
    };
    fn err<'a>(path: &'a Path, k: &'a str) -> impl Fn(String) -> DatasetError + 'a {
        move |p| DatasetError::column(path, k, p)
    }
    let floats = |k: &str, dim| arrow_io::floats(get(k)?, dim, first_row).map_err(err(path, k));
    let bools = |k: &str| arrow_io::bools(get(k)?).map_err(err(path, k));
    let ints = |k: &str| arrow_io::ints(get(k)?).map_err(err(path, k));
    let opt_f = |k: &str, dim| has(k).then(|| floats(k, dim)).transpose();
    let opt_b = |k: &str| has(k).then(|| bools(k)).transpose();
    // Type-check features we do not use (video features live outside parquet).
    for (k, f) in &json.features {
        if cols::ALL.contains(&k.as_str()) || !is_in_parquet(f) {
            continue;
        }
        let arr = get(k)?;
        if f.shape.len() > 1 {
            // A feature of several axes (HF `Array2D`, `[2, 3]`) may be stored as nested
            // lists; it is not read, so only its presence is checked.
            continue;
        }
        let res = match f.dtype.as_str() {
            "float32" | "float64" => arrow_io::floats(arr, f.dim(), first_row).map(drop),
            "bool" => arrow_io::bools(arr).map(drop),
            "int64" | "int32" if f.dim() == 1 => arrow_io::ints(arr).map(drop),
            "string" => arrow_io::strings(arr).map(drop),
            _ => Ok(()),
        };
        res.map_err(err(path, k))?;
    }
    Ok(FileData {
        timestamp: floats(cols::TIMESTAMP, 1)?,
        obs: floats(cols::OBS, od)?,
        next_obs: opt_f(cols::NEXT_OBS, od)?,
        action: floats(cols::ACTION, ad)?,
        reward: opt_f(cols::REWARD, 1)?,
        done: opt_b(cols::DONE)?,
        truncated: opt_b(cols::TRUNCATED)?,
        success: opt_b(cols::SUCCESS)?,
        intervention: opt_b(cols::INTERVENTION)?,
        teleop: opt_b(cols::TELEOP)?,
        frame_index: ints(cols::FRAME_INDEX)?,
        episode_index: ints(cols::EPISODE_INDEX)?,
        index: ints(cols::INDEX)?,
        task_index: ints(cols::TASK_INDEX)?,
    })
}

fn is_in_parquet(f: &Feature) -> bool {
    f.dtype != "video"
}

/// Read one data file and check its rows against the episodes it should hold.
fn read_data_file(
    path: &Path,
    json: &InfoJson,
    (od, ad): (usize, usize),
    group: &[(usize, &EpisodeMeta)],
    index_file: &Path,
    num_tasks: usize,
) -> Result<FileData, DatasetError> {
    let (schema, batches) = read_parquet(path)?;
    for (k, f) in &json.features {
        if is_in_parquet(f) && schema.column_with_name(k).is_none() {
            return Err(DatasetError::column(
                path,
                k,
                "column missing (declared in meta/info.json features)",
            ));
        }
    }
    // One of our columns in the data that info.json does not declare would be ignored,
    // its episodes read with the defaults (every reward 0, every end not a success
    // truncated): the meta and the data disagree.
    for k in cols::ALL {
        if !json.features.contains_key(*k) && schema.column_with_name(k).is_some() {
            return Err(DatasetError::column(
                path,
                *k,
                "column in the data but not declared in meta/info.json features (its \
                 values would be ignored): declare it there, or remove the column",
            ));
        }
    }
    let has = |k: &str| json.features.contains_key(k);
    let mut d = FileData {
        next_obs: has(cols::NEXT_OBS).then(Vec::new),
        reward: has(cols::REWARD).then(Vec::new),
        done: has(cols::DONE).then(Vec::new),
        truncated: has(cols::TRUNCATED).then(Vec::new),
        success: has(cols::SUCCESS).then(Vec::new),
        intervention: has(cols::INTERVENTION).then(Vec::new),
        teleop: has(cols::TELEOP).then(Vec::new),
        ..FileData::default()
    };
    let mut first_row = 0;
    for batch in &batches {
        d.append(decode_batch(batch, path, json, od, ad, first_row)?);
        first_row += batch.num_rows();
    }
    let rows = d.frame_index.len();
    let expected: usize = group.iter().map(|(_, m)| m.length).sum();
    if rows != expected {
        let (first, last) = (group[0].0, group[group.len() - 1].0);
        return Err(DatasetError::invalid(
            path,
            format!(
                "has {rows} rows, but {} says episodes {first}..={last} stored here have {expected} frames",
                index_file.display()
            ),
        ));
    }
    // Row-by-row: episode_index / frame_index / index must match the episodes index.
    let mut r = 0;
    for &(e, m) in group {
        for k in 0..m.length {
            let checks = [
                (cols::EPISODE_INDEX, d.episode_index[r], e),
                (cols::FRAME_INDEX, d.frame_index[r], k),
                (cols::INDEX, d.index[r], m.from + k),
            ];
            for (col, got, want) in checks {
                if usize::try_from(got).ok() != Some(want) {
                    return Err(DatasetError::column(
                        path,
                        col,
                        format!(
                            "row {r}: value {got}, expected {want} (episode {e} frame {k} per {})",
                            index_file.display()
                        ),
                    ));
                }
            }
            // LeRobot's rule (`check_timestamps_sync`): within an episode, consecutive
            // frames are 1 / fps apart, to 1e-4 s (plus f32 rounding here); a slow drift
            // of a capture clock passes, a dropped or repeated frame does not.
            let ts = d.timestamp[r];
            let gap = (k > 0).then(|| ts as f64 - d.timestamp[r - 1] as f64);
            let period = 1.0 / json.fps as f64;
            let off = gap.is_some_and(|g| (g - period).abs() > 1e-4 + ts.abs() as f64 * 5e-7);
            if !ts.is_finite() || off {
                return Err(DatasetError::column(
                    path,
                    cols::TIMESTAMP,
                    format!(
                        "row {r}: {ts} s{}; frames of an episode are 1 / fps = {period} s \
                         apart (episode {e}, frame_index {k})",
                        gap.map_or(String::new(), |g| format!(", {g} s after the frame before"))
                    ),
                ));
            }
            let t = d.task_index[r];
            if usize::try_from(t).map_or(true, |t| t >= num_tasks) {
                return Err(DatasetError::column(
                    path,
                    cols::TASK_INDEX,
                    format!(
                        "row {r}: task_index {t} out of range (tasks.parquet has {num_tasks} tasks)"
                    ),
                ));
            }
            r += 1;
        }
    }
    // The end flags, once the rows are known to be the index's episodes.
    let mut r = 0;
    for &(e, m) in group {
        for k in 0..m.length {
            if let Some((col, problem)) = end_flags_problem(&d, r, k + 1 == m.length) {
                return Err(DatasetError::column(
                    path,
                    col,
                    format!(
                        "row {r}: {problem} (episode {e}, frame_index {k} of {})",
                        m.length
                    ),
                ));
            }
            r += 1;
        }
    }
    // No NaN / inf anywhere in the float data.
    let float_cols = [
        (cols::OBS, Some(&d.obs), od),
        (cols::NEXT_OBS, d.next_obs.as_ref(), od),
        (cols::ACTION, Some(&d.action), ad),
        (cols::REWARD, d.reward.as_ref(), 1),
    ];
    for (col, v, dim) in float_cols {
        let Some(v) = v else { continue };
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            let r = i / dim;
            return Err(DatasetError::column(
                path,
                col,
                format!(
                    "non-finite value {} at row {r}, dim {} (episode {}, frame_index {}, index {})",
                    v[i],
                    i % dim,
                    d.episode_index[r],
                    d.frame_index[r],
                    d.index[r]
                ),
            ));
        }
    }
    Ok(d)
}

/// What is wrong with row `r`'s `next.done` / `next.truncated` (the column and the
/// problem), with `last` telling whether it is its episode's last frame. The rules of
/// [`Episode::check`], which the writer applies: only the last frame ends an episode,
/// a truncated frame is done, and where both columns exist the last frame is done.
/// Without them a terminal state mid-episode would be read (no bootstrapping there) and
/// the frames after it taken as the same episode.
fn end_flags_problem(d: &FileData, r: usize, last: bool) -> Option<(&'static str, String)> {
    let done = d.done.as_ref().map(|v| v[r]);
    let truncated = d.truncated.as_ref().map(|v| v[r]);
    if !last {
        if done == Some(true) {
            return Some((cols::DONE, "true before the episode's last frame".into()));
        }
        if truncated == Some(true) {
            return Some((
                cols::TRUNCATED,
                "true before the episode's last frame".into(),
            ));
        }
        return None;
    }
    match (done, truncated) {
        (Some(false), Some(true)) => Some((
            cols::TRUNCATED,
            "true where next.done is false (a truncated frame ends its episode)".into(),
        )),
        (Some(false), Some(false)) => Some((
            cols::DONE,
            "false on the episode's last frame, which next.truncated does not mark either".into(),
        )),
        (None, Some(false)) => Some((
            cols::TRUNCATED,
            "false on the episode's last frame, and there is no next.done column".into(),
        )),
        _ => None,
    }
}

/// Cut the frames `[r0, r0 + n)` of `d` into an [`Episode`], applying the
/// documented defaults for missing `next.*` columns.
pub(crate) fn build_episode(d: &FileData, r0: usize, n: usize, od: usize, ad: usize) -> Episode {
    let rows = r0..r0 + n;
    let obs = d.obs[r0 * od..(r0 + n) * od].to_vec();
    let next_observations = match &d.next_obs {
        Some(v) => v[r0 * od..(r0 + n) * od].to_vec(),
        None => {
            // Successor frame's observation; the last frame repeats its own.
            let mut next = obs[od.min(obs.len())..].to_vec();
            next.extend_from_slice(&obs[obs.len().saturating_sub(od)..]);
            next
        }
    };
    let done: Vec<bool> = match &d.done {
        Some(v) => v[rows.clone()].to_vec(),
        None => vec![false; n],
    };
    let truncated: Vec<bool> = match &d.truncated {
        Some(v) => v[rows.clone()].to_vec(),
        // LeRobot marks every episode's last frame `next.done`, however it ended, so
        // without `next.truncated` only a success there says a terminal state was
        // reached; any other end is taken as cut (no bootstrapping from a time limit).
        None => {
            let success_at_end = d.success.as_ref().is_some_and(|v| v[r0 + n - 1]);
            (0..n)
                .map(|k| k + 1 == n && !(done[k] && success_at_end))
                .collect()
        }
    };
    Episode {
        observations: obs,
        next_observations,
        actions: d.action[r0 * ad..(r0 + n) * ad].to_vec(),
        rewards: d
            .reward
            .as_ref()
            .map_or_else(|| vec![0.0; n], |v| v[rows.clone()].to_vec()),
        terminated: done
            .iter()
            .zip(&truncated)
            .map(|(&d, &t)| d && !t)
            .collect(),
        truncated,
        success: d
            .success
            .as_ref()
            .map_or_else(|| vec![false; n], |v| v[rows.clone()].to_vec()),
        intervention: d
            .intervention
            .as_ref()
            .map_or_else(|| vec![false; n], |v| v[rows.clone()].to_vec()),
        teleop: d
            .teleop
            .as_ref()
            .map_or_else(|| vec![false; n], |v| v[rows].to_vec()),
    }
}

/// Read and cross-check everything under `dir`.
pub(crate) fn load(dir: &Path) -> Result<Loaded, DatasetError> {
    let info_path = meta::info_path(dir);
    let json = InfoJson::read(dir)?;
    let (od, ad) = check_features(&json, &info_path)?;

    // info.json is renamed into place last, so its totals are the committed dataset: a
    // writer stopped before that leaves an index and a task list that extend the
    // committed ones (rows are only ever added at the end), and only their first rows
    // count. Fewer rows than the totals is damage.
    let mut tasks = meta::read_tasks(dir)?;
    tasks.truncate(json.total_tasks);
    if tasks.len() != json.total_tasks {
        return Err(DatasetError::invalid(
            &info_path,
            format!(
                "total_tasks is {}, but {} has {} tasks",
                json.total_tasks,
                meta::tasks_path(dir).display(),
                tasks.len()
            ),
        ));
    }

    let episode_files = meta::list_episode_files(dir)?;
    let index_file = match episode_files.as_slice() {
        [one] => one.clone(),
        _ => meta::episodes_dir(dir),
    };
    let (metas, uncommitted_episodes) = meta::read_episodes(&episode_files, json.total_episodes)?;
    if metas.len() != json.total_episodes {
        return Err(DatasetError::invalid(
            &info_path,
            format!(
                "total_episodes is {}, but {} lists {} episodes",
                json.total_episodes,
                index_file.display(),
                metas.len()
            ),
        ));
    }
    split_ranges(&json, &info_path)?;
    let mut next_from = 0;
    for (e, m) in metas.iter().enumerate() {
        let problem = if m.length == 0 {
            Some("has length 0".to_string())
        } else if m.from != next_from {
            Some(format!(
                "has dataset_from_index {}, expected {next_from} (ranges must be contiguous, non-overlapping)",
                m.from
            ))
        } else if m.to != m.from + m.length {
            Some(format!(
                "has dataset_to_index {}, expected dataset_from_index + length = {}",
                m.to,
                m.from + m.length
            ))
        } else {
            None
        };
        if let Some(p) = problem {
            return Err(DatasetError::invalid(
                &index_file,
                format!("episode {e} {p}"),
            ));
        }
        next_from = m.to;
    }
    if next_from != json.total_frames {
        return Err(DatasetError::invalid(
            &info_path,
            format!(
                "total_frames is {}, but the episodes in {} add up to {next_from}",
                json.total_frames,
                index_file.display()
            ),
        ));
    }

    // Group consecutive episodes by data file; a file must hold one contiguous run.
    let mut groups: Vec<(DataFileKey, Vec<(usize, &EpisodeMeta)>)> = Vec::new();
    for (e, m) in metas.iter().enumerate() {
        let key = (m.chunk, m.file);
        match groups.last_mut() {
            Some((k, g)) if *k == key => g.push((e, m)),
            _ => {
                if groups.iter().any(|(k, _)| *k == key) {
                    return Err(DatasetError::invalid(
                        &index_file,
                        format!(
                            "episode {e} goes back to data chunk {} file {} after other files; \
                             episodes of one data file must be contiguous",
                            key.0, key.1
                        ),
                    ));
                }
                groups.push((key, vec![(e, m)]));
            }
        }
    }

    let mut episodes = Vec::with_capacity(metas.len());
    let mut episode_tasks = Vec::with_capacity(metas.len());
    let mut timestamps = Vec::with_capacity(metas.len());
    let mut data_files = Vec::with_capacity(groups.len());
    for ((chunk, file), group) in &groups {
        let path = dir.join(meta::format_path(&json.data_path, *chunk, *file));
        let d = read_data_file(&path, &json, (od, ad), group, &index_file, tasks.len())?;
        let mut r0 = 0;
        for &(_, m) in group {
            episodes.push(build_episode(&d, r0, m.length, od, ad));
            timestamps.push(d.timestamp[r0..r0 + m.length].to_vec());
            let mut ids: Vec<usize> = Vec::new();
            for &t in &d.task_index[r0..r0 + m.length] {
                let t = t as usize; // range-checked in read_data_file
                if !ids.contains(&t) {
                    ids.push(t);
                }
            }
            episode_tasks.push(ids);
            r0 += m.length;
        }
        data_files.push(path);
    }

    let info = json.dataset_info(tasks.first().cloned().unwrap_or_default());
    let next_observations_recorded = json.features.contains_key(cols::NEXT_OBS);
    Ok(Loaded {
        json,
        dataset: Dataset {
            info,
            episodes,
            next_observations_recorded,
        },
        tasks,
        metas,
        episode_tasks,
        timestamps,
        data_files,
        episode_files,
        uncommitted_episodes,
    })
}

/// The episode ranges `info.json`'s `splits` declare (LeRobot's `"train": "0:40"`, an
/// end-exclusive `START:END` of episode indices), checked: each parses, START <= END <=
/// `total_episodes`, and no episode is in two splits (held out and trained on). Every
/// reader refuses a dataset that fails this, naming the split.
fn split_ranges(
    json: &InfoJson,
    info_path: &Path,
) -> Result<Vec<(String, Range<usize>)>, DatasetError> {
    let mut ranges: Vec<(String, Range<usize>)> = Vec::with_capacity(json.splits.len());
    for (name, value) in &json.splits {
        let bad = |why: String| {
            DatasetError::invalid(info_path, format!("splits.{name} = {value:?}: {why}"))
        };
        let (start, end) = value
            .split_once(':')
            .ok_or_else(|| bad("expected START:END (episode indices, END exclusive)".into()))?;
        let parse = |part: &str| {
            part.trim().parse::<usize>().map_err(|_| {
                bad(format!(
                    "{part:?} is not an episode index (expected START:END, END exclusive)"
                ))
            })
        };
        let range = parse(start)?..parse(end)?;
        if range.start > range.end {
            return Err(bad("starts after it ends".into()));
        }
        if range.end > json.total_episodes {
            return Err(bad(format!(
                "ends past the dataset's {} episodes",
                json.total_episodes
            )));
        }
        if let Some((other, _)) = ranges
            .iter()
            .find(|(_, r)| r.start < range.end && range.start < r.end)
        {
            return Err(bad(format!(
                "overlaps split `{other}` (an episode in two splits)"
            )));
        }
        ranges.push((name.clone(), range));
    }
    Ok(ranges)
}

/// The episodes the dataset at `dir` holds out of training: those of every split its
/// `info.json` declares other than `train` (`val`, `test`, ...), by split name, checked as
/// [`read_dataset`] checks them. Episodes in `train` or in no split (appended after a
/// foreign dataset's `val`) are for training.
pub fn held_out_episodes(dir: &Path) -> Result<Vec<(String, Range<usize>)>, DatasetError> {
    let json = InfoJson::read(dir)?;
    let mut ranges = split_ranges(&json, &meta::info_path(dir))?;
    ranges.retain(|(name, r)| name != "train" && !r.is_empty());
    Ok(ranges)
}

/// Read a whole dataset, checking meta against data (see [`validate_dataset`]
/// for the additional stats checks).
pub fn read_dataset(dir: &Path) -> Result<Dataset, DatasetError> {
    load(dir).map(|l| l.dataset)
}

/// The tasks of each episode of the dataset at `dir` (LeRobot's `task_index` per frame,
/// named by `meta/tasks.parquet`), distinct and in order of first appearance; most
/// episodes have one. [`Dataset::info`] names only the first task.
pub fn episode_tasks(dir: &Path) -> Result<Vec<Vec<String>>, DatasetError> {
    let l = load(dir)?;
    Ok(l.episode_tasks
        .iter()
        .map(|ids| ids.iter().map(|&t| l.tasks[t].clone()).collect())
        .collect())
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-4 * a.abs().max(b.abs()).max(1.0)
}

/// Deep check: everything [`read_dataset`] checks, plus `meta/stats.json`
/// present with `observation.state` and `action` entries of the right size
/// whose values match the data (unless an uncommitted index tail says a writer
/// stopped mid-commit), and a list of unreferenced data files.
pub fn validate_dataset(dir: &Path) -> Result<ValidationReport, DatasetError> {
    let loaded = load(dir)?;
    let stats_path = meta::stats_path(dir);
    let on_disk = meta::read_stats(dir)?;
    for k in [cols::OBS, cols::ACTION] {
        if !on_disk.contains_key(k) {
            return Err(DatasetError::invalid(
                &stats_path,
                format!("no statistics for `{k}`"),
            ));
        }
    }
    let computed = {
        let info = &loaded.dataset.info;
        let mut acc = crate::stats::StatsAcc::new(info.obs_dim(), info.action_dim(), info.fps);
        for (ep, ts) in loaded.dataset.episodes.iter().zip(&loaded.timestamps) {
            acc.push_with_timestamps(ep, Some(ts));
        }
        acc.finish()
    };
    let mut stats_checked = 0;
    let stats_describe_committed = loaded.uncommitted_episodes == 0;
    for (k, want) in computed.iter().filter(|_| stats_describe_committed) {
        let (Some(got), true) = (on_disk.get(k), loaded.json.features.contains_key(k)) else {
            continue;
        };
        if got.count != want.count {
            return Err(DatasetError::invalid(
                &stats_path,
                format!(
                    "`{k}`.count is {}, the data has {} frames",
                    got.count, want.count
                ),
            ));
        }
        let fields = [
            ("mean", &got.mean, &want.mean),
            ("std", &got.std, &want.std),
            ("min", &got.min, &want.min),
            ("max", &got.max, &want.max),
        ];
        for (name, g, w) in fields {
            if g.len() != w.len() {
                return Err(DatasetError::invalid(
                    &stats_path,
                    format!("`{k}`.{name} has {} values, expected {}", g.len(), w.len()),
                ));
            }
            if let Some(i) = (0..g.len()).find(|&i| !close(g[i], w[i])) {
                return Err(DatasetError::invalid(
                    &stats_path,
                    format!(
                        "`{k}`.{name}[{i}] is {}, but the data gives {} (stale stats?)",
                        g[i], w[i]
                    ),
                ));
            }
        }
        stats_checked += 1;
    }

    let referenced: HashSet<&PathBuf> = loaded.data_files.iter().collect();
    let unreferenced: BTreeSet<PathBuf> = meta::data_files_on_disk(dir)?
        .into_iter()
        .filter(|file| !referenced.contains(file))
        .collect();
    let ds = &loaded.dataset;
    Ok(ValidationReport {
        episodes: ds.episodes.len(),
        frames: ds.num_frames(),
        tasks: loaded.tasks.len(),
        data_files: loaded.data_files.len(),
        features: loaded.json.features.len(),
        stats_checked,
        successful_episodes: ds.episodes.iter().filter(|e| e.is_success()).count(),
        unreferenced_data_files: unreferenced.into_iter().collect(),
        uncommitted_episodes: loaded.uncommitted_episodes,
    })
}

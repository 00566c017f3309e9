//! [`DatasetWriter`]: create a dataset or append episodes to an existing one.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, BooleanArray, Float32Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::arrow_io::{self, ParquetOut, f32_vec_array, f32_vec_type};
use crate::meta::{self, EpisodeMeta, Feature, InfoJson};
use crate::reader;
use crate::stats::StatsAcc;
use crate::{DatasetError, DatasetInfo, DatasetSummary, Episode, cols};

/// Most existing data files the writer steps over to find a free name for its next one
/// (leftovers no episode refers to); beyond that, creating the file fails by name.
const MAX_SKIPPED_FILES: usize = 1024;

/// Where [`DatasetWriter::open_append`] moves the data files no episode references
/// (`unreferenced/chunk-NNN/file-NNN.parquet`, beside `data/`): LeRobot's loader reads
/// every `data/*/*.parquet`, not only the files the episodes index names, so such a file
/// made it fail (an unfinished file) or read frames that are not in the dataset (a
/// complete file of a run that did not commit). Moved, never deleted: a complete one
/// holds a run's frames.
pub const UNREFERENCED_DIR: &str = "unreferenced";

/// The `info.json` key listing the runs whose episodes a dataset holds
/// ([`DatasetWriter::note_run`]).
pub const NOTED_RUNS: &str = "expo_runs";
/// Most run ids `info.json` keeps (the oldest go first).
pub const MAX_NOTED_RUNS: usize = 1000;
/// The `info.json` key of the runs only some of whose episodes a dataset holds: run id
/// → the numbers (in the run) of the episodes it holds
/// ([`DatasetWriter::note_partial_run`]). At most [`MAX_NOTED_RUNS`] runs.
pub const PARTIAL_RUNS: &str = "expo_partial_runs";

/// The runs [`DatasetWriter::note_run`] noted in the dataset at `dir` (empty for a
/// dataset that noted none). A [`NOTED_RUNS`] entry that is not a list of strings is
/// an error naming `info.json`.
pub fn noted_runs(dir: &Path) -> Result<Vec<String>, DatasetError> {
    runs_of(&InfoJson::read(dir)?, &meta::info_path(dir))
}

/// The runs [`DatasetWriter::note_partial_run`] noted in the dataset at `dir`, only
/// some of whose episodes it holds: run id -> those episodes' numbers in the run (empty
/// for a dataset that noted none). One of another shape is an error naming `info.json`.
pub fn partial_runs(dir: &Path) -> Result<Vec<(String, Vec<u32>)>, DatasetError> {
    let json = InfoJson::read(dir)?;
    check_partial_runs(&json, &meta::info_path(dir))?;
    let Some(runs) = json.extra.get(PARTIAL_RUNS).and_then(|v| v.as_object()) else {
        return Ok(vec![]);
    };
    Ok(runs
        .iter()
        .map(|(id, episodes)| {
            let numbers = episodes.as_array().into_iter().flatten();
            let numbers = numbers.filter_map(|n| n.as_u64().and_then(|n| u32::try_from(n).ok()));
            (id.clone(), numbers.collect())
        })
        .collect())
}

/// When a controller run began, from its id, which ends in its start time (ns since the
/// epoch, after the last '-'); 0 for an id without one. Runs are ordered by it.
pub fn run_started(id: &str) -> u128 {
    id.rsplit_once('-')
        .and_then(|(_, t)| t.parse::<u128>().ok())
        .unwrap_or(0)
}

/// The features of the dataset at `dir` that this writer does not write (cameras,
/// other state: not one of [`cols::ALL`]), by name.
pub fn foreign_features(dir: &Path) -> Result<Vec<String>, DatasetError> {
    Ok(InfoJson::read(dir)?
        .features
        .into_keys()
        .filter(|k| !cols::ALL.contains(&k.as_str()))
        .collect())
}

/// Episodes the dataset at `dir` holds as committed (its `meta/info.json`): what a reader
/// sees, whatever a writer that failed to finish had appended.
pub fn committed_episodes(dir: &Path) -> Result<usize, DatasetError> {
    Ok(InfoJson::read(dir)?.total_episodes)
}

fn runs_of(json: &InfoJson, info_path: &Path) -> Result<Vec<String>, DatasetError> {
    let Some(v) = json.extra.get(NOTED_RUNS) else {
        return Ok(vec![]);
    };
    v.as_array()
        .and_then(|a| a.iter().map(|v| v.as_str().map(String::from)).collect())
        .ok_or_else(|| {
            DatasetError::invalid(
                info_path,
                format!("`{NOTED_RUNS}` must be a list of run ids (strings)"),
            )
        })
}

/// Checks [`PARTIAL_RUNS`] where present: a map of run ids to lists of episode numbers.
/// One of another shape was ignored without a word: no partial run was noted or read,
/// and `log-to-dataset --last-run` added a run's saved episodes a second time.
fn check_partial_runs(json: &InfoJson, info_path: &Path) -> Result<(), DatasetError> {
    let Some(v) = json.extra.get(PARTIAL_RUNS) else {
        return Ok(());
    };
    let well_formed = v.as_object().is_some_and(|runs| {
        runs.values().all(|episodes| {
            episodes.as_array().is_some_and(|a| {
                a.iter()
                    .all(|e| e.as_u64().is_some_and(|n| u32::try_from(n).is_ok()))
            })
        })
    });
    if well_formed {
        Ok(())
    } else {
        Err(DatasetError::invalid(
            info_path,
            format!("`{PARTIAL_RUNS}` must map run ids to lists of episode numbers, found {v}"),
        ))
    }
}

/// Moves every `data/*/*.parquet` not in `referenced` to [`UNREFERENCED_DIR`], under its
/// chunk folder's name (`NAME.N.parquet` when the name is taken there); returns the moves
/// (from, to). The caller holds the dataset's lock.
fn set_aside_unreferenced(
    dir: &Path,
    referenced: &[PathBuf],
) -> Result<Vec<(PathBuf, PathBuf)>, DatasetError> {
    let referenced: std::collections::HashSet<&PathBuf> = referenced.iter().collect();
    let mut moved = Vec::new();
    for file in meta::data_files_on_disk(dir)? {
        if referenced.contains(&file) {
            continue;
        }
        let chunk = file.parent().expect("under data/").to_path_buf();
        let (Some(chunk_name), Some(stem)) = (chunk.file_name(), file.file_stem()) else {
            continue;
        };
        let folder = dir.join(UNREFERENCED_DIR).join(chunk_name);
        fs::create_dir_all(&folder)
            .map_err(|e| DatasetError::io(&folder, "creating a folder for set-aside files", e))?;
        let stem = stem.to_string_lossy();
        let mut to = folder.join(format!("{stem}.parquet"));
        let mut n = 1;
        while fs::symlink_metadata(&to).is_ok() {
            to = folder.join(format!("{stem}.{n}.parquet"));
            n += 1;
        }
        fs::rename(&file, &to).map_err(|e| {
            DatasetError::io(&file, "setting aside a data file no episode references", e)
        })?;
        // The new name, and the folders created for it, survive a power cut.
        let aside = dir.join(UNREFERENCED_DIR);
        for d in [&folder, &aside, dir, &chunk] {
            crate::sync_dir(d).map_err(|e| DatasetError::io(d, "syncing", e))?;
        }
        moved.push((file, to));
    }
    Ok(moved)
}

/// What [`tidy`] did.
#[derive(Debug, Default)]
pub struct Tidied {
    /// Data files no episode referenced, moved into [`UNREFERENCED_DIR`] (from, to).
    pub set_aside: Vec<(PathBuf, PathBuf)>,
    /// Features this writer does not produce (cameras, other sensors), by which the
    /// metadata was left as it was (a dataset of them whose index lists rows that were
    /// never committed is refused: nothing is moved).
    pub foreign_features: Vec<String>,
}

/// Sets aside the data files no episode of the dataset at `dir` references, what stops
/// LeRobot loading a dataset a writer stopped before its commit. A dataset this writer
/// can extend is tidied as [`DatasetWriter::open_append`] does (index rows that were
/// never committed dropped, the metadata written again where that changed anything);
/// any other dataset the reader takes (with cameras, say: a LeRobot recorder's) only has
/// its unreferenced data files moved, and its metadata is left untouched. (Tidying went
/// through `open_append` only, which refuses a dataset with features it does not
/// write: the one command `validate` recommends failed with "cannot append".)
pub fn tidy(dir: &Path) -> Result<Tidied, DatasetError> {
    let foreign_features = foreign_features(dir)?;
    if foreign_features.is_empty() {
        let w = DatasetWriter::open_append(dir)?;
        return Ok(Tidied {
            set_aside: w.set_aside().to_vec(),
            foreign_features,
        });
    }
    let _lock = lock_dir(dir)?;
    let loaded = crate::reader::load(dir)?;
    if loaded.uncommitted_episodes > 0 {
        // Their data files are not the committed episodes': set aside with the rows
        // kept, LeRobot would read rows whose files are gone.
        return Err(DatasetError::invalid(
            meta::info_path(dir),
            format!(
                "the episodes index lists {} rows meta/info.json does not commit, and with \
                 features this writer does not produce ({}) its metadata is not rewritten to \
                 drop them: nothing was moved",
                loaded.uncommitted_episodes,
                foreign_features.join(", ")
            ),
        ));
    }
    Ok(Tidied {
        set_aside: set_aside_unreferenced(dir, &loaded.data_files)?,
        foreign_features,
    })
}

/// Whether anything but directories (empty ones, or of empty ones) is under `dir`: a
/// `create` killed between making its `meta/` directories and its first commit left
/// just those, which every later `create` refused as not empty (and `open_append` as
/// lacking `info.json`), until someone removed them by hand.
fn holds_files(dir: &Path) -> std::io::Result<bool> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        // (Not followed: a link is something, whatever it points at.)
        if !entry.file_type()?.is_dir() || holds_files(&entry.path())? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Writes episodes into a LeRobot v3 dataset directory.
///
/// Data files are written as episodes arrive (one row group per episode);
/// `meta/` is (re)written atomically by [`DatasetWriter::finish`] (and once by
/// [`DatasetWriter::create`], so a new directory is a valid empty dataset).
/// Dropping the writer without `finish` leaves the new data files unreferenced:
/// the dataset stays readable with its previous contents (by our reader; LeRobot's reads
/// every file under `data/`, so the next [`DatasetWriter::open_append`] sets such files
/// aside, into [`UNREFERENCED_DIR`]). A data file that cannot be
/// written or closed (a full disk) is deleted with the episodes in it, which the error
/// names; later episodes go to a new file, and `finish` still writes the metadata of
/// the rest. `finish` stages every metadata file before it renames any, info.json last,
/// so a failure there leaves the previous metadata.
pub struct DatasetWriter {
    dir: PathBuf,
    /// Data files `open_append` moved out of `data/` (from, to).
    set_aside: Vec<(PathBuf, PathBuf)>,
    info: DatasetInfo,
    json: InfoJson,
    tasks: Vec<String>,
    /// Task of the episodes appended next.
    task_index: usize,
    episodes: Vec<EpisodeMeta>,
    frames: usize,
    stats: StatsAcc,
    schema: SchemaRef,
    current: Option<OpenFile>,
    /// (chunk, file) of the next data file to create.
    next_file: (usize, usize),
    new_files: Vec<PathBuf>,
    episodes_added: usize,
    frames_added: usize,
    successes: usize,
    /// Episodes-index files other than ours (foreign multi-file indexes),
    /// removed once ours holds every row.
    stale_index_files: Vec<PathBuf>,
    /// The directory, locked (advisory, `flock`) while this writer lives: two writers
    /// would pick the same next data file and each rewrite `meta/` from its own view.
    _lock: fs::File,
}

/// Locks the dataset directory `dir` for one writer.
fn lock_dir(dir: &Path) -> Result<fs::File, DatasetError> {
    let f =
        fs::File::open(dir).map_err(|e| DatasetError::io(dir, "opening dataset directory", e))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(fs::TryLockError::WouldBlock) => Err(DatasetError::InUse { path: dir.into() }),
        Err(fs::TryLockError::Error(e)) => {
            Err(DatasetError::io(dir, "locking dataset directory", e))
        }
    }
}

/// The `next.*` outcome columns a dataset's `info.json` does not list.
fn outcome_columns_lacking(json: &meta::InfoJson) -> Vec<&'static str> {
    [
        cols::NEXT_OBS,
        cols::REWARD,
        cols::DONE,
        cols::TRUNCATED,
        cols::SUCCESS,
    ]
    .into_iter()
    .filter(|k| !json.features.contains_key(*k))
    .collect()
}

/// How the dataset at `dir` was recorded, from its `info.json` alone (nothing else read,
/// nothing written, no lock taken): for a recorder to refuse it before it starts, where
/// [`DatasetWriter::open_append`] comes later. `None` without an `info.json`.
pub struct Recorded {
    /// Robot, rate and names; the task is left empty (it is in another file).
    pub info: DatasetInfo,
    /// As [`DatasetWriter::lacks_outcome_columns`].
    pub lacks_outcome_columns: Vec<&'static str>,
}

/// See [`Recorded`].
pub fn recorded_as(dir: &Path) -> Result<Option<Recorded>, DatasetError> {
    if !meta::info_path(dir).exists() {
        return Ok(None);
    }
    let json = meta::InfoJson::read(dir)?;
    // As a reader checks them: the names below are built from the shapes (a damaged
    // `[4000000000]` aborted the recorder on an allocation before any named error).
    crate::reader::check_features(&json, &meta::info_path(dir))?;
    Ok(Some(Recorded {
        info: json.dataset_info(String::new()),
        lacks_outcome_columns: outcome_columns_lacking(&json),
    }))
}

/// The episode splits `info.json` at `dir` declares (`"train"` -> `"0:40"`, ...; empty
/// when it declares none).
pub fn dataset_splits(dir: &Path) -> Result<BTreeMap<String, String>, DatasetError> {
    Ok(meta::InfoJson::read(dir)?.splits)
}

/// The data file being written.
struct OpenFile {
    out: ParquetOut,
    chunk: usize,
    file: usize,
    /// The writer's state when it was opened, to go back to if it cannot be written or
    /// closed.
    before: Checkpoint,
}

/// What a data file that fails takes back with it.
struct Checkpoint {
    episodes: usize,
    frames: usize,
    stats: StatsAcc,
    episodes_added: usize,
    frames_added: usize,
    successes: usize,
}

fn fresh_info_json(info: &DatasetInfo) -> InfoJson {
    let od = info.obs_dim();
    let ad = info.action_dim();
    let mut features = BTreeMap::new();
    let mut add = |k: &str, f| {
        features.insert(k.to_string(), f);
    };
    add(
        cols::OBS,
        Feature::new("float32", od, Some(&info.observation_names)),
    );
    add(
        cols::NEXT_OBS,
        Feature::new("float32", od, Some(&info.observation_names)),
    );
    add(
        cols::ACTION,
        Feature::new("float32", ad, Some(&info.action_names)),
    );
    add(cols::REWARD, Feature::new("float32", 1, None));
    for k in [
        cols::DONE,
        cols::TRUNCATED,
        cols::SUCCESS,
        cols::INTERVENTION,
        cols::TELEOP,
    ] {
        add(k, Feature::new("bool", 1, None));
    }
    add(cols::TIMESTAMP, Feature::new("float32", 1, None));
    for k in [
        cols::FRAME_INDEX,
        cols::EPISODE_INDEX,
        cols::INDEX,
        cols::TASK_INDEX,
    ] {
        add(k, Feature::new("int64", 1, None));
    }
    InfoJson {
        codebase_version: meta::CODEBASE_VERSION.into(),
        robot_type: Some(info.robot_type.clone()),
        total_episodes: 0,
        total_frames: 0,
        total_tasks: 0,
        chunks_size: meta::CHUNKS_SIZE,
        data_files_size_in_mb: meta::DATA_FILES_SIZE_IN_MB,
        video_files_size_in_mb: 500,
        fps: info.fps,
        splits: BTreeMap::new(),
        data_path: meta::DATA_PATH.into(),
        video_path: None,
        features,
        extra: info
            .action_mapping
            .iter()
            // Through the text: `to_value` widens each f32 to the f64 it is
            // (0.10000000149011612); the text holds the shortest form (0.1), which reads
            // back as the same f32.
            .filter_map(|m| {
                let value = serde_json::from_slice(&serde_json::to_vec(m).ok()?).ok()?;
                Some((crate::ACTION_MAPPING.to_string(), value))
            })
            .collect(),
    }
}

/// `info.json`'s `splits` (name -> `"START:END"`, episode ranges) once episodes
/// `before..after` are appended to a dataset whose splits were `splits`. A dataset
/// without splits, or whose `train` ends at `before`, gets the new episodes in `train`
/// (ours is always `train: 0:N`); the other splits are kept as they are: an append or a
/// `tidy` set a foreign dataset's `val`/`test` to nothing. New episodes after a split
/// that is not `train` belong to none (a range cannot hold them beside it).
fn splits_after_append(
    splits: &BTreeMap<String, String>,
    before: usize,
    after: usize,
) -> BTreeMap<String, String> {
    let mut out = splits.clone();
    if splits.is_empty() {
        out.insert("train".into(), format!("0:{after}"));
        return out;
    }
    if let Some(train) = out.get_mut("train")
        && let Some((start, end)) = train.split_once(':')
        && end.trim().parse::<usize>() == Ok(before)
    {
        *train = format!("{}:{after}", start.trim());
    }
    out
}

/// Arrow schema of the data files: the known columns that `features` declares, in
/// [`cols::ALL`] order.
fn data_schema(features: &BTreeMap<String, Feature>, od: usize, ad: usize) -> SchemaRef {
    let fields: Vec<Field> = cols::ALL
        .iter()
        .filter(|k| features.contains_key(**k))
        .map(|&k| {
            let dt = match k {
                cols::OBS | cols::NEXT_OBS => f32_vec_type(od),
                cols::ACTION => f32_vec_type(ad),
                cols::REWARD | cols::TIMESTAMP => DataType::Float32,
                cols::DONE
                | cols::TRUNCATED
                | cols::SUCCESS
                | cols::INTERVENTION
                | cols::TELEOP => DataType::Boolean,
                _ => DataType::Int64,
            };
            Field::new(k, dt, false)
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// Parse `prefix-NNN[suffix]` into NNN.
fn parse_num(path: &Path, prefix: &str, suffix: &str) -> Option<usize> {
    path.file_name()?
        .to_str()?
        .strip_prefix(prefix)?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

impl DatasetWriter {
    /// Start a new dataset in `dir` (created if needed; must be empty).
    pub fn create(dir: &Path, info: DatasetInfo) -> Result<Self, DatasetError> {
        Self::create_as(dir, info, true)
    }

    /// As [`Self::create`]; without `next_observations`, the dataset has no
    /// `next.observation.state` column, as the LeRobot recording it is a copy of
    /// ([`Dataset::next_observations_recorded`]): writing the successors the reader
    /// derived would present them as recorded, and training would bootstrap from a last
    /// frame's own observation. Each episode's next observations must then be those the
    /// reader derives (the next frame's, the last frame's own), or it is refused.
    ///
    /// [`Dataset::next_observations_recorded`]: crate::Dataset::next_observations_recorded
    pub fn create_as(
        dir: &Path,
        info: DatasetInfo,
        next_observations: bool,
    ) -> Result<Self, DatasetError> {
        if info.fps == 0 || info.obs_dim() == 0 || info.action_dim() == 0 {
            return Err(DatasetError::invalid(
                dir,
                format!(
                    "cannot create dataset: need fps > 0 and non-empty observation/action names \
                     (got fps {}, obs_dim {}, action_dim {})",
                    info.fps,
                    info.obs_dim(),
                    info.action_dim()
                ),
            ));
        }
        if info.obs_dim().max(info.action_dim()) > reader::MAX_VECTOR_DIM {
            return Err(DatasetError::invalid(
                dir,
                format!(
                    "cannot create dataset: {} observation and {} action names, at most {} each \
                     (the reader's limit)",
                    info.obs_dim(),
                    info.action_dim(),
                    reader::MAX_VECTOR_DIM
                ),
            ));
        }
        // As every reader checks it (a recording's header is not checked before).
        if let Some(why) = (info.action_mapping.as_ref()).and_then(|m| m.invalid(info.action_dim()))
        {
            return Err(DatasetError::invalid(
                dir,
                format!("cannot create dataset: the action mapping {why}"),
            ));
        }
        match holds_files(dir) {
            Ok(false) => {}
            Ok(true) => return Err(DatasetError::NotEmpty { path: dir.into() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                crate::create_dir_durably(dir)
                    .map_err(|e| DatasetError::io(dir, "creating directory", e))?;
            }
            Err(e) => return Err(DatasetError::io(dir, "opening dataset directory", e)),
        }
        let lock = lock_dir(dir)?;
        // Again under the lock: another writer that saw it empty too may have created
        // and finished a dataset there between the look above and the lock (this one
        // would then commit an empty dataset over it).
        let files =
            holds_files(dir).map_err(|e| DatasetError::io(dir, "opening dataset directory", e))?;
        if files {
            return Err(DatasetError::NotEmpty { path: dir.into() });
        }
        fs::create_dir_all(meta::episodes_path(dir).parent().unwrap_or(dir))
            .map_err(|e| DatasetError::io(dir, "creating meta directories", e))?;
        let mut json = fresh_info_json(&info);
        if !next_observations {
            json.features.remove(cols::NEXT_OBS);
        }
        let w = Self {
            dir: dir.into(),
            schema: data_schema(&json.features, info.obs_dim(), info.action_dim()),
            stats: StatsAcc::new(info.obs_dim(), info.action_dim(), info.fps),
            tasks: vec![info.task.clone()],
            task_index: 0,
            info,
            json,
            episodes: Vec::new(),
            frames: 0,
            current: None,
            next_file: (0, 0),
            new_files: Vec::new(),
            episodes_added: 0,
            frames_added: 0,
            successes: 0,
            stale_index_files: Vec::new(),
            set_aside: Vec::new(),
            _lock: lock,
        };
        w.write_meta()?;
        Ok(w)
    }

    /// Reopen an existing dataset (fully validated first) to append episodes.
    ///
    /// New episodes go to new data files; existing data files are never
    /// rewritten. Only the columns the dataset's `info.json` declares are
    /// written, so appending to a LeRobot recording without `next.*`
    /// columns keeps its schema. Fails if `info.json` declares features this
    /// writer cannot produce (e.g. videos or extra state keys).
    pub fn open_append(dir: &Path) -> Result<Self, DatasetError> {
        // Locked before reading: what is read must be what this writer extends.
        let lock = lock_dir(dir)?;
        let loaded = crate::reader::load(dir)?;
        let info_path = meta::info_path(dir);
        runs_of(&loaded.json, &info_path)?;
        check_partial_runs(&loaded.json, &info_path)?;
        for (key, f) in &loaded.json.features {
            if !cols::ALL.contains(&key.as_str()) {
                return Err(DatasetError::invalid(
                    &info_path,
                    format!(
                        "feature `{key}` ({}) is not produced by this writer; cannot append to this dataset",
                        f.dtype
                    ),
                ));
            }
        }
        let info = loaded.dataset.info;
        let mut stats = StatsAcc::new(info.obs_dim(), info.action_dim(), info.fps);
        let mut episodes = loaded.metas;
        let mut successes = 0;
        for (((ep, m), task_ids), ts) in loaded
            .dataset
            .episodes
            .iter()
            .zip(episodes.iter_mut())
            .zip(&loaded.episode_tasks)
            .zip(&loaded.timestamps)
        {
            stats.push_with_timestamps(ep, Some(ts));
            m.success = ep.is_success();
            m.ret = f64::from(ep.ret());
            m.tasks = task_ids.iter().map(|&t| loaded.tasks[t].clone()).collect();
            successes += usize::from(m.success);
        }
        // Next data file: after every file referenced or present on disk.
        let mut last = episodes.iter().map(|m| (m.chunk, m.file)).max();
        for chunk in meta::sorted_entries(&dir.join("data"), "chunk-", "")? {
            let Some(c) = parse_num(&chunk, "chunk-", "") else {
                continue;
            };
            for file in meta::sorted_entries(&chunk, "file-", ".parquet")? {
                if let Some(f) = parse_num(&file, "file-", ".parquet") {
                    last = last.max(Some((c, f)));
                }
            }
        }
        let chunks_size = loaded.json.chunks_size;
        let next_file = match last {
            None => (0, 0),
            Some(l) => next_data_file(dir, l, chunks_size)?,
        };
        // After the numbering above, which still steps over them: this writer's new
        // files do not take a set-aside file's name (a later writer may; the set-aside
        // copy then gets a `.N` suffix, and nothing is overwritten).
        let set_aside = set_aside_unreferenced(dir, &loaded.data_files)?;
        let uncommitted = loaded.uncommitted_episodes;
        let ours = meta::episodes_path(dir);
        let stale_index_files = loaded
            .episode_files
            .into_iter()
            .filter(|p| *p != ours)
            .collect();
        let mut tasks = loaded.tasks;
        if tasks.is_empty() {
            tasks.push(info.task.clone());
        }
        let mut w = Self {
            dir: dir.into(),
            schema: data_schema(&loaded.json.features, info.obs_dim(), info.action_dim()),
            stats,
            tasks,
            task_index: 0,
            info,
            json: loaded.json,
            frames: episodes.iter().map(|m| m.length).sum(),
            episodes,
            current: None,
            next_file,
            new_files: Vec::new(),
            episodes_added: 0,
            frames_added: 0,
            successes,
            stale_index_files,
            set_aside,
            _lock: lock,
        };
        // Index rows of episodes that were never committed (whose data files were just
        // set aside) and superseded index files: LeRobot reads those too. The metadata
        // is rewritten now, as `finish` would, not at the end of a run that may not end.
        if !w.set_aside.is_empty() || uncommitted > 0 || !w.stale_index_files.is_empty() {
            w.write_meta()?;
            w.remove_superseded_index_files()?;
        }
        Ok(w)
    }

    /// Removes the episodes index files our index (just written) supersedes: our reader
    /// counts their rows past info.json's totals as uncommitted episodes (`validate`
    /// reports them), and LeRobot reads every index file.
    fn remove_superseded_index_files(&mut self) -> Result<(), DatasetError> {
        for stale in std::mem::take(&mut self.stale_index_files) {
            fs::remove_file(&stale)
                .map_err(|e| DatasetError::io(&stale, "removing superseded episodes index", e))?;
        }
        Ok(())
    }

    /// The data files [`Self::open_append`] set aside (from, to): no episode referenced
    /// them ([`UNREFERENCED_DIR`]).
    pub fn set_aside(&self) -> &[(PathBuf, PathBuf)] {
        &self.set_aside
    }

    /// Episodes in the dataset so far, the ones from before an append included: the
    /// index the next appended episode gets.
    pub fn total_episodes(&self) -> usize {
        self.episodes.len()
    }

    /// Dataset description (for an appended dataset, as read from disk).
    pub fn info(&self) -> &DatasetInfo {
        &self.info
    }

    /// Whether the dataset has the column `key` (one of [`cols::ALL`]): an appended
    /// dataset keeps the columns it was created with, and the others are not written.
    pub fn writes(&self, key: &str) -> bool {
        self.json.features.contains_key(key)
    }

    /// The `next.*` columns of an episode's outcome that this dataset does not have (a
    /// dataset not written by us): an episode they cannot represent exactly is refused
    /// by [`Self::append_episode`].
    pub fn lacks_outcome_columns(&self) -> Vec<&'static str> {
        outcome_columns_lacking(&self.json)
    }

    /// Notes that the episodes of the run `id` are in this dataset: `info.json` keeps the
    /// ids (key [`NOTED_RUNS`], the newest [`MAX_NOTED_RUNS`]), committed with the
    /// episodes by [`Self::finish`]. A converter of a recorder's log
    /// (`controller log-to-dataset --last-run`) reads them with [`noted_runs`] to tell
    /// a run whose episodes are here from one that was killed before it saved them.
    pub fn note_run(&mut self, id: &str) {
        let runs = self
            .json
            .extra
            .entry(NOTED_RUNS)
            .or_insert_with(|| serde_json::Value::Array(vec![]));
        // `open_append` refused any other form, and only this writes the key.
        let Some(list) = runs.as_array_mut() else {
            return;
        };
        if !list.iter().any(|v| v.as_str() == Some(id)) {
            list.push(id.into());
        }
        let over = list.len().saturating_sub(MAX_NOTED_RUNS);
        list.drain(..over);
        // Whole now: no longer partly.
        if let Some(partial) = self
            .json
            .extra
            .get_mut(PARTIAL_RUNS)
            .and_then(|v| v.as_object_mut())
        {
            partial.remove(id);
            if partial.is_empty() {
                self.json.extra.remove(PARTIAL_RUNS);
            }
        }
    }

    /// Notes that of run `id` the dataset holds only the episodes numbered `saved` in
    /// the run (committed with them by [`Self::finish`]): the run lost some (a data file
    /// that failed) or never ended others (its logger stopped inside one). A converter
    /// of the run's log (`controller log-to-dataset --last-run`) then adds the others,
    /// not these again ([`Self::partial_run`]). At most [`MAX_NOTED_RUNS`] partial
    /// runs are noted: past that, the oldest note goes to make room (by the start time
    /// that ends the controller's run ids). The new run is the one a converter
    /// with `--last-run` is about to take; left out, it was not noted at all and its
    /// saved episodes were added a second time.
    pub fn note_partial_run(&mut self, id: &str, saved: &[u32]) {
        let map = self
            .json
            .extra
            .entry(PARTIAL_RUNS)
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
        let Some(map) = map.as_object_mut() else {
            return;
        };
        while !map.contains_key(id) && map.len() >= MAX_NOTED_RUNS {
            // The oldest goes (an id without a start time first).
            let Some(oldest) = map.keys().min_by_key(|k| run_started(k)).cloned() else {
                break;
            };
            map.remove(&oldest);
        }
        let entry = map
            .entry(id)
            .or_insert_with(|| serde_json::Value::Array(vec![]));
        if let Some(list) = entry.as_array_mut() {
            // A set, not a search of the list per episode: a run of days saves millions
            // of episodes, and the search made its end take minutes to hours.
            let mut have: std::collections::HashSet<u64> =
                list.iter().filter_map(|v| v.as_u64()).collect();
            for &e in saved {
                if have.insert(e as u64) {
                    list.push(e.into());
                }
            }
        }
    }

    /// The dataset's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The episodes (numbers in the run) of run `id` that [`Self::note_partial_run`]
    /// noted here; empty where none were (or the entry is not a list of numbers).
    pub fn partial_run(&self, id: &str) -> Vec<u32> {
        self.json
            .extra
            .get(PARTIAL_RUNS)
            .and_then(|v| v.get(id))
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether the dataset notes the run `id` ([`Self::note_run`]; as read when this
    /// writer opened it, under its lock).
    pub fn has_run(&self, id: &str) -> bool {
        runs_of(&self.json, Path::new("")).is_ok_and(|runs| runs.iter().any(|r| r == id))
    }

    /// Use `task` for the episodes appended from now on (added to
    /// `meta/tasks.parquet` if new).
    pub fn set_task(&mut self, task: &str) {
        self.task_index = match self.tasks.iter().position(|t| t == task) {
            Some(i) => i,
            None => {
                self.tasks.push(task.to_owned());
                self.tasks.len() - 1
            }
        };
    }

    /// The splits the dataset declares when finished: a copy of another dataset's
    /// episodes, in their order, keeps that dataset's (its `val` episodes stay held
    /// out). Episodes appended after them go to `train` if it ends where they start.
    pub fn set_splits(&mut self, splits: BTreeMap<String, String>) {
        self.json.splits = splits;
    }

    /// Append one episode (checked with [`Episode::check`] first).
    pub fn append_episode(&mut self, ep: &Episode) -> Result<(), DatasetError> {
        let index = self.episodes.len();
        ep.check(self.info.obs_dim(), self.info.action_dim())
            .map_err(|e| {
                DatasetError::invalid(&self.dir, format!("episode {index} rejected: {e}"))
            })?;
        let batch = self.data_batch(ep, index).map_err(|e| {
            DatasetError::invalid(
                &self.dir,
                format!("episode {index}: cannot build record batch: {e}"),
            )
        })?;
        self.check_reads_back(ep, index, &batch)?;
        let mut current = match self.current.take() {
            Some(current) => current,
            None => {
                // A file of the next name that no episode refers to (a leftover the
                // scan of `chunk-*/file-*` did not see, under another template) is
                // never overwritten: the next free name is taken.
                let mut skipped = 0;
                while std::fs::symlink_metadata(self.dir.join(meta::format_path(
                    &self.json.data_path,
                    self.next_file.0,
                    self.next_file.1,
                )))
                .is_ok()
                    && skipped < MAX_SKIPPED_FILES
                {
                    self.next_file =
                        next_data_file(&self.dir, self.next_file, self.json.chunks_size)?;
                    skipped += 1;
                }
                let (chunk, file) = self.next_file;
                let path = self
                    .dir
                    .join(meta::format_path(&self.json.data_path, chunk, file));
                let out = ParquetOut::create_new(&path, self.schema.clone(), None)?;
                self.new_files.push(path);
                // Past the last number it stays on this file: the next file to open then
                // finds it taken and fails to step over it, with the error. This one is
                // good.
                if let Some(next) = advance(self.next_file, self.json.chunks_size) {
                    self.next_file = next;
                }
                OpenFile {
                    out,
                    chunk,
                    file,
                    before: self.checkpoint(),
                }
            }
        };
        if let Err(e) = current.out.write(&batch) {
            return Err(self.abandon(e, current.before));
        }
        let (chunk, file) = (current.chunk, current.file);
        let limit = self.json.data_files_size_in_mb.saturating_mul(1024 * 1024);
        let full = current.out.bytes_written() as u64 >= limit;
        self.current = Some(current);
        let n = ep.len();
        self.episodes.push(EpisodeMeta {
            length: n,
            chunk,
            file,
            from: self.frames,
            to: self.frames + n,
            tasks: vec![self.tasks[self.task_index].clone()],
            success: ep.is_success(),
            ret: f64::from(ep.ret()),
        });
        self.stats.push(ep);
        self.frames += n;
        self.frames_added += n;
        self.episodes_added += 1;
        self.successes += usize::from(ep.is_success());
        if full {
            self.close_data_file()?;
        }
        Ok(())
    }

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            episodes: self.episodes.len(),
            frames: self.frames,
            stats: self.stats.clone(),
            episodes_added: self.episodes_added,
            frames_added: self.frames_added,
            successes: self.successes,
        }
    }

    /// Closes the current data file (its footer makes it readable), which `finish` does
    /// too; if that fails, the file is abandoned as when a write fails (see
    /// [`DatasetWriter::append_episode`]), and [`DatasetWriter::total_episodes`] says
    /// how many episodes remain. The next episode starts a new file.
    pub fn close_data_file(&mut self) -> Result<(), DatasetError> {
        let Some(OpenFile { out, before, .. }) = self.current.take() else {
            return Ok(());
        };
        match out.close() {
            Ok(_) => Ok(()),
            Err(e) => Err(self.abandon(e, before)),
        }
    }

    /// A data file that could not be written or closed (a full disk, an I/O error) is
    /// unreadable: the episodes in it leave the index (and the statistics), the file is
    /// deleted where it can be (it is the last of `new_files`; nothing in `meta/` names
    /// it either way), and the next episode starts a new file.
    /// Returns the error, which names the file and the episodes lost with it.
    fn abandon(&mut self, e: DatasetError, before: Checkpoint) -> DatasetError {
        let lost = before.episodes..self.episodes.len();
        let lost = match lost.len() {
            0 => String::new(),
            1 => format!(", and episode {} written to it before", lost.start),
            _ => format!(
                ", and episodes {} to {} written to it before",
                lost.start,
                lost.end - 1
            ),
        };
        self.episodes.truncate(before.episodes);
        self.frames = before.frames;
        self.stats = before.stats;
        self.episodes_added = before.episodes_added;
        self.frames_added = before.frames_added;
        self.successes = before.successes;
        let mut dropped = String::new();
        if let Some(path) = self.new_files.pop() {
            // Either way the file is not in the dataset (nothing in `meta/` names it; the
            // next writer steps over a leftover file), but say which.
            let fate = match fs::remove_file(&path) {
                Ok(()) => "is deleted".to_string(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => "is gone".to_string(),
                Err(e) => format!("could not be deleted ({e}) but is not part of it"),
            };
            dropped = format!(
                "; {} {fate}{lost}: those episodes are not in the dataset",
                path.display()
            );
        }
        DatasetError::invalid(&self.dir, format!("{e}{dropped}"))
    }

    /// Close the data file and atomically rewrite `meta/`. If the data file cannot be
    /// closed, its episodes are dropped (see [`DatasetWriter::append_episode`]'s
    /// errors), the metadata is still written for the rest, and the error is returned.
    pub fn finish(mut self) -> Result<DatasetSummary, DatasetError> {
        let closed = self.close_data_file();
        if let Err(meta) = self.write_meta() {
            return Err(match closed {
                Ok(()) => meta,
                Err(c) => DatasetError::invalid(
                    &self.dir,
                    format!("{c}; then writing the metadata failed too: {meta}"),
                ),
            });
        }
        // Our index holds every row now, so the superseded ones go even after a failed
        // close (their rows would read as uncommitted episodes).
        self.remove_superseded_index_files()?;
        closed?;
        Ok(DatasetSummary {
            dir: self.dir,
            total_episodes: self.episodes.len(),
            total_frames: self.frames,
            episodes_added: self.episodes_added,
            frames_added: self.frames_added,
            data_files_written: self.new_files,
            success_rate: if self.episodes.is_empty() {
                0.0
            } else {
                self.successes as f64 / self.episodes.len() as f64
            },
        })
    }

    /// Stage tasks, episodes index, stats and info.json (the totals), each written in
    /// full and synced under a temporary name; then rename them into place, info.json
    /// last. A failure while staging (a full disk) leaves the previous metadata, so
    /// the dataset reads as before; the renames need no space.
    fn write_meta(&self) -> Result<(), DatasetError> {
        let tasks = meta::stage_tasks(&self.dir, &self.tasks)?;
        let index = meta::stage_episodes(&meta::episodes_path(&self.dir), &self.episodes)?;
        let features = &self.json.features;
        let stats = meta::stats_json(&self.stats.finish(), |k| features.contains_key(k));
        let stats = arrow_io::stage_json(&meta::stats_path(&self.dir), &stats)?;
        let mut json = self.json.clone();
        json.total_episodes = self.episodes.len();
        json.total_frames = self.frames;
        json.total_tasks = self.tasks.len();
        json.splits = splits_after_append(
            &self.json.splits,
            self.episodes.len() - self.episodes_added,
            self.episodes.len(),
        );
        let path = meta::info_path(&self.dir);
        let value = serde_json::to_value(&json).map_err(|error| DatasetError::Json {
            path: path.clone(),
            what: "serializing info.json".into(),
            error,
        })?;
        let info = arrow_io::stage_json(&path, &value)?;
        for staged in [tasks, index, stats, info] {
            staged.commit()?;
        }
        Ok(())
    }

    /// A dataset that lacks some of the `next.*` columns (one not written by us) stores
    /// what it has, and the reader fills the rest in by its documented defaults. Refuses
    /// an episode that would read back differently from what it is: its outcome
    /// (reward, terminated, truncated, success) or its next observations. The operator
    /// marks (`intervention`, `teleop`) are not checked: losing one is warned about where
    /// the dataset is opened.
    fn check_reads_back(
        &self,
        ep: &Episode,
        index: usize,
        batch: &RecordBatch,
    ) -> Result<(), DatasetError> {
        let missing = self.lacks_outcome_columns();
        if missing.is_empty() {
            return Ok(());
        }
        let (od, ad) = (self.info.obs_dim(), self.info.action_dim());
        let back = reader::decode_batch(batch, &self.dir, &self.json, od, ad, 0)
            .map(|d| reader::build_episode(&d, 0, ep.len(), od, ad))?;
        let differs = [
            (
                "next observations",
                ep.next_observations != back.next_observations,
            ),
            ("rewards", ep.rewards != back.rewards),
            ("terminated flags", ep.terminated != back.terminated),
            ("truncated flags", ep.truncated != back.truncated),
            ("success flags", ep.success != back.success),
        ]
        .into_iter()
        .filter_map(|(what, d)| d.then_some(what))
        .collect::<Vec<_>>();
        if differs.is_empty() {
            return Ok(());
        }
        Err(DatasetError::invalid(
            &self.dir,
            format!(
                "episode {index} rejected: this dataset has no {} column, so the episode's {} \
                 would read back changed; write it into a dataset with every `next.*` column \
                 (a new one)",
                missing
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                differs.join(", ")
            ),
        ))
    }

    /// One record batch holding every frame of `ep`.
    fn data_batch(&self, ep: &Episode, episode_index: usize) -> Result<RecordBatch, String> {
        let n = ep.len();
        let (od, ad) = (self.info.obs_dim(), self.info.action_dim());
        let from = self.frames;
        let ints = |f: &dyn Fn(usize) -> usize| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values((0..n).map(|i| f(i) as i64)))
        };
        let bools = |f: &dyn Fn(usize) -> bool| -> ArrayRef {
            Arc::new(BooleanArray::from_iter((0..n).map(|i| Some(f(i)))))
        };
        let mut columns = Vec::with_capacity(self.schema.fields().len());
        for field in self.schema.fields() {
            let col: ArrayRef = match field.name().as_str() {
                cols::OBS => f32_vec_array(&ep.observations, od)?,
                cols::NEXT_OBS => f32_vec_array(&ep.next_observations, od)?,
                cols::ACTION => f32_vec_array(&ep.actions, ad)?,
                cols::REWARD => Arc::new(Float32Array::from(ep.rewards.clone())),
                cols::DONE => bools(&|i| ep.terminated[i] || ep.truncated[i]),
                cols::TRUNCATED => bools(&|i| ep.truncated[i]),
                cols::SUCCESS => bools(&|i| ep.success[i]),
                cols::INTERVENTION => bools(&|i| ep.intervention[i]),
                cols::TELEOP => bools(&|i| ep.teleop[i]),
                cols::TIMESTAMP => Arc::new(Float32Array::from_iter_values(
                    (0..n).map(|i| crate::timestamp(i, self.info.fps)),
                )),
                cols::FRAME_INDEX => ints(&|i| i),
                cols::EPISODE_INDEX => ints(&|_| episode_index),
                cols::INDEX => ints(&|i| from + i),
                cols::TASK_INDEX => ints(&|_| self.task_index),
                other => return Err(format!("no data for column {other}")),
            };
            columns.push(col);
        }
        RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| e.to_string())
    }
}

/// The data file after `at` in dataset `dir`, or an error past the numbers' range: a
/// stray `chunk-18446744073709551615` has no next file (an error, not an overflow panic
/// when the robot's recording opens).
fn next_data_file(
    dir: &Path,
    at: (usize, usize),
    chunks_size: usize,
) -> Result<(usize, usize), DatasetError> {
    advance(at, chunks_size).ok_or_else(|| DatasetError::Invalid {
        path: dir.join("data"),
        problem: format!(
            "the last data file, chunk {} file {}, leaves no number for a next one (a stray \
             file name?)",
            at.0, at.1
        ),
    })
}

/// The data file after `(chunk, file)`; `None` past the numbers' range.
fn advance((chunk, file): (usize, usize), chunks_size: usize) -> Option<(usize, usize)> {
    match file.checked_add(1) {
        Some(next) if next < chunks_size => Some((chunk, next)),
        _ => Some((chunk.checked_add(1)?, 0)),
    }
}

/// Create `dir` and write `episodes` in one go.
pub fn write_dataset(
    dir: &Path,
    info: &DatasetInfo,
    episodes: &[Episode],
) -> Result<DatasetSummary, DatasetError> {
    write_dataset_as(dir, info, episodes, true)
}

/// [`write_dataset`] with or without the `next.observation.state` column
/// ([`DatasetWriter::create_as`]).
pub fn write_dataset_as(
    dir: &Path,
    info: &DatasetInfo,
    episodes: &[Episode],
    next_observations: bool,
) -> Result<DatasetSummary, DatasetError> {
    let mut w = DatasetWriter::create_as(dir, info.clone(), next_observations)?;
    for ep in episodes {
        w.append_episode(ep)?;
    }
    w.finish()
}

//! `meta/` files: info.json, stats.json, tasks.parquet and the episodes index.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::file::metadata::KeyValue;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::arrow_io::{self, read_parquet};
use crate::{DatasetError, FeatureStats, cols};

pub(crate) const CODEBASE_VERSION: &str = "v3.0";
pub(crate) const CHUNKS_SIZE: usize = 1000;
pub(crate) const DATA_FILES_SIZE_IN_MB: u64 = 100;
pub(crate) const DATA_PATH: &str = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet";

pub(crate) fn info_path(dir: &Path) -> PathBuf {
    dir.join("meta").join("info.json")
}
pub(crate) fn stats_path(dir: &Path) -> PathBuf {
    dir.join("meta").join("stats.json")
}
pub(crate) fn tasks_path(dir: &Path) -> PathBuf {
    dir.join("meta").join("tasks.parquet")
}
pub(crate) fn episodes_dir(dir: &Path) -> PathBuf {
    dir.join("meta").join("episodes")
}
/// The single episodes-index file this crate writes.
pub(crate) fn episodes_path(dir: &Path) -> PathBuf {
    episodes_dir(dir).join("chunk-000").join("file-000.parquet")
}

/// Expand a LeRobot path template (`{chunk_index:03d}`, `{file_index:03d}`).
pub(crate) fn format_path(template: &str, chunk: usize, file: usize) -> String {
    template
        .replace("{chunk_index:03d}", &format!("{chunk:03}"))
        .replace("{file_index:03d}", &format!("{file:03}"))
        .replace("{chunk_index}", &chunk.to_string())
        .replace("{file_index}", &file.to_string())
}

/// One entry of `info.json`'s `features` map.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Feature {
    pub dtype: String,
    pub shape: Vec<usize>,
    /// LeRobot allows a list, `{"axes": [...]}`-style maps, or null.
    #[serde(default)]
    pub names: Value,
    /// The entry's other keys (a LeRobot conversion's per-feature `fps`, an `info`),
    /// written back as they were.
    #[serde(flatten, default)]
    pub extra: serde_json::Map<String, Value>,
}

impl Feature {
    pub(crate) fn new(dtype: &str, shape: usize, names: Option<&[String]>) -> Self {
        Self {
            dtype: dtype.into(),
            shape: vec![shape],
            names: names.map_or(Value::Null, |n| Value::from(n.to_vec())),
            extra: Default::default(),
        }
    }

    /// Number of values per frame (product of `shape`; 0 if it overflows).
    pub(crate) fn dim(&self) -> usize {
        self.shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .unwrap_or(0)
    }

    /// The list `names` holds: itself, or the one list of a one-key object.
    fn names_list(&self) -> Option<&Vec<Value>> {
        match &self.names {
            Value::Array(a) => Some(a),
            // e.g. {"motors": ["j0", "j1"]}
            Value::Object(o) if o.len() == 1 => o.values().next().and_then(Value::as_array),
            _ => None,
        }
    }

    /// What is wrong with a list of names that is not one name per value: one of other
    /// than `dim()` strings. (No list, an empty one, `null` or another form names
    /// nothing: the values are named `{key}.{i}`.) Read before, such a list was
    /// replaced by made-up names, which nothing compares with a robot's.
    pub(crate) fn names_problem(&self) -> Option<String> {
        let list = self.names_list().filter(|l| !l.is_empty())?;
        if let Some(i) = list.iter().position(|v| !v.is_string()) {
            return Some(format!("names[{i}] is {}, not a string", list[i]));
        }
        (list.len() != self.dim())
            .then(|| format!("{} names for shape {:?}", list.len(), self.shape))
    }

    /// Per-dimension names; `{key}.{i}` when there are none (a list that is not one name
    /// per value is refused, [`Self::names_problem`]).
    pub(crate) fn dim_names(&self, key: &str) -> Vec<String> {
        match self.names_list() {
            Some(l) if !l.is_empty() && self.names_problem().is_none() => l
                .iter()
                .map(|v| v.as_str().unwrap_or_default().to_owned())
                .collect(),
            _ => (0..self.dim()).map(|i| format!("{key}.{i}")).collect(),
        }
    }
}

/// `meta/info.json`. Unknown keys are kept in `extra` and written back (those of each
/// feature's entry too, [`Feature::extra`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct InfoJson {
    pub codebase_version: String,
    #[serde(default)]
    pub robot_type: Option<String>,
    pub total_episodes: usize,
    pub total_frames: usize,
    pub total_tasks: usize,
    #[serde(default = "default_chunks_size")]
    pub chunks_size: usize,
    #[serde(default = "default_data_mb")]
    pub data_files_size_in_mb: u64,
    #[serde(default = "default_video_mb")]
    pub video_files_size_in_mb: u64,
    pub fps: u32,
    #[serde(default)]
    pub splits: BTreeMap<String, String>,
    #[serde(default = "default_data_path")]
    pub data_path: String,
    #[serde(default)]
    pub video_path: Option<String>,
    pub features: BTreeMap<String, Feature>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

fn default_chunks_size() -> usize {
    CHUNKS_SIZE
}
fn default_data_mb() -> u64 {
    DATA_FILES_SIZE_IN_MB
}
fn default_video_mb() -> u64 {
    500
}
fn default_data_path() -> String {
    DATA_PATH.into()
}

impl InfoJson {
    /// Robot, rate and the names of the observation and action values, with `task`.
    pub(crate) fn dataset_info(&self, task: String) -> crate::DatasetInfo {
        let names = |k: &str| {
            self.features
                .get(k)
                .map(|f| f.dim_names(k))
                .unwrap_or_default()
        };
        crate::DatasetInfo {
            robot_type: self.robot_type.clone().unwrap_or_default(),
            fps: self.fps,
            task,
            observation_names: names(crate::cols::OBS),
            action_names: names(crate::cols::ACTION),
            // Checked with the features ([`crate::reader::check_features`]).
            action_mapping: self.action_mapping().ok().flatten(),
        }
    }

    /// The [`crate::ACTION_MAPPING`] entry, if any; an error naming what is wrong with
    /// one that is not a mapping of the `action` feature's values.
    pub(crate) fn action_mapping(&self) -> Result<Option<crate::ActionMapping>, String> {
        let Some(v) = self.extra.get(crate::ACTION_MAPPING) else {
            return Ok(None);
        };
        let key = crate::ACTION_MAPPING;
        let m: crate::ActionMapping = serde_json::from_value(v.clone()).map_err(|e| {
            format!("`{key}` must hold `scale` and `offset`, a list of numbers each ({e})")
        })?;
        let dim = self
            .features
            .get(crate::cols::ACTION)
            .map_or(0, Feature::dim);
        match m.invalid(dim) {
            Some(why) => Err(format!("`{key}` {why}")),
            None => Ok(Some(m)),
        }
    }

    pub(crate) fn read(dir: &Path) -> Result<Self, DatasetError> {
        let path = info_path(dir);
        let text = read_metadata(
            &path,
            MAX_INFO_BYTES,
            "info.json (is this a LeRobot v3 dataset directory?)",
            "reading info.json",
        )?;
        let json_err = |error| DatasetError::Json {
            path: path.clone(),
            what: "LeRobot v3 info.json".into(),
            error,
        };
        let value: Value = serde_json::from_str(&text).map_err(json_err)?;
        // Check the version before the schema so old datasets get the clear message.
        match value.get("codebase_version").and_then(Value::as_str) {
            Some(CODEBASE_VERSION) => {}
            Some(other) => {
                return Err(DatasetError::Version {
                    path,
                    found: other.into(),
                });
            }
            None => {
                return Err(DatasetError::invalid(
                    &path,
                    "field `codebase_version` missing or not a string (expected \"v3.0\")",
                ));
            }
        }
        let info: Self = serde_json::from_value(value).map_err(json_err)?;
        if info.fps == 0 {
            return Err(DatasetError::invalid(
                &path,
                "field `fps` is 0, expected > 0",
            ));
        }
        if info.chunks_size == 0 {
            return Err(DatasetError::invalid(&path, "field `chunks_size` is 0"));
        }
        Ok(info)
    }
}

/// One row of `meta/episodes/*.parquet`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EpisodeMeta {
    pub length: usize,
    pub chunk: usize,
    pub file: usize,
    /// Global frame index range `[from, to)`.
    pub from: usize,
    pub to: usize,
    pub tasks: Vec<String>,
    pub success: bool,
    pub ret: f64,
}

/// Column names of the episodes index.
mod ecols {
    pub const EPISODE_INDEX: &str = "episode_index";
    pub const TASKS: &str = "tasks";
    pub const LENGTH: &str = "length";
    pub const DATA_CHUNK: &str = "data/chunk_index";
    pub const DATA_FILE: &str = "data/file_index";
    pub const FROM: &str = "dataset_from_index";
    pub const TO: &str = "dataset_to_index";
    pub const META_CHUNK: &str = "meta/episodes/chunk_index";
    pub const META_FILE: &str = "meta/episodes/file_index";
    pub const SUCCESS: &str = "success";
    pub const RETURN: &str = "return";
}

/// All episodes-index files (`meta/episodes/chunk-*/file-*.parquet`), sorted.
pub(crate) fn list_episode_files(dir: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let root = episodes_dir(dir);
    let mut out = Vec::new();
    for chunk in sorted_entries(&root, "chunk-", "")? {
        out.extend(sorted_entries(&chunk, "file-", ".parquet")?);
    }
    if out.is_empty() {
        return Err(DatasetError::Missing {
            path: root,
            what: "episodes index (expected chunk-000/file-000.parquet)".into(),
        });
    }
    Ok(out)
}

/// Every `data/*/*.parquet` under `dir`, sorted: what LeRobot's loader reads (any folder
/// under `data/`, not only `chunk-NNN`), so what validation reports as unreferenced and
/// what an append sets aside.
pub(crate) fn data_files_on_disk(dir: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let mut files = Vec::new();
    for folder in sorted_entries(&dir.join("data"), "", "")? {
        files.extend(sorted_entries(&folder, "", ".parquet")?);
    }
    Ok(files)
}

/// Entries of `dir` whose names start with `prefix` and end with `suffix`, sorted.
/// A missing directory yields an empty list.
pub(crate) fn sorted_entries(
    dir: &Path,
    prefix: &str,
    suffix: &str,
) -> Result<Vec<PathBuf>, DatasetError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(DatasetError::io(dir, "listing directory", e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| DatasetError::io(dir, "listing directory", e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // Without a suffix the entries are directories (`chunk-000`), with one files
        // (`file-000.parquet`): a stray `chunk-000.bak` file is not a chunk.
        let path = entry.path();
        if name.starts_with(prefix) && name.ends_with(suffix) && path.is_dir() == suffix.is_empty()
        {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn col<'a>(
    batch: &'a RecordBatch,
    path: &Path,
    name: &str,
) -> Result<&'a dyn arrow_array::Array, DatasetError> {
    batch
        .column_by_name(name)
        .map(|c| c.as_ref())
        .ok_or_else(|| DatasetError::column(path, name, "column missing"))
}

/// A non-negative integer column of `batch`, whose first row is row `first_row` of the
/// file (a file is read in batches; errors name the row in the file).
fn usize_col(
    batch: &RecordBatch,
    first_row: usize,
    path: &Path,
    name: &str,
) -> Result<Vec<usize>, DatasetError> {
    let v =
        arrow_io::ints(col(batch, path, name)?).map_err(|p| DatasetError::column(path, name, p))?;
    v.into_iter()
        .enumerate()
        .map(|(row, x)| {
            usize::try_from(x).map_err(|_| {
                DatasetError::column(
                    path,
                    name,
                    format!("row {}: negative value {x}", first_row + row),
                )
            })
        })
        .collect()
}

/// Read the first `committed` episode rows, checking `episode_index` runs 0, 1, 2, ...
/// across files; also returns how many rows follow them (not checked: a writer stopped
/// before its commit, or superseded index files it did not get to remove).
pub(crate) fn read_episodes(
    files: &[PathBuf],
    committed: usize,
) -> Result<(Vec<EpisodeMeta>, usize), DatasetError> {
    let mut out: Vec<EpisodeMeta> = Vec::new();
    let mut beyond = 0;
    for path in files {
        let (_, batches) = read_parquet(path)?;
        let mut file_row = 0;
        for batch in &batches {
            let first_row = file_row;
            file_row += batch.num_rows();
            let wanted = committed - out.len();
            if batch.num_rows() > wanted {
                beyond += batch.num_rows() - wanted;
            }
            if wanted == 0 {
                continue;
            }
            let batch = &batch.slice(0, batch.num_rows().min(wanted));
            let idx = usize_col(batch, first_row, path, ecols::EPISODE_INDEX)?;
            let length = usize_col(batch, first_row, path, ecols::LENGTH)?;
            let chunk = usize_col(batch, first_row, path, ecols::DATA_CHUNK)?;
            let file = usize_col(batch, first_row, path, ecols::DATA_FILE)?;
            let from = usize_col(batch, first_row, path, ecols::FROM)?;
            let to = usize_col(batch, first_row, path, ecols::TO)?;
            for r in 0..batch.num_rows() {
                if idx[r] != out.len() {
                    return Err(DatasetError::column(
                        path,
                        ecols::EPISODE_INDEX,
                        format!(
                            "episode indices must be contiguous and sorted: found {} where {} was expected",
                            idx[r],
                            out.len()
                        ),
                    ));
                }
                out.push(EpisodeMeta {
                    length: length[r],
                    chunk: chunk[r],
                    file: file[r],
                    from: from[r],
                    to: to[r],
                    tasks: Vec::new(),
                    success: false,
                    ret: 0.0,
                });
            }
        }
    }
    Ok((out, beyond))
}

/// Stage the episodes index as one file (replacing `path` once committed).
pub(crate) fn stage_episodes(
    path: &Path,
    eps: &[EpisodeMeta],
) -> Result<arrow_io::Staged, DatasetError> {
    let i64s = |f: &dyn Fn(usize, &EpisodeMeta) -> usize| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(
            eps.iter().enumerate().map(|(i, e)| f(i, e) as i64),
        ))
    };
    let mut tasks = ListBuilder::new(StringBuilder::new());
    for e in eps {
        for t in &e.tasks {
            tasks.values().append_value(t);
        }
        tasks.append(true);
    }
    let tasks: ArrayRef = Arc::new(tasks.finish());
    let int = |name: &str| Field::new(name, DataType::Int64, false);
    let schema = Arc::new(Schema::new(vec![
        int(ecols::EPISODE_INDEX),
        Field::new(ecols::TASKS, tasks.data_type().clone(), false),
        int(ecols::LENGTH),
        int(ecols::DATA_CHUNK),
        int(ecols::DATA_FILE),
        int(ecols::FROM),
        int(ecols::TO),
        int(ecols::META_CHUNK),
        int(ecols::META_FILE),
        Field::new(ecols::SUCCESS, DataType::Boolean, false),
        Field::new(ecols::RETURN, DataType::Float64, false),
    ]));
    let columns = vec![
        i64s(&|i, _| i),
        tasks,
        i64s(&|_, e| e.length),
        i64s(&|_, e| e.chunk),
        i64s(&|_, e| e.file),
        i64s(&|_, e| e.from),
        i64s(&|_, e| e.to),
        i64s(&|_, _| 0),
        i64s(&|_, _| 0),
        Arc::new(BooleanArray::from_iter(eps.iter().map(|e| Some(e.success)))),
        Arc::new(Float64Array::from_iter_values(eps.iter().map(|e| e.ret))),
    ];
    let batch = RecordBatch::try_new(schema, columns)
        .map_err(|e| DatasetError::parquet(path, "write", e))?;
    fs::create_dir_all(path.parent().unwrap_or(path))
        .map_err(|e| DatasetError::io(path, "creating directory", e))?;
    arrow_io::stage_parquet(path, &batch, None)
}

/// Read `meta/tasks.parquet` into task strings ordered by `task_index`.
///
/// The task string column may be called `task` (ours) or `__index_level_0__`
/// (pandas' unnamed index, as LeRobot writes it); otherwise the first string
/// column is used.
pub(crate) fn read_tasks(dir: &Path) -> Result<Vec<String>, DatasetError> {
    let path = tasks_path(dir);
    let (schema, batches) = read_parquet(&path)?;
    let name = ["task", "__index_level_0__"]
        .into_iter()
        .find(|n| schema.column_with_name(n).is_some())
        .map(str::to_owned)
        .or_else(|| {
            schema
                .fields()
                .iter()
                .find(|f| {
                    matches!(
                        f.data_type(),
                        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                    )
                })
                .map(|f| f.name().clone())
        })
        .ok_or_else(|| {
            DatasetError::column(&path, "task", "no string column with the task text")
        })?;
    let mut pairs = Vec::new();
    let mut first_row = 0;
    for batch in &batches {
        let idx = usize_col(batch, first_row, &path, "task_index")?;
        first_row += batch.num_rows();
        let text = arrow_io::strings(col(batch, &path, &name)?)
            .map_err(|p| DatasetError::column(&path, &name, p))?;
        pairs.extend(idx.into_iter().zip(text));
    }
    pairs.sort();
    for (want, (got, _)) in pairs.iter().enumerate() {
        if *got != want {
            return Err(DatasetError::column(
                &path,
                "task_index",
                format!(
                    "task indices must be 0..{}: found {got} where {want} was expected",
                    pairs.len()
                ),
            ));
        }
    }
    Ok(pairs.into_iter().map(|(_, t)| t).collect())
}

/// Stage `meta/tasks.parquet` with pandas metadata making `task` the index.
pub(crate) fn stage_tasks(dir: &Path, tasks: &[String]) -> Result<arrow_io::Staged, DatasetError> {
    let path = tasks_path(dir);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(0..tasks.len() as i64)),
        Arc::new(StringArray::from_iter_values(tasks)),
    ];
    // Minimal pandas metadata: `pd.read_parquet` then uses `task` as the
    // DataFrame index, which is how LeRobot looks tasks up.
    let pandas = serde_json::json!({
        "index_columns": ["task"],
        "column_indexes": [],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
             "numpy_type": "int64", "metadata": null},
            {"name": "task", "field_name": "task", "pandas_type": "unicode",
             "numpy_type": "object", "metadata": null},
        ],
        "creator": {"library": "dataset (rust)", "version": env!("CARGO_PKG_VERSION")},
        "pandas_version": "2.0.0",
    });
    let pandas = pandas.to_string();
    // pyarrow takes schema metadata from the embedded Arrow schema, other
    // readers from the parquet key/value metadata: set both.
    let schema = Arc::new(Schema::new_with_metadata(
        vec![
            Field::new("task_index", DataType::Int64, false),
            Field::new("task", DataType::Utf8, false),
        ],
        std::collections::HashMap::from([("pandas".to_string(), pandas.clone())]),
    ));
    let batch = RecordBatch::try_new(schema, columns)
        .map_err(|e| DatasetError::parquet(&path, "write", e))?;
    let kv = vec![KeyValue::new("pandas".to_string(), pandas)];
    arrow_io::stage_parquet(&path, &batch, Some(kv))
}

/// Build the `meta/stats.json` object for the features `keep` accepts.
pub(crate) fn stats_json(
    stats: &BTreeMap<String, FeatureStats>,
    keep: impl Fn(&str) -> bool,
) -> Value {
    let map: serde_json::Map<String, Value> = stats
        .iter()
        .filter(|(k, _)| keep(k))
        .map(|(k, s)| {
            (
                k.clone(),
                serde_json::json!({
                    "min": s.min, "max": s.max, "mean": s.mean, "std": s.std, "count": [s.count],
                }),
            )
        })
        .collect();
    Value::Object(map)
}

/// The largest `info.json` read. One feature's entry is a few hundred bytes plus its
/// dimension names: 16 MiB is tens of thousands of features, far past any robot's, and
/// keeps a damaged or wrong file (a log renamed, `/dev/zero` linked) from taking the
/// reader's memory whole before it is parsed.
pub(crate) const MAX_INFO_BYTES: u64 = 16 << 20;

/// The largest `stats.json` read: five numbers per dimension of every feature, about
/// 100 bytes each as JSON; 64 MiB is some 600,000 dimensions.
pub(crate) const MAX_STATS_BYTES: u64 = 64 << 20;

/// The text of the metadata file `path`, refused past `max` bytes; `missing` names it
/// when it is not there.
fn read_metadata(
    path: &Path,
    max: u64,
    missing: &str,
    action: &'static str,
) -> Result<String, DatasetError> {
    use std::io::Read;
    let mut text = String::new();
    fs::File::open(path)
        .and_then(|f| f.take(max + 1).read_to_string(&mut text))
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => DatasetError::Missing {
                path: path.to_path_buf(),
                what: missing.into(),
            },
            _ => DatasetError::io(path, action, e),
        })?;
    if text.len() as u64 > max {
        return Err(DatasetError::invalid(
            path,
            format!(
                "larger than the {} MiB a dataset's metadata file may be",
                max >> 20
            ),
        ));
    }
    Ok(text)
}

/// Parse `meta/stats.json` back into per-feature stats (missing fields are errors).
pub(crate) fn read_stats(dir: &Path) -> Result<BTreeMap<String, FeatureStats>, DatasetError> {
    let path = stats_path(dir);
    let text = read_metadata(&path, MAX_STATS_BYTES, "stats.json", "reading stats.json")?;
    #[derive(Deserialize)]
    struct Raw {
        min: Vec<f64>,
        max: Vec<f64>,
        mean: Vec<f64>,
        std: Vec<f64>,
        count: Vec<u64>,
    }
    let raw: BTreeMap<String, Value> =
        serde_json::from_str(&text).map_err(|error| DatasetError::Json {
            path: path.clone(),
            what: "stats.json (map of feature -> {min,max,mean,std,count})".into(),
            error,
        })?;
    let mut out = BTreeMap::new();
    for (key, v) in raw {
        // Only numeric vector stats are ours to check; skip e.g. image stats.
        if !cols::STATS_FEATURES.contains(&key.as_str()) {
            continue;
        }
        let r: Raw = serde_json::from_value(v).map_err(|error| DatasetError::Json {
            path: path.clone(),
            what: format!("stats.json entry `{key}` {{min,max,mean,std,count}}"),
            error,
        })?;
        out.insert(
            key,
            FeatureStats {
                mean: r.mean,
                std: r.std,
                min: r.min,
                max: r.max,
                count: r.count.first().copied().unwrap_or(0),
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `info.json`'s action mapping is read as written by hand (not only as this
    /// crate's writer writes it), and one of another length is an error naming the key.
    #[test]
    fn the_action_mapping_is_read_from_info_json() {
        let info = |mapping: Value| -> InfoJson {
            serde_json::from_value(serde_json::json!({
                "codebase_version": CODEBASE_VERSION,
                "total_episodes": 0,
                "total_frames": 0,
                "total_tasks": 0,
                "fps": 20,
                "features": {
                    "action": {"dtype": "float32", "shape": [2], "names": ["x", "y"]}
                },
                "expo_action_mapping": mapping,
            }))
            .unwrap()
        };
        let read = info(serde_json::json!({"scale": [0.5, 4.0], "offset": [0.0, -2.0]}));
        assert_eq!(
            read.dataset_info(String::new()).action_mapping,
            Some(crate::ActionMapping {
                scale: vec![0.5, 4.0],
                offset: vec![0.0, -2.0],
            })
        );
        let short = info(serde_json::json!({"scale": [0.5], "offset": [0.0]}));
        assert_eq!(
            short.action_mapping(),
            Err("`expo_action_mapping` holds 1 scales and 1 offsets for 2 actions".into())
        );
        assert_eq!(short.dataset_info(String::new()).action_mapping, None);
    }
}

//! Malformed datasets: every case must be an `Err` naming the file and the
//! problem, never a panic or a silently wrong dataset.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{ArrayRef, FixedSizeListArray, Float32Array, Int64Array, RecordBatch};
use arrow_schema::Schema;
use common::*;
use dataset::{read_dataset, validate_dataset, write_dataset};

const DATA: &str = "data/chunk-000/file-000.parquet";
const EPISODES: &str = "meta/episodes/chunk-000/file-000.parquet";

fn good() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ds");
    write_dataset(&dir, &info(), &episodes(11, &[6, 9, 4])).unwrap();
    (tmp, dir)
}

/// Both the reader and the validator must fail with a message containing every `hint`.
fn expect_err(dir: &Path, hints: &[&str]) {
    let msg = read_dataset(dir)
        .expect_err("read_dataset accepted a corrupt dataset")
        .to_string();
    for h in hints {
        assert!(msg.contains(h), "read error {msg:?} lacks {h:?}");
    }
    let vmsg = validate_dataset(dir)
        .expect_err("validate accepted a corrupt dataset")
        .to_string();
    assert_eq!(msg, vmsg);
}

#[test]
fn truncated_data_file() {
    let (_t, dir) = good();
    let path = dir.join(DATA);
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    expect_err(&dir, &["file-000.parquet", "truncated"]);
}

#[test]
fn garbage_data_file() {
    let (_t, dir) = good();
    fs::write(
        dir.join(DATA),
        b"this is not parquet at all, just some garbage bytes.....",
    )
    .unwrap();
    expect_err(&dir, &["data/chunk-000/file-000.parquet", "not parquet"]);
}

#[test]
fn garbage_inside_valid_footer() {
    // Keep the footer intact but scramble the data pages.
    let (_t, dir) = good();
    let path = dir.join(DATA);
    let mut bytes = fs::read(&path).unwrap();
    for b in &mut bytes[4..200] {
        *b = b.wrapping_mul(31).wrapping_add(7);
    }
    fs::write(&path, &bytes).unwrap();
    expect_err(&dir, &["data/chunk-000/file-000.parquet"]);
}

#[test]
fn missing_data_file() {
    let (_t, dir) = good();
    fs::remove_file(dir.join(DATA)).unwrap();
    expect_err(&dir, &["file-000.parquet", "missing"]);
}

#[test]
fn info_json_missing() {
    let (_t, dir) = good();
    fs::remove_file(dir.join("meta/info.json")).unwrap();
    expect_err(&dir, &["info.json", "missing"]);
}

#[test]
fn info_json_bad_json() {
    let (_t, dir) = good();
    fs::write(
        dir.join("meta/info.json"),
        "{ \"codebase_version\": \"v3.0\", ",
    )
    .unwrap();
    expect_err(&dir, &["info.json", "invalid JSON"]);
}

/// A metadata file far past any dataset's (a log renamed, a damaged disk's) is refused
/// by its size, not read whole into memory first; sparse here, so the test writes
/// nothing. Both were read without a limit.
#[test]
fn oversized_metadata_files() {
    let (_t, dir) = good();
    let grow = |name: &str, len: u64| {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(dir.join("meta").join(name))
            .unwrap();
        f.set_len(len).unwrap();
    };
    grow("stats.json", (64 << 20) + 1);
    let e = validate_dataset(&dir).unwrap_err().to_string();
    assert!(
        e.contains("stats.json") && e.contains("larger than the 64 MiB"),
        "{e}"
    );
    read_dataset(&dir).expect("stats.json is read by the validator only");
    grow("info.json", (16 << 20) + 1);
    expect_err(&dir, &["info.json", "larger than the 16 MiB"]);
}

fn edit_info(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("meta/info.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    fs::write(&path, v.to_string()).unwrap();
}

/// A names list that is not one name per value is refused, naming the feature: it
/// was replaced by made-up names (`observation.state.0`, ...), which no check compares
/// with a robot's.
#[test]
fn names_that_do_not_name_each_value_are_refused() {
    let n = info().observation_names.len();
    let named = |k: usize| -> Vec<serde_json::Value> {
        (0..k).map(|i| serde_json::json!(format!("s{i}"))).collect()
    };
    let mut with_null = named(n);
    with_null[1] = serde_json::Value::Null;
    for (names, problem) in [
        (
            serde_json::json!(named(n - 1)),
            format!(
                "feature `observation.state`: {} names for shape [{n}]",
                n - 1
            ),
        ),
        (
            serde_json::json!({"motors": named(n + 1)}),
            format!(
                "feature `observation.state`: {} names for shape [{n}]",
                n + 1
            ),
        ),
        (
            serde_json::json!(with_null),
            "feature `observation.state`: names[1] is null, not a string".into(),
        ),
    ] {
        let (_t, dir) = good();
        edit_info(&dir, |v| {
            v["features"]["observation.state"]["names"] = names
        });
        expect_err(&dir, &["info.json", &problem]);
        let e = dataset::recorded_as(&dir)
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains(&problem), "{e}");
    }
    // As many strings as values name them; no list (null) or an empty one names
    // nothing: the values are `observation.state.{i}`.
    for (names, first) in [
        (serde_json::json!({"motors": named(n)}), "s0"),
        (serde_json::Value::Null, "observation.state.0"),
        (serde_json::json!([]), "observation.state.0"),
    ] {
        let (_t, dir) = good();
        edit_info(&dir, |v| {
            v["features"]["observation.state"]["names"] = names
        });
        let ds = read_dataset(&dir).unwrap();
        assert_eq!(ds.info.observation_names[0], first);
    }
}

#[test]
fn info_json_missing_field() {
    let (_t, dir) = good();
    edit_info(&dir, |v| {
        v.as_object_mut().unwrap().remove("fps");
    });
    expect_err(&dir, &["info.json", "fps"]);
}

#[test]
fn wrong_codebase_version() {
    let (_t, dir) = good();
    edit_info(&dir, |v| v["codebase_version"] = "v2.1".into());
    expect_err(&dir, &["info.json", "\"v2.1\"", "v3.0"]);
}

#[test]
fn wrong_dims_vs_info_json() {
    let (_t, dir) = good();
    // (Names dropped: a list of OBS_DIM names for a shape of OBS_DIM + 1 is refused
    // from info.json alone.)
    edit_info(&dir, |v| {
        for k in ["observation.state", "next.observation.state"] {
            v["features"][k]["shape"] = serde_json::json!([OBS_DIM + 1]);
            v["features"][k]["names"] = serde_json::Value::Null;
        }
    });
    expect_err(&dir, &["file-000.parquet", "observation.state", "[8]"]);
}

/// A corrupt shape is refused by name before anything is sized from it (it used to
/// make the reader build billions of channel names).
#[test]
fn absurd_vector_shape_in_info_json() {
    let (_t, dir) = good();
    edit_info(&dir, |v| {
        for k in ["observation.state", "next.observation.state"] {
            v["features"][k]["shape"] = serde_json::json!([4_000_000_000u64]);
        }
    });
    expect_err(
        &dir,
        &["info.json", "observation.state", "[4000000000]", "65536"],
    );
    // The recorder's check before a run (`recorded_as`, info.json alone) names it too:
    // it built a name for each of the four billion values and aborted.
    let e = dataset::recorded_as(&dir).err().unwrap().to_string();
    assert!(e.contains("info.json") && e.contains("65536"), "{e}");
}

/// A `data_path` template that leaves the dataset (`..`, absolute) is refused: a reader
/// would read, and an appending writer create, files elsewhere.
#[test]
fn data_path_outside_the_dataset() {
    for template in [
        "../x/file-{file_index:03d}.parquet",
        "/tmp/x/file-{file_index:03d}.parquet",
    ] {
        let (_t, dir) = good();
        edit_info(&dir, |v| v["data_path"] = serde_json::json!(template));
        expect_err(
            &dir,
            &["info.json", "data_path", "relative path inside the dataset"],
        );
        assert!(dataset::DatasetWriter::open_append(&dir).is_err());
        assert!(!dir.join("../x").exists());
    }
}

/// A feature of two axes that the reader does not use, stored as nested lists (as
/// Hugging Face writes an `Array2D`), does not make a valid dataset unreadable; it used
/// to be refused as "2 values per row, info.json declares shape [6]".
#[test]
fn an_unused_feature_of_two_axes_in_nested_lists() {
    use arrow_array::builder::{Float32Builder, ListBuilder};
    let (_t, dir) = good();
    rewrite_parquet(&dir.join(DATA), |b| {
        let mut grid = ListBuilder::new(ListBuilder::new(Float32Builder::new()));
        for _ in 0..b.num_rows() {
            for _ in 0..2 {
                for v in [1.0, 2.0, 3.0] {
                    grid.values().values().append_value(v);
                }
                grid.values().append(true);
            }
            grid.append(true);
        }
        let grid: ArrayRef = Arc::new(grid.finish());
        let mut fields: Vec<_> = b.schema().fields().iter().cloned().collect();
        fields.push(Arc::new(arrow_schema::Field::new(
            "observation.grid",
            grid.data_type().clone(),
            false,
        )));
        let mut columns = b.columns().to_vec();
        columns.push(grid);
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
    });
    edit_info(
        &dir,
        |v| {
            v["features"]["observation.grid"] =
                serde_json::json!({"dtype": "float32", "shape": [2, 3], "names": null})
        },
    );
    assert_eq!(read_dataset(&dir).unwrap().episodes.len(), 3);
}

/// A malformed list of noted runs (`expo_runs`) is an error naming info.json, for the
/// reader of the runs and for a writer that would append (and extend it).
#[test]
fn malformed_noted_runs() {
    for bad in [serde_json::json!("run-a"), serde_json::json!(["run-a", 7])] {
        let (_t, dir) = good();
        edit_info(&dir, |v| v["expo_runs"] = bad.clone());
        let e = dataset::noted_runs(&dir).unwrap_err().to_string();
        assert!(
            e.contains("info.json") && e.contains("`expo_runs` must be a list"),
            "{e}"
        );
        let e = dataset::DatasetWriter::open_append(&dir)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("`expo_runs` must be a list"), "{e}");
        read_dataset(&dir).unwrap();
    }
}

/// A malformed map of partly saved runs (`expo_partial_runs`) refuses an append, naming
/// info.json (it was ignored: no partial run was noted or read, and `log-to-dataset
/// --last-run` added a run's saved episodes a second time); a well-formed one opens.
#[test]
fn malformed_partial_runs() {
    for bad in [
        serde_json::json!(5),
        serde_json::json!({"run-a": 3}),
        serde_json::json!({"run-a": [1, -2]}),
    ] {
        let (_t, dir) = good();
        edit_info(&dir, |v| v["expo_partial_runs"] = bad.clone());
        let e = dataset::DatasetWriter::open_append(&dir)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("info.json") && e.contains("`expo_partial_runs` must map run ids"),
            "{bad}: {e}"
        );
        read_dataset(&dir).unwrap();
    }
    let (_t, dir) = good();
    edit_info(&dir, |v| {
        v["expo_partial_runs"] = serde_json::json!({"run-a": [0, 2]})
    });
    let w = dataset::DatasetWriter::open_append(&dir).unwrap();
    assert_eq!(w.partial_run("run-a"), [0, 2]);
}

/// Stray files named like chunk directories (`chunk-000.bak`, `chunk-old.tar`) are not
/// chunks: the dataset still reads, validates and takes appends.
#[test]
fn stray_files_named_like_chunks() {
    let (_t, dir) = good();
    fs::write(dir.join("meta/episodes/chunk-000.bak"), "old").unwrap();
    fs::write(dir.join("data/chunk-old.tar"), "old").unwrap();
    read_dataset(&dir).unwrap();
    validate_dataset(&dir).unwrap();
    let mut w = dataset::DatasetWriter::open_append(&dir).unwrap();
    w.append_episode(&episodes(3, &[5])[0]).unwrap();
    w.finish().unwrap();
    assert_eq!(read_dataset(&dir).unwrap().episodes.len(), 4);
}

#[test]
fn inconsistent_dims_in_info_json() {
    let (_t, dir) = good();
    edit_info(&dir, |v| {
        v["features"]["next.observation.state"]["shape"] = serde_json::json!([2])
    });
    expect_err(&dir, &["info.json", "next.observation.state", "[2]"]);
}

#[test]
fn wrong_total_frames() {
    let (_t, dir) = good();
    edit_info(&dir, |v| v["total_frames"] = 18.into());
    expect_err(&dir, &["info.json", "total_frames is 18", "19"]);
}

/// A column of ours in the data that info.json does not declare (a hand edit, or a
/// tool that rewrote the features) is refused: it was ignored, and the episodes read
/// with every reward 0 and every end that is not a success truncated.
#[test]
fn a_column_the_features_do_not_declare() {
    for column in ["next.reward", "next.done"] {
        let (_t, dir) = good();
        edit_info(&dir, |v| {
            v["features"].as_object_mut().unwrap().remove(column);
        });
        expect_err(
            &dir,
            &[
                "file-000.parquet",
                &format!("`{column}`"),
                "not declared in meta/info.json features",
            ],
        );
    }
}

#[test]
fn missing_column() {
    let (_t, dir) = good();
    rewrite_parquet(&dir.join(DATA), |b| {
        let schema = b.schema();
        let keep: Vec<usize> = (0..schema.fields().len())
            .filter(|&i| schema.field(i).name() != "action")
            .collect();
        b.project(&keep).unwrap()
    });
    expect_err(&dir, &["file-000.parquet", "`action`", "missing"]);
}

#[test]
fn column_with_wrong_type() {
    let (_t, dir) = good();
    rewrite_parquet(&dir.join(DATA), |b| {
        let n = b.num_rows() as i64;
        let schema = b.schema();
        let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
        let idx = schema.index_of("next.reward").unwrap();
        fields[idx] = Arc::new(arrow_schema::Field::new(
            "next.reward",
            arrow_schema::DataType::Int64,
            false,
        ));
        let mut cols = b.columns().to_vec();
        cols[idx] = Arc::new(Int64Array::from_iter_values(0..n));
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
    });
    expect_err(
        &dir,
        &["file-000.parquet", "`next.reward`", "Int64", "float32"],
    );
}

#[test]
fn nan_in_observation() {
    let (_t, dir) = good();
    rewrite_parquet(&dir.join(DATA), |b| {
        let obs = b
            .column_by_name("observation.state")
            .unwrap()
            .as_fixed_size_list();
        let mut vals = obs
            .values()
            .as_primitive::<arrow_array::types::Float32Type>()
            .values()
            .to_vec();
        // Row 8 = episode 1, frame_index 2, dim 3.
        vals[8 * OBS_DIM + 3] = f32::NAN;
        let (field, size, _, nulls) = obs.clone().into_parts();
        let col: ArrayRef = Arc::new(
            FixedSizeListArray::try_new(field, size, Arc::new(Float32Array::from(vals)), nulls)
                .unwrap(),
        );
        replace_column(&b, "observation.state", col)
    });
    expect_err(
        &dir,
        &[
            "file-000.parquet",
            "`observation.state`",
            "NaN",
            "row 8",
            "episode 1",
            "frame_index 2",
        ],
    );
}

#[test]
fn timestamps_off_the_datasets_rate() {
    // Row 8 = episode 1, frame_index 2: stamped as if a frame had been dropped before it.
    // (The common dataset is at 20 fps: frame 2 is at 0.1 s, 0.05 s after frame 1.)
    for (bad, shown) in [(f32::NAN, "NaN s"), (0.15, "0.15 s, 0.100000")] {
        let (_t, dir) = good();
        rewrite_parquet(&dir.join(DATA), |b| {
            let ts = b.column_by_name("timestamp").unwrap();
            let mut vals = ts
                .as_primitive::<arrow_array::types::Float32Type>()
                .values()
                .to_vec();
            vals[8] = bad;
            replace_column(&b, "timestamp", Arc::new(Float32Array::from(vals)))
        });
        expect_err(
            &dir,
            &[
                "file-000.parquet",
                "`timestamp`",
                "row 8",
                shown,
                "1 / fps = 0.05 s apart",
                "(episode 1, frame_index 2)",
            ],
        );
    }
    // A slow drift (a capture clock 0.1% fast) passes, as in LeRobot.
    let (_t, dir) = good();
    rewrite_parquet(&dir.join(DATA), |b| {
        let ts = b.column_by_name("timestamp").unwrap();
        let vals: Vec<f32> = ts
            .as_primitive::<arrow_array::types::Float32Type>()
            .values()
            .iter()
            .map(|t| t * 1.001)
            .collect();
        replace_column(&b, "timestamp", Arc::new(Float32Array::from(vals)))
    });
    read_dataset(&dir).unwrap();
    // The statistics describe the stored timestamps, not `frame_index / fps`: the
    // stats.json written before the drift no longer matches them...
    let err = validate_dataset(&dir).unwrap_err().to_string();
    assert!(err.contains("`timestamp`"), "{err}");
    // ...and a writer that appends to the dataset rewrites them from the stored column.
    dataset::DatasetWriter::open_append(&dir)
        .unwrap()
        .finish()
        .unwrap();
    validate_dataset(&dir).unwrap();
    let stored: Vec<f64> = episodes(11, &[6, 9, 4])
        .iter()
        .flat_map(|e| (0..e.len()).map(|i| f64::from(dataset::timestamp(i, 20) * 1.001)))
        .collect();
    let mean = stored.iter().sum::<f64>() / stored.len() as f64;
    let stats: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("meta/stats.json")).unwrap()).unwrap();
    let written = stats["timestamp"]["mean"][0].as_f64().unwrap();
    assert!((written - mean).abs() < 1e-6, "{written} vs {mean}");
}

/// Rewrite int64 columns of the episodes index.
fn edit_episodes(dir: &Path, edits: &[(&str, usize, i64)]) {
    rewrite_parquet(&dir.join(EPISODES), |mut b| {
        for &(name, row, delta) in edits {
            let mut v = b
                .column_by_name(name)
                .unwrap()
                .as_primitive::<Int64Type>()
                .values()
                .to_vec();
            v[row] += delta;
            b = replace_column(&b, name, Arc::new(Int64Array::from(v)));
        }
        b
    });
}

#[test]
fn episodes_index_disagrees_with_data() {
    // Self-consistent index (ranges contiguous, totals right) that moves one
    // frame from episode 1 to episode 0: only the data can tell.
    let (_t, dir) = good();
    edit_episodes(
        &dir,
        &[
            ("length", 0, 1),
            ("dataset_to_index", 0, 1),
            ("length", 1, -1),
            ("dataset_from_index", 1, 1),
        ],
    );
    expect_err(
        &dir,
        &[
            "data/chunk-000/file-000.parquet",
            "`episode_index`",
            "row 6",
        ],
    );
}

/// An error in the episodes index names the row in the file, past the reader's first
/// batch (1,024 rows) too; it used to count from the start of each batch.
#[test]
fn index_errors_name_the_row_in_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ds");
    write_dataset(&dir, &info(), &episodes(3, &[1; 1100])).unwrap();
    // The index file is read back in batches of 1,024 rows: row 1050 is the second
    // batch's row 26.
    rewrite_parquet(&dir.join(EPISODES), |b| {
        if b.num_rows() == 1024 {
            return b;
        }
        let mut v = b
            .column_by_name("length")
            .unwrap()
            .as_primitive::<Int64Type>()
            .values()
            .to_vec();
        v[26] = -1;
        replace_column(&b, "length", Arc::new(Int64Array::from(v)))
    });
    let msg = read_dataset(&dir).unwrap_err().to_string();
    assert!(msg.contains("row 1050: negative value -1"), "{msg}");
}

/// The same for the data file's list columns: read in batches of 1,024 rows, a bad row
/// of the second batch is named by its row in the file (it was the batch's row).
#[test]
fn data_column_errors_name_the_row_in_the_file() {
    use arrow_array::ListArray;
    use arrow_array::types::Float32Type;
    use arrow_schema::{DataType, Field};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ds");
    write_dataset(&dir, &info(), &episodes(3, &[1100])).unwrap();
    rewrite_parquet(&dir.join(DATA), |b| {
        let second = b.num_rows() != 1024;
        let obs = b
            .column_by_name("observation.state")
            .unwrap()
            .as_fixed_size_list();
        let vals = obs.values().as_primitive::<Float32Type>().values().to_vec();
        // As variable-length lists, row 26 of the second batch one value short.
        let rows = (0..b.num_rows()).map(|r| {
            let n = if second && r == 26 {
                OBS_DIM - 1
            } else {
                OBS_DIM
            };
            Some(vals[r * OBS_DIM..r * OBS_DIM + n].iter().map(|v| Some(*v)))
        });
        let col: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Float32Type, _, _>(rows));
        let schema = b.schema();
        let idx = schema.index_of("observation.state").unwrap();
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields[idx] = Field::new(
            "observation.state",
            DataType::List(Arc::new(Field::new_list_field(DataType::Float32, true))),
            false,
        );
        let mut cols = b.columns().to_vec();
        cols[idx] = col;
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
    });
    expect_err(
        &dir,
        &[
            "file-000.parquet",
            "observation.state",
            &format!("row 1050 of this file has {} values", OBS_DIM - 1),
        ],
    );
}

#[test]
fn episodes_index_length_mismatch() {
    let (_t, dir) = good();
    edit_episodes(&dir, &[("length", 1, 2)]);
    expect_err(&dir, &[EPISODES, "episode 1", "dataset_to_index"]);
}

#[test]
fn overlapping_episode_ranges() {
    let (_t, dir) = good();
    edit_episodes(
        &dir,
        &[("dataset_from_index", 2, -1), ("dataset_to_index", 2, -1)],
    );
    expect_err(&dir, &[EPISODES, "episode 2", "contiguous"]);
}

#[test]
fn data_has_more_rows_than_index() {
    let (_t, dir) = good();
    edit_episodes(&dir, &[("length", 2, -1), ("dataset_to_index", 2, -1)]);
    edit_info(&dir, |v| v["total_frames"] = 18.into());
    expect_err(&dir, &["file-000.parquet", "has 19 rows", "18 frames"]);
}

#[test]
fn tasks_file_missing() {
    let (_t, dir) = good();
    fs::remove_file(dir.join("meta/tasks.parquet")).unwrap();
    expect_err(&dir, &["tasks.parquet", "missing"]);
}

#[test]
fn stats_missing_or_stale_fail_validation_only() {
    let (_t, dir) = good();
    let path = dir.join("meta/stats.json");
    let text = fs::read_to_string(&path).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["action"]["mean"][1] = 123.0.into();
    fs::write(&path, v.to_string()).unwrap();
    read_dataset(&dir).unwrap();
    let msg = validate_dataset(&dir).unwrap_err().to_string();
    assert!(
        msg.contains("stats.json") && msg.contains("`action`.mean[1]"),
        "{msg}"
    );

    fs::remove_file(&path).unwrap();
    let msg = validate_dataset(&dir).unwrap_err().to_string();
    assert!(
        msg.contains("stats.json") && msg.contains("missing"),
        "{msg}"
    );
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    // Cut each meta/data parquet file at many lengths; all must be clean errors.
    let (_t, dir) = good();
    for rel in [DATA, EPISODES, "meta/tasks.parquet"] {
        let path = dir.join(rel);
        let bytes = fs::read(&path).unwrap();
        for cut in (0..bytes.len()).step_by(97) {
            fs::write(&path, &bytes[..cut]).unwrap();
            let msg = read_dataset(&dir).unwrap_err().to_string();
            assert!(msg.contains(rel), "cut {rel} at {cut}: {msg}");
        }
        fs::write(&path, &bytes).unwrap();
    }
    read_dataset(&dir).unwrap();
}

/// Rewrites the bool column `name` of the data file so that `row` reads `value`.
fn set_flag(dir: &Path, name: &str, row: usize, value: bool) {
    use arrow_array::BooleanArray;
    rewrite_parquet(&dir.join(DATA), |b| {
        let mut v: Vec<bool> = b
            .column_by_name(name)
            .unwrap()
            .as_boolean()
            .iter()
            .map(|x| x.unwrap())
            .collect();
        v[row] = value;
        replace_column(&b, name, Arc::new(BooleanArray::from(v)))
    });
}

#[test]
fn an_end_flag_inside_an_episode_is_refused() {
    // Episodes of 6, 9 and 4 frames: row 2 is inside episode 0, row 5 its last frame.
    for (column, row, value, hint) in [
        (
            "next.done",
            2,
            true,
            "row 2: true before the episode's last frame",
        ),
        (
            "next.truncated",
            8,
            true,
            "row 8: true before the episode's last frame",
        ),
        (
            "next.done",
            5,
            false,
            "row 5: false on the episode's last frame",
        ),
    ] {
        let (_tmp, dir) = good();
        set_flag(&dir, column, row, value);
        expect_err(&dir, &["file-000.parquet", column, hint]);
    }
    // Truncated but not done.
    let (_tmp, dir) = good();
    set_flag(&dir, "next.truncated", 5, true);
    set_flag(&dir, "next.done", 5, false);
    expect_err(
        &dir,
        &[
            "next.truncated",
            "true where next.done is false",
            "frame_index 5 of 6",
        ],
    );
}

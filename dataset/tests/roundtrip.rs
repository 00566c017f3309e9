//! Write → read round trips, append, stats and validation of good datasets.

mod common;

use std::fs;

use common::*;
use dataset::{DatasetError, DatasetWriter, read_dataset, validate_dataset, write_dataset};

const LENS: &[usize] = &[12, 1, 40, 7, 25, 3];

#[test]
fn round_trip_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ds");
    let eps = episodes(1, LENS);
    let summary = write_dataset(&dir, &info(), &eps).unwrap();
    assert_eq!(summary.total_episodes, LENS.len());
    assert_eq!(summary.total_frames, LENS.iter().sum::<usize>());
    assert_eq!(summary.data_files_written.len(), 1);

    for f in [
        "meta/info.json",
        "meta/stats.json",
        "meta/tasks.parquet",
        "meta/episodes/chunk-000/file-000.parquet",
        "data/chunk-000/file-000.parquet",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }

    let ds = read_dataset(&dir).unwrap();
    assert_eq!(ds.info, info());
    assert!(ds.next_observations_recorded);
    assert_eq!(ds.episodes.len(), eps.len());
    for (a, b) in eps.iter().zip(&ds.episodes) {
        assert_same(a, b);
    }
    assert_eq!(ds.num_frames(), summary.total_frames);
    // Episodes 0 and 3 have success (index % 3 == 0).
    assert!((ds.success_rate() - 2.0 / 6.0).abs() < 1e-12);
    assert!((summary.success_rate - ds.success_rate()).abs() < 1e-12);

    let report = validate_dataset(&dir).unwrap();
    assert_eq!(report.episodes, LENS.len());
    assert_eq!(report.frames, summary.total_frames);
    assert_eq!(report.data_files, 1);
    assert_eq!(report.tasks, 1);
    assert_eq!(report.successful_episodes, 2);
    assert!(report.stats_checked >= 4, "{report:?}");
    assert!(report.unreferenced_data_files.is_empty());
}

#[test]
fn info_json_has_v3_fields() {
    let tmp = tempfile::tempdir().unwrap();
    write_dataset(tmp.path(), &info(), &episodes(2, &[4, 5])).unwrap();
    let text = fs::read_to_string(tmp.path().join("meta/info.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["codebase_version"], "v3.0");
    assert_eq!(v["robot_type"], "sim/arm-reach");
    assert_eq!(v["total_episodes"], 2);
    assert_eq!(v["total_frames"], 9);
    assert_eq!(v["total_tasks"], 1);
    assert_eq!(v["chunks_size"], 1000);
    assert_eq!(v["fps"], 20);
    assert_eq!(v["splits"]["train"], "0:2");
    assert_eq!(
        v["data_path"],
        "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    );
    assert!(v["video_path"].is_null());
    assert_eq!(v["features"]["observation.state"]["shape"][0], OBS_DIM);
    assert_eq!(v["features"]["observation.state"]["names"][2], "q2");
    assert_eq!(v["features"]["action"]["dtype"], "float32");
    assert_eq!(v["features"]["next.done"]["dtype"], "bool");
    assert_eq!(v["features"]["index"]["dtype"], "int64");
    assert_eq!(v["features"]["intervention"]["dtype"], "bool");
    assert_eq!(v["features"]["teleop"]["dtype"], "bool");
    assert_eq!(v["features"].as_object().unwrap().len(), 14);
}

/// Keys of a feature's entry in info.json that we do not write (a LeRobot conversion's
/// per-feature `fps`) are kept by an append: the entry was rewritten with `dtype`,
/// `shape` and `names` only.
#[test]
fn append_keeps_a_features_other_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let eps = episodes(4, &[5, 6]);
    write_dataset(dir, &info(), &eps[..1]).unwrap();
    let path = dir.join("meta/info.json");
    let mut json: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    json["features"]["action"]["fps"] = 30.into();
    json["features"]["action"]["info"] = serde_json::json!({"unit": "rad"});
    fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    let mut w = DatasetWriter::open_append(dir).unwrap();
    w.append_episode(&eps[1]).unwrap();
    w.finish().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(json["features"]["action"]["fps"], 30, "{json}");
    assert_eq!(json["features"]["action"]["info"]["unit"], "rad", "{json}");
    assert_eq!(read_dataset(dir).unwrap().episodes.len(), 2);
}

#[test]
fn append_keeps_old_files_and_order() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let eps = episodes(3, &[10, 4, 22, 6, 15]);
    write_dataset(dir, &info(), &eps[..3]).unwrap();
    let old = dir.join("data/chunk-000/file-000.parquet");
    let old_bytes = fs::read(&old).unwrap();

    let mut w = DatasetWriter::open_append(dir).unwrap();
    assert_eq!(w.info(), &info());
    // One writer at a time: a second one (another process in practice) is refused by
    // name, where both used to pick the same next data file and rewrite meta/.
    let e = DatasetWriter::open_append(dir).err().unwrap().to_string();
    assert!(e.contains("another process is writing this dataset"), "{e}");
    for ep in &eps[3..] {
        w.append_episode(ep).unwrap();
    }
    let s = w.finish().unwrap();
    assert_eq!((s.total_episodes, s.episodes_added), (5, 2));
    // Released once the writer is done.
    drop(DatasetWriter::open_append(dir).unwrap());
    assert_eq!(s.frames_added, 21);
    assert_eq!(
        s.data_files_written,
        vec![dir.join("data/chunk-000/file-001.parquet")]
    );

    assert_eq!(
        fs::read(&old).unwrap(),
        old_bytes,
        "old data file was rewritten"
    );
    let ds = read_dataset(dir).unwrap();
    assert_eq!(ds.episodes.len(), 5);
    for (a, b) in eps.iter().zip(&ds.episodes) {
        assert_same(a, b);
    }
    // Stats were recomputed over all 5 episodes.
    let report = validate_dataset(dir).unwrap();
    assert_eq!(
        (report.episodes, report.frames, report.data_files),
        (5, 57, 2)
    );
}

/// Sets the `splits` of the dataset at `dir`'s `info.json` to `v`.
fn set_splits(dir: &std::path::Path, v: serde_json::Value) {
    let path = dir.join("meta/info.json");
    let mut info: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    info["splits"] = v;
    fs::write(&path, serde_json::to_string_pretty(&info).unwrap()).unwrap();
}

/// A foreign dataset's splits survive an append: each metadata rewrite set them to
/// `train: 0:N`, dropping its `val`/`test`. Episodes appended right after `train` join
/// it; after another split, none.
#[test]
fn append_keeps_other_splits() {
    let splits = |dir: &std::path::Path| -> serde_json::Value {
        let text = fs::read_to_string(dir.join("meta/info.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["splits"].clone()
    };
    let append = |dir: &std::path::Path, eps: &[dataset::Episode]| {
        let mut w = DatasetWriter::open_append(dir).unwrap();
        for ep in eps {
            w.append_episode(ep).unwrap();
        }
        w.finish().unwrap();
    };
    let eps = episodes(3, &[5, 6, 7, 8, 9]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_dataset(dir, &info(), &eps[..3]).unwrap();
    set_splits(dir, serde_json::json!({"val": "0:1", "train": "1:3"}));
    append(dir, &eps[3..4]);
    assert_eq!(
        splits(dir),
        serde_json::json!({"val": "0:1", "train": "1:4"})
    );
    set_splits(dir, serde_json::json!({"train": "0:3", "test": "3:4"}));
    append(dir, &eps[4..]);
    assert_eq!(
        splits(dir),
        serde_json::json!({"train": "0:3", "test": "3:4"})
    );
    assert_eq!(read_dataset(dir).unwrap().episodes.len(), 5);
}

/// `info.json`'s `splits` are checked by every reader (they were taken as they came:
/// ranges past the end, overlapping or unparsable passed), and `held_out_episodes`
/// names the episodes of the splits other than `train`.
#[test]
fn splits_are_checked_and_name_the_held_out_episodes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_dataset(dir, &info(), &episodes(3, &[5, 6, 7])).unwrap();
    let set_splits = |v: serde_json::Value| set_splits(dir, v);
    assert!(dataset::held_out_episodes(dir).unwrap().is_empty());
    set_splits(serde_json::json!({"train": "0:1", "val": "1:2", "test": " 2 : 3 "}));
    assert_eq!(read_dataset(dir).unwrap().episodes.len(), 3);
    assert_eq!(
        dataset::held_out_episodes(dir).unwrap(),
        vec![("test".to_string(), 2..3), ("val".to_string(), 1..2)]
    );
    for (splits, want) in [
        (
            serde_json::json!({"train": "0:9"}),
            "splits.train = \"0:9\": ends past the dataset's 3 episodes",
        ),
        (
            serde_json::json!({"train": "0:2", "val": "1:3"}),
            "overlaps split `train`",
        ),
        (serde_json::json!({"val": "2:1"}), "starts after it ends"),
        (serde_json::json!({"val": "1-2"}), "expected START:END"),
        (
            serde_json::json!({"val": "a:2"}),
            "\"a\" is not an episode index",
        ),
    ] {
        set_splits(splits.clone());
        for err in [
            read_dataset(dir).unwrap_err().to_string(),
            dataset::held_out_episodes(dir).unwrap_err().to_string(),
        ] {
            assert!(err.contains(want), "{splits}: {err}");
            assert!(err.contains("info.json"), "{err}");
        }
    }
}

#[test]
fn unfinished_writer_leaves_dataset_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let eps = episodes(4, &[5, 6, 7]);
    write_dataset(dir, &info(), &eps[..1]).unwrap();
    {
        let mut w = DatasetWriter::open_append(dir).unwrap();
        w.append_episode(&eps[1]).unwrap();
        // Dropped without finish(): file-001 is orphaned.
    }
    let ds = read_dataset(dir).unwrap();
    assert_eq!(ds.episodes.len(), 1);
    let report = validate_dataset(dir).unwrap();
    assert_eq!(
        report.unreferenced_data_files,
        vec![dir.join("data/chunk-000/file-001.parquet")]
    );
    // Any folder under data/ is read by LeRobot (and set aside by an append), not only
    // `chunk-NNN`: a copy in `data/backup/` is reported too (validation missed it).
    let backup = dir.join("data/backup/file-000.parquet");
    std::fs::create_dir_all(backup.parent().unwrap()).unwrap();
    std::fs::copy(dir.join("data/chunk-000/file-000.parquet"), &backup).unwrap();
    assert_eq!(
        validate_dataset(dir).unwrap().unreferenced_data_files,
        vec![backup.clone(), dir.join("data/chunk-000/file-001.parquet")]
    );
    std::fs::remove_file(&backup).unwrap();
    std::fs::remove_dir(backup.parent().unwrap()).unwrap();
    // LeRobot reads every data file: it cannot open the unfinished one.
    assert!(lerobot_frames(dir).is_err());
    // The next append sets the orphan aside (LeRobot reads every file under data/) and
    // skips past its name instead of overwriting it.
    let mut w = DatasetWriter::open_append(dir).unwrap();
    let aside = dir.join("unreferenced/chunk-000/file-001.parquet");
    assert_eq!(
        w.set_aside(),
        [(dir.join("data/chunk-000/file-001.parquet"), aside.clone())]
    );
    assert!(aside.is_file(), "moved, not deleted");
    w.append_episode(&eps[2]).unwrap();
    let s = w.finish().unwrap();
    assert_eq!(
        s.data_files_written,
        vec![dir.join("data/chunk-000/file-002.parquet")]
    );
    let ds = read_dataset(dir).unwrap();
    assert_eq!(ds.episodes.len(), 2);
    assert_same(&ds.episodes[1], &eps[2]);
    assert!(
        validate_dataset(dir)
            .unwrap()
            .unreferenced_data_files
            .is_empty()
    );
    assert_eq!(lerobot_frames(dir), Ok(ds.num_frames()));
}

/// The frames LeRobot's v3 loader sees: it reads every `data/*/*.parquet` in sorted
/// order (not only the files the episodes index names) and indexes them by position, so
/// every file must open and together they must hold exactly the dataset's frames.
fn lerobot_frames(dir: &std::path::Path) -> Result<usize, String> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let mut files: Vec<_> = fs::read_dir(dir.join("data"))
        .unwrap()
        .flat_map(|chunk| fs::read_dir(chunk.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    let mut rows = 0;
    for f in files {
        let reader = SerializedFileReader::new(fs::File::open(&f).unwrap())
            .map_err(|e| format!("{}: {e}", f.display()))?;
        rows += reader.metadata().file_metadata().num_rows() as usize;
    }
    Ok(rows)
}

/// A failure while `finish` writes the metadata (here: info.json's temporary file cannot
/// be created, as on a full disk) must leave the metadata as it was, not a mix of new
/// index and tasks with old totals that no reader accepts.
#[test]
fn a_failed_finish_leaves_the_previous_dataset_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let eps = episodes(6, &[5, 6, 7]);
    write_dataset(dir, &info(), &eps[..2]).unwrap();
    let mut w = DatasetWriter::open_append(dir).unwrap();
    w.set_task("a task of its own");
    w.append_episode(&eps[2]).unwrap();
    let blocker = dir.join("meta/info.json.tmp");
    fs::create_dir(&blocker).unwrap();
    let err = w.finish().unwrap_err().to_string();
    assert!(err.contains("info.json.tmp"), "{err}");
    let report = validate_dataset(dir).unwrap();
    assert_eq!((report.episodes, report.tasks), (2, 1), "{report:?}");
    let ds = read_dataset(dir).unwrap();
    assert_eq!(ds.episodes.len(), 2);
    assert_same(&ds.episodes[1], &eps[1]);
    // No temporary file is left behind, and the next append works.
    for f in ["meta/tasks.parquet.tmp", "meta/stats.json.tmp"] {
        assert!(!dir.join(f).exists(), "{f} left behind");
    }
    fs::remove_dir(&blocker).unwrap();
    let mut w = DatasetWriter::open_append(dir).unwrap();
    w.append_episode(&eps[2]).unwrap();
    w.finish().unwrap();
    assert_eq!(validate_dataset(dir).unwrap().episodes, 3);
}

#[test]
fn a_writer_stopped_before_its_commit_leaves_the_previous_dataset() {
    // The renames of one finish(), stopped before info.json's (the commit point): the
    // new index, task list and stats are in place, the totals are the old ones.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let eps = episodes(6, &[5, 6, 7]);
    write_dataset(dir, &info(), &eps[..2]).unwrap();
    let committed = fs::read(dir.join("meta/info.json")).unwrap();
    let mut w = DatasetWriter::open_append(dir).unwrap();
    w.set_task("a task of its own");
    w.append_episode(&eps[2]).unwrap();
    w.finish().unwrap();
    fs::write(dir.join("meta/info.json"), committed).unwrap();
    let ds = read_dataset(dir).unwrap();
    assert_eq!(ds.episodes.len(), 2);
    assert_same(&ds.episodes[1], &eps[1]);
    let report = validate_dataset(dir).unwrap();
    assert_eq!(
        (report.episodes, report.tasks, report.uncommitted_episodes),
        (2, 1, 1),
        "{report:?}"
    );
    assert_eq!(report.stats_checked, 0, "the stats describe 3 episodes");
    assert_eq!(report.unreferenced_data_files.len(), 1);
    // LeRobot would read the uncommitted episode's frames as the dataset's.
    assert_eq!(lerobot_frames(dir), Ok(5 + 6 + 7));
    // The next session sets its data file aside and drops its index row at once (not
    // only at its own commit), then commits over it.
    let mut w = DatasetWriter::open_append(dir).unwrap();
    assert_eq!(w.set_aside().len(), 1);
    let report = validate_dataset(dir).unwrap();
    assert_eq!(
        (report.episodes, report.uncommitted_episodes),
        (2, 0),
        "{report:?}"
    );
    assert_eq!(lerobot_frames(dir), Ok(5 + 6));
    w.append_episode(&eps[0]).unwrap();
    w.finish().unwrap();
    let report = validate_dataset(dir).unwrap();
    assert_eq!(
        (report.episodes, report.tasks, report.uncommitted_episodes),
        (3, 1, 0),
        "{report:?}"
    );
    assert!(report.stats_checked >= 2);
    assert_same(&read_dataset(dir).unwrap().episodes[2], &eps[0]);
    assert_eq!(lerobot_frames(dir), Ok(5 + 6 + 5));
}

#[test]
fn set_task_adds_a_task() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let eps = episodes(5, &[3, 4]);
    let mut w = DatasetWriter::create(dir, info()).unwrap();
    w.append_episode(&eps[0]).unwrap();
    w.set_task("wave hello");
    w.append_episode(&eps[1]).unwrap();
    w.finish().unwrap();
    assert_eq!(validate_dataset(dir).unwrap().tasks, 2);
    // Appending keeps both tasks.
    DatasetWriter::open_append(dir).unwrap().finish().unwrap();
    assert_eq!(validate_dataset(dir).unwrap().tasks, 2);
    assert_eq!(read_dataset(dir).unwrap().info.task, info().task);
}

#[test]
fn empty_dataset_and_create_guards() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("empty");
    let s = write_dataset(&dir, &info(), &[]).unwrap();
    assert_eq!((s.total_episodes, s.total_frames), (0, 0));
    let ds = read_dataset(&dir).unwrap();
    assert!(ds.episodes.is_empty());
    assert_eq!(validate_dataset(&dir).unwrap().episodes, 0);

    // Non-empty directory is refused.
    let err = DatasetWriter::create(&dir, info()).err().unwrap();
    assert!(matches!(err, DatasetError::NotEmpty { .. }), "{err}");
    assert!(err.to_string().contains("not empty"), "{err}");
    // What a `create` killed before its first commit leaves (its empty `meta/`
    // directories) is taken for empty: every later `create` refused it as not empty,
    // and `open_append` as lacking info.json. A file anywhere under it is not.
    let killed = tmp.path().join("killed");
    std::fs::create_dir_all(killed.join("meta/episodes/chunk-000")).unwrap();
    DatasetWriter::create(&killed, info())
        .unwrap()
        .finish()
        .unwrap();
    assert_eq!(validate_dataset(&killed).unwrap().episodes, 0);
    let stray = tmp.path().join("stray");
    std::fs::create_dir_all(stray.join("meta/episodes")).unwrap();
    std::fs::write(stray.join("meta/episodes/notes.txt"), "mine").unwrap();
    let err = DatasetWriter::create(&stray, info()).err().unwrap();
    assert!(matches!(err, DatasetError::NotEmpty { .. }), "{err}");

    // Invalid episodes are rejected before anything is written.
    let mut w = DatasetWriter::open_append(&dir).unwrap();
    let mut bad = episodes(6, &[4]).remove(0);
    bad.actions.pop();
    let msg = w.append_episode(&bad).unwrap_err().to_string();
    assert!(
        msg.contains("actions") && msg.contains("expected 12"),
        "{msg}"
    );
    bad.actions.push(f32::NAN);
    let msg = w.append_episode(&bad).unwrap_err().to_string();
    assert!(msg.contains("non-finite"), "{msg}");

    // Only the last step ends an episode, one way: an end inside it would read back as
    // a terminal state mid-episode, no end as an episode LeRobot never marked done.
    let ended = |term: [bool; 4], trunc: [bool; 4]| {
        let mut e = episodes(6, &[4]).remove(0);
        e.terminated = term.to_vec();
        e.truncated = trunc.to_vec();
        e
    };
    let (no, last) = ([false; 4], [false, false, false, true]);
    for (e, field, says) in [
        (
            ended([false, true, false, true], no),
            "terminated",
            "step 1 of 4 ends",
        ),
        (
            ended(no, [true, false, false, true]),
            "truncated",
            "step 0 of 4 ends",
        ),
        (
            ended(no, no),
            "truncated",
            "neither terminated nor truncated",
        ),
        (
            ended(last, last),
            "truncated",
            "both terminated and truncated",
        ),
    ] {
        let msg = w.append_episode(&e).unwrap_err().to_string();
        assert!(msg.contains(field) && msg.contains(says), "{msg}");
    }
    w.append_episode(&ended(last, no)).unwrap();
    w.append_episode(&ended(no, last)).unwrap();
    w.finish().unwrap();
    assert_eq!(read_dataset(&dir).unwrap().episodes.len(), 2);

    // Vectors wider than the reader reads are refused when the dataset is created.
    let mut wide = info();
    wide.observation_names = (0..70_000).map(|i| format!("o{i}")).collect();
    let err = DatasetWriter::create(&tmp.path().join("wide"), wide)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("70000 observation") && err.contains("at most 65536"),
        "{err}"
    );
}

/// A data file of the next name that no episode refers to (a leftover under a template
/// other than `chunk-*/file-*`) is stepped over, never overwritten; every later append
/// used to fail on it with "File exists".
#[test]
fn a_leftover_data_file_is_stepped_over() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    write_dataset(&dir, &info(), &[]).unwrap();
    let info_path = dir.join("meta/info.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&info_path).unwrap()).unwrap();
    v["data_path"] = serde_json::json!("data/ep-{file_index:03d}.parquet");
    fs::write(&info_path, v.to_string()).unwrap();
    fs::create_dir_all(dir.join("data")).unwrap();
    fs::write(dir.join("data/ep-000.parquet"), "someone else's").unwrap();
    let eps = episodes(2, &[4, 6]);
    let mut w = DatasetWriter::open_append(&dir).unwrap();
    for ep in &eps {
        w.append_episode(ep).unwrap();
    }
    w.finish().unwrap();
    assert_eq!(
        fs::read_to_string(dir.join("data/ep-000.parquet")).unwrap(),
        "someone else's"
    );
    assert!(dir.join("data/ep-001.parquet").is_file());
    assert_eq!(read_dataset(&dir).unwrap().episodes, eps);
}

/// A stray data file numbered at the end of the range is an error naming the dataset,
/// not an overflow panic as the writer opens (the robot's recording would not start).
#[test]
fn a_data_file_numbered_at_the_end_of_the_range_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    write_dataset(&dir, &info(), &episodes(1, &[3])).unwrap();
    let stray = dir.join(format!("data/chunk-{}", usize::MAX));
    fs::create_dir_all(&stray).unwrap();
    let info_json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("meta/info.json")).unwrap()).unwrap();
    let chunks_size = info_json["chunks_size"].as_u64().unwrap();
    fs::write(
        stray.join(format!("file-{:03}.parquet", chunks_size - 1)),
        "stray",
    )
    .unwrap();
    let err = DatasetWriter::open_append(&dir).err().expect("refused");
    assert!(
        err.to_string().contains("leaves no number for a next one"),
        "{err}"
    );
    // A file number past the chunk's size just moves on to the next chunk.
    fs::remove_dir_all(&stray).unwrap();
    let chunk = dir.join("data/chunk-000");
    fs::write(chunk.join(format!("file-{}.parquet", usize::MAX)), "stray").unwrap();
    let mut w = DatasetWriter::open_append(&dir).unwrap();
    w.append_episode(&episodes(1, &[4])[0]).unwrap();
    w.finish().unwrap();
    assert!(dir.join("data/chunk-001/file-000.parquet").is_file());
}

/// Runs noted by a writer are committed with its episodes, kept by later appends, and
/// noted once each; a writer that never finishes notes nothing.
#[test]
fn noted_runs_are_committed_with_the_episodes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let eps = episodes(4, &[3, 5]);
    let mut w = DatasetWriter::create(&dir, info()).unwrap();
    w.note_run("run-a");
    w.note_run("run-a");
    w.append_episode(&eps[0]).unwrap();
    w.finish().unwrap();
    assert_eq!(dataset::noted_runs(&dir).unwrap(), ["run-a"]);
    let mut w = DatasetWriter::open_append(&dir).unwrap();
    w.note_run("run-b");
    w.append_episode(&eps[1]).unwrap();
    drop(w); // killed before its commit
    assert_eq!(dataset::noted_runs(&dir).unwrap(), ["run-a"]);
    let mut w = DatasetWriter::open_append(&dir).unwrap();
    w.note_run("run-c");
    w.finish().unwrap();
    assert_eq!(dataset::noted_runs(&dir).unwrap(), ["run-a", "run-c"]);
    validate_dataset(&dir).unwrap();
}

/// The robot file's action mapping a recording was made with is kept in `info.json`
/// (through appends and by `recorded_as`), and a damaged entry is refused by every
/// reader, naming the key; a dataset without one reads as recording none.
#[test]
fn the_action_mapping_is_kept_and_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let eps = episodes(4, &[3, 5]);
    let mapping = dataset::ActionMapping {
        scale: (0..ACT_DIM).map(|i| 0.5 + i as f32).collect(),
        offset: (0..ACT_DIM).map(|i| -0.1 * i as f32).collect(),
    };
    let mapped = dataset::DatasetInfo {
        action_mapping: Some(mapping.clone()),
        ..info()
    };
    write_dataset(&dir, &mapped, &eps[..1]).unwrap();
    let mut w = DatasetWriter::open_append(&dir).unwrap();
    w.append_episode(&eps[1]).unwrap();
    w.finish().unwrap();
    assert_eq!(
        read_dataset(&dir).unwrap().info.action_mapping,
        Some(mapping.clone())
    );
    let recorded = dataset::recorded_as(&dir).unwrap().unwrap();
    assert_eq!(recorded.info.action_mapping, Some(mapping));
    validate_dataset(&dir).unwrap();

    // One that every reader would refuse is not written.
    let bad = dataset::DatasetInfo {
        action_mapping: Some(dataset::ActionMapping {
            scale: vec![1.0],
            offset: vec![0.0],
        }),
        ..info()
    };
    let e = DatasetWriter::create(&tmp.path().join("bad"), bad)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains(&format!(
            "cannot create dataset: the action mapping holds 1 scales and 1 offsets for \
             {ACT_DIM} actions"
        )),
        "{e}"
    );

    let plain = tmp.path().join("plain");
    write_dataset(&plain, &info(), &eps[..1]).unwrap();
    assert_eq!(read_dataset(&plain).unwrap().info.action_mapping, None);

    let path = dir.join("meta/info.json");
    let good = fs::read_to_string(&path).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&good).unwrap();
    for (entry, want) in [
        (
            serde_json::json!({"scale": [1.0], "offset": [0.0]}),
            format!("`expo_action_mapping` holds 1 scales and 1 offsets for {ACT_DIM} actions"),
        ),
        (
            serde_json::json!({"scale": vec![0.0; ACT_DIM], "offset": vec![0.0; ACT_DIM]}),
            "`expo_action_mapping` scale [0] is 0".to_string(),
        ),
        (
            serde_json::json!({"scale": "wide"}),
            "`expo_action_mapping` must hold `scale` and `offset`".to_string(),
        ),
    ] {
        json["expo_action_mapping"] = entry;
        fs::write(&path, serde_json::to_string(&json).unwrap()).unwrap();
        for e in [
            read_dataset(&dir).unwrap_err().to_string(),
            dataset::recorded_as(&dir).err().unwrap().to_string(),
        ] {
            assert!(e.contains(&want) && e.contains("info.json"), "{e}");
        }
    }
}

/// A run of days saves millions of episodes, all noted at its end when it lost one:
/// each once, in order, as before (each was searched for in the list noted so far, so
/// the run's end took minutes to hours; a million here took minutes, untimed).
#[test]
fn a_long_runs_saved_episodes_are_each_noted_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = dataset::DatasetWriter::create(&tmp.path().join("ds"), info()).unwrap();
    let saved: Vec<u32> = (0..1_000_000).collect();
    w.note_partial_run("long", &saved[..10]);
    w.note_partial_run("long", &saved);
    w.note_partial_run("long", &[5, 2_000_000]);
    let noted = w.partial_run("long");
    assert_eq!(noted.len(), 1_000_001);
    assert!(noted[..1_000_000].iter().copied().eq(0..1_000_000));
    assert_eq!(noted[1_000_000], 2_000_000);
}

/// Past `MAX_NOTED_RUNS` partial runs the newest is still noted (it was left out, and
/// converting its log with `--last-run` added the episodes it saved a second time).
#[test]
fn the_newest_partial_run_is_noted_past_the_cap() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let eps = episodes(1, &[3]);
    let mut w = DatasetWriter::create(&dir, info()).unwrap();
    // Run ids as the controller makes them, `{pid}-{start ns}`: pids in no order.
    let id = |i: usize| format!("{}-{}", 7919 * (i + 1) % 1000, 1_000_000 + i);
    for i in 0..dataset::MAX_NOTED_RUNS {
        w.note_partial_run(&id(i), &[1]);
    }
    w.append_episode(&eps[0]).unwrap();
    let newest = id(dataset::MAX_NOTED_RUNS);
    w.note_partial_run(&newest, &[0, 2]);
    w.finish().unwrap();
    let w = DatasetWriter::open_append(&dir).unwrap();
    assert_eq!(w.partial_run(&newest), [0, 2]);
    // The oldest note made room; every other one is kept.
    assert!(w.partial_run(&id(0)).is_empty());
    for i in 1..dataset::MAX_NOTED_RUNS {
        assert_eq!(w.partial_run(&id(i)), [1], "{}", id(i));
    }
}

#[test]
fn episode_helpers() {
    let ep = episodes(7, &[5]).remove(0);
    assert_eq!(ep.len(), 5);
    assert!(!ep.is_empty());
    ep.check(OBS_DIM, ACT_DIM).unwrap();
    assert!(ep.check(OBS_DIM + 1, ACT_DIM).is_err());
    assert!(ep.is_success()); // index 0 → success on last step
    // The return of known rewards (the sum of the episode's own rewards restated
    // `ret` itself).
    let mut known = ep.clone();
    known.rewards = vec![0.5, -1.0, 0.25, 0.0, 2.0];
    assert_eq!(known.ret(), 1.75);
    let mut both = ep.clone();
    both.truncated[4] = true; // already terminated (seed 0 is even)
    assert!(
        both.check(OBS_DIM, ACT_DIM)
            .unwrap_err()
            .to_string()
            .contains("both")
    );
}

/// Direct two-pass statistics of `n` rows of `dim` values.
fn direct(rows: &[Vec<f32>]) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let dim = rows[0].len();
    let n = rows.len() as f64;
    let col = |j: usize| rows.iter().map(move |r| f64::from(r[j]));
    let mean: Vec<f64> = (0..dim).map(|j| col(j).sum::<f64>() / n).collect();
    let std = (0..dim)
        .map(|j| (col(j).map(|x| (x - mean[j]).powi(2)).sum::<f64>() / n).sqrt())
        .collect();
    let min = (0..dim)
        .map(|j| col(j).fold(f64::INFINITY, f64::min))
        .collect();
    let max = (0..dim)
        .map(|j| col(j).fold(f64::NEG_INFINITY, f64::max))
        .collect();
    (mean, std, min, max)
}

#[test]
fn stats_match_direct_computation() {
    let tmp = tempfile::tempdir().unwrap();
    let eps = episodes(8, LENS);
    write_dataset(tmp.path(), &info(), &eps).unwrap();
    let ds = read_dataset(tmp.path()).unwrap();
    let stats = ds.stats();
    let on_disk: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(tmp.path().join("meta/stats.json")).unwrap())
            .unwrap();

    let frames: usize = LENS.iter().sum();
    let rows = |f: &dyn Fn(&dataset::Episode) -> (&[f32], usize)| -> Vec<Vec<f32>> {
        eps.iter()
            .flat_map(|e| {
                let (v, d) = f(e);
                v.chunks(d).map(<[f32]>::to_vec).collect::<Vec<_>>()
            })
            .collect()
    };
    let cases: [(&str, Vec<Vec<f32>>); 4] = [
        ("observation.state", rows(&|e| (&e.observations, OBS_DIM))),
        (
            "next.observation.state",
            rows(&|e| (&e.next_observations, OBS_DIM)),
        ),
        ("action", rows(&|e| (&e.actions, ACT_DIM))),
        ("next.reward", rows(&|e| (&e.rewards, 1))),
    ];
    for (key, data) in cases {
        assert_eq!(data.len(), frames);
        let (mean, std, min, max) = direct(&data);
        let s = &stats[key];
        assert_eq!(s.count, frames as u64, "{key}");
        for j in 0..mean.len() {
            assert!((s.mean[j] - mean[j]).abs() < 1e-12, "{key} mean[{j}]");
            assert!((s.std[j] - std[j]).abs() < 1e-12, "{key} std[{j}]");
            assert_eq!(s.min[j], min[j], "{key} min[{j}]");
            assert_eq!(s.max[j], max[j], "{key} max[{j}]");
            let d = &on_disk[key];
            assert!(
                (d["mean"][j].as_f64().unwrap() - mean[j]).abs() < 1e-12,
                "{key} json mean"
            );
            assert!(
                (d["std"][j].as_f64().unwrap() - std[j]).abs() < 1e-12,
                "{key} json std"
            );
            // serde_json's default float parsing may be off by one ulp.
            assert!((d["min"][j].as_f64().unwrap() - min[j]).abs() < 1e-12);
            assert!((d["max"][j].as_f64().unwrap() - max[j]).abs() < 1e-12);
            assert_eq!(d["count"][0].as_u64().unwrap(), frames as u64);
        }
    }
    // Index-like features: frame_index of an episode of length n spans 0..n-1.
    assert_eq!(stats["frame_index"].max[0], 39.0);
    assert_eq!(stats["index"].max[0], (frames - 1) as f64);
    assert_eq!(stats["episode_index"].max[0], (LENS.len() - 1) as f64);
}

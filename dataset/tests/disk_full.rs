//! Writes that fail mid-recording, as on a full disk: a file-size limit (`RLIMIT_FSIZE`,
//! with `SIGXFSZ` ignored, so an oversized write fails with `EFBIG`) stands in for the
//! disk. Its own test binary: the limit applies to the whole process.

mod common;

use common::*;
use dataset::{DatasetWriter, read_dataset, validate_dataset, write_dataset};

/// Sets the soft file-size limit (bytes); `None` lifts it to the hard limit.
fn limit_file_size(bytes: Option<u64>) {
    // SAFETY: plain syscalls on this process's own limits and signal disposition.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut lim), 0);
        lim.rlim_cur = bytes.map_or(lim.rlim_max, |b| b as libc::rlim_t);
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
    }
}

/// A data file that cannot be written takes its episodes out of the dataset (it has no
/// footer, so nothing in it could be read); the dataset stays readable with everything
/// else, including the metadata that `finish` writes afterwards, and the next episodes
/// go to a new file.
#[test]
fn a_data_file_that_fails_leaves_a_readable_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let eps = episodes(8, &[5, 6, 20, 400, 7]);
    write_dataset(dir, &info(), &eps[..2]).unwrap();

    let mut w = DatasetWriter::open_append(dir).unwrap();
    // Room for the metadata files and a short episode, not for a 400-step one.
    limit_file_size(Some(16 * 1024));
    w.append_episode(&eps[2]).unwrap();
    let err = w.append_episode(&eps[3]).unwrap_err().to_string();
    assert!(
        err.contains("file-001.parquet is deleted, and episode 2 written to it before"),
        "{err}"
    );
    assert_eq!(w.total_episodes(), 2);
    assert!(!dir.join("data/chunk-000/file-001.parquet").exists());
    w.append_episode(&eps[4]).unwrap();
    let summary = w.finish().unwrap();
    limit_file_size(None);

    assert_eq!(summary.total_episodes, 3);
    assert_eq!(summary.episodes_added, 1);
    let report = validate_dataset(dir).unwrap();
    assert_eq!(report.episodes, 3, "{report:?}");
    let ds = read_dataset(dir).unwrap();
    assert_same(&ds.episodes[1], &eps[1]);
    assert_same(&ds.episodes[2], &eps[4]);
}

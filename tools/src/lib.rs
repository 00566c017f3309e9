//! `tools`: command-line utilities around the stack.
//!
//! It owns dataset generation from the scripted demonstrators, success labels for
//! demonstrations recorded without rewards, dataset inspection and validation, the
//! simulation-throughput benchmark, rerun export (feature `viz`) and a scripted teleop
//! device (`tools teleop`) for `controller run --teleop`.

pub mod bench;
pub mod generate;
pub mod label;
pub mod teleop;

use anyhow::{Context, Result, ensure};
use std::path::{Path, PathBuf};

pub use dataset::unique_id;

/// The hidden leftovers of interrupted writes of `out`, with what each holds: beside it
/// `.NAME.partial-ID` ([`write_whole`]'s unfinished data), `.NAME.new-ID` and
/// `.NAME.old-ID` (`tools demo`'s new dataset, and the one it replaced, moved aside);
/// inside it `.partial-ID`. Later runs never take them for their own, and said nothing
/// of them: a whole dataset's size each, and an `old` one may be the only copy of the
/// previous dataset.
pub fn leftovers_of(out: &Path) -> Vec<(PathBuf, &'static str)> {
    const PARTIAL: &str = "an interrupted write's unfinished data, not a dataset";
    let Some(name) = out.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return vec![];
    };
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let kinds: [(String, &'static str); 3] = [
        (format!(".{name}.partial-"), PARTIAL),
        (
            format!(".{name}.new-"),
            "`tools demo`'s new dataset, interrupted before it was moved into place",
        ),
        (
            format!(".{name}.old-"),
            "the dataset `tools demo` replaced, moved aside and not removed (complete; \
             the only copy if the run was cut between its renames)",
        ),
    ];
    let list = |dir: &Path| -> Vec<(PathBuf, String)> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| (e.path(), e.file_name().to_string_lossy().into_owned()))
            .collect()
    };
    let mut found: Vec<(PathBuf, &'static str)> = list(parent)
        .into_iter()
        .filter_map(|(path, n)| {
            let (_, what) = kinds.iter().find(|(prefix, _)| n.starts_with(prefix))?;
            Some((path, *what))
        })
        .collect();
    found.extend(
        list(out)
            .into_iter()
            .filter(|(_, n)| n.starts_with(".partial-"))
            .map(|(path, _)| (path, PARTIAL)),
    );
    found.sort();
    found
}

/// Says each of [`leftovers_of`]`(out)` on stderr.
pub fn say_leftovers(out: &Path) {
    for (path, what) in leftovers_of(out) {
        eprintln!(
            "note: {}: {what}, left by an interrupted run (remove it once not needed)",
            path.display()
        );
    }
}

/// Writes a new dataset at `out` whole or not at all. `out` must not exist or be empty,
/// as for [`dataset::DatasetWriter::create`]; `write` gets an empty directory to fill.
///
/// - `out` does not exist: `write` fills a hidden sibling, `.NAME.partial-ID`, which is
///   renamed to `out` once it succeeded (one step).
/// - `out` is an empty directory (perhaps a mount point, whose `lost+found` stays, or in
///   a parent this user cannot write): `write` fills `out/.partial-ID`, whose entries are then moved up into
///   `out`, `meta` last. A dataset's `meta/info.json` is its commit point, so a move cut
///   short leaves no dataset that reads as valid. Building beside a mount point and
///   renaming would copy nothing across filesystems: the rename fails (EXDEV, EBUSY)
///   after all the work.
///
/// An interrupted or failed `write` leaves `out` as it was rather than a dataset that
/// reads as valid with fewer episodes, or none, than asked for. A run killed mid-way
/// leaves its partial directory behind (its name says what it is), and so does a
/// finished write that cannot be moved into place: the error names it. `ID` is the
/// process id and the time, so a later run never takes another's leftover for its own.
pub fn write_whole<T>(out: &Path, write: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    say_leftovers(out);
    let empty_dir = match std::fs::read_dir(out) {
        Ok(entries) => {
            // A freshly made file system's own `lost+found` (an ext4 mount point) does
            // not make it a folder with data in it; it stays.
            let names: Vec<String> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "lost+found")
                .collect();
            let leftovers = !names.is_empty() && names.iter().all(|n| n.starts_with(".partial-"));
            ensure!(
                names.is_empty(),
                "{}: directory exists and is not empty{}",
                out.display(),
                if leftovers {
                    " (it holds only the partial directory of an interrupted run: remove it)"
                } else {
                    ""
                }
            );
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).with_context(|| format!("{}: cannot open", out.display())),
    };
    let id = unique_id();
    let partial: PathBuf = if empty_dir {
        out.join(format!(".partial-{id}"))
    } else {
        let name = out
            .file_name()
            .with_context(|| format!("{}: not a directory name", out.display()))?
            .to_string_lossy();
        let parent = out.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(p) = parent {
            std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
        }
        parent
            .unwrap_or(Path::new("."))
            .join(format!(".{name}.partial-{id}"))
    };
    // `create_dir`, not `create_dir_all`: it fails rather than reuse anything there.
    std::fs::create_dir(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let value = match write(&partial) {
        Ok(value) => value,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
    };
    if empty_dir {
        move_entries_up(&partial, out).with_context(|| {
            format!(
                "moving the finished data from {} into {} (what was not moved is still in \
                 {}; `meta`, the dataset's commit point, goes last)",
                partial.display(),
                out.display(),
                partial.display()
            )
        })?;
        std::fs::remove_dir(&partial)
            .with_context(|| format!("removing the emptied {}", partial.display()))?;
    } else {
        // rename(2) fails if `out` appeared meanwhile as a file or a directory with
        // something in it (an empty directory it replaces): the data stays where it is.
        std::fs::rename(&partial, out).with_context(|| {
            format!(
                "moving the finished data from {} to {} (the finished data is complete in \
                 {}: move its contents to {} yourself)",
                partial.display(),
                out.display(),
                partial.display(),
                out.display()
            )
        })?;
        // The rename itself made durable, as the empty directory's moves are: after a
        // power cut a write reported done could be back under its partial name.
        let parent = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        dataset::sync_dir(parent).with_context(|| format!("syncing {}", parent.display()))?;
    }
    Ok(value)
}

/// Moves every entry of `from` into `to` (its parent), `meta` last, after checking
/// that `to` holds none of their names; `to` is synced before `meta` moves (the data it
/// commits is in place) and after.
fn move_entries_up(from: &Path, to: &Path) -> Result<()> {
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(from)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    names.sort_by_key(|n| (n == "meta", n.clone()));
    for n in &names {
        let target = to.join(n);
        ensure!(
            std::fs::symlink_metadata(&target).is_err(),
            "{} appeared meanwhile (nothing was moved)",
            target.display()
        );
    }
    let sync = || dataset::sync_dir(to).with_context(|| format!("syncing {}", to.display()));
    for n in names {
        if n == "meta" {
            sync()?;
        }
        std::fs::rename(from.join(&n), to.join(&n))
            .with_context(|| format!("moving {} into {}", n.to_string_lossy(), to.display()))?;
    }
    sync()
}

/// [`write_whole`] for a dataset: the summary's paths name `out`, where the files are
/// once renamed.
pub fn write_dataset_whole(
    out: &Path,
    write: impl FnOnce(&Path) -> Result<dataset::DatasetSummary>,
) -> Result<dataset::DatasetSummary> {
    write_whole(out, |dir| {
        let mut summary = write(dir)?;
        summary.dir = out.to_path_buf();
        for file in &mut summary.data_files_written {
            if let Ok(rel) = file.strip_prefix(dir) {
                *file = out.join(rel);
            }
        }
        Ok(summary)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed write leaves nothing at `out` and no partial directory; a successful one
    /// is renamed into place (also over an empty directory); a non-empty `out` is refused
    /// before anything is written.
    #[test]
    fn a_dataset_is_written_whole_or_not_at_all() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("d");
        let err = write_whole(&out, |dir| -> Result<()> {
            std::fs::write(dir.join("half"), "x")?;
            anyhow::bail!("interrupted")
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "interrupted");
        assert!(!out.exists());
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            0,
            "no leftover"
        );

        std::fs::create_dir(&out).unwrap();
        write_whole(&out, |dir| {
            // Built inside `out` (a mount point, say), not beside it.
            assert_eq!(dir.parent(), Some(out.as_path()));
            std::fs::create_dir(dir.join("meta"))?;
            std::fs::write(dir.join("meta/info.json"), "{}")?;
            Ok(std::fs::write(dir.join("whole"), "x")?)
        })
        .unwrap();
        assert!(out.join("whole").is_file());
        assert!(out.join("meta/info.json").is_file());
        assert_eq!(
            std::fs::read_dir(&out).unwrap().count(),
            2,
            "no partial left"
        );
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);

        let err = write_whole(&out, |_| -> Result<()> { panic!("must not be called") });
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("exists and is not empty")
        );
    }

    /// When the finished data cannot be moved into place (here an entry of the same
    /// name appeared in `out` while it was written), it is kept where it was written and
    /// the error says where; `meta` (the commit point) stays there too. It used to be
    /// deleted with the failed move.
    #[test]
    fn finished_data_that_cannot_be_moved_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("d");
        std::fs::create_dir(&out).unwrap();
        let mut built = PathBuf::new();
        let err = write_whole(&out, |dir| -> Result<()> {
            built = dir.to_path_buf();
            std::fs::create_dir(dir.join("meta"))?;
            std::fs::write(dir.join("episodes"), "x")?;
            std::fs::write(out.join("episodes"), "someone else's")?;
            Ok(())
        })
        .unwrap_err();
        assert!(
            format!("{err:#}").contains(&format!("is still in {}", built.display()))
                && format!("{err:#}").contains("nothing was moved"),
            "{err:#}"
        );
        assert_eq!(
            std::fs::read_to_string(built.join("episodes")).unwrap(),
            "x"
        );
        assert!(built.join("meta").is_dir());
        assert!(!out.join("meta").exists());
        assert_eq!(
            std::fs::read_to_string(out.join("episodes")).unwrap(),
            "someone else's"
        );
        // A rerun is told what the leftover is.
        std::fs::remove_file(out.join("episodes")).unwrap();
        let err = write_whole(&out, |_| Ok(())).unwrap_err();
        assert!(
            err.to_string()
                .contains("partial directory of an interrupted run"),
            "{err}"
        );
    }

    /// An empty mount point (only its file system's `lost+found`) is written into, and
    /// keeps its `lost+found` (it was refused as not empty, against the README).
    #[test]
    fn a_mount_points_lost_and_found_does_not_count() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("mnt");
        std::fs::create_dir_all(out.join("lost+found")).unwrap();
        write_whole(&out, |dir| Ok(std::fs::write(dir.join("whole"), "x")?)).unwrap();
        assert!(out.join("whole").is_file() && out.join("lost+found").is_dir());
    }

    /// A leftover partial directory of another run (a container's pid 1 again, say) is
    /// never removed or reused by a later run.
    #[test]
    fn another_runs_partial_directory_survives() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("d");
        let theirs = tmp
            .path()
            .join(format!(".d.partial-{}", std::process::id()));
        std::fs::create_dir(&theirs).unwrap();
        std::fs::write(theirs.join("data"), "complete").unwrap();
        write_whole(&out, |dir| Ok(std::fs::write(dir.join("whole"), "x")?)).unwrap();
        assert_eq!(
            std::fs::read_to_string(theirs.join("data")).unwrap(),
            "complete"
        );
        assert!(out.join("whole").is_file());
    }
}

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

/// Writes a new dataset at `out` whole or not at all: `write` fills a hidden sibling
/// directory, which is renamed to `out` once it succeeded. An interrupted or failed run
/// leaves `out` as it was (absent or empty) rather than a dataset that reads as valid
/// with fewer episodes, or none, than asked for. `out` must not exist or be empty, as
/// for [`dataset::DatasetWriter::create`]. A run killed mid-way leaves the sibling
/// `.NAME.partial-PID` behind (its name says what it is), and so does a finished write
/// that cannot be moved to `out` (a mount point): the error says so. `write` gets that
/// directory, created and empty.
pub fn write_whole<T>(out: &Path, write: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let empty_dir = match std::fs::read_dir(out) {
        Ok(mut entries) => {
            ensure!(
                entries.next().is_none(),
                "{}: directory exists and is not empty",
                out.display()
            );
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).with_context(|| format!("{}: cannot open", out.display())),
    };
    let name = out
        .file_name()
        .with_context(|| format!("{}: not a directory name", out.display()))?
        .to_string_lossy();
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty());
    let partial: PathBuf = parent
        .unwrap_or(Path::new("."))
        .join(format!(".{name}.partial-{}", std::process::id()));
    if let Some(p) = parent {
        std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    }
    // A leftover of this very process id (a reused pid) is ours to replace.
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let value = match write(&partial) {
        Ok(value) => value,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
    };
    // rename(2) replaces an empty directory in one step. It fails on a mount point
    // (EBUSY, EXDEV) or a directory that filled up meanwhile: the finished data stays
    // in the partial directory, which the error names, not thrown away.
    std::fs::rename(&partial, out).with_context(|| {
        format!(
            "moving the finished data from {} to {}{} (it is complete in {}: move its \
             contents there yourself)",
            partial.display(),
            out.display(),
            if empty_dir {
                ", an existing directory"
            } else {
                ""
            },
            partial.display()
        )
    })?;
    Ok(value)
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
        write_whole(&out, |dir| Ok(std::fs::write(dir.join("whole"), "x")?)).unwrap();
        assert!(out.join("whole").is_file());
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);

        let err = write_whole(&out, |_| -> Result<()> { panic!("must not be called") });
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("exists and is not empty")
        );
    }

    /// When the finished data cannot be moved into place (here `out` filled up while it
    /// was written; a mount point in practice), it is kept where it was written and the
    /// error says where. It used to be deleted with the failed move.
    #[test]
    fn finished_data_that_cannot_be_moved_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("d");
        std::fs::create_dir(&out).unwrap();
        let err = write_whole(&out, |dir| -> Result<()> {
            std::fs::write(dir.join("episodes"), "x")?;
            std::fs::write(out.join("someone_else"), "y")?;
            Ok(())
        })
        .unwrap_err();
        let partial = tmp
            .path()
            .join(format!(".d.partial-{}", std::process::id()));
        assert!(
            format!("{err:#}").contains(&format!("it is complete in {}", partial.display())),
            "{err:#}"
        );
        assert_eq!(
            std::fs::read_to_string(partial.join("episodes")).unwrap(),
            "x"
        );
        assert!(out.join("someone_else").is_file());
    }
}

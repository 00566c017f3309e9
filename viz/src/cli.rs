//! Checking recordings with the rerun viewer's own command-line tool, from the
//! `rerun-sdk` wheel of the same version (`pip install rerun-sdk==0.36.3`), run as
//! `python3 -m rerun_cli` (`RERUN_PYTHON` names another Python). The tests use it, and
//! so does `tools viz verify`.

use crate::RERUN_VERSION;
use anyhow::{Context, Result, bail, ensure};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Runs the rerun CLI with `args`; its stdout and stderr together.
pub fn rerun_cli(args: &[&str]) -> Result<String> {
    let python = std::env::var("RERUN_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .args(["-m", "rerun_cli"])
        .args(args)
        .output()
        .with_context(|| format!("running {python} -m rerun_cli"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "rerun {args:?} failed (is rerun-sdk=={RERUN_VERSION} installed? pip install rerun-sdk=={RERUN_VERSION}):\n{text}"
        );
    }
    Ok(text)
}

/// `rerun rrd verify` on `rrd` (after checking the CLI's version), then the number of
/// rows per entity path that `rerun rrd print` lists.
pub fn verified_rows(rrd: &Path) -> Result<BTreeMap<String, usize>> {
    let version = rerun_cli(&["--version"])?;
    ensure!(
        version.contains(&format!("rerun-cli {RERUN_VERSION}")),
        "the rerun CLI is not version {RERUN_VERSION}: {version}"
    );
    let path = rrd.to_str().context("the path is not UTF-8")?;
    let verify = rerun_cli(&["rrd", "verify", path])?;
    ensure!(
        verify.contains("verified without error"),
        "rerun rrd verify: {verify}"
    );
    let mut rows = BTreeMap::new();
    // "Chunk(chunk_…) with 5 rows (1.3 KiB) - /scene/robot - data columns: […]"
    for line in rerun_cli(&["rrd", "print", path])?.lines() {
        let Some(rest) = line.strip_prefix("Chunk(") else {
            continue;
        };
        let n: Option<usize> = rest
            .split(" with ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok());
        let entity = rest.split(" - ").nth(1);
        let (Some(n), Some(entity)) = (n, entity) else {
            bail!("rerun rrd print: unexpected line {line:?}");
        };
        *rows.entry(entity.to_string()).or_default() += n;
    }
    Ok(rows)
}

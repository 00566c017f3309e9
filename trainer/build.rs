//! Records the git revision the trainer is built from: the bundles it exports name it
//! in their provenance (`git_revision`), whatever directory the export runs in.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8(out.stdout).ok()?.trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Rebuild when HEAD moves: a commit, a checkout. A path that does not exist would
    // make cargo rerun this script on every build, so only existing ones are named.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        for name in ["HEAD", "packed-refs", "refs/heads"] {
            let path = Path::new(&dir).join(name);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    let revision = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=EXPO_TRAINER_GIT_REVISION={revision}");
}

//! Command-line pieces shared by the `controller` and `trainer` binaries.

use anyhow::{Result, bail};
use shared_model::Trust;
use std::path::PathBuf;

/// How a bundle's signature is checked: `--trusted-key KEY.pub`, or `--allow-unsigned`
/// for development (hashes, shapes and weights are still checked).
#[derive(clap::Args, Clone, Debug)]
pub struct TrustArgs {
    /// Public key (`NAME.pub`) the bundle must be signed with.
    #[arg(long, conflicts_with = "allow_unsigned")]
    pub trusted_key: Option<PathBuf>,
    /// Development only: accept unsigned bundles (hashes and shapes are still checked).
    #[arg(long)]
    pub allow_unsigned: bool,
}

impl TrustArgs {
    pub fn trust(&self) -> Result<Trust> {
        match (&self.trusted_key, self.allow_unsigned) {
            (Some(k), _) => Ok(Trust::from_public_key_file(k)?),
            (None, true) => Ok(Trust::AllowUnsigned),
            (None, false) => bail!(
                "pass --trusted-key KEY.pub to verify the bundle's signature, or --allow-unsigned for development"
            ),
        }
    }
}

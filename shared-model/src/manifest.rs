//! The model bundle: a directory with a versioned `manifest.toml`, its ed25519
//! signature and the ONNX graphs it lists by sha256.
//!
//! ```text
//! bundle/
//!   manifest.toml    format version, specs, normalization, schedule, selection,
//!                    network sizes, graph files + sha256, provenance
//!   manifest.sig     hex ed25519 signature over the exact bytes of manifest.toml
//!   denoiser.onnx    one denoising step
//!   edit.onnx        edit policy            (EXPO bundles)
//!   critic.onnx      critic ensemble        (EXPO and IDQL-select bundles)
//! ```
//!
//! The signature covers the manifest, and the manifest pins every graph by hash, so one
//! signature authenticates the whole bundle. [`load_bundle`] checks, in this order:
//! the signature (over the manifest's bytes as read, where a key is trusted), format
//! version, manifest syntax, hashes, graph structure and shapes against the manifest,
//! finite weights; each failure is its own [`BundleError`].
//!
//! Keys are 32-byte ed25519 seeds and public keys stored as one line of hex
//! (`NAME.key`, mode 0600, and `NAME.pub`) under a comment line that says which it is;
//! see [`generate_key_pair`]. A secret key given where a public one belongs (or the
//! reverse) is refused by that line, or, for files written before it existed, by the
//! file's extension; a secret key is never printed.

use crate::graphs::{LogStdHead, names};
use crate::onnx::{DATA_TYPE_FLOAT, DATA_TYPE_INT64, ModelProto};
use crate::select::SelectionParams;
use ed25519_dalek::{Signature, Signer};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The newest bundle format this code reads. Format 2 adds `action.horizon` (action
/// chunks), format 3 `action.replan_every` (how the training run played them), format 4
/// `networks.edit_log_std` (a clipped log-std head, `Clip` in the edit graph), format 5
/// `action.control_hz` (the rate it was trained at, which the trainer writes in every
/// bundle since 2026-12-06: older controllers refuse those by their version), format 6
/// `action.names` (the data's action names, in order, written since 2026-12-07 when the
/// data names its actions), format 7 `action.robot_scale` and `action.robot_offset` (the
/// robot file's action mapping the data was recorded with, where the data records it,
/// since 2026-12-07); a bundle is written in the oldest format that holds what it uses
/// ([`Manifest::required_format`]), so older controllers keep loading every bundle
/// they can run, and refuse a newer one by its version ([`BundleError::NewerFormat`]).
pub const FORMAT_VERSION: u32 = 7;

/// The longest action chunk a bundle may declare (as the trainer's
/// `MAX_ACTION_HORIZON`).
pub const MAX_HORIZON: usize = 64;

// Largest sizes a bundle may declare (the trainer's config refuses larger ones, so it
// never exports a bundle a controller refuses). Each is far above any preset (the
// paper: T 10, N 8, 10 critics) and keeps the controller's buffers for it small; a
// corrupt or hostile manifest that declares 2^40 would otherwise abort the process on
// an allocation, which no panic guard catches.
/// Most diffusion steps a schedule is trained with (DDPM's 1000, ten times over).
pub const MAX_DIFFUSION_STEPS: usize = 10_000;
/// Most action candidates sampled per decision (`selection.num_samples`).
pub const MAX_SAMPLES: usize = 1024;
/// Most critics in the ensemble (`selection.ensemble_size`).
pub const MAX_ENSEMBLE: usize = 256;
/// Widest observation or action vector (as the `dataset` reader's `MAX_VECTOR_DIM`).
pub const MAX_DIM: usize = 1 << 16;
/// Widest network layer (`networks.*` widths; as the trainer's `MAX_WIDTH`).
pub const MAX_NET_WIDTH: usize = 1 << 16;
/// Most hidden layers of a network and most denoiser blocks (as the trainer's
/// `MAX_LAYERS`).
pub const MAX_NET_LAYERS: usize = 64;
/// Largest graph file read (the `paper` preset's denoiser is about 7 MB): a sparse file
/// of gigabytes is refused before it is read, not hashed after.
pub const MAX_GRAPH_BYTES: u64 = 1 << 30;
/// Largest `manifest.toml` and `manifest.sig` read. A manifest holds a line per value of
/// its observation's names, bounds and statistics (a name like `observation.state.65535`
/// and four floats: about 110 bytes per observation value) and of its action bounds
/// (about 40 per action value): at [`MAX_DIM`] both, about 10 MiB. (1 MiB refused every
/// bundle of a robot with more than about 9,000 observation values, which trained.) The
/// export refuses a manifest above it, names too long, rather than write a bundle no
/// controller loads.
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;
/// Most values of `num_samples × horizon × action.dim`, the sampled chunks of one
/// decision (64 MiB of f32). The controller's candidate buffer also holds the edited
/// chunks (`num_edit ≤ num_samples` more), so at most twice that, in a few buffers. The
/// caps above alone allow 1024 × 64 × 65,536 = 2^32 values. The largest preset holds
/// 8 × 1 × 7.
pub const MAX_CANDIDATE_VALUES: usize = 1 << 24;
/// Most activation values one layer holds over a decision's candidates: rows
/// (`num_samples + num_edit`) × the widest layer, and for the critic, members × rows ×
/// its widest layer (tract runs the members at once). The native backend keeps three
/// buffers of the first (64 MiB each at this cap), two-speed mode two sets. The caps on
/// counts and widths alone allow 2048 × 65,536 = 2^27 (and 2^35 for the critic): a
/// small, hostile bundle could abort the process on that allocation, which no panic
/// guard catches. The `paper` preset holds 16 × 1024 and 10 × 16 × 256.
pub const MAX_ACTIVATION_VALUES: usize = 1 << 24;
/// Smallest observation std a bundle may carry: the floor the trainer's normalizer puts
/// under every feature's std. A smaller one (a subnormal, say) turns ordinary readings
/// into huge normalized values and the chosen action into NaN, which the load-time probe
/// (all-zero normalized observation) would not show.
pub const MIN_OBS_STD: f32 = 1e-3;
/// Largest edit scale β: an edit moves each action value by at most β, and with
/// actions in [−1, 1] one of 2 already reaches either bound from any base; a larger β
/// only lets edits overshoot the whole range (their commands clamped). DESIGN.md's β is
/// 0.05. Checked where a bundle edits (`num_edit` > 0).
pub const MAX_EDIT_SCALE: f32 = 2.0;
pub const MANIFEST_FILE: &str = "manifest.toml";
pub const SIGNATURE_FILE: &str = "manifest.sig";
/// The graph files [`write_bundle`] writes (a manifest may name others; it is checked).
pub const DENOISER_FILE: &str = "denoiser.onnx";
pub const EDIT_FILE: &str = "edit.onnx";
pub const CRITIC_FILE: &str = "critic.onnx";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    /// Task id (`push`, …) or the robot's name.
    pub task: String,
    /// Training algorithm (`expo`, `idql-select`, `bc`).
    pub algo: String,
    pub observation: ObservationSpec,
    pub action: ActionSpec,
    pub diffusion: DiffusionSpec,
    pub selection: SelectionSpec,
    pub networks: NetworkSpec,
    pub graphs: GraphFiles,
    pub provenance: Provenance,
}

/// What the policy reads: raw observation bounds and the normalization it applies
/// (`(obs − mean) / std`) before the networks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservationSpec {
    pub dim: usize,
    pub names: Vec<String>,
    pub low: Vec<f32>,
    pub high: Vec<f32>,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// What the policy emits: actions in `[low, high]` (our tasks use `[−1, 1]`), `horizon`
/// of them at a time (an action chunk, executed one per control step).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSpec {
    /// Values of one action (one control step).
    pub dim: usize,
    pub low: Vec<f32>,
    pub high: Vec<f32>,
    /// Actions per chunk: the networks act on `horizon · dim` values (format 2;
    /// absent = 1).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub horizon: usize,
    /// Actions played from each chunk before the next plan, as the run that trained
    /// the bundle acted and was evaluated (`shared_model::ChunkPlay`; format 3; absent
    /// = 0, whole chunks). The controller plays chunks this way unless told otherwise.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replan_every: usize,
    /// The rate, Hz, of the steps the bundle was trained on (its data's `fps`, the
    /// simulated task's control rate; format 5; absent in older bundles): a step of the
    /// policy is `1/control_hz` s for its chunks and its critics' discount, and the
    /// controller refuses a robot file of another `control_hz`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_hz: Option<u32>,
    /// The action values' names, in order, as the training data named them (format 6;
    /// empty when the data did not name them, `action.{i}`, or in older bundles): the
    /// controller refuses a robot file that names the same actions in another order, as
    /// for observations. A chunk repeats them `horizon` times, so one action's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// The robot file's `action.scale` and `action.offset` the training data was
    /// recorded with, per action (format 7; empty when the data did not record them: a
    /// simulated task, data from before 2026-12-07, another recorder): `low`/`high` and
    /// the networks' values are in policy units, and these say what those meant on the
    /// robot, so the controller refuses a robot file that maps them otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub robot_scale: Vec<f32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub robot_offset: Vec<f32>,
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl ActionSpec {
    /// The networks' action width: a whole chunk.
    pub fn chunk_dim(&self) -> usize {
        self.dim * self.horizon
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffusionSpec {
    /// Only `vp` (the variance-preserving schedule of `schedule::DiffusionSchedule::vp`).
    pub schedule: String,
    pub beta_min: f64,
    pub beta_max: f64,
    /// Steps the denoiser was trained with.
    pub trained_steps: usize,
    /// Steps the runtime executes by default (≤ trained; fewer = truncated DDIM chain).
    pub executed_steps: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionSpec {
    /// Base samples per action (N).
    pub num_samples: usize,
    /// Edited candidates (n_edit; 0 = no edit policy).
    pub num_edit: usize,
    /// Target critics sampled to score candidates (0 = no critic: take the first sample).
    pub critic_subset: usize,
    /// Critic ensemble size (E).
    pub ensemble_size: usize,
    /// Edit scale β: edited = base + β · tanh(u).
    pub edit_scale: f32,
}

impl SelectionSpec {
    pub fn params(&self) -> SelectionParams {
        SelectionParams {
            num_samples: self.num_samples,
            num_edit: self.num_edit,
            critic_subset: self.critic_subset,
        }
    }
}

/// Floating-point operations of one action (a multiply-add counts 2).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ActionFlops {
    /// All executed denoising steps over the N candidates (time and observation
    /// projections once per step).
    pub denoise: u64,
    pub edit: u64,
    /// The sampled critic subset over all N + n_edit candidates.
    pub score: u64,
}

impl ActionFlops {
    pub fn total(&self) -> u64 {
        self.denoise + self.edit + self.score
    }
}

/// Weight-matrix sizes (multiply-adds per input row) of the bundle's networks.
struct MatrixSizes {
    /// Denoiser layers applied to every candidate row.
    denoiser_per_row: u64,
    /// Denoiser layers applied once per step (time MLP, time and observation blocks).
    denoiser_per_step: u64,
    /// The edit policy (0 without one).
    edit: u64,
    /// One critic member.
    critic_member: u64,
}

impl Manifest {
    /// The oldest format that holds this manifest: 7 with the action mapping, 6 with
    /// `action.names`, 5 with
    /// `action.control_hz`, 4 with a
    /// clipped log-std head, 3 with `action.replan_every`, 2 with action chunks, else 1.
    pub fn required_format(&self) -> u32 {
        if !self.action.robot_scale.is_empty() || !self.action.robot_offset.is_empty() {
            7
        } else if !self.action.names.is_empty() {
            6
        } else if self.action.control_hz.is_some() {
            5
        } else if self.networks.edit_log_std != LogStdHead::Tanh {
            4
        } else if self.action.replan_every != 0 {
            3
        } else if self.action.horizon > 1 {
            2
        } else {
            1
        }
    }

    fn matrix_sizes(&self) -> MatrixSizes {
        let n = &self.networks;
        let (o, a) = (self.observation.dim as u64, self.action.chunk_dim() as u64);
        let (h, x) = (n.denoiser_hidden as u64, n.denoiser_expanded as u64);
        let (f, th) = (n.fourier_features as u64, n.time_hidden as u64);
        let mlp = |d_in: u64, widths: &[usize], d_out: u64| {
            let mut d = d_in;
            let mut macs = 0;
            for &w in widths {
                macs += d * w as u64;
                d = w as u64;
            }
            macs + d * d_out
        };
        MatrixSizes {
            denoiser_per_row: a * h + n.denoiser_blocks as u64 * 2 * h * x + h * a,
            denoiser_per_step: f * th + th * th + th * h + o * h,
            edit: if self.selection.num_edit > 0 {
                mlp(o + a, &n.edit_widths, 2 * a)
            } else {
                0
            },
            critic_member: mlp(o + a, &n.critic_widths, 1),
        }
    }

    /// FLOPs of one action with `executed` denoising steps.
    pub fn action_flops(&self, executed: usize) -> ActionFlops {
        let m = self.matrix_sizes();
        let s = &self.selection;
        let score_rows = (s.num_samples + s.num_edit) as u64;
        ActionFlops {
            denoise: 2
                * executed as u64
                * (s.num_samples as u64 * m.denoiser_per_row + m.denoiser_per_step),
            edit: 2 * s.num_edit as u64 * m.edit,
            score: 2 * score_rows * s.critic_subset as u64 * m.critic_member,
        }
    }

    /// Weight values one action reads with `executed` denoising steps: the whole
    /// denoiser every step, then the edit policy and the K sampled critic members.
    pub fn weights_per_action(&self, executed: usize) -> u64 {
        let m = self.matrix_sizes();
        executed as u64 * (m.denoiser_per_row + m.denoiser_per_step)
            + m.edit
            + self.selection.critic_subset as u64 * m.critic_member
    }
}

/// Layer sizes (documentation, FLOP counts, shape checks).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    pub denoiser_hidden: usize,
    pub denoiser_blocks: usize,
    pub denoiser_expanded: usize,
    pub fourier_features: usize,
    pub time_hidden: usize,
    pub edit_widths: Vec<usize>,
    pub critic_widths: Vec<usize>,
    /// The edit policy's log-std head (format 4; absent = `tanh`, every bundle before).
    #[serde(default, skip_serializing_if = "LogStdHead::is_tanh")]
    pub edit_log_std: LogStdHead,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphFile {
    pub file: String,
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphFiles {
    pub denoiser: GraphFile,
    pub edit: Option<GraphFile>,
    pub critic: Option<GraphFile>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// `git rev-parse HEAD` of the trainer's source tree (`unknown` outside git).
    pub git_revision: String,
    /// sha256 of the resolved training config (JSON), its `device` left out (the same
    /// checkpoint exported on any device has one hash).
    pub config_hash: String,
    /// Where the offline data came from.
    pub dataset: String,
    pub env_steps: u64,
    pub updates: u64,
    /// Seconds since the Unix epoch at export.
    pub created_unix: u64,
    pub trainer_version: String,
}

/// Why a bundle was refused.
#[derive(Debug, Error)]
pub enum BundleError {
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "{path}: bundle format version {found} is newer than this program supports ({supported}); update the controller"
    )]
    NewerFormat {
        path: PathBuf,
        found: i64,
        supported: u32,
    },
    #[error("{path}: invalid manifest: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error(
        "{path}: bundle is not signed (no {SIGNATURE_FILE}) but a trusted key is required: sign it (the trainer's --signing-key), or allow unsigned bundles for development"
    )]
    Unsigned { path: PathBuf },
    /// `key` is the trusted key's fingerprint ([`key_fingerprint`]), never the key
    /// itself: a secret key given by mistake must not end up in a log.
    #[error(
        "{path}: signature does not verify with the trusted key {key}: the manifest was modified or signed by another key"
    )]
    BadSignature { path: PathBuf, key: String },
    #[error(
        "{path}: the trusted key (fingerprint {key}) is the secret signing key of the key pair that signed this bundle, not its public key: pass NAME.pub instead, and keep NAME.key off the robot"
    )]
    SecretKeyTrusted { path: PathBuf, key: String },
    #[error("{path}: sha256 mismatch: manifest says {expected}, file has {found}")]
    HashMismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("{path}: not a valid ONNX model: {message}")]
    Onnx { path: PathBuf, message: String },
    #[error("{path}: shape mismatch: {what}: expected {expected}, found {found}")]
    Shape {
        path: PathBuf,
        what: String,
        expected: String,
        found: String,
    },
    #[error("{path}: weight `{tensor}` has a non-finite value at element {index}")]
    NonFinite {
        path: PathBuf,
        tensor: String,
        index: usize,
    },
    #[error("{path}: {message}")]
    Key { path: PathBuf, message: String },
    /// [`write_bundle`] replaces an earlier bundle, but never writes into a directory of
    /// something else (a run directory, a dataset): its files would be mixed up.
    #[error(
        "{path}: not empty and holds no bundle (no {MANIFEST_FILE}): write the bundle into a new or empty directory, or into an earlier bundle's directory to replace that bundle"
    )]
    NotABundleDir { path: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |error| BundleError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// `path`'s bytes, if it is a regular file (symlinks followed) of at most `max` bytes:
/// a FIFO (whose open would block), a device such as `/dev/zero`, or a file larger than
/// any bundle's is refused before anything is allocated for it.
fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, BundleError> {
    use std::io::Read;
    let refuse = |why: String| BundleError::Io {
        path: path.to_path_buf(),
        error: std::io::Error::new(std::io::ErrorKind::InvalidData, why),
    };
    let meta = fs::metadata(path).map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(refuse("not a regular file".into()));
    }
    if meta.len() > max {
        return Err(refuse(format!(
            "{} bytes, more than the {max} a bundle file may have",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    fs::File::open(path)
        .and_then(|f| f.take(max + 1).read_to_end(&mut bytes))
        .map_err(io_err(path))?;
    // Grown since it was looked at.
    if bytes.len() as u64 > max {
        return Err(refuse(format!(
            "more than the {max} bytes a bundle file may have"
        )));
    }
    Ok(bytes)
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.trim();
    // Hex digits only: `from_str_radix` also takes a sign ("+a" read as 0x0a), so a
    // garbled signature or key file passed for a valid one.
    if s.len() != 2 * N || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Who may have signed a bundle.
#[derive(Clone, Debug)]
pub enum Trust {
    /// The manifest must carry a valid signature by this key.
    Key(VerifyingKey),
    /// Development mode: the signature is not required (hashes, versions and shapes
    /// are still checked).
    AllowUnsigned,
}

/// The first line of a secret key file written by [`generate_key_pair`].
const SECRET_KEY_HEADER: &str =
    "# EXPO bundle signing key (ed25519 secret): keep it private; robots get the .pub";
/// The first line of a public key file written by [`generate_key_pair`].
const PUBLIC_KEY_HEADER: &str = "# EXPO bundle verification key (ed25519 public)";

/// What a key file says it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyFileKind {
    Secret,
    Public,
    /// A file without the comment line (written before it existed, or by hand): its
    /// extension is the only hint.
    Unmarked,
}

/// How the uplink crate's key files start (`uplink::KEY_FILE_HEADER`): the uplink's
/// shared secret is also 64 hex digits, and must not sign bundles.
const UPLINK_KEY_MARK: &str = "# EXPO uplink key";

/// The largest key file read: a comment line and 64 hex digits take under 100 bytes.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// The key file's hex (its comment lines left out) and what the file says it holds.
fn read_key_file(path: &Path) -> Result<(String, KeyFileKind), BundleError> {
    // A missing key is most often one not made or not copied yet: where it comes from.
    if let Err(e) = fs::metadata(path)
        && e.kind() == std::io::ErrorKind::NotFound
    {
        return Err(BundleError::Key {
            path: path.into(),
            message: "no such key file: `trainer keygen --out NAME` writes NAME.key (signs, \
                      stays with the trainer) and NAME.pub (copy it to the robot)"
                .into(),
        });
    }
    // Capped, and a regular file only: a FIFO named as a key blocked the read forever,
    // `/dev/zero` filled memory.
    let bytes = read_capped(path, MAX_KEY_FILE_BYTES)?;
    let text = String::from_utf8(bytes).map_err(|_| BundleError::Key {
        path: path.into(),
        message: "not text: a key file holds a comment line and 64 hex digits".into(),
    })?;
    if text.contains(UPLINK_KEY_MARK) {
        return Err(BundleError::Key {
            path: path.into(),
            message: "this is the uplink's shared key (`trainer uplink-keygen`), not a bundle \
                      signing key: pass NAME.key or NAME.pub from `trainer keygen`"
                .into(),
        });
    }
    let kind = if text.contains(SECRET_KEY_HEADER) {
        KeyFileKind::Secret
    } else if text.contains(PUBLIC_KEY_HEADER) {
        KeyFileKind::Public
    } else {
        KeyFileKind::Unmarked
    };
    let hex: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("");
    Ok((hex, kind))
}

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension().is_some_and(|e| e == ext)
}

/// A short name for a public key that is safe to print: the first 16 hex digits of
/// its sha256.
pub fn key_fingerprint(key: &[u8; 32]) -> String {
    format!("sha256:{}", &sha256_hex(key)[..16])
}

impl Trust {
    /// Reads a public key file (`NAME.pub`). Refuses a secret key file without
    /// printing it.
    pub fn from_public_key_file(path: &Path) -> Result<Self, BundleError> {
        let (text, kind) = read_key_file(path)?;
        if kind == KeyFileKind::Secret
            || kind == KeyFileKind::Unmarked && has_extension(path, "key")
        {
            return Err(BundleError::Key {
                path: path.into(),
                message: "this is a secret signing key, not a public key: pass NAME.pub (the \
                          secret key belongs on the trainer's machine only)"
                    .into(),
            });
        }
        let bytes = unhex::<32>(&text).ok_or_else(|| BundleError::Key {
            path: path.into(),
            message: "expected a public key as 64 hex digits".into(),
        })?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|e| BundleError::Key {
            path: path.into(),
            message: format!(
                "not an ed25519 public key ({e}); a secret key? pass NAME.pub, written by \
                 `trainer keygen` beside NAME.key"
            ),
        })?;
        Ok(Trust::Key(key))
    }
}

/// Reads a signing key file (`NAME.key`). Refuses a public key file: a bundle signed
/// with it would verify with no key; and a file others may read ([`owner_only`]).
pub fn read_signing_key(path: &Path) -> Result<SigningKey, BundleError> {
    let (text, kind) = read_key_file(path)?;
    if kind == KeyFileKind::Public || kind == KeyFileKind::Unmarked && has_extension(path, "pub") {
        return Err(BundleError::Key {
            path: path.into(),
            message: "this is a public key; signing needs the secret key of the pair \
                      (NAME.key, written by `trainer keygen` beside NAME.pub)"
                .into(),
        });
    }
    owner_only(path).map_err(|message| BundleError::Key {
        path: path.into(),
        message,
    })?;
    let seed = unhex::<32>(&text).ok_or_else(|| BundleError::Key {
        path: path.into(),
        message: "expected a signing key as 64 hex digits".into(),
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A secret key file (a bundle signing key, the uplink's shared key) must be its
/// owner's alone, as ssh asks of its keys: one that group or others may read or change
/// is refused (a copy made by hand is often mode 0644, and then anyone on that machine
/// can sign bundles the robot runs, or feed the trainer transitions). Unix only:
/// elsewhere the file system's access lists decide. The error says how to fix it.
pub fn owner_only(path: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path)
            .map_err(|e| e.to_string())?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "a secret key that others may read or change (mode {:03o}): make it its \
                 owner's alone with `chmod 600 {}`",
                mode & 0o777,
                path.display()
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Writes `PREFIX.key` (secret, mode 0600) and `PREFIX.pub` from the OS random source;
/// refuses to overwrite either (a robot's trusted `.pub` replaced by accident would
/// refuse every bundle signed before). The suffixes are appended (`keys/robot.v2` gives
/// `keys/robot.v2.key`); a PREFIX that already ends in `.key` or `.pub` names the pair.
pub fn generate_key_pair(prefix: &Path) -> Result<(PathBuf, PathBuf), BundleError> {
    let prefix = match prefix.extension().and_then(|e| e.to_str()) {
        Some("key" | "pub") => prefix.with_extension(""),
        _ => prefix.to_path_buf(),
    };
    let with = |suffix: &str| {
        let mut p = prefix.clone().into_os_string();
        p.push(suffix);
        PathBuf::from(p)
    };
    let (key_path, pub_path) = (with(".key"), with(".pub"));
    for path in [&key_path, &pub_path] {
        if path.exists() {
            return Err(BundleError::Key {
                path: path.clone(),
                message: "already exists; not overwriting a key".into(),
            });
        }
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| BundleError::Key {
        path: key_path.clone(),
        message: format!("no OS randomness: {e}"),
    })?;
    let key = SigningKey::from_bytes(&seed);
    if let Some(dir) = key_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    use std::io::Write;
    let mut f = opts.open(&key_path).map_err(io_err(&key_path))?;
    if let Err(e) = writeln!(f, "{SECRET_KEY_HEADER}\n{}", hex(&seed)) {
        // Half a key (a full disk) must not stay: the next keygen refused to overwrite it.
        drop(f);
        let _ = fs::remove_file(&key_path);
        return Err(io_err(&key_path)(e));
    }
    let public = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&pub_path)
        .map(|mut f| {
            writeln!(
                f,
                "{PUBLIC_KEY_HEADER}\n{}",
                hex(key.verifying_key().as_bytes())
            )
        });
    let failed = match public {
        Ok(Ok(())) => None,
        // Created, and half written (a full disk): ours, and removed too.
        Ok(Err(e)) => {
            let _ = fs::remove_file(&pub_path);
            Some(e)
        }
        // Not created (someone else's file appeared meanwhile): left as it is.
        Err(e) => Some(e),
    };
    if let Some(e) = failed {
        // A secret key without its public half is of no use: no half pair is left (the
        // next keygen refused to overwrite a half-written public key).
        let _ = fs::remove_file(&key_path);
        return Err(io_err(&pub_path)(e));
    }
    Ok((key_path, pub_path))
}

/// Graphs to write, keyed by their role.
pub struct BundleGraphs {
    pub denoiser: ModelProto,
    pub edit: Option<ModelProto>,
    pub critic: Option<ModelProto>,
}

/// A graph's bytes and the manifest entry naming them as the file `name`.
fn encoded(name: &str, g: &ModelProto) -> (Vec<u8>, GraphFile) {
    let bytes = g.to_bytes();
    let file = GraphFile {
        file: name.into(),
        sha256: sha256_hex(&bytes),
    };
    (bytes, file)
}

impl BundleGraphs {
    /// The bundle these graphs make with `manifest`, as [`load_bundle`] would return it
    /// once [`write_bundle`] wrote it into `dir` (unsigned): for running it before
    /// anything is written.
    pub fn in_memory(&self, dir: &Path, manifest: &Manifest) -> VerifiedBundle {
        let (denoiser, denoiser_file) = encoded(DENOISER_FILE, &self.denoiser);
        let edit = self.edit.as_ref().map(|g| encoded(EDIT_FILE, g));
        let critic = self.critic.as_ref().map(|g| encoded(CRITIC_FILE, g));
        let mut manifest = manifest.clone();
        manifest.format_version = manifest.required_format();
        manifest.graphs = GraphFiles {
            denoiser: denoiser_file,
            edit: edit.as_ref().map(|(_, f)| f.clone()),
            critic: critic.as_ref().map(|(_, f)| f.clone()),
        };
        VerifiedBundle {
            dir: dir.to_path_buf(),
            manifest,
            denoiser,
            edit: edit.map(|(b, _)| b),
            critic: critic.map(|(b, _)| b),
            signed_by: None,
        }
    }
}

/// Writes a bundle into `dir` (created if needed). Every file is first written in full
/// to a temporary beside it; only then are they renamed into place, graphs first and
/// manifest last, so a reader never sees a manifest pointing at half-written graphs, and
/// a failure while writing (a full disk) leaves an earlier bundle there as it was. A
/// rename that fails part-way (rare: the data is written by then) can leave new graphs
/// beside the old manifest, which their hashes then refuse at load.
pub fn write_bundle(
    dir: &Path,
    manifest: &mut Manifest,
    graphs: &BundleGraphs,
    key: Option<&SigningKey>,
) -> Result<(), BundleError> {
    check_bundle_target(dir)?;
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    // (final name, temporary) of every file written so far.
    let mut staged: Vec<(PathBuf, PathBuf)> = vec![];
    let result = stage_bundle(dir, manifest, graphs, key, &mut staged);
    if let Err(e) = result {
        for (_, tmp) in &staged {
            let _ = fs::remove_file(tmp);
        }
        return Err(e);
    }
    // A stale signature from an earlier export must not survive next to a new manifest.
    let sig_path = dir.join(SIGNATURE_FILE);
    let mut renamed = 0;
    let moved = (|| {
        if sig_path.exists() {
            fs::remove_file(&sig_path).map_err(io_err(&sig_path))?;
        }
        for (path, tmp) in &staged {
            fs::rename(tmp, path).map_err(io_err(path))?;
            renamed += 1;
        }
        Ok(())
    })();
    if let Err(e) = moved {
        // The temporaries not yet renamed are ours: none is left behind.
        for (_, left) in &staged[renamed..] {
            let _ = fs::remove_file(left);
        }
        // The manifest in place without the signature that was to follow it would read
        // as a complete unsigned bundle (`bundle_complete`), published as such: taken
        // out, the directory reads as a write that did not complete.
        let manifest_in_place = staged[..renamed]
            .iter()
            .any(|(path, _)| path.ends_with(MANIFEST_FILE));
        let signature_left = staged[renamed..]
            .iter()
            .any(|(path, _)| path.ends_with(SIGNATURE_FILE));
        if manifest_in_place && signature_left {
            let _ = fs::remove_file(dir.join(MANIFEST_FILE));
        }
        return Err(e);
    }
    // Replacing an EXPO bundle with a BC one: the old edit and critic graphs would stay
    // beside a manifest that no longer lists them. Other files of the user's are kept.
    for (name, listed) in [
        (EDIT_FILE, manifest.graphs.edit.is_some()),
        (CRITIC_FILE, manifest.graphs.critic.is_some()),
    ] {
        let path = dir.join(name);
        if !listed && path.exists() {
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    // The renames and removals themselves, on disk. Every file was synced before its
    // rename; a filesystem that cannot sync a directory (EINVAL) is not an error.
    match fs::File::open(dir).and_then(|d| d.sync_all()) {
        Err(e) if e.raw_os_error() != Some(EINVAL) => Err(io_err(dir)(e)),
        _ => Ok(()),
    }
}

/// Writes every file of the bundle to its temporary in `dir`, in the order they are to
/// be renamed (graphs, manifest, signature), recording each in `staged`.
fn stage_bundle(
    dir: &Path,
    manifest: &mut Manifest,
    graphs: &BundleGraphs,
    key: Option<&SigningKey>,
    staged: &mut Vec<(PathBuf, PathBuf)>,
) -> Result<(), BundleError> {
    let mut write = |name: &str, bytes: &[u8]| -> Result<(), BundleError> {
        let tmp = dir.join(temporary_name(name));
        staged.push((dir.join(name), tmp.clone()));
        // On disk before the rename: after a power cut, a renamed file whose data never
        // reached the disk would be empty (the hash check refuses it, but the bundle is
        // lost).
        let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        std::io::Write::write_all(&mut f, bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))
    };
    let mut put = |name: &str, g: &ModelProto| -> Result<GraphFile, BundleError> {
        let (bytes, file) = encoded(name, g);
        write(name, &bytes)?;
        Ok(file)
    };
    manifest.format_version = manifest.required_format();
    let denoiser = put(DENOISER_FILE, &graphs.denoiser)?;
    let edit = graphs
        .edit
        .as_ref()
        .map(|g| put(EDIT_FILE, g))
        .transpose()?;
    let critic = graphs
        .critic
        .as_ref()
        .map(|g| put(CRITIC_FILE, g))
        .transpose()?;
    manifest.graphs = GraphFiles {
        denoiser,
        edit,
        critic,
    };
    let text = toml::to_string_pretty(manifest).map_err(|e| BundleError::Manifest {
        path: dir.join(MANIFEST_FILE),
        message: e.to_string(),
    })?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(BundleError::Manifest {
            path: dir.join(MANIFEST_FILE),
            message: format!(
                "{} bytes, more than the {MAX_MANIFEST_BYTES} a controller reads ({} \
                 observation and {} action values, whose names take {} bytes): shorten the \
                 names",
                text.len(),
                manifest.observation.dim,
                manifest.action.dim,
                (manifest.observation.names.iter())
                    .chain(&manifest.action.names)
                    .map(String::len)
                    .sum::<usize>()
            ),
        });
    }
    write(MANIFEST_FILE, text.as_bytes())?;
    if let Some(key) = key {
        let sig = key.sign(text.as_bytes());
        write(
            SIGNATURE_FILE,
            format!("{}\n", hex(&sig.to_bytes())).as_bytes(),
        )?;
    }
    Ok(())
}

/// What Linux answers when a filesystem cannot sync a directory (`EINVAL`; this crate
/// does not depend on libc).
const EINVAL: i32 = 22;

/// Whether the bundle directory `dir` holds a bundle whose [`write_bundle`] completed:
/// its signature in place, or its manifest without a signature still waiting beside it
/// (the renames put the manifest, then the signature, in place).
pub fn bundle_complete(dir: &Path) -> bool {
    dir.join(SIGNATURE_FILE).is_file()
        || (dir.join(MANIFEST_FILE).is_file() && !dir.join(temporary_name(SIGNATURE_FILE)).exists())
}

/// Where [`write_bundle`] writes the file `name` before renaming it into place.
fn temporary_name(name: &str) -> String {
    format!(".{name}.tmp")
}

/// Whether [`write_bundle`] may write into `dir`: it does not exist yet, is empty, holds
/// an earlier bundle (which is then replaced), or holds only what a killed write leaves
/// (temporaries, and files under the bundle's own names, which are replaced: a folder of
/// a user's own `denoiser.onnx` would be too). Commands that export at the end of long
/// work call it first, so a wrong `--bundle` is refused before the work.
pub fn check_bundle_target(dir: &Path) -> Result<(), BundleError> {
    // What a first write that was killed leaves (its temporaries, and the graphs it
    // renamed into place before its manifest) does not make it another directory: the
    // next write replaces them. (Those graphs made every later export refuse it.)
    let names = [
        DENOISER_FILE,
        EDIT_FILE,
        CRITIC_FILE,
        MANIFEST_FILE,
        SIGNATURE_FILE,
    ];
    let ours: Vec<String> = names
        .iter()
        .map(|n| temporary_name(n))
        .chain(names.iter().map(|n| n.to_string()))
        .collect();
    let holds_other_files = match fs::read_dir(dir) {
        Ok(entries) => {
            let mut others = entries.filter_map(|e| e.ok()).filter(|e| {
                !ours
                    .iter()
                    .any(|t| e.file_name().to_str() == Some(t.as_str()))
            });
            others.next().is_some() && !dir.join(MANIFEST_FILE).exists()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io_err(dir)(e)),
    };
    if holds_other_files {
        return Err(BundleError::NotABundleDir {
            path: dir.to_path_buf(),
        });
    }
    Ok(())
}

/// A bundle whose manifest, signature, hashes and graph shapes have been checked.
#[derive(Clone, Debug)]
pub struct VerifiedBundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub denoiser: Vec<u8>,
    pub edit: Option<Vec<u8>>,
    pub critic: Option<Vec<u8>>,
    /// Fingerprint ([`key_fingerprint`]) of the public key that signed it, as errors
    /// and `trainer keygen` name keys (`None` when loaded without checking a signature).
    pub signed_by: Option<String>,
}

/// Loads and verifies a bundle directory (see the module doc for the checks).
pub fn load_bundle(dir: &Path, trust: &Trust) -> Result<VerifiedBundle, BundleError> {
    let mpath = dir.join(MANIFEST_FILE);
    let text = read_capped(&mpath, MAX_MANIFEST_BYTES)?;
    // The signature first, over the bytes as read: nothing of a tampered manifest is
    // believed, not even its version (one edited to a newer format said "update the
    // controller" instead of "bad signature").
    let signed_by =
        match trust {
            Trust::AllowUnsigned => None,
            Trust::Key(key) => {
                let spath = dir.join(SIGNATURE_FILE);
                if !spath.exists() {
                    return Err(BundleError::Unsigned { path: spath });
                }
                let sig_text = String::from_utf8(read_capped(&spath, MAX_MANIFEST_BYTES)?)
                    .map_err(|e| BundleError::Io {
                        path: spath.clone(),
                        error: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                    })?;
                let bad = || BundleError::BadSignature {
                    path: spath.clone(),
                    key: key_fingerprint(key.as_bytes()),
                };
                // A file that is no signature at all (empty, cut short, edited by hand)
                // is named as such: "modified or signed by another key" sent the
                // operator after the wrong cause.
                let sig = unhex::<64>(&sig_text).ok_or_else(|| BundleError::Key {
                    path: spath.clone(),
                    message: {
                        let found = sig_text.trim().chars().count();
                        let what = if found == 128 {
                            "128 characters, not all of them hex digits".to_string()
                        } else {
                            format!("{found} characters")
                        };
                        format!(
                            "not a signature: expected 128 hex digits, found {what} (sign \
                             the bundle again with the trainer's --signing-key)"
                        )
                    },
                })?;
                let sig = Signature::from_bytes(&sig);
                if key.verify_strict(&text, &sig).is_err() {
                    // A secret key read as a public one (an unmarked file under another
                    // name): say so, rather than "signed by another key".
                    let as_secret = SigningKey::from_bytes(key.as_bytes()).verifying_key();
                    if as_secret.verify_strict(&text, &sig).is_ok() {
                        return Err(BundleError::SecretKeyTrusted {
                            path: spath.clone(),
                            key: key_fingerprint(key.as_bytes()),
                        });
                    }
                    return Err(bad());
                }
                Some(key_fingerprint(key.as_bytes()))
            }
        };
    let manifest_err = |message: String| BundleError::Manifest {
        path: mpath.clone(),
        message,
    };
    let text_str = std::str::from_utf8(&text).map_err(|e| manifest_err(e.to_string()))?;
    // Version first, from a loose parse: a newer format may have fields we do not know.
    let loose: toml::Table = toml::from_str(text_str).map_err(|e| manifest_err(e.to_string()))?;
    let version = match loose.get("format_version") {
        None => {
            return Err(manifest_err(
                "missing integer field `format_version`".into(),
            ));
        }
        Some(v) => v.as_integer().ok_or_else(|| {
            manifest_err(format!(
                "`format_version` must be an integer, found {} {v}",
                v.type_str()
            ))
        })?,
    };
    if version > FORMAT_VERSION as i64 {
        return Err(BundleError::NewerFormat {
            path: mpath,
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if version < 1 {
        return Err(manifest_err(format!(
            "format_version {version} is not a bundle format"
        )));
    }
    let manifest: Manifest = toml::from_str(text_str).map_err(|e| manifest_err(e.to_string()))?;
    check_manifest(&manifest).map_err(manifest_err)?;
    // `field` names the manifest entry, so an empty or outside name is refused by it
    // (an empty one read the bundle directory itself: "not a regular file").
    let read_graph = |g: &GraphFile, field: &str| -> Result<Vec<u8>, BundleError> {
        if g.file.is_empty()
            || g.file.contains('/')
            || g.file.contains('\\')
            || g.file.starts_with('.')
        {
            return Err(manifest_err(format!(
                "{field} = `{}` must be a plain file name inside the bundle",
                g.file
            )));
        }
        let path = dir.join(&g.file);
        let bytes = read_capped(&path, MAX_GRAPH_BYTES)?;
        let found = sha256_hex(&bytes);
        if found != g.sha256.to_ascii_lowercase() {
            return Err(BundleError::HashMismatch {
                path,
                expected: g.sha256.clone(),
                found,
            });
        }
        Ok(bytes)
    };
    let m = &manifest;
    let (od, ad) = (m.observation.dim, m.action.chunk_dim());
    let denoiser = read_graph(&m.graphs.denoiser, "graphs.denoiser.file")?;
    let denoiser_model = check_graph(
        &dir.join(&m.graphs.denoiser.file),
        &denoiser,
        &[
            (names::OBS, DATA_TYPE_FLOAT, vec![None, Some(od)]),
            (names::NOISY_ACTION, DATA_TYPE_FLOAT, vec![None, Some(ad)]),
            (names::TIME, DATA_TYPE_FLOAT, vec![None, Some(1)]),
        ],
        &[(names::EPS, DATA_TYPE_FLOAT, vec![None, Some(ad)])],
    )?;
    check_weight_dims(
        &dir.join(&m.graphs.denoiser.file),
        &denoiser_model,
        &denoiser_weight_dims(m),
        &denoiser_constants(),
    )?;
    let edit = match (&m.graphs.edit, m.selection.num_edit) {
        (Some(g), _) => {
            let bytes = read_graph(g, "graphs.edit.file")?;
            let model = check_graph(
                &dir.join(&g.file),
                &bytes,
                &[
                    (names::OBS, DATA_TYPE_FLOAT, vec![None, Some(od)]),
                    (names::BASE_ACTION, DATA_TYPE_FLOAT, vec![None, Some(ad)]),
                ],
                &[
                    (names::MEAN, DATA_TYPE_FLOAT, vec![None, Some(ad)]),
                    (names::LOG_STD, DATA_TYPE_FLOAT, vec![None, Some(ad)]),
                ],
            )?;
            // The head first: a graph of the other head lacks this one's constants too,
            // and the head's own error says which it has.
            check_log_std_head(&dir.join(&g.file), &model, m.networks.edit_log_std)?;
            check_weight_dims(
                &dir.join(&g.file),
                &model,
                &edit_weight_dims(m),
                &edit_constants(m),
            )?;
            Some(bytes)
        }
        (None, 0) => None,
        (None, n) => {
            return Err(manifest_err(format!(
                "selection.num_edit = {n} but graphs.edit is missing"
            )));
        }
    };
    let critic = match (&m.graphs.critic, m.selection.critic_subset) {
        (Some(g), _) => {
            let bytes = read_graph(g, "graphs.critic.file")?;
            let model = check_graph(
                &dir.join(&g.file),
                &bytes,
                &[
                    (names::OBS, DATA_TYPE_FLOAT, vec![None, Some(od)]),
                    (names::ACTION, DATA_TYPE_FLOAT, vec![None, Some(ad)]),
                    (names::MEMBERS, DATA_TYPE_INT64, vec![None]),
                ],
                &[(names::Q, DATA_TYPE_FLOAT, vec![None, None])],
            )?;
            check_critic_members(&dir.join(&g.file), &model, m.selection.ensemble_size)?;
            check_weight_dims(
                &dir.join(&g.file),
                &model,
                &critic_weight_dims(m),
                &critic_constants(m),
            )?;
            Some(bytes)
        }
        (None, 0) => None,
        (None, k) => {
            return Err(manifest_err(format!(
                "selection.critic_subset = {k} but graphs.critic is missing"
            )));
        }
    };
    Ok(VerifiedBundle {
        dir: dir.to_path_buf(),
        manifest,
        denoiser,
        edit,
        critic,
        signed_by,
    })
}

/// The size caps on vectors, on the candidate buffer and on the chunks temporal
/// ensembling keeps ([`MAX_DIM`], [`MAX_CANDIDATE_VALUES`]; `num_samples` and `horizon` are capped by their own
/// checks). The trainer checks them before it trains, so that it never
/// exports a bundle every controller refuses.
pub fn check_policy_sizes(
    obs_dim: usize,
    action_dim: usize,
    horizon: usize,
    num_samples: usize,
) -> Result<(), String> {
    for (name, dim) in [("observation.dim", obs_dim), ("action.dim", action_dim)] {
        if dim > MAX_DIM {
            return Err(format!("{name} = {dim} exceeds {MAX_DIM}"));
        }
        if dim == 0 {
            return Err(format!("{name} = 0: a policy needs at least one value"));
        }
    }
    // num_samples and horizon have caps of their own, named by their own checks.
    if num_samples > MAX_SAMPLES || horizon > MAX_HORIZON {
        return Ok(());
    }
    let values = num_samples
        .saturating_mul(horizon)
        .saturating_mul(action_dim);
    if values > MAX_CANDIDATE_VALUES {
        return Err(format!(
            "num_samples × horizon × action.dim = {num_samples} × {horizon} × {action_dim} \
             = {values} values per decision exceeds {MAX_CANDIDATE_VALUES}"
        ));
    }
    // The controller's temporal ensembling keeps the last `horizon` chunks: H × H × A
    // values, which the cap above left unbounded (64 × 64 × 65,536 is 2^28, a GiB).
    let kept = horizon.saturating_mul(horizon).saturating_mul(action_dim);
    if kept > MAX_CANDIDATE_VALUES {
        return Err(format!(
            "horizon × horizon × action.dim = {horizon} × {horizon} × {action_dim} = {kept} \
             values (the chunks temporal ensembling keeps) exceeds {MAX_CANDIDATE_VALUES}"
        ));
    }
    Ok(())
}

/// The caps on activation buffers ([`MAX_ACTIVATION_VALUES`]): `rows` candidates per
/// decision through layers of `widths` and of `critic_widths` (the latter in each of
/// `critics` members). The trainer checks them before it trains, as
/// [`check_policy_sizes`].
pub fn check_activation_sizes(
    rows: usize,
    widths: impl IntoIterator<Item = usize>,
    critics: usize,
    critic_widths: &[usize],
) -> Result<(), String> {
    let critic_widest = critic_widths.iter().copied().max().unwrap_or(0);
    let widest = widths.into_iter().max().unwrap_or(0).max(critic_widest);
    let values = rows.saturating_mul(widest);
    if values > MAX_ACTIVATION_VALUES {
        return Err(format!(
            "num_samples + num_edit = {rows} candidates through a layer {widest} wide hold \
             {values} values per decision; at most {MAX_ACTIVATION_VALUES}"
        ));
    }
    let values = critics.saturating_mul(rows).saturating_mul(critic_widest);
    if values > MAX_ACTIVATION_VALUES {
        return Err(format!(
            "{critics} critics × {rows} candidates through a layer {critic_widest} wide hold \
             {values} values per decision; at most {MAX_ACTIVATION_VALUES}"
        ));
    }
    Ok(())
}

/// Internal consistency of the manifest's numbers.
fn check_manifest(m: &Manifest) -> Result<(), String> {
    let o = &m.observation;
    // First, so that a huge dim is named as such rather than as a list of the wrong length.
    check_policy_sizes(
        o.dim,
        m.action.dim,
        m.action.horizon,
        m.selection.num_samples,
    )?;
    for (name, v) in [
        ("observation.names", o.names.len()),
        ("observation.low", o.low.len()),
        ("observation.high", o.high.len()),
        ("observation.mean", o.mean.len()),
        ("observation.std", o.std.len()),
    ] {
        if v != o.dim {
            return Err(format!(
                "{name} has {v} entries, observation.dim is {}",
                o.dim
            ));
        }
    }
    if let Some(i) = (0..o.dim).find(|&i| !(o.std[i].is_finite() && o.std[i] >= MIN_OBS_STD)) {
        return Err(format!(
            "observation.std[{i}] = {} must be finite and at least {MIN_OBS_STD} (the \
             trainer's floor)",
            o.std[i]
        ));
    }
    if let Some(i) = (0..o.dim).find(|&i| !o.mean[i].is_finite()) {
        return Err(format!(
            "observation.mean[{i}] = {} must be finite",
            o.mean[i]
        ));
    }
    // Bounds may be infinite (an unbounded channel), not NaN or inverted.
    if let Some(i) = (0..o.dim).find(|&i| {
        !matches!(
            o.low[i].partial_cmp(&o.high[i]),
            Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
        )
    }) {
        return Err(if o.low[i].is_nan() || o.high[i].is_nan() {
            format!(
                "observation.low[{i}] = {}, observation.high[{i}] = {}: a bound is not a number",
                o.low[i], o.high[i]
            )
        } else {
            format!(
                "observation.low[{i}] = {} must not be above observation.high[{i}] = {}",
                o.low[i], o.high[i]
            )
        });
    }
    if !KNOWN_ALGOS.contains(&m.algo.as_str()) {
        return Err(format!(
            "algo `{}` is not one this controller acts for ({})",
            m.algo,
            KNOWN_ALGOS.join(", ")
        ));
    }
    let a = &m.action;
    for (name, bounds) in [("low", &a.low), ("high", &a.high)] {
        if bounds.len() != a.dim {
            return Err(format!(
                "action.{name} has {} entries; action.dim is {}",
                bounds.len(),
                a.dim
            ));
        }
    }
    // Within [-1, 1]: the controller clamps every action to them, in policy units (the
    // firmware maps those to the joints; the trainer writes ±1). An infinite bound would
    // clamp nothing, and one past 1 reads as a raw range the policy never reaches.
    if let Some(i) = (0..a.dim).find(|&i| {
        !((-1.0..=1.0).contains(&a.low[i])
            && (-1.0..=1.0).contains(&a.high[i])
            && a.low[i] < a.high[i])
    }) {
        return Err(format!(
            "action.low[{i}] = {} and action.high[{i}] = {} must be within [-1, 1] (policy \
             units; the firmware maps them to the joints), low below high",
            a.low[i], a.high[i]
        ));
    }
    if !(1..=MAX_HORIZON).contains(&a.horizon) {
        return Err(format!(
            "action.horizon = {} must be in 1..={MAX_HORIZON}",
            a.horizon
        ));
    }
    if a.horizon > 1 && m.format_version < 2 {
        return Err(format!(
            "action.horizon = {} needs format_version 2 (found {})",
            a.horizon, m.format_version
        ));
    }
    if !a.names.is_empty() {
        if a.names.len() != a.dim {
            return Err(format!(
                "action.names has {} entries, action.dim is {} (or none: not recorded)",
                a.names.len(),
                a.dim
            ));
        }
        if let Some(i) = a.names.iter().position(|n| n.is_empty()) {
            return Err(format!("action.names[{i}] is empty"));
        }
        if m.format_version < 6 {
            return Err(format!(
                "action.names needs format_version 6 (found {})",
                m.format_version
            ));
        }
    }
    if !a.robot_scale.is_empty() || !a.robot_offset.is_empty() {
        for (what, v) in [
            ("robot_scale", &a.robot_scale),
            ("robot_offset", &a.robot_offset),
        ] {
            if v.len() != a.dim {
                return Err(format!(
                    "action.{what} has {} entries, action.dim is {} (action.robot_scale and \
                     action.robot_offset come together, or neither: not recorded)",
                    v.len(),
                    a.dim
                ));
            }
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(format!("action.{what}[{i}] = {} is not finite", v[i]));
            }
        }
        if let Some(i) = a.robot_scale.iter().position(|&x| x == 0.0) {
            return Err(format!(
                "action.robot_scale[{i}] is 0 (no robot file maps an action so)"
            ));
        }
        if m.format_version < 7 {
            return Err(format!(
                "action.robot_scale and action.robot_offset need format_version 7 (found {})",
                m.format_version
            ));
        }
    }
    if let Some(hz) = a.control_hz {
        if hz == 0 {
            return Err("action.control_hz = 0: a rate must be above zero".into());
        }
        if m.format_version < 5 {
            return Err(format!(
                "action.control_hz = {hz} needs format_version 5 (found {})",
                m.format_version
            ));
        }
    }
    if !m.networks.edit_log_std.is_tanh() && m.format_version < 4 {
        return Err(format!(
            "networks.edit_log_std = \"clip\" needs format_version 4 (found {})",
            m.format_version
        ));
    }
    if a.replan_every != 0 {
        crate::ChunkPlay::new(a.horizon, a.replan_every)
            .map_err(|e| format!("action.replan_every: {e}"))?;
        if m.format_version < 3 {
            return Err(format!(
                "action.replan_every = {} needs format_version 3 (found {})",
                a.replan_every, m.format_version
            ));
        }
    }
    let d = &m.diffusion;
    if d.schedule != "vp" {
        return Err(format!(
            "diffusion.schedule `{}` is not supported (only `vp`)",
            d.schedule
        ));
    }
    // As the trainer's config requires.
    if !(d.beta_min.is_finite()
        && d.beta_max.is_finite()
        && 0.0 < d.beta_min
        && d.beta_min <= d.beta_max)
    {
        return Err(format!(
            "diffusion: need 0 < beta_min <= beta_max, finite (got {} and {})",
            d.beta_min, d.beta_max
        ));
    }
    if d.trained_steps > MAX_DIFFUSION_STEPS {
        return Err(format!(
            "diffusion.trained_steps = {} exceeds {MAX_DIFFUSION_STEPS}",
            d.trained_steps
        ));
    }
    if d.trained_steps == 0 {
        return Err("diffusion.trained_steps = 0: a chain has at least 1 step".into());
    }
    if d.executed_steps == 0 || d.executed_steps > d.trained_steps {
        return Err(format!(
            "diffusion.executed_steps = {} must be in 1..={} (trained_steps)",
            d.executed_steps, d.trained_steps
        ));
    }
    if let Some(why) =
        crate::schedule::DiffusionSchedule::vp(d.trained_steps, d.beta_min, d.beta_max).degenerate()
    {
        return Err(format!(
            "diffusion (beta_min {}, beta_max {}, {} steps): {why}",
            d.beta_min, d.beta_max, d.trained_steps
        ));
    }
    let s = &m.selection;
    if s.num_samples > MAX_SAMPLES || s.ensemble_size > MAX_ENSEMBLE {
        return Err(format!(
            "selection: num_samples = {} and ensemble_size = {} must be at most \
             {MAX_SAMPLES} and {MAX_ENSEMBLE}",
            s.num_samples, s.ensemble_size
        ));
    }
    if s.num_samples == 0 || s.num_edit > s.num_samples {
        return Err(format!(
            "selection: need num_samples ≥ 1 and num_edit ≤ num_samples (got {} and {})",
            s.num_samples, s.num_edit
        ));
    }
    if s.critic_subset > s.ensemble_size {
        return Err(format!(
            "selection.critic_subset = {} exceeds ensemble_size = {}",
            s.critic_subset, s.ensemble_size
        ));
    }
    if !(s.edit_scale.is_finite() && s.edit_scale >= 0.0) {
        return Err(format!(
            "selection.edit_scale = {} must be finite and not negative",
            s.edit_scale
        ));
    }
    if s.num_edit > 0 && s.edit_scale > MAX_EDIT_SCALE {
        return Err(format!(
            "selection.edit_scale = {} must be at most {MAX_EDIT_SCALE} (an edit of 2 already \
             crosses the whole action range)",
            s.edit_scale
        ));
    }
    // As the trainer's config requires: edits that are never scored, or that copy their
    // base sample, would be loaded and run for nothing.
    if s.num_edit > 0 && s.critic_subset == 0 {
        return Err(format!(
            "selection.num_edit = {} but critic_subset = 0: without a critic the controller \
             acts with the first base sample and never uses an edit",
            s.num_edit
        ));
    }
    if s.num_edit > 0 && s.edit_scale == 0.0 {
        return Err(format!(
            "selection.num_edit = {} but edit_scale = 0: every edit would copy its base sample",
            s.num_edit
        ));
    }
    check_network_sizes(&m.networks, m.graphs.edit.is_some())?;
    let n = &m.networks;
    let critics = if m.graphs.critic.is_some() {
        s.ensemble_size
    } else {
        0
    };
    check_activation_sizes(
        s.num_samples + s.num_edit,
        [
            n.denoiser_hidden,
            n.denoiser_expanded,
            n.time_hidden,
            n.fourier_features,
        ]
        .into_iter()
        .chain(n.edit_widths.iter().copied()),
        critics,
        &n.critic_widths,
    )?;
    // The edit graph's first layer reads [obs, base_action] ahead of a separate head.
    if s.num_edit > 0 && m.networks.edit_widths.is_empty() {
        return Err(format!(
            "selection.num_edit = {} but networks.edit_widths is empty: the edit policy \
             needs at least one hidden layer",
            s.num_edit
        ));
    }
    Ok(())
}

/// The network sizes' ranges, as the trainer's config has them: checked before any
/// list of weight shapes is built from them (a count of 2^40 blocks would abort the
/// process on that allocation). An edit graph needs a hidden layer whatever `num_edit`.
fn check_network_sizes(n: &NetworkSpec, edit_graph: bool) -> Result<(), String> {
    for (key, width) in [
        ("networks.denoiser_hidden", n.denoiser_hidden),
        ("networks.denoiser_expanded", n.denoiser_expanded),
        ("networks.time_hidden", n.time_hidden),
        ("networks.fourier_features", n.fourier_features),
    ] {
        if !(1..=MAX_NET_WIDTH).contains(&width) {
            return Err(format!("{key} must be in 1..={MAX_NET_WIDTH}, not {width}"));
        }
    }
    if !n.fourier_features.is_multiple_of(2) {
        return Err(format!(
            "networks.fourier_features must be even (half cosines, half sines), not {}",
            n.fourier_features
        ));
    }
    if n.denoiser_blocks > MAX_NET_LAYERS {
        return Err(format!(
            "networks.denoiser_blocks must be at most {MAX_NET_LAYERS}, not {}",
            n.denoiser_blocks
        ));
    }
    for (key, widths) in [
        ("networks.critic_widths", &n.critic_widths),
        ("networks.edit_widths", &n.edit_widths),
    ] {
        if widths.len() > MAX_NET_LAYERS {
            return Err(format!(
                "{key} may name at most {MAX_NET_LAYERS} hidden layers, not {}",
                widths.len()
            ));
        }
        if let Some(i) = widths.iter().position(|w| !(1..=MAX_NET_WIDTH).contains(w)) {
            return Err(format!(
                "{key}[{i}] must be in 1..={MAX_NET_WIDTH}, not {}",
                widths[i]
            ));
        }
    }
    if edit_graph && n.edit_widths.is_empty() {
        return Err(
            "networks.edit_widths is empty but the bundle lists an edit graph, whose first \
             layer is a hidden one"
                .into(),
        );
    }
    Ok(())
}

/// The `algo` values of bundles the trainer exports (RLPD's Gaussian actor is not
/// exported).
const KNOWN_ALGOS: [&str; 3] = ["expo", "bc", "idql-select"];

type IoSpec = (&'static str, i32, Vec<Option<usize>>);

/// An ONNX element type as our messages write it (`TensorProto.DataType`); types we
/// never use by their number, so a float64 output is not reported as the f32 expected.
fn element_type_name(t: i32) -> String {
    match t {
        DATA_TYPE_FLOAT => "f32".into(),
        DATA_TYPE_INT64 => "i64".into(),
        6 => "i32".into(),
        10 => "f16".into(),
        11 => "f64".into(),
        16 => "bf16".into(),
        other => format!("elem_type {other}"),
    }
}

/// Decodes a graph and checks its inputs/outputs (names, element types, fixed dims) and
/// that every float weight is finite; returns the decoded model.
fn check_graph(
    path: &Path,
    bytes: &[u8],
    inputs: &[IoSpec],
    outputs: &[IoSpec],
) -> Result<ModelProto, BundleError> {
    let model = ModelProto::from_bytes(bytes).map_err(|e| BundleError::Onnx {
        path: path.into(),
        message: e.to_string(),
    })?;
    let graph = model.graph.as_ref().ok_or_else(|| BundleError::Onnx {
        path: path.into(),
        message: "model has no graph".into(),
    })?;
    let fmt = |t: i32, d: &[Option<usize>]| {
        let dims: Vec<String> = d
            .iter()
            .map(|x| x.map_or("?".into(), |n| n.to_string()))
            .collect();
        format!("{}[{}]", element_type_name(t), dims.join(", "))
    };
    for (kind, declared, wanted) in [
        ("input", &graph.input, inputs),
        ("output", &graph.output, outputs),
    ] {
        for (name, ty, dims) in wanted {
            let found =
                declared
                    .iter()
                    .find(|v| v.name == *name)
                    .ok_or_else(|| BundleError::Shape {
                        path: path.into(),
                        what: format!("{kind} `{name}`"),
                        expected: fmt(*ty, dims),
                        found: "no such input/output".into(),
                    })?;
            let (fty, fdims) = found.dims().ok_or_else(|| BundleError::Onnx {
                path: path.into(),
                message: format!("{kind} `{name}` has no tensor type"),
            })?;
            // `None` in the expectation is a batch axis, which the graph must leave
            // symbolic: the runtime feeds its own row counts, and tract ran a graph
            // declared for 8 rows at 4 without a word.
            let ok = fty == *ty && fdims.len() == dims.len() && dims == &fdims;
            if !ok {
                return Err(BundleError::Shape {
                    path: path.into(),
                    what: format!("{kind} `{name}`"),
                    expected: fmt(*ty, dims),
                    found: fmt(fty, &fdims),
                });
            }
        }
        // tract and ort pass tensors by position: the declared order must be ours
        // (two inputs of one width would otherwise be swapped without a word).
        let found: Vec<&str> = declared.iter().map(|v| v.name.as_str()).collect();
        let expected: Vec<&str> = wanted.iter().map(|w| w.0).collect();
        if found != expected {
            return Err(BundleError::Shape {
                path: path.into(),
                what: format!("{kind}s, in order"),
                expected: expected.join(", "),
                found: found.join(", "),
            });
        }
    }
    for t in &graph.initializer {
        let Some(declared) = t.num_elements() else {
            return Err(BundleError::Onnx {
                path: path.into(),
                message: format!(
                    "weight `{}` has dims {:?}: negative, or more elements than memory holds",
                    t.name, t.dims
                ),
            });
        };
        if t.data_type == crate::onnx::DATA_TYPE_FLOAT
            && !t.raw_data.is_empty()
            && !t.raw_data.len().is_multiple_of(4)
        {
            return Err(BundleError::Onnx {
                path: path.into(),
                message: format!(
                    "weight `{}` has {} bytes of f32 data, not a multiple of 4",
                    t.name,
                    t.raw_data.len()
                ),
            });
        }
        if let Some(values) = t.floats() {
            if values.len() != declared {
                return Err(BundleError::Onnx {
                    path: path.into(),
                    message: format!(
                        "weight `{}` has {} values for dims {:?}",
                        t.name,
                        values.len(),
                        t.dims
                    ),
                });
            }
            if let Some(index) = values.iter().position(|x| !x.is_finite()) {
                return Err(BundleError::NonFinite {
                    path: path.into(),
                    tensor: t.name.clone(),
                    index,
                });
            }
        }
    }
    Ok(model)
}

/// A weight the manifest's `networks` sizes imply: `Some(dims)` that it must have, or
/// `None` that it must not exist (a layer past the declared depth).
type WeightDims = (String, Option<Vec<usize>>);

/// The denoiser weights `networks` implies (as `graphs::denoiser_graph` names them).
fn denoiser_weight_dims(m: &Manifest) -> Vec<WeightDims> {
    let n = &m.networks;
    let (o, a) = (m.observation.dim, m.action.chunk_dim());
    let (h, x, th) = (n.denoiser_hidden, n.denoiser_expanded, n.time_hidden);
    let mut v: Vec<WeightDims> = vec![
        ("fourier".into(), Some(vec![1, n.fourier_features / 2])),
        ("two_pi".into(), Some(vec![])),
        ("time_in.weight".into(), Some(vec![n.fourier_features, th])),
        ("time_in.bias".into(), Some(vec![th])),
        ("time_out.weight".into(), Some(vec![th, th])),
        ("time_out.bias".into(), Some(vec![th])),
        ("input_time.weight".into(), Some(vec![th, h])),
        ("input_time.bias".into(), None),
        ("input_obs.weight".into(), Some(vec![o, h])),
        ("input_obs.bias".into(), None),
        ("input_action.weight".into(), Some(vec![a, h])),
        ("input_action.bias".into(), Some(vec![h])),
        ("output.weight".into(), Some(vec![h, a])),
        ("output.bias".into(), Some(vec![a])),
    ];
    for i in 0..n.denoiser_blocks {
        // The matrices first: a wrong size is named by its matrix.
        v.push((format!("blocks.{i}.up.weight"), Some(vec![h, x])));
        v.push((format!("blocks.{i}.down.weight"), Some(vec![x, h])));
        v.push((format!("blocks.{i}.norm.gamma"), Some(vec![h])));
        v.push((format!("blocks.{i}.norm.beta"), Some(vec![h])));
        v.push((format!("blocks.{i}.up.bias"), Some(vec![x])));
        v.push((format!("blocks.{i}.down.bias"), Some(vec![h])));
    }
    v.push((format!("blocks.{}.up.weight", n.denoiser_blocks), None));
    v
}

/// The denoiser graph's constants and their values.
fn denoiser_constants() -> Vec<(String, f32)> {
    vec![("two_pi".into(), std::f32::consts::TAU)]
}

/// The edit policy's weights (`graphs::edit_graph`); `edit_widths` is not empty.
fn edit_weight_dims(m: &Manifest) -> Vec<WeightDims> {
    let w = &m.networks.edit_widths;
    let (o, a) = (m.observation.dim, m.action.chunk_dim());
    let last = *w.last().unwrap_or(&0);
    let mut v: Vec<WeightDims> = vec![
        ("layers.0.obs.weight".into(), Some(vec![o, w[0]])),
        ("layers.0.obs.bias".into(), None),
        ("layers.0.action.weight".into(), Some(vec![a, w[0]])),
        ("layers.0.action.bias".into(), Some(vec![w[0]])),
        ("head.mean.weight".into(), Some(vec![last, a])),
        ("head.mean.bias".into(), Some(vec![a])),
        ("head.log_std.weight".into(), Some(vec![last, a])),
        ("head.log_std.bias".into(), Some(vec![a])),
    ];
    for i in 1..w.len() {
        v.push((format!("layers.{i}.weight"), Some(vec![w[i - 1], w[i]])));
        v.push((format!("layers.{i}.bias"), Some(vec![w[i]])));
    }
    v.push((format!("layers.{}.weight", w.len()), None));
    v.extend(
        edit_constants(m)
            .into_iter()
            .map(|(c, _)| (c, Some(vec![]))),
    );
    v
}

/// The edit graph's constants (the log-std head's, by `networks.edit_log_std`) and their
/// values.
fn edit_constants(m: &Manifest) -> Vec<(String, f32)> {
    use crate::graphs::{LOG_STD_CLIP_MIN, LOG_STD_MAX, LOG_STD_MIN};
    match m.networks.edit_log_std {
        LogStdHead::Tanh => vec![
            ("one".into(), 1.0),
            (
                "half_log_std_range".into(),
                0.5 * (LOG_STD_MAX - LOG_STD_MIN),
            ),
            ("log_std_min".into(), LOG_STD_MIN),
        ],
        LogStdHead::Clip => vec![
            ("log_std_clip_min".into(), LOG_STD_CLIP_MIN),
            ("log_std_max".into(), LOG_STD_MAX),
        ],
    }
}

/// The critic ensemble's weights (`graphs::critic_graph`): hidden widths, then Q.
fn critic_weight_dims(m: &Manifest) -> Vec<WeightDims> {
    let e = m.selection.ensemble_size;
    let (o, a) = (m.observation.dim, m.action.chunk_dim());
    let w: Vec<usize> = m
        .networks
        .critic_widths
        .iter()
        .copied()
        .chain([1])
        .collect();
    let mut v: Vec<WeightDims> = vec![
        ("layers.0.obs.weight".into(), Some(vec![e, o, w[0]])),
        ("layers.0.action.weight".into(), Some(vec![e, a, w[0]])),
        ("squeeze_axes".into(), Some(vec![1])),
    ];
    for i in 1..w.len() {
        v.push((format!("layers.{i}.weight"), Some(vec![e, w[i - 1], w[i]])));
    }
    for (i, &width) in w.iter().enumerate() {
        v.push((format!("layers.{i}.bias"), Some(vec![e, 1, width])));
    }
    // A layer norm after every hidden layer (not after Q).
    for (i, &width) in w[..w.len() - 1].iter().enumerate() {
        v.push((format!("norms.{i}.gamma"), Some(vec![e, 1, width])));
        v.push((format!("norms.{i}.beta"), Some(vec![e, 1, width])));
        v.push((format!("norms.{i}.unit"), Some(vec![width])));
        v.push((format!("norms.{i}.zero"), Some(vec![width])));
    }
    v.push((format!("layers.{}.weight", w.len()), None));
    v
}

/// The critic graph's constants and their values: each layer norm's unit scale and zero
/// shift (the per-member ones are applied after it), and the axis `Squeeze` removes.
fn critic_constants(m: &Manifest) -> Vec<(String, f32)> {
    let mut v: Vec<(String, f32)> = vec![("squeeze_axes".into(), 2.0)];
    for i in 0..m.networks.critic_widths.len() {
        v.push((format!("norms.{i}.unit"), 1.0));
        v.push((format!("norms.{i}.zero"), 0.0));
    }
    v
}

/// The graph's weights have the sizes the manifest's `networks` declares, so that the
/// figures computed from them (FLOPs and weights per action) describe the graphs on
/// every backend (the native backend also refuses a mismatch when it packs them); the
/// graph holds no other tensor, and its `constants` hold their values. Biases, norm
/// parameters and constants were not checked: tract ran a scalar bias broadcast over a
/// layer, or a `two_pi` of 1, which the native backend refused (one bundle, two
/// behaviours).
fn check_weight_dims(
    path: &Path,
    model: &ModelProto,
    expected: &[WeightDims],
    constants: &[(String, f32)],
) -> Result<(), BundleError> {
    let graph = model.graph.as_ref().expect("checked by check_graph");
    let fmt = |d: &[usize]| {
        let d: Vec<String> = d.iter().map(usize::to_string).collect();
        format!("[{}]", d.join(", "))
    };
    for (name, dims) in expected {
        let found = graph.initializer.iter().find(|t| t.name == *name);
        let shape_err = |found: String| BundleError::Shape {
            path: path.into(),
            what: format!("weight `{name}` (manifest `networks`)"),
            expected: dims.as_deref().map_or("no such weight".into(), fmt),
            found,
        };
        match (found, dims) {
            (Some(t), Some(d)) => {
                let same =
                    t.dims.len() == d.len() && t.dims.iter().zip(d).all(|(&f, &w)| f == w as i64);
                if !same {
                    return Err(shape_err(format!("dims {:?}", t.dims)));
                }
            }
            (None, Some(_)) => return Err(shape_err("no such weight".into())),
            (Some(t), None) => return Err(shape_err(format!("dims {:?}", t.dims))),
            (None, None) => {}
        }
    }
    // Nothing else: tract and ort run every node as written, where the native backend
    // computes the network the manifest describes and refuses what it does not read.
    // Each tensor once (a second of one name, checked by none of the above, could be the
    // one a runtime takes), f32 but for the critic's axes, and no `Constant` node (the
    // writer makes none: a tensor there would escape these checks).
    let onnx_err = |message: String| BundleError::Onnx {
        path: path.into(),
        message,
    };
    let mut seen = std::collections::HashSet::new();
    for t in &graph.initializer {
        if !expected
            .iter()
            .any(|(name, dims)| dims.is_some() && *name == t.name)
        {
            return Err(onnx_err(format!(
                "weight `{}` is not part of the network the manifest describes",
                t.name
            )));
        }
        if !seen.insert(t.name.as_str()) {
            return Err(onnx_err(format!("weight `{}` is given twice", t.name)));
        }
        let want = if t.name == "squeeze_axes" {
            DATA_TYPE_INT64
        } else {
            DATA_TYPE_FLOAT
        };
        if t.data_type != want {
            return Err(onnx_err(format!(
                "weight `{}` has element type {}, expected {}",
                t.name,
                element_type_name(t.data_type),
                element_type_name(want)
            )));
        }
    }
    if let Some(n) = graph.node.iter().find(|n| n.op_type == "Constant") {
        return Err(onnx_err(format!(
            "node `{}` is a Constant, which this exporter never writes",
            n.name
        )));
    }
    for (name, value) in constants {
        let t = graph
            .initializer
            .iter()
            .find(|t| t.name == *name)
            .expect("a constant is in the expected weights, checked above");
        let values: Option<Vec<f32>> = match t.int64s() {
            Some(ints) => (Some(ints.len()) == t.num_elements())
                .then(|| ints.iter().map(|&x| x as f32).collect()),
            None => t.floats(),
        };
        if !values.is_some_and(|v| crate::onnx::holds_constant(&v, *value)) {
            return Err(onnx_err(format!(
                "constant `{name}` is not {value} throughout"
            )));
        }
    }
    Ok(())
}

/// The edit graph's `log_std` comes from the head the manifest's `networks.edit_log_std`
/// names: a `Clip` node for [`LogStdHead::Clip`], the squash after a `Tanh` for
/// [`LogStdHead::Tanh`]. tract and ort run the graph as written while the native backend
/// computes the manifest's head, so a bundle that disagrees would act differently per
/// backend (a tanh-head manifest over a clipped graph: a std of 1 instead of 0.22 at a
/// zero output under tract).
fn check_log_std_head(
    path: &Path,
    model: &ModelProto,
    head: LogStdHead,
) -> Result<(), BundleError> {
    let graph = model.graph.as_ref().expect("checked by check_graph");
    let producer = graph
        .node
        .iter()
        .find(|n| n.output.iter().any(|o| o == names::LOG_STD))
        .map(|n| n.op_type.as_str());
    // The head's nodes, from `log_std` back (`graphs::edit_graph`): `Clip(raw)`, or
    // `Add(Mul(Add(Tanh(raw), 1), ½ range), min)`.
    let found = if produced_by(graph, names::LOG_STD, &["Clip"]) {
        Some(LogStdHead::Clip)
    } else if produced_by(graph, names::LOG_STD, &["Add", "Mul", "Add", "Tanh"]) {
        Some(LogStdHead::Tanh)
    } else {
        None
    };
    if found == Some(head) {
        return Ok(());
    }
    let name = |h: LogStdHead| if h.is_tanh() { "tanh" } else { "clip" };
    Err(BundleError::Shape {
        path: path.into(),
        what: "the edit policy's log-std head (manifest `networks.edit_log_std`)".into(),
        expected: name(head).into(),
        found: match (found, producer) {
            (Some(h), Some(op)) => format!("{} (`{}` made by `{op}`)", name(h), names::LOG_STD),
            (_, op) => format!("`{}` made by `{}`", names::LOG_STD, op.unwrap_or("no node")),
        },
    })
}

/// Whether `value` is made by a node of op `ops[0]`, one of whose inputs is made by a
/// node of op `ops[1]`, and so on.
fn produced_by(graph: &crate::onnx::GraphProto, value: &str, ops: &[&str]) -> bool {
    let Some((op, rest)) = ops.split_first() else {
        return true;
    };
    graph
        .node
        .iter()
        .find(|n| n.output.iter().any(|o| o == value))
        .is_some_and(|n| {
            n.op_type == *op
                && (rest.is_empty() || n.input.iter().any(|i| produced_by(graph, i, rest)))
        })
}

/// Every weight that the critic graph gathers by member (`members`) must hold
/// `selection.ensemble_size` members on its leading axis. The controller draws its
/// critic subsets from that many; a graph of more members would silently leave the
/// others out (tract), and one of fewer would fail inside the graph on a member id.
fn check_critic_members(
    path: &Path,
    model: &ModelProto,
    ensemble_size: usize,
) -> Result<(), BundleError> {
    let graph = model.graph.as_ref().expect("checked by check_graph");
    let gathered: Vec<&str> = graph
        .node
        .iter()
        .filter(|n| {
            n.op_type == "Gather" && n.input.get(1).map(String::as_str) == Some(names::MEMBERS)
        })
        .filter_map(|n| n.input.first().map(String::as_str))
        .collect();
    let mut checked = 0;
    for t in graph
        .initializer
        .iter()
        .filter(|t| gathered.contains(&t.name.as_str()))
    {
        if t.dims.first() != Some(&(ensemble_size as i64)) {
            return Err(BundleError::Shape {
                path: path.into(),
                what: format!("per-member weight `{}`'s member axis", t.name),
                expected: format!("{ensemble_size} (selection.ensemble_size)"),
                found: format!("dims {:?}", t.dims),
            });
        }
        checked += 1;
    }
    if checked == 0 {
        return Err(BundleError::Onnx {
            path: path.into(),
            message: format!(
                "no weight is gathered by `{}`: not a critic ensemble graph",
                names::MEMBERS
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::SyntheticSpec;

    /// A manifest at the widest observation and action, with a dataset's default names
    /// and statistics that need every digit, fits what a controller reads: the cap
    /// (1 MiB) refused any bundle of more than about 9,000 observation values, after
    /// training had taken them.
    #[test]
    fn a_manifest_at_the_widest_vectors_fits_the_cap() {
        let t = tempfile::tempdir().unwrap();
        let mut m = SyntheticSpec::cpu().write(t.path(), 1, None).unwrap();
        let digits = |i: usize| -1.234_567_9e-5 * (1.0 + i as f32 / MAX_DIM as f32);
        m.observation = ObservationSpec {
            dim: MAX_DIM,
            names: (0..MAX_DIM)
                .map(|i| format!("observation.state.{i}"))
                .collect(),
            low: (0..MAX_DIM).map(digits).collect(),
            high: (0..MAX_DIM).map(|i| -digits(i)).collect(),
            mean: (0..MAX_DIM).map(digits).collect(),
            std: (0..MAX_DIM).map(|i| -digits(i)).collect(),
        };
        m.action.dim = MAX_DIM;
        m.action.low = (0..MAX_DIM).map(digits).collect();
        m.action.high = (0..MAX_DIM).map(|i| -digits(i)).collect();
        let len = toml::to_string_pretty(&m).unwrap().len() as u64;
        assert!(len <= MAX_MANIFEST_BYTES, "{len}");
    }

    /// The candidate buffer's cap holds at its edge: 1024 samples of 64 steps of 256
    /// values are 2^24 values, one more value per step is refused, by its sizes.
    #[test]
    fn policy_sizes_are_capped_by_the_candidate_buffer() {
        check_policy_sizes(17, 256, MAX_HORIZON, MAX_SAMPLES).unwrap();
        let e = check_policy_sizes(17, 257, MAX_HORIZON, MAX_SAMPLES).unwrap_err();
        assert!(e.contains("1024 × 64 × 257 = 16842752 values"), "{e}");
        let e = check_policy_sizes(MAX_DIM + 1, 1, 1, 1).unwrap_err();
        assert!(e.contains("observation.dim = 65537 exceeds 65536"), "{e}");
        // The chunks temporal ensembling keeps are capped too: one sample of 64 steps
        // of 65,536 values passed, and a controller blending them allocated a GiB.
        check_policy_sizes(17, 4096, MAX_HORIZON, 1).unwrap();
        let e = check_policy_sizes(17, MAX_DIM, MAX_HORIZON, 1).unwrap_err();
        assert!(
            e.contains("64 × 64 × 65536 = 268435456 values (the chunks temporal"),
            "{e}"
        );
    }

    fn message(e: BundleError) -> String {
        e.to_string()
    }

    /// A key path that names no regular file (a FIFO) is refused at once; reading it
    /// blocked forever.
    #[cfg(unix)]
    #[test]
    fn a_key_path_that_is_no_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("expo.pub");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let (tx, rx) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || {
            let _ = tx.send(Trust::from_public_key_file(&path).err().map(message));
        });
        // (A guard, not a timing: the old read never returned.)
        let e = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("reading a FIFO as a key blocked")
            .expect("a FIFO taken for a key");
        assert!(e.contains("not a regular file"), "{e}");
    }

    /// A manifest's error names the field at fault and what it holds: a NaN bound was
    /// said to be "above" the other, a short `action.high` was blamed on both lists, and
    /// a chain of 0 trained steps on `executed_steps`.
    #[test]
    fn manifest_errors_name_the_field_at_fault() {
        let t = tempfile::tempdir().unwrap();
        let good = SyntheticSpec::cpu().write(t.path(), 1, None).unwrap();
        let refused = |f: &dyn Fn(&mut Manifest)| {
            let mut m = good.clone();
            f(&mut m);
            check_manifest(&m).unwrap_err()
        };
        let e = refused(&|m| m.observation.low[1] = f32::NAN);
        assert!(
            e.contains("observation.low[1] = NaN") && e.contains("not a number"),
            "{e}"
        );
        let e = refused(&|m| m.action.high.push(1.0));
        let dim = good.action.dim;
        assert!(
            e.contains(&format!(
                "action.high has {} entries; action.dim is {dim}",
                dim + 1
            )),
            "{e}"
        );
        let e = refused(&|m| {
            m.diffusion.trained_steps = 0;
            m.diffusion.executed_steps = 1;
        });
        assert!(e.contains("diffusion.trained_steps = 0"), "{e}");
    }

    /// Signature and key files are hex digits only: a sign passed `from_str_radix`, so
    /// "+a" read as 0x0a and a garbled file for a valid one.
    #[test]
    fn hex_takes_digits_only() {
        assert_eq!(unhex::<1>("0a"), Some([10]));
        assert_eq!(unhex::<1>("+a"), None);
        assert_eq!(unhex::<2>("-1ff"), None);
        assert_eq!(unhex::<1>("é"), None);
    }

    /// Network sizes are checked before the weight shapes are listed from them: 2^40
    /// blocks exhausted memory building that list, and an empty `edit_widths` beside an
    /// edit graph panicked indexing it.
    #[test]
    fn network_sizes_a_loader_would_choke_on_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let good = SyntheticSpec::cpu().write(t.path(), 1, None).unwrap();
        check_manifest(&good).unwrap();
        let refused = |f: &dyn Fn(&mut Manifest)| {
            let mut m = good.clone();
            f(&mut m);
            check_manifest(&m).unwrap_err()
        };
        let e = refused(&|m| m.networks.denoiser_blocks = 1 << 40);
        assert!(
            e.contains("networks.denoiser_blocks must be at most 64"),
            "{e}"
        );
        let e = refused(&|m| m.networks.fourier_features = 15);
        assert!(e.contains("fourier_features must be even"), "{e}");
        let e = refused(&|m| m.networks.critic_widths[0] = 0);
        assert!(
            e.contains("networks.critic_widths[0] must be in 1..=65536"),
            "{e}"
        );
        let e = refused(&|m| {
            m.selection.num_edit = 0;
            m.networks.edit_widths.clear();
        });
        assert!(
            e.contains("edit_widths is empty but the bundle lists an edit graph"),
            "{e}"
        );
        // Each size within its cap, together 1.5 GiB of activations in the native
        // backend's buffers: refused by the product.
        let e = refused(&|m| {
            m.selection.num_samples = 1024;
            m.selection.num_edit = 1024;
            m.networks.denoiser_expanded = 65536;
        });
        assert!(
            e.contains("2048 candidates through a layer 65536 wide hold 134217728 values"),
            "{e}"
        );
        let e = refused(&|m| {
            m.selection.ensemble_size = 256;
            m.selection.num_samples = 1024;
            m.networks.critic_widths = vec![256];
        });
        assert!(e.contains("256 critics ×"), "{e}");
    }

    /// A graph file that is not a regular file (a symlink to `/dev/zero`), or larger
    /// than any bundle's (a sparse file), is refused before it is read: reading it
    /// whole to hash it never ended, or took all the memory.
    #[cfg(unix)]
    #[test]
    fn graph_files_that_are_no_files_or_too_large_are_refused_unread() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        let m = SyntheticSpec::cpu().write(dir, 1, None).unwrap();
        let denoiser = dir.join(&m.graphs.denoiser.file);
        fs::remove_file(&denoiser).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &denoiser).unwrap();
        let e = message(load_bundle(dir, &Trust::AllowUnsigned).unwrap_err());
        assert!(e.contains("not a regular file"), "{e}");
        fs::remove_file(&denoiser).unwrap();
        fs::File::create(&denoiser)
            .unwrap()
            .set_len(MAX_GRAPH_BYTES + 1)
            .unwrap();
        let e = message(load_bundle(dir, &Trust::AllowUnsigned).unwrap_err());
        assert!(
            e.contains("more than the 1073741824 a bundle file may have"),
            "{e}"
        );
    }

    /// A graph file name that is empty or reaches outside the bundle is refused by its
    /// field: an empty name read the bundle directory itself and said only "not a
    /// regular file", naming no field.
    #[test]
    fn graph_file_names_outside_the_bundle_are_refused_by_field() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        SyntheticSpec::cpu().write(dir, 1, None).unwrap();
        let text = fs::read_to_string(dir.join(MANIFEST_FILE)).unwrap();
        for (graph, name) in [
            (DENOISER_FILE, ""),
            (DENOISER_FILE, "../denoiser.onnx"),
            (CRITIC_FILE, "sub/critic.onnx"),
            (EDIT_FILE, ".edit.onnx"),
        ] {
            let from = format!("file = \"{graph}\"");
            assert!(text.contains(&from), "{text}");
            let changed = text.replace(&from, &format!("file = \"{name}\""));
            fs::write(dir.join(MANIFEST_FILE), changed).unwrap();
            let e = message(load_bundle(dir, &Trust::AllowUnsigned).unwrap_err());
            let field = format!("graphs.{}.file", graph.trim_end_matches(".onnx"));
            assert!(
                e.contains(&format!("{field} = `{name}` must be a plain file name")),
                "{e}"
            );
        }
    }

    /// A graph output of another element type is reported by its type: every type but
    /// i64 was written `f32`, so a float64 `eps` read "expected f32[?, 2], found f32[?, 2]".
    #[test]
    fn a_graph_output_of_another_element_type_is_named_by_its_type() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        SyntheticSpec::cpu().write(dir, 1, None).unwrap();
        let path = dir.join(DENOISER_FILE);
        let old = fs::read(&path).unwrap();
        let mut model = ModelProto::from_bytes(&old).unwrap();
        let outputs = &mut model.graph.as_mut().unwrap().output;
        let eps = outputs
            .iter_mut()
            .find(|v| v.name == crate::graphs::names::EPS);
        let tensor = eps.unwrap().r#type.as_mut().unwrap();
        tensor.tensor_type.as_mut().unwrap().elem_type = 11; // DOUBLE
        let new = model.to_bytes();
        fs::write(&path, &new).unwrap();
        let text = fs::read_to_string(dir.join(MANIFEST_FILE)).unwrap();
        let text = text.replace(&sha256_hex(&old), &sha256_hex(&new));
        fs::write(dir.join(MANIFEST_FILE), text).unwrap();
        let e = message(load_bundle(dir, &Trust::AllowUnsigned).unwrap_err());
        assert!(
            e.contains("expected f32[") && e.contains("found f64["),
            "{e}"
        );
    }

    /// Writing over an earlier bundle replaces it: graphs the new manifest does not list
    /// and the old signature go, the user's own files stay. A directory that holds
    /// something else is refused and left as it was.
    #[test]
    fn writing_over_a_bundle_replaces_it_and_other_directories_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("bundle");
        let key = SigningKey::from_bytes(&[7; 32]);
        SyntheticSpec::cpu().write(&dir, 1, Some(&key)).unwrap();
        for f in [EDIT_FILE, CRITIC_FILE, SIGNATURE_FILE] {
            assert!(dir.join(f).exists(), "{f}");
        }
        fs::write(dir.join("NOTES.txt"), "mine").unwrap();
        // A behaviour-cloning bundle: the denoiser only.
        let mut bc = SyntheticSpec::cpu();
        bc.selection.num_edit = 0;
        bc.selection.critic_subset = 0;
        bc.write(&dir, 2, None).unwrap();
        for f in [EDIT_FILE, CRITIC_FILE, SIGNATURE_FILE] {
            assert!(!dir.join(f).exists(), "{f} was left behind");
        }
        assert_eq!(fs::read_to_string(dir.join("NOTES.txt")).unwrap(), "mine");
        let loaded = load_bundle(&dir, &Trust::AllowUnsigned).unwrap();
        assert!(loaded.edit.is_none() && loaded.critic.is_none());

        let run = tmp.path().join("run");
        fs::create_dir(&run).unwrap();
        fs::write(run.join("config.toml"), "seed = 1").unwrap();
        let e = SyntheticSpec::cpu().write(&run, 1, None).err().unwrap();
        assert!(matches!(e, BundleError::NotABundleDir { .. }), "{e}");
        assert!(message(e).contains("new or empty directory"));
        let left: Vec<_> = fs::read_dir(&run)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["config.toml"]);
        // An empty directory that already exists is fine.
        let empty = tmp.path().join("empty");
        fs::create_dir(&empty).unwrap();
        SyntheticSpec::cpu().write(&empty, 1, None).unwrap();
        // So is one a first write left its temporaries in when it was killed (it used to
        // be refused as another directory on every retry); they are replaced.
        let killed = tmp.path().join("killed");
        fs::create_dir(&killed).unwrap();
        fs::write(killed.join(".denoiser.onnx.tmp"), "half").unwrap();
        fs::write(killed.join(".manifest.toml.tmp"), "half").unwrap();
        SyntheticSpec::cpu().write(&killed, 1, None).unwrap();
        load_bundle(&killed, &Trust::AllowUnsigned).unwrap();
        assert!(!killed.join(".denoiser.onnx.tmp").exists());
        // And one it was killed in after renaming graphs into place, before its manifest
        // (refused as another directory by every later export).
        let renamed = tmp.path().join("renamed");
        fs::create_dir(&renamed).unwrap();
        fs::write(renamed.join(DENOISER_FILE), "a graph").unwrap();
        fs::write(renamed.join(".manifest.toml.tmp"), "half").unwrap();
        SyntheticSpec::cpu().write(&renamed, 1, None).unwrap();
        load_bundle(&renamed, &Trust::AllowUnsigned).unwrap();
        // A temporary of another name is not ours.
        let other = tmp.path().join("other");
        fs::create_dir(&other).unwrap();
        fs::write(other.join(".notes.tmp"), "mine").unwrap();
        let e = SyntheticSpec::cpu().write(&other, 1, None).err().unwrap();
        assert!(matches!(e, BundleError::NotABundleDir { .. }), "{e}");
    }

    /// A write that fails part-way (here the signature's temporary cannot be created; a
    /// full disk in practice) leaves the earlier bundle in place, still verified by its
    /// key, and no temporaries. It used to have the new graphs renamed in beside the old
    /// manifest already, which then failed its hash check.
    #[test]
    fn a_failed_write_leaves_the_earlier_bundle_as_it_was() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("bundle");
        let key = SigningKey::from_bytes(&[7; 32]);
        SyntheticSpec::cpu().write(&dir, 1, Some(&key)).unwrap();
        let trust = Trust::Key(key.verifying_key());
        let before = load_bundle(&dir, &trust).unwrap().manifest;
        fs::create_dir(dir.join(format!(".{SIGNATURE_FILE}.tmp"))).unwrap();
        SyntheticSpec::cpu()
            .write(&dir, 2, Some(&key))
            .err()
            .unwrap();
        assert_eq!(load_bundle(&dir, &trust).unwrap().manifest, before);
        fs::remove_dir(dir.join(format!(".{SIGNATURE_FILE}.tmp"))).unwrap();
        assert_eq!(temporaries(&dir), Vec::<String>::new());
    }

    /// The names of the `.tmp` files in `dir`.
    fn temporaries(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    }

    /// A rename that fails part-way (here a directory where the critic graph goes)
    /// leaves none of the write's temporaries behind: the manifest's was left before.
    #[test]
    fn a_failed_rename_leaves_no_temporaries() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("bundle");
        SyntheticSpec::cpu().write(&dir, 1, None).unwrap();
        fs::remove_file(dir.join(CRITIC_FILE)).unwrap();
        fs::create_dir(dir.join(CRITIC_FILE)).unwrap();
        fs::write(dir.join(CRITIC_FILE).join("keep"), "x").unwrap();
        let e = SyntheticSpec::cpu().write(&dir, 2, None).err().unwrap();
        assert!(e.to_string().contains(CRITIC_FILE), "{e}");
        assert_eq!(temporaries(&dir), Vec::<String>::new());
    }

    /// Each key file is refused in the other's role, by its comment line or, for a
    /// file without one, by its extension; a secret key read as a trusted one under
    /// another name is recognised from the signature; no error prints a secret key.
    #[test]
    fn key_files_in_the_wrong_role_are_refused_without_printing_the_secret() {
        let tmp = tempfile::tempdir().unwrap();
        let (key_path, pub_path) = generate_key_pair(&tmp.path().join("expo")).unwrap();
        let key = read_signing_key(&key_path).unwrap();
        let secret = hex(&key.to_bytes());
        assert!(matches!(
            Trust::from_public_key_file(&pub_path).unwrap(),
            Trust::Key(k) if k == key.verifying_key()
        ));
        let e = message(Trust::from_public_key_file(&key_path).err().unwrap());
        assert!(e.contains("this is a secret signing key"), "{e}");
        assert!(!e.contains(&secret), "{e}");
        let e = message(read_signing_key(&pub_path).err().unwrap());
        assert!(e.contains("this is a public key"), "{e}");
        // A key not made or not copied yet: where it comes from.
        let missing = tmp.path().join("robot.pub");
        let e = message(Trust::from_public_key_file(&missing).err().unwrap());
        assert!(
            e.contains("robot.pub") && e.contains("no such key file: `trainer keygen"),
            "{e}"
        );
        // The comment line decides whatever the file is called.
        let renamed = tmp.path().join("robot-trust.txt");
        fs::copy(&key_path, &renamed).unwrap();
        let e = message(Trust::from_public_key_file(&renamed).err().unwrap());
        assert!(e.contains("this is a secret signing key"), "{e}");

        // Files written before the comment line: one line of hex, told apart by name.
        let old_key = tmp.path().join("old.key");
        let old_pub = tmp.path().join("old.pub");
        fs::write(&old_key, format!("{secret}\n")).unwrap();
        #[cfg(unix)]
        {
            // As written by hand: others may read it, and it is refused until chmod 600.
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&old_key, fs::Permissions::from_mode(0o644)).unwrap();
            let e = message(read_signing_key(&old_key).err().unwrap());
            assert!(
                e.contains("old.key") && e.contains("mode 644") && e.contains("chmod 600"),
                "{e}"
            );
            assert!(!e.contains(&secret), "{e}");
            fs::set_permissions(&old_key, fs::Permissions::from_mode(0o600)).unwrap();
        }
        fs::write(
            &old_pub,
            format!("{}\n", hex(key.verifying_key().as_bytes())),
        )
        .unwrap();
        assert_eq!(
            read_signing_key(&old_key).unwrap().to_bytes(),
            key.to_bytes()
        );
        assert!(Trust::from_public_key_file(&old_pub).is_ok());
        let e = message(Trust::from_public_key_file(&old_key).err().unwrap());
        assert!(e.contains("this is a secret signing key") && !e.contains(&secret));

        // keygen appends its suffixes, and overwrites neither half of a pair.
        let (k, p) = generate_key_pair(&tmp.path().join("robot.v2")).unwrap();
        assert_eq!(k, tmp.path().join("robot.v2.key"));
        assert_eq!(p, tmp.path().join("robot.v2.pub"));
        let (k2, _) = generate_key_pair(&tmp.path().join("other.key")).unwrap();
        assert_eq!(k2, tmp.path().join("other.key"));
        let trusted = fs::read(&pub_path).unwrap();
        fs::remove_file(&key_path).unwrap();
        let e = message(generate_key_pair(&tmp.path().join("expo")).err().unwrap());
        assert!(
            e.contains("expo.pub") && e.contains("already exists"),
            "{e}"
        );
        assert_eq!(fs::read(&pub_path).unwrap(), trusted);
        assert!(!key_path.exists());
        let e = message(read_signing_key(&old_pub).err().unwrap());
        assert!(e.contains("this is a public key"), "{e}");

        // An unmarked secret key under another name, given as the trusted key. About
        // half of all seeds are also valid public keys; take one that is, sign with it.
        let seed = (0u8..=255)
            .map(|b| [b; 32])
            .find(|s| VerifyingKey::from_bytes(s).is_ok())
            .unwrap();
        let signer = SigningKey::from_bytes(&seed);
        let bundle = tmp.path().join("bundle");
        SyntheticSpec::cpu()
            .write(&bundle, 3, Some(&signer))
            .unwrap();
        let misnamed = tmp.path().join("trusted.hex");
        fs::write(&misnamed, format!("{}\n", hex(&seed))).unwrap();
        let trust = Trust::from_public_key_file(&misnamed).unwrap();
        let e = load_bundle(&bundle, &trust).err().unwrap();
        assert!(matches!(e, BundleError::SecretKeyTrusted { .. }), "{e}");
        let e = message(e);
        assert!(
            e.contains("pass NAME.pub") && !e.contains(&hex(&seed)),
            "{e}"
        );
        // Another key: "signed by another key", naming the key by its fingerprint only.
        let other = Trust::from_public_key_file(&pub_path).unwrap();
        let e = message(load_bundle(&bundle, &other).err().unwrap());
        let fingerprint = key_fingerprint(key.verifying_key().as_bytes());
        assert!(
            e.contains("signature does not verify") && e.contains(&fingerprint),
            "{e}"
        );
        assert!(!e.contains(&hex(key.verifying_key().as_bytes())), "{e}");
        // The right key still loads it.
        let right = Trust::Key(signer.verifying_key());
        assert!(load_bundle(&bundle, &right).is_ok());
    }
}

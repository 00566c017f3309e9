//! Run configuration: one TOML file per run plus dotted overrides, three presets
//! (`paper`, `cpu`, and `tiny` for tests and smoke runs).
//!
//! `paper` is DESIGN.md section 2 verbatim (a GPU budget). `cpu` is the scaled preset for
//! 2 CPU cores: same algorithm, smaller sizes (see [`Config::cpu`] for every difference).
//! The resolved configuration is saved next to a run's outputs as `config.toml`.

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use sim::TaskId;
use std::path::Path;

use crate::nets::{DenoiserSize, InitScheme};

/// What a run trains for: a simulated task (environment, demonstrator, evaluation), or a
/// robot known only through its recorded dataset (`run.dataset`): dimensions, names and
/// observation ranges come from the data, there is no environment to act in, so such a
/// run is pretrained offline, exported, and improved on the robot (`trainer finetune`).
/// Written as the task's name, or `robot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Task {
    Sim(TaskId),
    Robot,
}

impl Task {
    /// The simulated task, if there is one.
    pub fn sim(self) -> Option<TaskId> {
        match self {
            Task::Sim(t) => Some(t),
            Task::Robot => None,
        }
    }

    /// The simulated task that `what` needs, or an error saying that a robot run has none.
    pub fn require_sim(self, what: &str) -> Result<TaskId> {
        self.sim().with_context(|| {
            format!(
                "{what} needs a simulated task (arm-reach, push or maze); this run's task is \
                 `robot` (a robot known only from its dataset), which has no simulator: \
                 evaluate and improve it on the robot (`controller run`, `trainer finetune`)"
            )
        })
    }
}

impl From<TaskId> for Task {
    fn from(t: TaskId) -> Self {
        Task::Sim(t)
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Task::Sim(t) => t.fmt(f),
            Task::Robot => f.write_str("robot"),
        }
    }
}

impl std::str::FromStr for Task {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "robot" {
            return Ok(Task::Robot);
        }
        s.parse::<TaskId>().map(Task::Sim).map_err(|_| {
            anyhow::anyhow!("unknown task '{s}': expected arm-reach, push, maze or robot")
        })
    }
}

impl TryFrom<String> for Task {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Task> for String {
    fn from(t: Task) -> String {
        t.to_string()
    }
}

/// Why a `task = "robot"` configuration without `run.dataset` is refused.
pub const ROBOT_NEEDS_A_DATASET: &str = "task = \"robot\" needs the robot's demonstrations: \
     set run.dataset to a LeRobot v3 dataset directory (its dimensions, names and rate \
     describe the robot)";

/// Which learner runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Algo {
    /// EXPO: diffusion base + edit policy + Q-selection for acting and TD targets.
    #[serde(rename = "expo")]
    Expo,
    /// Diffusion imitation only (one EMA sample per action, no critic).
    #[serde(rename = "bc")]
    Bc,
    /// Base policy + Q-based selection among base samples, no edit policy (IDQL-style).
    #[serde(rename = "idql-select")]
    IdqlSelect,
    /// Gaussian SAC with a LayerNorm critic ensemble and 50/50 offline data.
    #[serde(rename = "rlpd")]
    Rlpd,
}

impl Algo {
    /// Whether the policy acts by Q-selection among sampled candidates (EXPO, IDQL-select):
    /// its bundle carries critics and `num_samples` candidates per decision. The others
    /// act with one sample (BC) or their own actor (RLPD).
    pub fn selects_with_critic(self) -> bool {
        matches!(self, Algo::Expo | Algo::IdqlSelect)
    }
}

impl std::str::FromStr for Algo {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "expo" => Algo::Expo,
            "bc" => Algo::Bc,
            "idql-select" => Algo::IdqlSelect,
            "rlpd" => Algo::Rlpd,
            _ => bail!("unknown algo '{s}': expected expo, bc, idql-select or rlpd"),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    pub denoiser_hidden: usize,
    pub denoiser_blocks: usize,
    pub denoiser_expanded: usize,
    pub fourier_features: usize,
    pub time_hidden: usize,
    /// Hidden widths of each critic (and of the edit policy and the RLPD actor).
    pub critic_widths: Vec<usize>,
    pub num_critics: usize,
    /// How the dense layers are initialised: `"torch"` (PyTorch's default; every
    /// preset) or `"reference"` (the public EXPO code's Glorot and LeCun rules, zero
    /// biases). A saved config without the key means `"torch"`, what such a run ran
    /// with ([`InitScheme`]).
    #[serde(default = "InitScheme::before_the_key")]
    pub init: InitScheme,
}

impl NetConfig {
    pub fn denoiser(&self) -> DenoiserSize {
        DenoiserSize {
            hidden: self.denoiser_hidden,
            blocks: self.denoiser_blocks,
            expanded: self.denoiser_expanded,
            fourier: self.fourier_features,
            time_hidden: self.time_hidden,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffusionConfig {
    pub steps: usize,
    pub beta_min: f64,
    pub beta_max: f64,
    /// EMA rate of the acting copy of the denoiser.
    pub ema_rate: f32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpoConfig {
    /// Base samples per action (N).
    pub num_samples: usize,
    /// Edited samples (n_edit).
    pub num_edit: usize,
    /// Edit scale β ("edit_action_scale").
    pub edit_scale: f32,
    /// Target critics in the random min-subset.
    pub critic_subset: usize,
    /// Initial SAC temperature.
    pub init_temperature: f32,
    /// Target entropy per action dimension (the total is this times the action dim).
    pub target_entropy_per_dim: f32,
    /// Add `action_dim · ln β` to the edit policy's target entropy (`expo` only). The
    /// edited action's density carries `−action_dim · ln β`, so its entropy is at most
    /// `action_dim · ln 2β`: with the `cpu` preset's β = 0.05 that is −4.6 for two action
    /// dimensions, below the plain target of −1, and the temperature then grows until
    /// it meets its cap (`ln α` = 30, [`crate::nets::MAX_LOG_TEMPERATURE`]). Off by default, as DESIGN.md and the public EXPO code's
    /// `adjust_target_entropy` flag have it.
    #[serde(default)]
    pub adjust_target_entropy: bool,
    /// The base actions the edit policy's loss edits (see [`EditBase`]). The presets
    /// say `buffer`; a saved config without the key (a run started before the key
    /// existed) means `denoiser`, so such a run resumes exactly as it ran.
    #[serde(default = "EditBase::before_the_key")]
    pub edit_base: EditBase,
    /// How the edit policy's (and `rlpd`'s actor's) raw output becomes its log-std:
    /// `"tanh"` squashes it into [−5, 2] (this trainer's from the start, and a config
    /// without the key), `"clip"` clips it to [−20, 2] as the reference code's lineage
    /// does. BENCHMARKS.md, "The edit policy's log-std head", compares them.
    #[serde(default)]
    pub log_std: crate::nets::LogStdHead,
}

/// The base actions of the edit policy's loss `α log π − mean_e Q_e(s, base + β·a)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EditBase {
    /// The batch's own actions (demonstrations and online transitions), as the public
    /// EXPO code's `update_edit_actor` does. No denoising chain in the update.
    #[default]
    #[serde(rename = "buffer")]
    Buffer,
    /// Fresh samples of the online denoiser (one chain per update): the distribution
    /// the edit policy meets when acting and in the TD target. This trainer's
    /// behaviour before 2026-11-30.
    #[serde(rename = "denoiser")]
    Denoiser,
}

impl EditBase {
    /// What a config written before `expo.edit_base` existed ran with.
    fn before_the_key() -> EditBase {
        EditBase::Denoiser
    }
}

/// The most episodes one evaluation runs: a million is more than any curve needs (they
/// run [`crate::run::EVAL_BATCH`] at a time, so the memory is a batch's).
pub const MAX_EVAL_EPISODES: usize = 1_000_000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    pub batch_size: usize,
    /// Critic updates per environment step.
    pub utd: usize,
    pub discount: f32,
    /// Polyak rate of the target critics.
    pub tau: f32,
    pub actor_lr: f64,
    pub critic_lr: f64,
    /// The edit policy's (and `rlpd`'s actor's) learning rate, constant. The public
    /// EXPO code hands the edit actor the denoiser's cosine schedule, `½(1 + cos πt/T)`
    /// of its rate: by a run's end 2.4% lower at `paper` (t = 300k of T = 3M updates),
    /// 5.4% at `cpu` (15k of 100k).
    pub edit_lr: f64,
    pub temperature_lr: f64,
    /// Cosine-decay horizon of the denoiser's learning rate (updates).
    pub actor_lr_decay_steps: usize,
    /// Fraction of each batch drawn from the offline buffer once online data exists.
    pub offline_fraction: f32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Scripted demonstrations generated as the offline dataset when no
    /// `dataset` is given.
    pub offline_episodes: usize,
    /// A LeRobot v3 dataset directory to use as offline data instead (required with
    /// `task = "robot"`).
    pub dataset: Option<String>,
    /// Offline updates of the base policy before going online.
    pub pretrain_steps: usize,
    /// Also pretrain critics and edit policy offline (full learner updates).
    pub pretrain_critic: bool,
    /// Online environment steps.
    pub online_steps: usize,
    /// Evaluate every this many environment steps (0: only at the start and end).
    pub eval_every: usize,
    pub eval_episodes: usize,
}

/// When the TD targets' next-action candidates are generated (DESIGN.md section 2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CandidateSchedule {
    /// All UTD slices' candidates in one batched pass before the critic loop (valid
    /// because the denoiser and the edit policy only change after the loop).
    #[default]
    #[serde(rename = "hoisted")]
    Hoisted,
    /// Each slice's candidates inside the loop, just before its critic step: the
    /// reference implementation's order of random draws and updates.
    #[serde(rename = "sequential")]
    Sequential,
}

/// Where the Gaussian noise of diffusion chains, edits and losses is drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NormalSource {
    /// Our seeded generator on the host (`train_rng`/`act_rng`), uploaded: identical on
    /// every backend, checkpointed, so resume is exact. The CPU default.
    #[default]
    #[serde(rename = "host")]
    Host,
    /// The backend's generator on the device, seeded from `seed` at start: no host
    /// generation or upload of the chain noise (the GPU choice). Its state is not
    /// checkpointed: a resumed or fine-tuned run seeds it again from `seed` and where
    /// the run stands (`run::device_normals_seed`), so it does not draw its start's
    /// noise again.
    #[serde(rename = "device")]
    Device,
}

/// Where the rows a step trains on are copied out of the replay buffers
/// ([`crate::replay::draw_mixed`] draws which, on the host, either way).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplayPlacement {
    /// Copied on the host and uploaded, one batch per environment step (`utd ·
    /// batch_size` rows). The CPU choice: no second copy of the buffers.
    #[default]
    #[serde(rename = "host")]
    Host,
    /// A mirror of both buffers on the device (observations normalized, bootstrap
    /// discounts multiplied, as the host batch has them), kept current by uploading each
    /// new transition; a step uploads only its row numbers and gathers on the device
    /// (`crate::device_replay`). The same batches to the bit (tested). Costs device
    /// memory: `(2 · obs_dim + act_dim + 2) · 4` bytes per slot of both buffers.
    #[serde(rename = "device")]
    Device,
}

/// The precision of the hoisted next-action candidates' denoising passes
/// (`compute.chain_precision`, issue 14): the TD targets' candidates, most of a `paper`
/// step on a GPU (BENCHMARKS.md, "Where the GPU time goes"). In `f16` or `bf16` the
/// residual blocks, the first layer's action block and the output layer run in that type
/// (their parameters cast once per environment step); the observation and time
/// projections, each step's update of the chain, the clamp, the edits and the critics'
/// scores stay f32. Acting and evaluation stay f32, as the exported bundles run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChainPrecision {
    /// As every other tensor (on `cuda` burn's matmuls take TF32 inputs: README,
    /// "Precision").
    #[default]
    #[serde(rename = "f32")]
    F32,
    /// IEEE half: 10 mantissa bits (TF32's), range to 65,504.
    #[serde(rename = "f16")]
    F16,
    /// bfloat16: 7 mantissa bits, f32's range.
    #[serde(rename = "bf16")]
    Bf16,
}

impl ChainPrecision {
    pub fn name(self) -> &'static str {
        match self {
            ChainPrecision::F32 => "f32",
            ChainPrecision::F16 => "f16",
            ChainPrecision::Bf16 => "bf16",
        }
    }

    pub fn dtype(self) -> burn::tensor::FloatDType {
        use burn::tensor::FloatDType;
        match self {
            ChainPrecision::F32 => FloatDType::F32,
            ChainPrecision::F16 => FloatDType::F16,
            ChainPrecision::Bf16 => FloatDType::BF16,
        }
    }
}

/// How the optimizers update a network's parameters ([`crate::optim`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OptimizerImpl {
    /// Adam/AdamW and Polyak averaging once over a flat buffer of all of a network's
    /// parameters: the same arithmetic as burn's, in a few operations per step instead
    /// of about 16 per parameter tensor.
    #[default]
    #[serde(rename = "fused")]
    Fused,
    /// burn's optimizers, one parameter tensor at a time; its own checkpoint format.
    /// What a config written before `compute.optimizer` existed ran with.
    #[serde(rename = "per-parameter")]
    PerParameter,
}

impl OptimizerImpl {
    fn before_the_key() -> OptimizerImpl {
        OptimizerImpl::PerParameter
    }
}

/// How the learner runs on its device; none of this changes the algorithm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeConfig {
    #[serde(default)]
    pub candidates: CandidateSchedule,
    #[serde(default)]
    pub normals: NormalSource,
    /// Where each environment step's batch is assembled from the replay buffers.
    #[serde(default)]
    pub replay: ReplayPlacement,
    /// The presets say `fused`; a saved config without the key (a run started before
    /// it existed, whose optimizer state is in burn's format) means `per-parameter`.
    #[serde(default = "OptimizerImpl::before_the_key")]
    pub optimizer: OptimizerImpl,
    /// Record three parts of an environment step as device graphs and replay them each
    /// step, their inputs written into the recorded buffers (burn's `capture`; CUDA and
    /// wgpu/Vulkan record, the CPU backends re-run the closures): the candidates and the
    /// UTD critic loop, the denoiser's and edit policy's updates, and acting. Same
    /// results as without. Needs `expo` or `idql-select`, hoisted candidates and the
    /// fused optimizer (the updates also `expo.edit_base = "buffer"`, else they run
    /// directly).
    #[serde(default)]
    pub graph: bool,
    /// CPU backends only: the hoisted next-action candidates (most of a step) and, in the
    /// critic loop, the hoisted TD targets' scoring split by rows and each critic step's
    /// loss and gradients split by ensemble members, across this many threads. The same
    /// bits as one thread (tested): each row's chain and score, and each member's
    /// gradient, are computed alone. For a single run on a machine with spare cores; a
    /// study already runs one run per core, and the demo's controller shares its 2 cores.
    #[serde(default = "one_thread")]
    pub threads: usize,
    /// CPU backends only: each thread runs its hoisted candidates in blocks of at most
    /// this many chains (observation rows × `N`), each block's chain to its end before
    /// the next; 0 runs all of them as one block. At the `paper` preset one block is
    /// 40,960 chains, so each `[rows, 1024]` intermediate is 168 MB: it misses every
    /// cache and is a fresh mapping the kernel page-faults in. The same bits as one block
    /// (tested). The default was picked by measurement (BENCHMARKS.md, "The `paper`
    /// preset on the CPU"); it leaves the `cpu` preset's 512 chains one block.
    #[serde(default = "default_block_chains")]
    pub block_chains: usize,
    /// The candidates' denoising passes in f32 (default), f16 or bf16 ([`ChainPrecision`]).
    /// Not f32 changes the TD targets' values (by rounding), so unlike the keys above it
    /// changes the numbers a run computes. On `cpu` and `cuda` only.
    #[serde(default)]
    pub chain_precision: ChainPrecision,
}

fn one_thread() -> usize {
    1
}

fn default_block_chains() -> usize {
    DEFAULT_BLOCK_CHAINS
}

/// `compute.block_chains`'s default.
pub const DEFAULT_BLOCK_CHAINS: usize = 1024;

impl Default for ComputeConfig {
    fn default() -> Self {
        ComputeConfig {
            candidates: CandidateSchedule::default(),
            normals: NormalSource::default(),
            replay: ReplayPlacement::default(),
            optimizer: OptimizerImpl::Fused,
            graph: false,
            threads: 1,
            block_chains: DEFAULT_BLOCK_CHAINS,
            chain_precision: ChainPrecision::F32,
        }
    }
}

impl ComputeConfig {
    /// What a config written before the `compute` section existed ran with.
    fn before_the_keys() -> ComputeConfig {
        ComputeConfig {
            optimizer: OptimizerImpl::PerParameter,
            ..ComputeConfig::default()
        }
    }
}

fn default_device() -> String {
    "cpu".into()
}

/// The longest action chunk a run may use: a chunk is one network output of
/// `horizon · action_dim` values, and 64 steps is over a second at 50 Hz.
pub const MAX_ACTION_HORIZON: usize = 64;

// Largest sizes a run may ask for, each far above the `paper` preset's (1,024-wide
// layers, batch 256, UTD 20): larger values would overflow a weight's element count or
// abort the process on an allocation instead of being refused by name.
/// Widest layer (`net.*` widths, `net.fourier_features`).
pub const MAX_WIDTH: usize = 1 << 16;
/// Most hidden layers in `net.critic_widths`, and most `net.denoiser_blocks`.
pub const MAX_LAYERS: usize = 64;
/// Largest `optim.batch_size`.
pub const MAX_BATCH: usize = 1 << 20;
/// Largest `optim.utd`.
pub const MAX_UTD: usize = 10_000;
/// Most replay rows one environment step draws, `optim.utd · optim.batch_size` (each
/// within its cap, together up to 10^10 rows, an allocation abort): 2^22, 800 times the
/// `paper` preset's 20 · 256.
pub const MAX_ROWS_PER_STEP: usize = 1 << 22;
/// Most values the TD target's chain noise may hold ([`Config::check_candidate_noise`]):
/// 4 GiB of f32, about 100 times the `paper` preset's on a 30-value action.
pub const MAX_CANDIDATE_NOISE: u64 = 1 << 30;
/// Largest `|expo.target_entropy_per_dim|`: 144 times the most an action value in
/// [-1, 1] can have (ln 2), and small enough that the total target (times at most
/// 16 action values times [`MAX_ACTION_HORIZON`], 1,024 values: 1.0e5) keeps the
/// temperature's gradient at its cap (`ln α` = 30) below the 1.7e6 gap whose square
/// overflows f32 ([`crate::nets::MAX_LOG_TEMPERATURE`]).
pub const MAX_TARGET_ENTROPY_PER_DIM: f32 = 100.0;

fn one_step() -> usize {
    1
}

/// Everything a run needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub preset: String,
    pub algo: Algo,
    /// A simulated task, or `robot` (dimensions from `run.dataset`): see [`Task`].
    pub task: Task,
    pub seed: u64,
    /// `cpu` (burn flex), `ndarray`, `vulkan[:N]` or `cuda[:N]` ([`crate::device`]).
    #[serde(default = "default_device")]
    pub device: String,
    /// Actions per chunk (DESIGN §2, optional action chunking): the policy emits this
    /// many consecutive actions at once, executed open loop, and the critics value the
    /// whole chunk, bootstrapping after it with `optim.discount` to that power
    /// ([`crate::replay::Chunker`]). 1 (the default) is the reference algorithm.
    #[serde(default = "one_step")]
    pub action_horizon: usize,
    /// Actions played from each chunk before the policy plans the next one, in online
    /// training and evaluation (`shared_model::ChunkPlay`): 0 (the default) plays whole
    /// chunks; fewer is receding-horizon execution. Training transitions are always
    /// whole chunks of the actions taken.
    #[serde(default)]
    pub replan_every: usize,
    #[serde(default = "ComputeConfig::before_the_keys")]
    pub compute: ComputeConfig,
    pub net: NetConfig,
    pub diffusion: DiffusionConfig,
    pub expo: ExpoConfig,
    pub optim: OptimConfig,
    pub run: RunConfig,
}

impl Config {
    /// DESIGN.md section 2 defaults (GPU budget).
    pub fn paper() -> Self {
        Config {
            preset: "paper".into(),
            algo: Algo::Expo,
            task: Task::Sim(TaskId::ArmReach),
            seed: 0,
            device: default_device(),
            action_horizon: 1,
            replan_every: 0,
            compute: ComputeConfig::default(),
            net: NetConfig {
                denoiser_hidden: 256,
                denoiser_blocks: 3,
                denoiser_expanded: 1024,
                fourier_features: 128,
                time_hidden: 256,
                critic_widths: vec![256, 256, 256],
                num_critics: 10,
                init: InitScheme::Torch,
            },
            diffusion: DiffusionConfig {
                steps: 10,
                beta_min: 0.1,
                beta_max: 10.0,
                ema_rate: 0.001,
            },
            expo: ExpoConfig {
                num_samples: 8,
                num_edit: 8,
                edit_scale: 0.05,
                critic_subset: 2,
                init_temperature: 1.0,
                target_entropy_per_dim: -0.5,
                adjust_target_entropy: false,
                edit_base: EditBase::Buffer,
                log_std: Default::default(),
            },
            optim: OptimConfig {
                batch_size: 256,
                utd: 20,
                discount: 0.99,
                tau: 0.005,
                actor_lr: 3e-4,
                critic_lr: 3e-4,
                edit_lr: 3e-4,
                temperature_lr: 3e-4,
                actor_lr_decay_steps: 3_000_000,
                offline_fraction: 0.5,
            },
            run: RunConfig {
                offline_episodes: 200,
                dataset: None,
                pretrain_steps: 50_000,
                pretrain_critic: false,
                online_steps: 250_000,
                eval_every: 5_000,
                eval_episodes: 50,
            },
        }
    }

    /// The 2-core preset, chosen by measurement (BENCHMARKS.md): denoiser width 64 with
    /// 2 residual blocks expanding to 256 (reference: 256, 3 blocks, 1024), 32 Fourier
    /// features and a 64-wide time MLP, 10 critics of 2 x 64, batch 64, UTD 2, N 4,
    /// n_edit 4, T 5; critics and edit policy pretrained offline with the base; shorter
    /// runs. The algorithm is unchanged.
    pub fn cpu() -> Self {
        let mut c = Self::paper();
        c.preset = "cpu".into();
        c.net = NetConfig {
            denoiser_hidden: 64,
            denoiser_blocks: 2,
            denoiser_expanded: 256,
            fourier_features: 32,
            time_hidden: 64,
            critic_widths: vec![64, 64],
            num_critics: 10,
            init: InitScheme::Torch,
        };
        c.diffusion.steps = 5;
        c.expo.num_samples = 4;
        c.expo.num_edit = 4;
        c.optim.batch_size = 64;
        c.optim.utd = 2;
        c.optim.actor_lr_decay_steps = 100_000;
        c.run = RunConfig {
            offline_episodes: 200,
            dataset: None,
            pretrain_steps: 5_000,
            // At UTD 2 a critic learned from scratch online is still uninformative
            // after several thousand steps; pretraining it offline is what makes
            // Q-selection useful early (measured, BENCHMARKS.md).
            pretrain_critic: true,
            online_steps: 10_000,
            eval_every: 1_000,
            eval_episodes: 50,
        };
        c
    }

    /// Smallest sizes, for tests.
    pub fn tiny() -> Self {
        let mut c = Self::cpu();
        c.preset = "tiny".into();
        c.net.denoiser_hidden = 32;
        c.net.denoiser_blocks = 1;
        c.net.denoiser_expanded = 64;
        c.net.fourier_features = 16;
        c.net.time_hidden = 32;
        c.net.critic_widths = vec![32, 32];
        c.net.num_critics = 4;
        c.diffusion.steps = 3;
        c.optim.batch_size = 32;
        c.run.offline_episodes = 20;
        c.run.pretrain_steps = 50;
        c.run.pretrain_critic = false;
        c.run.online_steps = 100;
        c.run.eval_every = 0;
        c.run.eval_episodes = 4;
        c
    }

    pub fn preset(name: &str) -> Result<Self> {
        Ok(match name {
            "paper" => Self::paper(),
            "cpu" => Self::cpu(),
            "tiny" => Self::tiny(),
            _ => bail!("unknown preset '{name}': expected paper, cpu or tiny"),
        })
    }

    /// Starts from `base` (a preset name), applies the TOML file (if any) and then the
    /// `key.path=value` overrides, and validates the result.
    pub fn resolve(base: &str, file: Option<&Path>, overrides: &[String]) -> Result<Self> {
        Self::resolve_noting(base, file, overrides).map(|(c, _)| c)
    }

    /// [`Self::resolve`], and the keys a whole config `file` lacks as `key = value`: the
    /// values they take, from before the key existed (say `expo.edit_base =
    /// "denoiser"`). A run's old `config.toml` given to a new run trains as it did, not
    /// as the preset now would, which is worth saying (it was silent).
    pub fn resolve_noting(
        base: &str,
        file: Option<&Path>,
        overrides: &[String],
    ) -> Result<(Self, Vec<String>)> {
        let mut absent = Vec::new();
        let mut value = toml::Value::try_from(Self::preset(base)?)?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{}: cannot read config", path.display()))?;
            let file_value: toml::Value = toml::from_str(&text)
                .with_context(|| format!("{}: invalid TOML", path.display()))?;
            match file_value.clone().try_into::<Config>() {
                // A whole config (a run's saved `config.toml`): keys it lacks take their
                // defaults from before they existed, so that it trains as it did, not the
                // preset's newer values.
                Ok(whole) => {
                    value = toml::Value::try_from(whole)?;
                    absent_keys(&value, Some(&file_value), "", &mut absent);
                }
                Err(not_whole) => {
                    // A partial file is merged over --preset: a `preset` key naming
                    // another would only rename the run, not give it that preset's sizes.
                    // (It may also be a whole config with a bad key: its error is named.)
                    if let Some(named) = file_value.get("preset") {
                        ensure!(
                            named.as_str() == Some(base),
                            "{}: preset = {named} in a partial config, which is merged over \
                             --preset {base}: pass --preset {} (or remove the key); read as \
                             a whole config, it fails with: {not_whole}",
                            path.display(),
                            named.as_str().unwrap_or("...")
                        );
                    }
                    merge(&mut value, file_value)
                }
            }
        }
        for o in overrides {
            let (key, raw) = o
                .split_once('=')
                .with_context(|| format!("override '{o}': expected key.path=value"))?;
            ensure!(
                key.trim() != "preset",
                "override '{o}': the preset is chosen with --preset (an override would only \
                 change its name, not the sizes it sets)"
            );
            set_path(&mut value, key.trim(), raw).with_context(|| format!("override '{o}'"))?;
        }
        let config: Config = value.try_into().with_context(|| match file {
            Some(path) => format!(
                "{} (with the overrides) does not match the config schema",
                path.display()
            ),
            None => "the overrides do not match the config schema".to_string(),
        })?;
        match file {
            Some(path) => config
                .validate()
                .with_context(|| format!("{} (with the overrides)", path.display()))?,
            None => config.validate()?,
        }
        // Those an override sets (`--device`, `--set key=…`, or `--set section={…}`
        // naming the key: a section is merged key by key) take its value.
        let overridden = |path: &str| {
            overrides.iter().any(|o| {
                let Some((key, raw)) = o.split_once('=') else {
                    return false;
                };
                let key = key.trim();
                if path == key {
                    return true;
                }
                let Some(rest) = path.strip_prefix(&format!("{key}.")) else {
                    return false;
                };
                let value = override_value(raw);
                rest.split('.')
                    .try_fold(&value, |cur, part| cur.get(part))
                    .is_some()
            })
        };
        let taken_as_before = absent
            .into_iter()
            .filter(|(path, _)| !overridden(path))
            .map(|(path, v)| format!("{path} = {v}"))
            .collect();
        Ok((config, taken_as_before))
    }

    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(
            self.task != Task::Robot || self.run.dataset.is_some(),
            ROBOT_NEEDS_A_DATASET
        );
        // A robot has no simulator to act in, and an rlpd run exports no bundle (its
        // actor is not the EXPO policy the controller runs): the run could never act.
        anyhow::ensure!(
            !(self.task == Task::Robot && self.algo == Algo::Rlpd),
            "algo = \"rlpd\" with task = \"robot\": an rlpd run exports no bundle, and a \
             robot run has no simulator to act in, so it could never act; use expo, idql-select or bc"
        );
        // An empty path (`--set run.dataset=$UNSET`) read the current directory.
        anyhow::ensure!(
            self.run
                .dataset
                .as_deref()
                .is_none_or(|d| !d.trim().is_empty()),
            "run.dataset is empty: name a LeRobot v3 dataset directory, or leave the key out"
        );
        anyhow::ensure!(
            (1..=256).contains(&self.compute.threads),
            "compute.threads must be between 1 and 256, not {}",
            self.compute.threads
        );
        if self.compute.graph {
            anyhow::ensure!(
                self.algo.selects_with_critic(),
                "compute.graph records EXPO's step: algo must be expo or idql-select"
            );
            anyhow::ensure!(
                self.compute.candidates == CandidateSchedule::Hoisted
                    && self.compute.optimizer == OptimizerImpl::Fused,
                "compute.graph needs compute.candidates = \"hoisted\" and compute.optimizer = \"fused\""
            );
            // Each recorded critic slice takes its scoring and evaluation subsets' member
            // ids from one aligned slot (`LoopInputs::subset_ids`).
            anyhow::ensure!(
                2 * self.expo.critic_subset <= crate::optim::ALIGN,
                "expo.critic_subset = {} with compute.graph: a recorded critic slice holds \
                 at most {} member ids, two subsets' worth (at most {} each); set \
                 compute.graph = false for larger subsets",
                self.expo.critic_subset,
                crate::optim::ALIGN,
                crate::optim::ALIGN / 2
            );
        }
        let e = &self.expo;
        anyhow::ensure!(e.num_samples >= 1, "expo.num_samples must be at least 1");
        anyhow::ensure!(
            e.num_edit <= e.num_samples,
            "expo.num_edit ({}) must not exceed expo.num_samples ({})",
            e.num_edit,
            e.num_samples
        );
        anyhow::ensure!(
            self.net.num_critics >= 1,
            "net.num_critics must be at least 1, not 0"
        );
        anyhow::ensure!(
            (1..=self.net.num_critics).contains(&e.critic_subset),
            "expo.critic_subset ({}) must be in 1..=net.num_critics ({})",
            e.critic_subset,
            self.net.num_critics
        );
        anyhow::ensure!(
            self.diffusion.steps >= 1,
            "diffusion.steps must be at least 1"
        );
        // A bundle declaring more is refused by every controller (shared_model's limits).
        use shared_model::manifest::{MAX_DIFFUSION_STEPS, MAX_ENSEMBLE, MAX_SAMPLES};
        for (key, value, max) in [
            ("diffusion.steps", self.diffusion.steps, MAX_DIFFUSION_STEPS),
            ("expo.num_samples", e.num_samples, MAX_SAMPLES),
            ("net.num_critics", self.net.num_critics, MAX_ENSEMBLE),
        ] {
            anyhow::ensure!(value <= max, "{key} must be at most {max}, not {value}");
        }
        for (key, value, max) in [
            ("optim.batch_size", self.optim.batch_size, MAX_BATCH),
            ("optim.utd", self.optim.utd, MAX_UTD),
        ] {
            anyhow::ensure!(
                (1..=max).contains(&value),
                "{key} must be in 1..={max}, not {value}"
            );
        }
        let rows = self.optim.utd * self.optim.batch_size;
        anyhow::ensure!(
            rows <= MAX_ROWS_PER_STEP,
            "optim.utd x optim.batch_size must be at most {MAX_ROWS_PER_STEP} replay rows per \
             step, not {} x {} = {rows}",
            self.optim.utd,
            self.optim.batch_size
        );
        // The TD target runs the denoiser's chain on num_samples candidates of every
        // row, its noise drawn up front: capped as the rows are (each within its cap,
        // N = 1024 at 2^22 rows asked for 32 GiB buffers and aborted).
        if self.algo.selects_with_critic() {
            let candidates = rows.saturating_mul(e.num_samples);
            anyhow::ensure!(
                candidates <= MAX_ROWS_PER_STEP,
                "optim.utd x optim.batch_size x expo.num_samples must be at most \
                 {MAX_ROWS_PER_STEP} candidate rows per step (the TD target's chains), not \
                 {} x {} x {} = {candidates}",
                self.optim.utd,
                self.optim.batch_size,
                e.num_samples
            );
        }
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.optim.offline_fraction),
            "optim.offline_fraction must be in [0, 1], not {}",
            self.optim.offline_fraction
        );
        anyhow::ensure!(
            self.net.fourier_features.is_multiple_of(2),
            "net.fourier_features must be even"
        );
        anyhow::ensure!(
            (1..=MAX_ACTION_HORIZON).contains(&self.action_horizon),
            "action_horizon must be in 1..={MAX_ACTION_HORIZON}, not {}",
            self.action_horizon
        );
        self.chunk_play()?;
        self.validate_values()?;
        crate::device::parse(&self.device).context("device")?;
        Ok(())
    }

    /// The weights of each of a bundle's graphs, as f32 in a graph file: the controller
    /// reads at most `MAX_GRAPH_BYTES` of one (wider networks were trained, exported,
    /// and refused by every load; the widest aborted on their first allocation). `od`
    /// and `ad`: the observation and action-chunk widths, 0 until the data is known (the
    /// config alone checks the layers they do not size); the layers that take them
    /// count once they are (a wide robot observation made the critic's first layer
    /// too large, unseen).
    pub fn check_graph_weights(&self, od: usize, ad: usize) -> Result<()> {
        let n = &self.net;
        let mul = |a: usize, b: usize| (a as u64).saturating_mul(b as u64);
        // An MLP from `d_in` through `widths` to `d_out`.
        let mlp = |d_in: usize, widths: &[usize], d_out: usize| {
            std::iter::once(d_in)
                .chain(widths.iter().copied())
                .zip(widths.iter().copied().chain(std::iter::once(d_out)))
                .map(|(a, b)| mul(a, b))
                .fold(0u64, u64::saturating_add)
        };
        // As the bundle's graphs hold them (shared-model's `*_weight_dims`); biases and
        // norms, a row each, are left out.
        let (h, x, th) = (n.denoiser_hidden, n.denoiser_expanded, n.time_hidden);
        let denoiser = mul(n.denoiser_blocks, 2)
            .saturating_mul(mul(h, x))
            .saturating_add(mul(n.fourier_features + th, th))
            .saturating_add(mul(od + ad + th, h))
            .saturating_add(mul(h, ad));
        // Every algorithm but bc trains critics (rlpd's are in no bundle, but were not
        // capped at all: an ensemble of terabytes aborted on its allocation).
        let critic = if self.algo != Algo::Bc {
            mlp(od + ad, &n.critic_widths, 1).saturating_mul(n.num_critics as u64)
        } else {
            0
        };
        let edit = match self.algo {
            Algo::Expo => mlp(od + ad, &n.critic_widths, 2 * ad),
            // rlpd's actor: the observation alone in, the edit policy's widths.
            Algo::Rlpd => mlp(od, &n.critic_widths, 2 * ad),
            _ => 0,
        };
        let max_floats = shared_model::manifest::MAX_GRAPH_BYTES / 4;
        let sizes = if od == 0 {
            String::new()
        } else {
            format!(" (observation {od}, action chunk {ad})")
        };
        for (what, floats) in [
            ("the denoiser", denoiser),
            ("the critic ensemble", critic),
            ("the edit policy (rlpd: the actor)", edit),
        ] {
            ensure!(
                floats <= max_floats,
                "{what} would hold {floats} weights{sizes}, more than the {max_floats} (1 GiB \
                 of f32) a bundle's graph file may have (rlpd's networks, in no bundle, are \
                 held to it too): narrower net.* widths, or fewer blocks or critics"
            );
        }
        Ok(())
    }

    /// The TD target's chains draw their noise up front: every row's `num_samples`
    /// candidates, `ad` (the action chunk's width) values each, once per chain step and
    /// once to start. [`Self::validate`] caps the candidate rows alone; a long chain
    /// multiplied them into an allocation abort (`diffusion.steps = 1000` at the 2^22
    /// candidate rows: 33 GiB). At most [`MAX_CANDIDATE_NOISE`] values.
    pub fn check_candidate_noise(&self, ad: usize) -> Result<()> {
        if !self.algo.selects_with_critic() {
            return Ok(());
        }
        let values = [
            self.optim.utd,
            self.optim.batch_size,
            self.expo.num_samples,
            self.diffusion.steps + 1,
            ad,
        ]
        .iter()
        .fold(1u64, |p, &k| p.saturating_mul(k as u64));
        ensure!(
            values <= MAX_CANDIDATE_NOISE,
            "the TD target's chain noise would hold {values} values (optim.utd {} x \
             optim.batch_size {} x expo.num_samples {} x (diffusion.steps {} + 1) x the \
             action chunk's {ad}), more than {MAX_CANDIDATE_NOISE} (4 GiB of f32): fewer \
             rows, samples or steps",
            self.optim.utd,
            self.optim.batch_size,
            self.expo.num_samples,
            self.diffusion.steps
        );
        Ok(())
    }

    /// The ranges of the sizes and rates that the checks above leave open. Each of these
    /// values outside its range used to reach the learner: zero widths panicked inside
    /// the backend, no offline episodes panicked on the first batch, a negative edit
    /// scale or a zero temperature ran until the divergence check stopped the run, and a
    /// discount above 1 or a Polyak rate of 0 trained without a word.
    fn validate_values(&self) -> Result<()> {
        let n = &self.net;
        for (key, width) in [
            ("net.denoiser_hidden", n.denoiser_hidden),
            ("net.denoiser_expanded", n.denoiser_expanded),
            ("net.time_hidden", n.time_hidden),
            ("net.fourier_features", n.fourier_features),
        ] {
            ensure!(
                (1..=MAX_WIDTH).contains(&width),
                "{key} must be in 1..={MAX_WIDTH}, not {width}"
            );
        }
        if let Some(i) = n
            .critic_widths
            .iter()
            .position(|w| !(1..=MAX_WIDTH).contains(w))
        {
            bail!(
                "net.critic_widths[{i}] must be in 1..={MAX_WIDTH}, not {}",
                n.critic_widths[i]
            );
        }
        ensure!(
            n.critic_widths.len() <= MAX_LAYERS,
            "net.critic_widths may name at most {MAX_LAYERS} hidden layers, not {}",
            n.critic_widths.len()
        );
        ensure!(
            n.denoiser_blocks <= MAX_LAYERS,
            "net.denoiser_blocks must be at most {MAX_LAYERS}, not {}",
            n.denoiser_blocks
        );
        // What a bundle of this run holds per decision, as the export writes it: a
        // policy without a critic acts with one chain sample and no edits.
        // (The edit policy has the critic's widths.)
        let (rows, critics) = match self.algo {
            Algo::Expo => (self.expo.num_samples + self.expo.num_edit, n.num_critics),
            Algo::IdqlSelect => (self.expo.num_samples, n.num_critics),
            _ => (1, 0),
        };
        shared_model::manifest::check_activation_sizes(
            rows,
            [
                n.denoiser_hidden,
                n.denoiser_expanded,
                n.time_hidden,
                n.fourier_features,
            ],
            critics,
            &n.critic_widths,
        )
        .map_err(|e| anyhow::anyhow!("a bundle of this run would be refused: {e}"))?;
        self.check_graph_weights(0, 0)?;
        // The edit policy reuses the critic's widths, and the bundle's edit graph splits
        // its first layer by input ahead of a separate head.
        ensure!(
            !n.critic_widths.is_empty() || self.algo != Algo::Expo,
            "net.critic_widths must name at least one hidden layer for algo expo: the edit \
             policy has the critic's widths, and the bundle's edit graph needs a hidden layer"
        );
        let d = &self.diffusion;
        ensure!(
            d.beta_min.is_finite() && d.beta_min > 0.0 && d.beta_max.is_finite(),
            "diffusion.beta_min ({}) must be positive and diffusion.beta_max ({}) finite",
            d.beta_min,
            d.beta_max
        );
        ensure!(
            d.beta_min <= d.beta_max,
            "diffusion.beta_min ({}) must not exceed diffusion.beta_max ({})",
            d.beta_min,
            d.beta_max
        );
        if let Some(why) =
            shared_model::schedule::DiffusionSchedule::vp(d.steps, d.beta_min, d.beta_max)
                .degenerate()
        {
            bail!(
                "diffusion.beta_min {} and diffusion.beta_max {} over {} steps: {why}",
                d.beta_min,
                d.beta_max,
                d.steps
            );
        }
        ensure!(
            d.ema_rate > 0.0 && d.ema_rate <= 1.0,
            "diffusion.ema_rate must be in (0, 1], not {}",
            d.ema_rate
        );
        let e = &self.expo;
        for (key, value) in [
            ("expo.edit_scale", e.edit_scale),
            ("expo.init_temperature", e.init_temperature),
        ] {
            ensure!(
                value.is_finite() && value > 0.0,
                "{key} must be positive, not {value}"
            );
        }
        let most = shared_model::manifest::MAX_EDIT_SCALE;
        ensure!(
            e.edit_scale <= most,
            "expo.edit_scale must be at most {most} (an edit of 2 already crosses the whole \
             action range), not {}",
            e.edit_scale
        );
        let max_temperature = crate::nets::MAX_LOG_TEMPERATURE.exp();
        ensure!(
            e.init_temperature <= max_temperature,
            "expo.init_temperature must be at most e^{} = {max_temperature:e} (the \
             temperature's cap), not {}",
            crate::nets::MAX_LOG_TEMPERATURE,
            e.init_temperature
        );
        // An action value in [-1, 1] has at most ln 2 nats of entropy, so a target far
        // beyond that only drives the temperature to its cap; and times a large action
        // dimension (a chunk's) it overflowed to -inf, whose NaN temperature step the cap
        // then turned into e^30 without a word.
        ensure!(
            e.target_entropy_per_dim.abs() <= MAX_TARGET_ENTROPY_PER_DIM,
            "expo.target_entropy_per_dim must be within ±{MAX_TARGET_ENTROPY_PER_DIM} (an \
             action value in [-1, 1] has at most ln 2 = 0.69 nats), not {}",
            e.target_entropy_per_dim
        );
        let o = &self.optim;
        ensure!(
            (0.0..=1.0).contains(&o.discount),
            "optim.discount must be in [0, 1], not {}",
            o.discount
        );
        ensure!(
            o.tau > 0.0 && o.tau <= 1.0,
            "optim.tau (the target critics' Polyak rate) must be in (0, 1], not {}",
            o.tau
        );
        for (key, lr) in [
            ("optim.actor_lr", o.actor_lr),
            ("optim.critic_lr", o.critic_lr),
            ("optim.edit_lr", o.edit_lr),
            ("optim.temperature_lr", o.temperature_lr),
        ] {
            ensure!(
                lr.is_finite() && lr >= 0.0,
                "{key} must be finite and not negative, not {lr}"
            );
        }
        ensure!(
            o.actor_lr_decay_steps >= 1,
            "optim.actor_lr_decay_steps (the denoiser's cosine decay, in updates) must be at \
             least 1, not 0"
        );
        // Offline data comes from `run.dataset` when given, else from this many scripted
        // demonstrations; the first batches (pretraining, the first online steps) come
        // from it whatever `optim.offline_fraction` says.
        if self.run.dataset.is_none() && self.task.sim().is_some() {
            ensure!(
                self.run.offline_episodes >= 1,
                "run.offline_episodes must be at least 1 without run.dataset (the offline \
                 buffer would be empty)"
            );
        }
        if self.task.sim().is_some() {
            ensure!(
                (1..=MAX_EVAL_EPISODES).contains(&self.run.eval_episodes),
                "run.eval_episodes must be in 1..={MAX_EVAL_EPISODES}, not {} (evaluations \
                 run at the start, every run.eval_every steps and at the end)",
                self.run.eval_episodes
            );
        }
        Ok(())
    }

    /// How the policy's chunks are played (online and in evaluation).
    pub fn chunk_play(&self) -> Result<shared_model::ChunkPlay> {
        Ok(shared_model::ChunkPlay::new(
            self.action_horizon,
            self.replan_every,
        )?)
    }

    /// How the run's steps become training transitions.
    pub fn chunks(&self) -> crate::replay::ChunkSpec {
        crate::replay::ChunkSpec {
            horizon: self.action_horizon,
            discount: self.optim.discount,
        }
    }

    /// The discount of one transition: `optim.discount` per step, over a whole chunk.
    pub fn chunk_discount(&self) -> f32 {
        self.optim.discount.powi(self.action_horizon as i32)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }
}

/// The keys of `full` (a table) that `given` lacks, as `(path, value)`, into `out`: each
/// leaf, also inside a table `given` lacks whole.
fn absent_keys(
    full: &toml::Value,
    given: Option<&toml::Value>,
    prefix: &str,
    out: &mut Vec<(String, String)>,
) {
    let Some(table) = full.as_table() else { return };
    for (key, v) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let inner = given.and_then(|g| g.get(key));
        match (inner, v.is_table()) {
            (None, false) => out.push((path, v.to_string())),
            (inner, _) => absent_keys(v, inner, &path, out),
        }
    }
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Keys whose value may be absent (an `Option` that is `None` is not written to TOML), so
/// that an override may add them. Every other override must name a key the preset has.
const OPTIONAL_KEYS: &[&str] = &["run.dataset"];

/// Sets `path` to `raw` read as a TOML value, or as a string where it does not read as
/// one or where the key holds a string: a bare `run.dataset=2024-06-01` (a TOML date) or
/// `run.dataset=12345` is a path, as `run.dataset=demos/arm` is.
/// An override's value as TOML (`3`, `"x"`, `{threads=2}`), else as the text it is
/// (`--set device=cuda`).
fn override_value(raw: &str) -> toml::Value {
    let raw = raw.trim();
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(t) => t["v"].clone(),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

fn set_path(value: &mut toml::Value, path: &str, raw: &str) -> Result<()> {
    let raw = raw.trim();
    let new = override_value(raw);
    let mut cur = value;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let table = cur
            .as_table_mut()
            .with_context(|| format!("'{}' is not a section", parts[..i].join(".")))?;
        if i == parts.len() - 1 {
            if !table.contains_key(*part) && !OPTIONAL_KEYS.contains(&path) {
                bail!("unknown key '{path}'");
            }
            // A whole section given inline (`compute={threads=2}`) is merged key by key,
            // as a `--config` file is: replacing it took every key it left out from the
            // serde defaults, not the preset (another optimizer, another edit loss).
            let holds_text = OPTIONAL_KEYS.contains(&path)
                || matches!(table.get(*part), Some(toml::Value::String(_)));
            let new = match new {
                toml::Value::String(_) | toml::Value::Table(_) | toml::Value::Array(_) => new,
                _ if holds_text => toml::Value::String(raw.to_string()),
                _ => new,
            };
            match (table.get_mut(*part), new) {
                (Some(old @ toml::Value::Table(_)), new @ toml::Value::Table(_)) => merge(old, new),
                (_, new) => {
                    table.insert(part.to_string(), new);
                }
            }
            return Ok(());
        }
        cur = table
            .get_mut(*part)
            .with_context(|| format!("unknown section '{}'", parts[..=i].join(".")))?;
    }
    unreachable!()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_round_trip_through_toml() {
        for name in ["paper", "cpu", "tiny"] {
            let c = Config::preset(name).unwrap();
            let back: Config = toml::from_str(&c.to_toml()).unwrap();
            assert_eq!(c, back);
        }
    }

    /// A config saved before `expo.edit_base`, `expo.adjust_target_entropy` and
    /// `net.init` existed loads with the behaviour it ran with.
    #[test]
    fn configs_without_the_newer_keys_keep_their_behaviour() {
        let c = Config::preset("cpu").unwrap();
        assert_eq!(c.expo.edit_base, EditBase::Buffer);
        assert!(!c.expo.adjust_target_entropy);
        assert_eq!(c.net.init, InitScheme::Torch);
        let newer = ["edit_base", "adjust_target_entropy", "init ", "log_std"];
        let old = c
            .to_toml()
            .lines()
            .filter(|l| !newer.iter().any(|k| l.starts_with(k)))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            !old.contains("edit_base") && !old.contains("init ="),
            "{old}"
        );
        let back: Config = toml::from_str(&old).unwrap();
        assert_eq!(back.expo.edit_base, EditBase::Denoiser);
        assert!(!back.expo.adjust_target_entropy);
        assert_eq!(back.net.init, InitScheme::Torch);
        assert_eq!(back.expo.log_std, crate::nets::LogStdHead::Tanh);
        // The same through `--config` (a new run from an old run's config.toml), whatever
        // `--preset` says: before, the missing keys took the preset's newer values.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, &old).unwrap();
        for preset in ["cpu", "paper"] {
            let (c, noted) = Config::resolve_noting(preset, Some(&path), &[]).unwrap();
            assert_eq!(c, back, "--preset {preset}");
            // ... and says which keys took those values (it was silent).
            assert_eq!(
                noted,
                [
                    "expo.adjust_target_entropy = false",
                    "expo.edit_base = \"denoiser\"",
                    "expo.log_std = \"tanh\"",
                    "net.init = \"torch\"",
                ],
                "--preset {preset}"
            );
        }
        // Nor of the keys the command line sets (`--device` comes as `device=…`).
        let set = [
            "expo.edit_base=\"buffer\"".to_string(),
            "expo={log_std=\"clip\"}".to_string(),
            "net={}".to_string(),
        ];
        let (_, noted) = Config::resolve_noting("cpu", Some(&path), &set).unwrap();
        assert_eq!(
            noted,
            ["expo.adjust_target_entropy = false", "net.init = \"torch\""]
        );
        // A whole config with every key: nothing to say.
        std::fs::write(&path, back.to_toml()).unwrap();
        assert!(
            Config::resolve_noting("cpu", Some(&path), &[])
                .unwrap()
                .1
                .is_empty()
        );
        std::fs::write(&path, &old).unwrap();
        // A value the checks refuse names the file it came from.
        std::fs::write(&path, "[expo]\nnum_samples = 0\n").unwrap();
        let err = format!(
            "{:#}",
            Config::resolve("cpu", Some(&path), &[]).unwrap_err()
        );
        assert!(
            err.starts_with(&format!("{} (with the overrides): ", path.display()))
                && err.contains("num_samples"),
            "{err}"
        );
        // A partial file is still merged over the preset.
        std::fs::write(&path, "[optim]\nutd = 3\n").unwrap();
        let c = Config::resolve("cpu", Some(&path), &[]).unwrap();
        assert_eq!((c.optim.utd, c.expo.edit_base), (3, EditBase::Buffer));
        // ... and one naming another preset is refused (it would only rename the run).
        std::fs::write(&path, "preset = \"paper\"\n[optim]\nutd = 3\n").unwrap();
        let err = Config::resolve("cpu", Some(&path), &[]).unwrap_err();
        assert!(
            format!("{err:#}").contains("merged over --preset cpu: pass --preset paper"),
            "{err:#}"
        );
        let c = Config::resolve("paper", Some(&path), &[]).unwrap();
        assert_eq!((c.preset.as_str(), c.optim.utd), ("paper", 3));
        // The preset's name is not an override: it would not change its sizes.
        let err = Config::resolve("cpu", None, &["preset=\"paper\"".into()]).unwrap_err();
        assert!(
            format!("{err:#}").contains("chosen with --preset"),
            "{err:#}"
        );
        let c = Config::resolve("cpu", None, &["expo.edit_base=\"denoiser\"".into()]).unwrap();
        assert_eq!(c.expo.edit_base, EditBase::Denoiser);
        let c = Config::resolve("cpu", None, &["expo.log_std=\"clip\"".into()]).unwrap();
        assert_eq!(c.expo.log_std, crate::nets::LogStdHead::Clip);
        let c = Config::resolve("cpu", None, &["net.init=\"reference\"".into()]).unwrap();
        assert_eq!(c.net.init, InitScheme::Reference);
        let err = Config::resolve("cpu", None, &["net.init=\"xavier\"".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("reference"), "{err:#}");
    }

    /// A config saved before `compute.optimizer` (or the whole `compute` section)
    /// existed resumes with burn's per-parameter optimizers, whose state it saved; the
    /// presets use the fused one.
    #[test]
    fn configs_without_the_optimizer_key_keep_burns_optimizers() {
        let c = Config::preset("cpu").unwrap();
        assert_eq!(c.compute.optimizer, OptimizerImpl::Fused);
        let text = c.to_toml();
        let without_key: String = text
            .lines()
            .filter(|l| !l.starts_with("optimizer"))
            .collect::<Vec<_>>()
            .join("\n");
        let back: Config = toml::from_str(&without_key).unwrap();
        assert_eq!(back.compute.optimizer, OptimizerImpl::PerParameter);
        assert_eq!(back.compute.candidates, c.compute.candidates);
        let mut lines = vec![];
        let mut in_compute = false;
        for l in text.lines() {
            if l.starts_with('[') {
                in_compute = l == "[compute]";
            }
            if !in_compute {
                lines.push(l);
            }
        }
        let without_section = lines.join("\n");
        assert!(!without_section.contains("[compute]"));
        let back: Config = toml::from_str(&without_section).unwrap();
        assert_eq!(back.compute.optimizer, OptimizerImpl::PerParameter);
        let c = Config::resolve("cpu", None, &["compute.optimizer=\"per-parameter\"".into()]);
        assert_eq!(c.unwrap().compute.optimizer, OptimizerImpl::PerParameter);
    }

    #[test]
    fn overrides_apply_and_bad_ones_are_named() {
        let c = Config::resolve(
            "cpu",
            None,
            &[
                "expo.num_samples=6".into(),
                "task=\"maze\"".into(),
                "algo=rlpd".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.expo.num_samples, 6);
        assert_eq!(c.task, Task::Sim(TaskId::Maze));
        assert_eq!(c.algo, Algo::Rlpd);
        // A section given inline keeps the preset's other keys (it took the serde
        // defaults written for configs older than those keys: another optimizer, another
        // edit loss).
        let preset = Config::resolve("cpu", None, &[]).unwrap();
        let c = Config::resolve("cpu", None, &["compute={threads=2}".into()]).unwrap();
        assert_eq!(c.compute.threads, 2);
        assert_eq!(c.compute.optimizer, preset.compute.optimizer);
        let c = Config::resolve("cpu", None, &["expo={num_samples=4, num_edit=4}".into()]).unwrap();
        assert_eq!((c.expo.num_samples, c.expo.num_edit), (4, 4));
        assert_eq!(c.expo.edit_base, preset.expo.edit_base);
        let err = Config::resolve("cpu", None, &["expo={nope=1}".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("nope"), "{err:#}");
        // An optional key that the preset leaves out.
        let c = Config::resolve("cpu", None, &["run.dataset=demos/push".into()]).unwrap();
        assert_eq!(c.run.dataset.as_deref(), Some("demos/push"));
        // A path that reads as another TOML value (a date, a number) is still a path.
        for path in ["2024-06-01", "12345", "inf", "true"] {
            let c = Config::resolve("cpu", None, &[format!("run.dataset={path}")]).unwrap();
            assert_eq!(c.run.dataset.as_deref(), Some(path));
        }
        let err = Config::resolve("cpu", None, &["expo.nope=1".into()]).unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown key 'expo.nope'"),
            "{err:#}"
        );
        let err = Config::resolve("cpu", None, &["expo.num_edit=9".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("num_edit"), "{err:#}");
        // Past what a bundle may declare: no controller would load the export.
        for (key, text) in [
            (
                "expo.num_samples=2000",
                "expo.num_samples must be at most 1024",
            ),
            ("net.num_critics=300", "net.num_critics must be at most 256"),
            (
                "diffusion.steps=20000",
                "diffusion.steps must be at most 10000",
            ),
        ] {
            let err = Config::resolve("cpu", None, &[key.into()]).unwrap_err();
            assert!(format!("{err:#}").contains(text), "{key}: {err:#}");
        }
        // Each within its cap, together 10^10 replay rows a step (an allocation abort).
        let keys = ["optim.utd=10000".into(), "optim.batch_size=1048576".into()];
        let err = Config::resolve("cpu", None, &keys).unwrap_err();
        assert!(
            format!("{err:#}").contains("optim.utd x optim.batch_size must be at most 4194304"),
            "{err:#}"
        );
        // Rows within the cap, each with 1024 candidates in the TD target's chains.
        let keys = [
            "optim.utd=64".into(),
            "optim.batch_size=65536".into(),
            "expo.num_samples=1024".into(),
        ];
        let err = Config::resolve("cpu", None, &keys).unwrap_err();
        assert!(
            format!("{err:#}").contains(
                "optim.utd x optim.batch_size x expo.num_samples must be at most 4194304 \
                 candidate rows per step (the TD target's chains), not 64 x 65536 x 1024"
            ),
            "{err:#}"
        );
        // A long chain multiplies the candidates' noise: checked once the action's
        // width is known.
        let keys = [
            "diffusion.steps=1000".into(),
            "optim.batch_size=32768".into(),
            "expo.num_samples=8".into(),
        ];
        let c = Config::resolve("cpu", None, &keys).unwrap();
        c.check_candidate_noise(2).unwrap();
        let err = c.check_candidate_noise(3).unwrap_err();
        assert!(
            format!("{err:#}").contains("the TD target's chain noise would hold 1574436864 values"),
            "{err:#}"
        );
        // rlpd's critics and actor are capped too (they were not: no bundle holds them).
        let keys = [
            "algo=\"rlpd\"".into(),
            "net.num_critics=256".into(),
            "net.critic_widths=[65536, 65536]".into(),
        ];
        let err = Config::resolve("cpu", None, &keys).unwrap_err();
        assert!(
            format!("{err:#}").contains("the critic ensemble would hold"),
            "{err:#}"
        );
        // Each size within its cap, together more activations than a bundle may hold;
        // BC's bundle acts with one sample, so the same sizes pass there.
        let huge = [
            "expo.num_samples=1024",
            "expo.num_edit=1024",
            "net.denoiser_expanded=65536",
        ];
        let mut sets: Vec<String> = huge.iter().map(|s| s.to_string()).collect();
        let err = Config::resolve("cpu", None, &sets).unwrap_err();
        assert!(
            format!("{err:#}").contains(
                "a bundle of this run would be refused: num_samples + num_edit = 2048 \
                 candidates through a layer 65536 wide"
            ),
            "{err:#}"
        );
        sets.push("algo=\"bc\"".into());
        Config::resolve("cpu", None, &sets).unwrap();
        let err = Config::resolve("cpu", None, &["expo.num_samples=\"x\"".into()]).unwrap_err();
        assert!(
            format!("{err:#}").contains("the overrides do not match the config schema"),
            "{err:#}"
        );
    }

    /// Every value that used to panic inside the learner, stop the run only through the
    /// divergence check, or train silently on a meaningless setting is refused when the
    /// config is resolved, by an error that names the key (and the value where it helps).
    #[test]
    fn out_of_range_values_are_refused_by_name() {
        let cases = [
            ("net.critic_widths=[64, 0]", "net.critic_widths[1]"),
            ("net.denoiser_hidden=0", "net.denoiser_hidden"),
            ("net.denoiser_expanded=0", "net.denoiser_expanded"),
            ("net.time_hidden=0", "net.time_hidden"),
            ("net.fourier_features=0", "net.fourier_features"),
            ("diffusion.beta_min=0", "diffusion.beta_min"),
            ("diffusion.beta_max=-1", "diffusion.beta_max"),
            (
                "diffusion.beta_min=20",
                "must not exceed diffusion.beta_max",
            ),
            ("diffusion.beta_max=inf", "diffusion.beta_max"),
            ("diffusion.ema_rate=0", "diffusion.ema_rate"),
            ("diffusion.ema_rate=2", "diffusion.ema_rate"),
            ("expo.edit_scale=-1", "expo.edit_scale"),
            ("expo.edit_scale=nan", "expo.edit_scale"),
            ("expo.edit_scale=1e30", "expo.edit_scale must be at most 2"),
            ("expo.init_temperature=0", "expo.init_temperature"),
            ("run.dataset=", "run.dataset is empty"),
            (
                "expo.init_temperature=1e20",
                "expo.init_temperature must be at most e^30",
            ),
            (
                "expo.target_entropy_per_dim=-inf",
                "expo.target_entropy_per_dim",
            ),
            (
                "expo.target_entropy_per_dim=-1e37",
                "expo.target_entropy_per_dim must be within ±100",
            ),
            ("optim.discount=1.5", "optim.discount"),
            ("optim.discount=-0.1", "optim.discount"),
            ("optim.discount=nan", "optim.discount"),
            ("optim.tau=0", "optim.tau"),
            ("optim.tau=2", "optim.tau"),
            ("optim.actor_lr=nan", "optim.actor_lr"),
            ("optim.critic_lr=-1e-3", "optim.critic_lr"),
            ("optim.edit_lr=inf", "optim.edit_lr"),
            ("optim.temperature_lr=-1", "optim.temperature_lr"),
            ("optim.actor_lr_decay_steps=0", "optim.actor_lr_decay_steps"),
            ("run.offline_episodes=0", "run.offline_episodes"),
            ("run.eval_episodes=0", "run.eval_episodes"),
            (
                "run.eval_episodes=4000000000000000000",
                "run.eval_episodes must be in 1..=1000000",
            ),
            ("net.num_critics=0", "net.num_critics must be at least 1"),
            (
                "optim.batch_size=0",
                "optim.batch_size must be in 1..=1048576, not 0",
            ),
            ("optim.utd=0", "optim.utd must be in 1..=10000, not 0"),
            // Sizes that overflowed a weight's element count or aborted on an allocation.
            (
                "optim.batch_size=1000000000000",
                "optim.batch_size must be in 1..=1048576, not 1000000000000",
            ),
            (
                "net.denoiser_hidden=5000000000",
                "net.denoiser_hidden must be in 1..=65536, not 5000000000",
            ),
            (
                "net.critic_widths=[64, 70000]",
                "net.critic_widths[1] must be in 1..=65536, not 70000",
            ),
            (
                "net.denoiser_blocks=100000",
                "net.denoiser_blocks must be at most 64, not 100000",
            ),
            (
                "optim.offline_fraction=1.5",
                "optim.offline_fraction must be in [0, 1], not 1.5",
            ),
            (
                "net.critic_widths=[]",
                "net.critic_widths must name at least one hidden layer for algo expo",
            ),
            ("diffusion.beta_max=1e5", "rounds to zero in f32 (alpha"),
        ];
        for (set, named) in cases {
            let err = Config::resolve("cpu", None, &[set.into()])
                .err()
                .unwrap_or_else(|| panic!("{set} was accepted"));
            assert!(format!("{err:#}").contains(named), "{set}: {err:#}");
        }
        // A subset larger than a recorded critic slice holds is refused with graphs (the
        // second update panicked on "258 member ids per slice"), taken without.
        let big = |graph: &str| {
            Config::resolve(
                "cpu",
                None,
                &[
                    "net.num_critics=130".into(),
                    "expo.critic_subset=129".into(),
                    format!("compute.graph={graph}"),
                ],
            )
        };
        let err = big("true").expect_err("a subset beyond the graph's slot");
        assert!(
            format!("{err:#}").contains("expo.critic_subset = 129 with compute.graph"),
            "{err:#}"
        );
        big("false").expect("a large subset without graphs");
        // The edges of the ranges, and settings that look odd but mean something: a
        // linear critic, no residual blocks, frozen networks (learning rate 0), no
        // discount, one whole copy per step for the EMA and the targets.
        Config::resolve(
            "cpu",
            None,
            &["algo=idql-select".into(), "net.critic_widths=[]".into()],
        )
        .expect("a linear critic without an edit policy");
        let err = Config::resolve(
            "cpu",
            None,
            &[
                "diffusion.beta_min=1e-9".into(),
                "diffusion.beta_max=1e-9".into(),
            ],
        )
        .expect_err("a schedule without noise in f32");
        assert!(
            format!("{err:#}").contains("the noise of step 0 rounds to zero in f32"),
            "{err:#}"
        );
        for set in [
            "net.denoiser_blocks=0",
            "optim.actor_lr=0",
            "optim.discount=0",
            "optim.discount=1",
            "optim.tau=1",
            "diffusion.ema_rate=1",
            "diffusion.beta_min=10",
        ] {
            Config::resolve("cpu", None, &[set.into()]).unwrap_or_else(|e| panic!("{set}: {e:#}"));
        }
        // Without a simulator nothing is generated or evaluated: a robot run needs its
        // dataset, not scripted episodes.
        Config::resolve(
            "cpu",
            None,
            &[
                "task=robot".into(),
                "run.dataset=demos".into(),
                "run.offline_episodes=0".into(),
                "run.eval_episodes=0".into(),
            ],
        )
        .unwrap();
        // Networks whose weights no bundle could hold: the widest aborted on an
        // allocation, a merely too wide one trained and exported, and every load of
        // its bundle refused the graph file.
        for sets in [
            &["net.denoiser_hidden=65536", "net.denoiser_expanded=65536"][..],
            &["net.denoiser_expanded=65536", "net.denoiser_blocks=9"],
        ] {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            let e = Config::resolve("paper", None, &sets).unwrap_err();
            assert!(
                format!("{e:#}").contains("the denoiser would hold"),
                "{sets:?}: {e:#}"
            );
        }
        // Layers the data's widths size count once they are known: a wide robot
        // observation made the critic's first layer too large, unseen, and the run
        // trained for hours before every load refused its bundle.
        let wide = Config::resolve(
            "cpu",
            None,
            &[
                "net.num_critics=10".into(),
                "net.critic_widths=[4096]".into(),
            ],
        )
        .unwrap();
        wide.check_graph_weights(20, 7).unwrap();
        let e = wide.check_graph_weights(8192, 7).unwrap_err().to_string();
        assert!(
            e.contains("the critic ensemble would hold 335872000 weights (observation 8192"),
            "{e}"
        );
        // The time embedding's layers count too (they alone can pass 1 GiB).
        let e = Config::resolve("paper", None, &["net.time_hidden=20000".into()]).unwrap_err();
        assert!(
            format!("{e:#}").contains("the denoiser would hold"),
            "{e:#}"
        );
        // rlpd on a robot: no bundle to export, no simulator to act in (it pretrained
        // 5,000 updates at `cpu`, then every export was refused).
        let e = Config::resolve(
            "cpu",
            None,
            &[
                "task=robot".into(),
                "run.dataset=demos".into(),
                "algo=rlpd".into(),
            ],
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("algo = \"rlpd\" with task = \"robot\""),
            "{e:#}"
        );
        // The advice names algorithms that exist (`idql` is refused: `idql-select`).
        let advice = format!("{e:#}");
        let names = advice.rsplit("use ").next().unwrap();
        for name in names
            .split([',', ' '])
            .filter(|n| !n.is_empty() && *n != "or")
        {
            assert!(
                Config::resolve("cpu", None, &[format!("algo={name}")]).is_ok(),
                "{name}: {advice}"
            );
        }
    }

    #[test]
    fn paper_preset_is_the_design_defaults() {
        let c = Config::paper();
        assert_eq!(
            (
                c.optim.utd,
                c.optim.batch_size,
                c.expo.num_samples,
                c.expo.num_edit
            ),
            (20, 256, 8, 8)
        );
        assert_eq!(
            (c.diffusion.steps, c.net.num_critics, c.expo.critic_subset),
            (10, 10, 2)
        );
        assert_eq!(
            (
                c.net.denoiser_hidden,
                c.net.denoiser_expanded,
                c.net.denoiser_blocks
            ),
            (256, 1024, 3)
        );
        assert_eq!(
            (c.optim.tau, c.optim.discount, c.diffusion.ema_rate),
            (0.005, 0.99, 0.001)
        );
        assert_eq!(c.expo.edit_scale, 0.05);
        // The rest of DESIGN.md section 2: time features (128 Fourier, a 256-wide MLP),
        // 3 x 256 critics (the edit policy's widths too), the VP schedule, 3e-4 for
        // every optimizer, entropy target -action_dim/2, 50/50 offline and online rows.
        assert_eq!((c.net.fourier_features, c.net.time_hidden), (128, 256));
        assert_eq!(c.net.critic_widths, [256, 256, 256]);
        assert_eq!((c.diffusion.beta_min, c.diffusion.beta_max), (0.1, 10.0));
        assert_eq!(
            (
                c.optim.actor_lr,
                c.optim.critic_lr,
                c.optim.edit_lr,
                c.optim.temperature_lr
            ),
            (3e-4, 3e-4, 3e-4, 3e-4)
        );
        assert_eq!(c.expo.target_entropy_per_dim, -0.5);
        assert_eq!(c.optim.offline_fraction, 0.5);
    }

    #[test]
    fn chain_precision_is_f32_unless_set() {
        assert_eq!(Config::paper().compute.chain_precision, ChainPrecision::F32);
        let c = Config::resolve("cpu", None, &["compute.chain_precision=\"bf16\"".into()]).unwrap();
        assert_eq!(c.compute.chain_precision, ChainPrecision::Bf16);
        // A saved config without the key (every run before it existed) ran in f32.
        let old: ComputeConfig = toml::from_str("candidates = \"hoisted\"").unwrap();
        assert_eq!(old.chain_precision, ChainPrecision::F32);
        let e =
            Config::resolve("cpu", None, &["compute.chain_precision=\"fp8\"".into()]).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("fp8") && msg.contains("bf16"), "{msg}");
    }
}

//! [`Networks`] on our own kernels ([`super::kernels`]): allocation-free per call.
//!
//! It reads the weights out of the bundle's ONNX initializers by the names
//! `shared_model::graphs` gives them and evaluates the same functions directly, with
//! scratch buffers sized at load time. It therefore runs only graphs written by this
//! project's exporter (checked: producer and graph names); the parity tests hold it to
//! burn and tract within 1e-4.

use super::Networks;
use super::kernels::{Packed, dense, exp, layer_norm, silu, silu_into};
use anyhow::{Context, Result, bail, ensure};
use shared_model::VerifiedBundle;
use shared_model::graphs::{
    LAYER_NORM_EPS, LOG_STD_CLIP_MIN, LOG_STD_MAX, LOG_STD_MIN, LogStdHead,
};
use shared_model::onnx::ModelProto;
use std::collections::HashMap;
use std::f32::consts::TAU;

/// Named float initializers of one graph with their dims.
struct Weights {
    file: String,
    map: HashMap<String, (Vec<usize>, Vec<f32>)>,
    /// Names read so far: a weight the manifest's network never reads means the graph
    /// is larger than the manifest says (tract would run it, this backend would not).
    used: std::cell::RefCell<std::collections::HashSet<String>>,
}

impl Weights {
    fn read(bytes: &[u8], file: &str, graph_name: &str) -> Result<Self> {
        let model = ModelProto::from_bytes(bytes).with_context(|| format!("{file}: not ONNX"))?;
        ensure!(
            model.producer_name == "expo-robot",
            "{file}: the native backend runs only bundles exported by expo-robot (producer is `{}`); use --backend tract",
            model.producer_name
        );
        let graph = model.graph.with_context(|| format!("{file}: no graph"))?;
        ensure!(
            graph.name == graph_name,
            "{file}: graph `{}` where `{graph_name}` was expected",
            graph.name
        );
        // The layer norms' ε is an attribute of their nodes, not an initializer: this
        // backend computes with LAYER_NORM_EPS, so a graph with another is refused (tract
        // follows the attribute). ONNX's default, where it is left out, is 1e-5.
        for node in graph
            .node
            .iter()
            .filter(|n| n.op_type == "LayerNormalization")
        {
            let eps = node
                .attribute
                .iter()
                .find(|a| a.name == "epsilon")
                .map_or(1e-5, |a| a.f);
            ensure!(
                eps == LAYER_NORM_EPS,
                "{file}: layer norm `{}` has epsilon {eps:e}; the native backend computes with \
                 {LAYER_NORM_EPS:e} (use --backend tract)",
                node.name
            );
        }
        let map = graph
            .initializer
            .iter()
            .filter_map(|t| {
                let dims = t.dims.iter().map(|&d| d as usize).collect();
                t.floats().map(|v| (t.name.clone(), (dims, v)))
            })
            .collect();
        Ok(Weights {
            file: file.into(),
            map,
            used: Default::default(),
        })
    }

    fn get(&self, name: &str) -> Result<(&[usize], &[f32])> {
        let (d, v) = self
            .map
            .get(name)
            .with_context(|| format!("{}: missing weight `{name}`", self.file))?;
        self.used.borrow_mut().insert(name.to_string());
        Ok((d, v))
    }

    /// A constant of the graph that this backend has built in: it must hold `value`
    /// everywhere, or the backends would compute different functions.
    fn constant(&self, name: &str, value: f32) -> Result<()> {
        let (_, v) = self.get(name)?;
        ensure!(
            shared_model::onnx::holds_constant(v, value),
            "{}: constant `{name}` is not {value} throughout",
            self.file
        );
        Ok(())
    }

    /// Refuses a graph with weights the network the manifest describes does not read.
    fn all_read(&self, manifest_says: &str) -> Result<()> {
        let used = self.used.borrow();
        let mut unread: Vec<&String> = self.map.keys().filter(|k| !used.contains(*k)).collect();
        unread.sort();
        if let Some(first) = unread.first() {
            bail!(
                "{}: weight `{first}` (and {} more) is not part of the network the manifest describes ({manifest_says})",
                self.file,
                unread.len() - 1
            );
        }
        Ok(())
    }

    /// A `[d_in, d_out]` matrix (and the optional `[d_out]` bias).
    fn dense(&self, name: &str, bias: bool) -> Result<Dense> {
        let (d, w) = self.get(&format!("{name}.weight"))?;
        ensure!(
            d.len() == 2,
            "{}: `{name}.weight` is not a matrix",
            self.file
        );
        let b = if bias {
            let b = self.get(&format!("{name}.bias"))?.1.to_vec();
            ensure!(
                b.len() == d[1],
                "{}: `{name}.bias` has {} values for {} outputs",
                self.file,
                b.len(),
                d[1]
            );
            Some(b)
        } else {
            None
        };
        Ok(Dense {
            d_in: d[0],
            d_out: d[1],
            w: Packed::new(w, d[0], d[1]),
            b,
        })
    }
}

struct Dense {
    d_in: usize,
    d_out: usize,
    w: Packed,
    b: Option<Vec<f32>>,
}

/// Checks that a width the weights give is the one the next step needs: a bundle whose
/// layers do not chain is refused at load (the kernels would otherwise stop the process
/// on their bounds checks mid-run).
fn width(file: &str, what: impl std::fmt::Display, found: usize, expected: usize) -> Result<()> {
    ensure!(
        found == expected,
        "{file}: {what} is {found} wide, expected {expected} (the layers do not chain)"
    );
    Ok(())
}

impl Dense {
    fn apply(&self, x: &[f32], rows: usize, accumulate: bool, y: &mut [f32]) {
        dense(
            x,
            rows,
            &self.w,
            self.b.as_deref(),
            accumulate,
            &mut y[..rows * self.d_out],
        );
    }
}

struct Block {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    up: Dense,
    down: Dense,
}

struct Denoiser {
    fourier: Vec<f32>,
    time_in: Dense,
    time_out: Dense,
    input_time: Dense,
    input_obs: Dense,
    input_action: Dense,
    blocks: Vec<Block>,
    output: Dense,
}

struct Edit {
    from_obs: Dense,
    from_action: Dense,
    hidden: Vec<Dense>,
    mean: Dense,
    log_std: Dense,
    /// The manifest's `networks.edit_log_std`, checked against the graph's constants.
    log_std_head: LogStdHead,
}

/// One critic layer: a packed weight per member (the first layer's split by input),
/// bias and norm parameters `[E, d_out]`.
struct CriticLayer {
    d_out: usize,
    w: Vec<Packed>,
    w_action: Vec<Packed>,
    bias: Vec<f32>,
    norm: Option<(Vec<f32>, Vec<f32>)>,
}

struct Critic {
    members: usize,
    layers: Vec<CriticLayer>,
}

pub struct NativeNetworks {
    obs_dim: usize,
    act_dim: usize,
    denoiser: Denoiser,
    edit: Option<Edit>,
    critic: Option<Critic>,
    /// Widest layer of any network: the scratch holds `rows × width`.
    width: usize,
    // Scratch, sized for the widest layer and the most rows at load.
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    row: Vec<f32>,
    row2: Vec<f32>,
}

impl NativeNetworks {
    pub fn load(bundle: &VerifiedBundle) -> Result<Self> {
        let m = &bundle.manifest;
        let g = &m.graphs;
        let (od, ad) = (m.observation.dim, m.action.chunk_dim());
        let w = Weights::read(&bundle.denoiser, &g.denoiser.file, "expo_denoiser")?;
        let nblocks = m.networks.denoiser_blocks;
        let denoiser = Denoiser {
            fourier: w.get("fourier")?.1.to_vec(),
            time_in: w.dense("time_in", true)?,
            time_out: w.dense("time_out", true)?,
            input_time: w.dense("input_time", false)?,
            input_obs: w.dense("input_obs", false)?,
            input_action: w.dense("input_action", true)?,
            blocks: (0..nblocks)
                .map(|i| {
                    Ok(Block {
                        gamma: w.get(&format!("blocks.{i}.norm.gamma"))?.1.to_vec(),
                        beta: w.get(&format!("blocks.{i}.norm.beta"))?.1.to_vec(),
                        up: w.dense(&format!("blocks.{i}.up"), true)?,
                        down: w.dense(&format!("blocks.{i}.down"), true)?,
                    })
                })
                .collect::<Result<_>>()?,
            output: w.dense("output", true)?,
        };
        w.constant("two_pi", TAU)?;
        w.all_read(&format!("networks.denoiser_blocks = {nblocks}"))?;
        ensure!(
            denoiser.input_obs.d_in == od && denoiser.input_action.d_in == ad,
            "{}: first layer sees {} + {} inputs, manifest says obs {od}, action {ad}",
            g.denoiser.file,
            denoiser.input_obs.d_in,
            denoiser.input_action.d_in
        );
        {
            let (f, d) = (g.denoiser.file.as_str(), &denoiser);
            let hidden = d.input_action.d_out;
            width(f, "time_in's input", d.time_in.d_in, 2 * d.fourier.len())?;
            width(f, "time_out's input", d.time_out.d_in, d.time_in.d_out)?;
            width(f, "input_time's input", d.input_time.d_in, d.time_out.d_out)?;
            width(f, "input_time's output", d.input_time.d_out, hidden)?;
            width(f, "input_obs's output", d.input_obs.d_out, hidden)?;
            for (i, b) in d.blocks.iter().enumerate() {
                width(
                    f,
                    format_args!("blocks.{i}.norm.gamma"),
                    b.gamma.len(),
                    hidden,
                )?;
                width(
                    f,
                    format_args!("blocks.{i}.norm.beta"),
                    b.beta.len(),
                    hidden,
                )?;
                width(f, format_args!("blocks.{i}.up's input"), b.up.d_in, hidden)?;
                width(
                    f,
                    format_args!("blocks.{i}.down's input"),
                    b.down.d_in,
                    b.up.d_out,
                )?;
                width(
                    f,
                    format_args!("blocks.{i}.down's output"),
                    b.down.d_out,
                    hidden,
                )?;
            }
            width(f, "output's input", d.output.d_in, hidden)?;
            width(f, "output's output", d.output.d_out, ad)?;
        }
        let edit = match (&bundle.edit, &g.edit) {
            (Some(bytes), Some(f)) => {
                let w = Weights::read(bytes, &f.file, "expo_edit")?;
                let n = m.networks.edit_widths.len();
                let e = Edit {
                    from_obs: w.dense("layers.0.obs", false)?,
                    from_action: w.dense("layers.0.action", true)?,
                    hidden: (1..n)
                        .map(|i| w.dense(&format!("layers.{i}"), true))
                        .collect::<Result<_>>()?,
                    mean: w.dense("head.mean", true)?,
                    log_std: w.dense("head.log_std", true)?,
                    // The manifest says which; the graph's constants must agree.
                    log_std_head: m.networks.edit_log_std,
                };
                match e.log_std_head {
                    LogStdHead::Tanh => {
                        w.constant("one", 1.0)?;
                        w.constant("half_log_std_range", 0.5 * (LOG_STD_MAX - LOG_STD_MIN))?;
                        w.constant("log_std_min", LOG_STD_MIN)?;
                    }
                    LogStdHead::Clip => {
                        w.constant("log_std_clip_min", LOG_STD_CLIP_MIN)?;
                        w.constant("log_std_max", LOG_STD_MAX)?;
                    }
                }
                w.all_read(&format!("networks.edit_widths has {n} entries"))?;
                let f = f.file.as_str();
                width(f, "layers.0.obs's input", e.from_obs.d_in, od)?;
                width(f, "layers.0.action's input", e.from_action.d_in, ad)?;
                let mut prev = e.from_action.d_out;
                width(f, "layers.0.obs's output", e.from_obs.d_out, prev)?;
                for (i, l) in e.hidden.iter().enumerate() {
                    width(f, format_args!("layers.{}'s input", i + 1), l.d_in, prev)?;
                    prev = l.d_out;
                }
                for (name, l) in [("head.mean", &e.mean), ("head.log_std", &e.log_std)] {
                    width(f, format_args!("{name}'s input"), l.d_in, prev)?;
                    width(f, format_args!("{name}'s output"), l.d_out, ad)?;
                }
                Some(e)
            }
            _ => None,
        };
        let critic = match (&bundle.critic, &g.critic) {
            (Some(bytes), Some(f)) => {
                let w = Weights::read(bytes, &f.file, "expo_critic")?;
                let depth = m.networks.critic_widths.len() + 1;
                let members = m.selection.ensemble_size;
                let file = f.file.as_str();
                let mut layers = vec![];
                // Width of the layer's input: the observation and action at layer 0.
                let mut d_in = od;
                for i in 0..depth {
                    // [E, k, n] → one packed [k, n] per member.
                    let per_member = |name: &str, k: usize| -> Result<(usize, Vec<Packed>)> {
                        let (d, v) = w.get(name)?;
                        ensure!(
                            d.len() == 3 && d[0] == members && d[1] == k,
                            "{file}: `{name}` is {d:?}, expected [{members} (selection.ensemble_size), {k}, width]"
                        );
                        let packed = v
                            .chunks_exact(d[1] * d[2])
                            .map(|m| Packed::new(m, d[1], d[2]))
                            .collect();
                        Ok((d[2], packed))
                    };
                    let (d_out, w_main, w_action) = if i == 0 {
                        let (h, wo) = per_member("layers.0.obs.weight", od)?;
                        let (ha, wa) = per_member("layers.0.action.weight", ad)?;
                        width(file, "layers.0.action.weight's output", ha, h)?;
                        (h, wo, wa)
                    } else {
                        let (h, wm) = per_member(&format!("layers.{i}.weight"), d_in)?;
                        (h, wm, vec![])
                    };
                    let per_layer = |name: String| -> Result<Vec<f32>> {
                        let v = w.get(&name)?.1;
                        width(file, format_args!("`{name}`"), v.len(), members * d_out)?;
                        Ok(v.to_vec())
                    };
                    let bias = per_layer(format!("layers.{i}.bias"))?;
                    let norm = if i + 1 < depth {
                        Some((
                            per_layer(format!("norms.{i}.gamma"))?,
                            per_layer(format!("norms.{i}.beta"))?,
                        ))
                    } else {
                        width(file, "the last layer's output", d_out, 1)?;
                        None
                    };
                    d_in = d_out;
                    layers.push(CriticLayer {
                        d_out,
                        w: w_main,
                        w_action,
                        bias,
                        norm,
                    });
                }
                for i in 0..depth - 1 {
                    w.constant(&format!("norms.{i}.unit"), 1.0)?;
                    w.constant(&format!("norms.{i}.zero"), 0.0)?;
                }
                w.all_read(&format!("networks.critic_widths has {} entries", depth - 1))?;
                Some(Critic { members, layers })
            }
            _ => None,
        };
        let s = &m.selection;
        let rows = s.num_samples + s.num_edit;
        let mut widest = denoiser.time_in.d_out.max(denoiser.time_out.d_out);
        widest = widest.max(denoiser.input_action.d_out);
        for b in &denoiser.blocks {
            widest = widest.max(b.up.d_out);
        }
        if let Some(e) = &edit {
            widest = widest.max(e.from_obs.d_out);
            for l in &e.hidden {
                widest = widest.max(l.d_out);
            }
        }
        for l in critic.iter().flat_map(|c| c.layers.iter()) {
            widest = widest.max(l.d_out);
        }
        let fourier_width = 2 * denoiser.fourier.len();
        Ok(NativeNetworks {
            obs_dim: od,
            act_dim: ad,
            width: widest,
            a: vec![0.0; rows * widest],
            b: vec![0.0; rows * widest],
            c: vec![0.0; rows * widest],
            row: vec![0.0; widest.max(fourier_width)],
            row2: vec![0.0; widest.max(fourier_width)],
            denoiser,
            edit,
            critic,
        })
    }

    /// Grows the scratch for `rows` (allocates only when a caller exceeds the load-time
    /// sizes).
    fn reserve(&mut self, rows: usize) {
        let need = rows * self.width;
        for v in [&mut self.a, &mut self.b, &mut self.c] {
            if v.len() < need {
                v.resize(need, 0.0);
            }
        }
    }
}

impl NativeNetworks {
    /// The rows of `actions` (`[rows, A]`), after checking one observation and each
    /// output's length, `per_row` values per action row (`[rows, A]`: A; the critic's
    /// `[K, rows]`: K): as the tract backend refuses other sizes, rather than truncating
    /// an input, panicking in a kernel or leaving an output's tail stale.
    fn check_sizes(
        &self,
        what: &str,
        obs: &[f32],
        actions: &[f32],
        outputs: &[usize],
        per_row: usize,
    ) -> Result<usize> {
        let ad = self.act_dim;
        ensure!(
            obs.len() == self.obs_dim && actions.len().is_multiple_of(ad),
            "{what}: {} observation values and {} action values, expected {} and rows of {ad}",
            obs.len(),
            actions.len(),
            self.obs_dim
        );
        let rows = actions.len() / ad;
        for &n in outputs {
            ensure!(
                n == per_row * rows,
                "{what}: an output buffer of {n} values, expected {}",
                per_row * rows
            );
        }
        Ok(rows)
    }
}

impl Networks for NativeNetworks {
    fn denoise(&mut self, obs: &[f32], noisy: &[f32], t: f32, eps: &mut [f32]) -> Result<()> {
        let rows = self.check_sizes("denoiser", obs, noisy, &[eps.len()], self.act_dim)?;
        self.reserve(rows);
        let d = &self.denoiser;
        let hidden = d.input_action.d_out;
        let d = &self.denoiser;
        // Conditioning row, once per call: time MLP and observation projection.
        let half = d.fourier.len();
        for (j, &f) in d.fourier.iter().enumerate() {
            let phase = t * f * TAU;
            self.row[j] = phase.cos();
            self.row[half + j] = phase.sin();
        }
        d.time_in.apply(&self.row, 1, false, &mut self.row2);
        silu(&mut self.row2[..d.time_in.d_out]);
        d.time_out.apply(&self.row2, 1, false, &mut self.row);
        d.input_time.apply(&self.row, 1, false, &mut self.row2); // [1, H] time projection
        d.input_obs.apply(obs, 1, true, &mut self.row2); // + observation projection
        // x = noisy · W_a + b_a + conditioning row
        let x = &mut self.a[..rows * hidden];
        d.input_action.apply(noisy, rows, false, x);
        for r in x.chunks_exact_mut(hidden) {
            for (v, c) in r.iter_mut().zip(&self.row2[..hidden]) {
                *v += c;
            }
        }
        for blk in &d.blocks {
            let e = blk.up.d_out;
            layer_norm(
                &self.a[..rows * hidden],
                hidden,
                &blk.gamma,
                &blk.beta,
                LAYER_NORM_EPS,
                &mut self.b[..rows * hidden],
            );
            blk.up.apply(&self.b, rows, false, &mut self.c);
            silu(&mut self.c[..rows * e]);
            blk.down.apply(&self.c, rows, true, &mut self.a);
        }
        silu_into(&self.a[..rows * hidden], &mut self.b[..rows * hidden]);
        d.output.apply(&self.b, rows, false, eps);
        Ok(())
    }

    fn edit(
        &mut self,
        obs: &[f32],
        base: &[f32],
        mean: &mut [f32],
        log_std: &mut [f32],
    ) -> Result<()> {
        let rows = self.check_sizes(
            "edit",
            obs,
            base,
            &[mean.len(), log_std.len()],
            self.act_dim,
        )?;
        self.reserve(rows);
        let Some(e) = &self.edit else {
            bail!("bundle has no edit policy")
        };
        let h0 = e.from_obs.d_out;
        e.from_obs.apply(obs, 1, false, &mut self.row);
        e.from_action.apply(base, rows, false, &mut self.a);
        for r in self.a[..rows * h0].chunks_exact_mut(h0) {
            for (v, c) in r.iter_mut().zip(&self.row[..h0]) {
                *v = (*v + c).max(0.0);
            }
        }
        let (mut cur, mut next) = (&mut self.a, &mut self.b);
        for l in &e.hidden {
            l.apply(cur, rows, false, next);
            for v in next[..rows * l.d_out].iter_mut() {
                *v = v.max(0.0);
            }
            std::mem::swap(&mut cur, &mut next);
        }
        e.mean.apply(cur, rows, false, mean);
        e.log_std.apply(cur, rows, false, log_std);
        match e.log_std_head {
            LogStdHead::Tanh => {
                let half_range = 0.5 * (LOG_STD_MAX - LOG_STD_MIN);
                for v in log_std.iter_mut() {
                    // tanh(x) = 1 − 2 / (e^{2x} + 1), with the vectorizable exp.
                    let th = 1.0 - 2.0 / (exp(2.0 * *v) + 1.0);
                    *v = (th + 1.0) * half_range + LOG_STD_MIN;
                }
            }
            LogStdHead::Clip => {
                for v in log_std.iter_mut() {
                    *v = v.clamp(LOG_STD_CLIP_MIN, LOG_STD_MAX);
                }
            }
        }
        Ok(())
    }

    fn critic(
        &mut self,
        obs: &[f32],
        actions: &[f32],
        members: &[i64],
        q: &mut [f32],
    ) -> Result<()> {
        let rows = self.check_sizes("critic", obs, actions, &[q.len()], members.len())?;
        self.reserve(rows);
        let Some(c) = &self.critic else {
            bail!("bundle has no critic")
        };
        let e_count = c.members;
        for (k, &member) in members.iter().enumerate() {
            ensure!(
                (0..e_count as i64).contains(&member),
                "critic member {member} out of range 0..{e_count}"
            );
            let m = member as usize;
            let (mut cur, mut next) = (&mut self.a, &mut self.b);
            for (i, l) in c.layers.iter().enumerate() {
                let h = l.d_out;
                let bias = &l.bias[m * h..(m + 1) * h];
                if i == 0 {
                    dense(obs, 1, &l.w[m], Some(bias), false, &mut self.row[..h]);
                    dense(
                        actions,
                        rows,
                        &l.w_action[m],
                        None,
                        false,
                        &mut next[..rows * h],
                    );
                    for r in next[..rows * h].chunks_exact_mut(h) {
                        for (v, o) in r.iter_mut().zip(&self.row[..h]) {
                            *v += o;
                        }
                    }
                } else {
                    dense(cur, rows, &l.w[m], Some(bias), false, &mut next[..rows * h]);
                }
                if let Some((gamma, beta)) = &l.norm {
                    layer_norm(
                        &next[..rows * h],
                        h,
                        &gamma[m * h..(m + 1) * h],
                        &beta[m * h..(m + 1) * h],
                        LAYER_NORM_EPS,
                        &mut self.c[..rows * h],
                    );
                    for (dst, &v) in next[..rows * h].iter_mut().zip(&self.c[..rows * h]) {
                        *dst = v.max(0.0);
                    }
                }
                std::mem::swap(&mut cur, &mut next);
            }
            q[k * rows..(k + 1) * rows].copy_from_slice(&cur[..rows]);
        }
        Ok(())
    }
}

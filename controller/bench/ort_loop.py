"""The EXPO action loop in Python with onnxruntime, over a bundle's ONNX files.

Usage: python3 controller/bench/ort_loop.py BUNDLE [--actions 10000] [--steps K]

The baseline for `controller bench`: the same algorithm (N candidates batched through
the executed denoising steps, edit, K sampled critics, argmax), one intra-op thread,
batch-1 observation, numpy for the glue. Prints p50/p99/max per action in microseconds.
"""
import argparse
import time
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort


def vp_plan(trained, executed, bmin, bmax):
    t = np.arange(1, trained + 1, dtype=np.float64)
    alphas = np.exp(-bmin / trained - 0.5 * (bmax - bmin) * (2 * t - 1) / trained**2)
    abar = np.cumprod(alphas)
    plan = []
    if executed == trained:
        for i in reversed(range(trained)):
            beta, a, ab = 1 - alphas[i], alphas[i], abar[i]
            sigma = 0.0 if i == 0 else np.sqrt(beta)
            plan.append((i, 1 / np.sqrt(a), -beta / np.sqrt(1 - ab) / np.sqrt(a), sigma))
    else:
        kept = [round((trained - 1) * (1 - j / (executed - 1))) for j in range(executed)] if executed > 1 else [trained - 1]
        for j, i in enumerate(kept):
            ab = abar[i]
            abp = abar[kept[j + 1]] if j + 1 < len(kept) else 1.0
            xc = np.sqrt(abp / ab)
            plan.append((i, xc, np.sqrt(1 - abp) - xc * np.sqrt(1 - ab), 0.0))
    return plan


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("--actions", type=int, default=10000)
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args()
    b = Path(args.bundle)
    m = tomllib.loads((b / "manifest.toml").read_text())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = {k: ort.InferenceSession(str(b / g["file"]), opts, providers=["CPUExecutionProvider"])
            for k, g in m["graphs"].items()}
    sel, d = m["selection"], m["diffusion"]
    n, n_edit, k, e = sel["num_samples"], sel["num_edit"], sel["critic_subset"], sel["ensemble_size"]
    ad = m["action"]["dim"]
    mean = np.array(m["observation"]["mean"], np.float32)
    std = np.array(m["observation"]["std"], np.float32)
    steps = args.steps or d["executed_steps"]
    plan = vp_plan(d["trained_steps"], steps, d["beta_min"], d["beta_max"])
    rng = np.random.default_rng(0)
    times = []
    for i in range(args.actions + 50):
        raw = np.sin((i * 31 + np.arange(len(mean))) * 0.01).astype(np.float32)
        t0 = time.perf_counter()
        obs = ((raw - mean) / std)[None, :]
        x = rng.standard_normal((n, ad), dtype=np.float32)
        for (t, xc, ec, sigma) in plan:
            eps = sess["denoiser"].run(None, {"obs": obs, "noisy_action": x, "t": np.array([[t]], np.float32)})[0]
            x = xc * x + ec * eps
            if sigma > 0:
                x += sigma * rng.standard_normal((n, ad), dtype=np.float32)
            x = np.clip(x, -1, 1).astype(np.float32)
        cands = x
        if n_edit:
            mu, ls = sess["edit"].run(None, {"obs": obs, "base_action": x[:n_edit]})
            z = rng.standard_normal(mu.shape, dtype=np.float32)
            cands = np.concatenate([x, x[:n_edit] + sel["edit_scale"] * np.tanh(mu + np.exp(ls) * z)])
        members = rng.choice(e, size=k, replace=False).astype(np.int64)
        q = sess["critic"].run(None, {"obs": obs, "action": cands.astype(np.float32), "members": members})[0]
        best = int(np.argmax(q.min(axis=0)))
        np.clip(cands[best], m["action"]["low"], m["action"]["high"])
        if i >= 50:
            times.append(time.perf_counter() - t0)
    t = np.sort(np.array(times)) * 1e6
    print(f"python onnxruntime {ort.__version__} ({steps} steps): p50 {np.percentile(t, 50):.0f} µs, "
          f"p99 {np.percentile(t, 99):.0f} µs, max {t[-1]:.0f} µs over {len(t)} actions")


if __name__ == "__main__":
    main()

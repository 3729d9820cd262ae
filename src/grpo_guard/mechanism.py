"""A Monte-Carlo look at GRPO-Guard's mechanism on a synthetic Gaussian policy (no model, no data).

The rollout policy and the current policy differ by a fixed velocity change ``delta_v`` (rms
``velocity_drift``, the same at every step, as a LoRA update roughly is). At step k the means then
differ by ``Delta mu = beta |dt_k| delta_v``, so the drift in units of the step std,
``u_k = rms(Delta mu) / s_k``, grows towards the low-noise steps. For each step we draw
``x_next = mu_old + s_k eps``, score it under both policies with :func:`grpo_guard.sde_step` and
:func:`grpo_guard.policy_loss`, and report the per-step ratio statistics of Flow-GRPO's raw ratio
and of RatioNorm's, plus the per-step gradient norms of the on-policy loss.

Use it to see, for your latent size D and schedule, whether a run will be in the regime where the
left shift decides the clipping (``bias/spread > 1``) and which clip ranges are sensible.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .core import flow_sigmas, per_step_grad_norms, per_step_ratio_stats, policy_loss, sde_step, spread

__all__ = ["MechanismSettings", "simulate_mechanism"]


@dataclass
class MechanismSettings:
    num_steps: int = 10
    shift: float = 3.0
    noise_level: float = 0.7
    trained_steps: int = 9
    dims: int = 16 * 64 * 64  # an SD3.5 latent at 512 px
    samples_per_step: int = 256
    velocity_drift: float = 0.01
    clip_plain: float = 1e-4
    clip_guard: float = 2e-6
    seed: int = 0

    def validate(self) -> None:
        for name in ("num_steps", "trained_steps", "dims", "samples_per_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.trained_steps > self.num_steps:
            raise ValueError(f"trained_steps: must be <= num_steps ({self.num_steps}), got {self.trained_steps}")
        for name in ("velocity_drift", "clip_plain", "clip_guard", "noise_level", "shift"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")


@torch.no_grad()
def _ratio_stats(cfg: MechanismSettings, sigmas: torch.Tensor, gen: torch.Generator) -> dict[str, dict]:
    n, d, k_tr = cfg.samples_per_step, cfg.dims, cfg.trained_steps
    delta_v = cfg.velocity_drift * torch.randn(d, generator=gen)
    adv = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)
    per_mode: dict[str, list] = {"plain": [], "ratio_norm": []}
    steps = []
    for k in range(k_tr):
        x = torch.randn(n, d, generator=gen)
        v_old = torch.randn(n, d, generator=gen)
        roll = sde_step(v_old, x, sigmas[k], sigmas[k + 1], cfg.noise_level, generator=gen)
        cur = sde_step(v_old + delta_v, x, sigmas[k], sigmas[k + 1], cfg.noise_level, next_state=roll.next_state)
        for mode, clip in (("plain", cfg.clip_plain), ("ratio_norm", cfg.clip_guard)):
            _, st = policy_loss(cur.log_prob, roll.log_prob, adv, mean=cur.mean, old_mean=roll.mean, std=cur.std,
                                ratio_mode=mode, clip_range=clip)
            per_mode[mode].append((st["log_ratio"], st["log_ratio_used"], st["bias"]))
        steps.append(torch.full((n,), k, dtype=torch.long))
    step_index = torch.cat(steps)
    adv_all = adv.repeat(k_tr)
    out = {}
    for mode, clip in (("plain", cfg.clip_plain), ("ratio_norm", cfg.clip_guard)):
        lr, lru, b = (torch.cat(parts) for parts in zip(*per_mode[mode]))
        out[mode] = per_step_ratio_stats(step_index, lr, adv_all, k_tr, clip, log_ratio_used=lru, bias=b)
    return out


def _grad_norms(cfg: MechanismSettings, sigmas: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
    n, d = min(cfg.samples_per_step, 32), min(cfg.dims, 4096)
    adv = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)
    theta = torch.zeros(d, requires_grad=True)
    out = {}
    for name, mode, weight in (("plain", "plain", "none"), ("ratio_norm", "ratio_norm", "none"),
                               ("grpo_guard", "ratio_norm", "inv_dt")):
        g = torch.Generator().manual_seed(cfg.seed + 1)
        losses = []
        for k in range(cfg.trained_steps):
            x, v0 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
            roll = sde_step(v0, x, sigmas[k], sigmas[k + 1], cfg.noise_level, generator=g)
            cur = sde_step(v0 + theta, x, sigmas[k], sigmas[k + 1], cfg.noise_level, next_state=roll.next_state)
            dt = (sigmas[k + 1] - sigmas[k]).expand(n)
            loss, _ = policy_loss(cur.log_prob, roll.log_prob, adv, mean=cur.mean, old_mean=roll.mean, std=cur.std,
                                  dt=dt, ratio_mode=mode, step_weight=weight, clip_range=1.0)
            losses.append(loss)
        out[name] = per_step_grad_norms(losses, [theta])
    return out


def simulate_mechanism(cfg: MechanismSettings) -> dict:
    """Run the simulation; returns a JSON-friendly dict (settings, sigmas, per-step stats, grad norms)."""
    cfg.validate()
    sigmas = flow_sigmas(cfg.num_steps, cfg.shift)
    gen = torch.Generator().manual_seed(cfg.seed)
    stats = _ratio_stats(cfg, sigmas, gen)
    norms = _grad_norms(cfg, sigmas, gen)
    return {
        "settings": asdict(cfg),
        "sigmas": sigmas.tolist(),
        "ratio_stats": {m: {k: v.tolist() for k, v in st.items()} for m, st in stats.items()},
        "grad_norms": {m: v.tolist() for m, v in norms.items()},
        "grad_norm_spread": {m: float(spread(v)) for m, v in norms.items()},
    }


def format_table(result: dict) -> str:
    """A per-step text table of the key numbers."""
    p, g = result["ratio_stats"]["plain"], result["ratio_stats"]["ratio_norm"]
    gn = result["grad_norms"]
    s = result["settings"]
    lines = [
        f"D = {s['dims']}, {s['num_steps']} steps (shift {s['shift']}, a = {s['noise_level']}), velocity drift "
        f"{s['velocity_drift']}, clip plain {s['clip_plain']:g} / RatioNorm {s['clip_guard']:g}",
        "step  sigma   u       bias/spread  raw r-1     P(r>1+e|A>0)  P(r<1-e|A<0)  | RatioNorm r_hat-1  "
        "P(>|A>0)  P(<|A<0)  | grad plain  guard",
    ]
    for k in range(len(p["count"])):
        lines.append(
            f"{k:>4}  {result['sigmas'][k]:.3f}  {p['drift_u'][k]:.4f}  {p['bias_over_spread'][k]:>11.2f}  "
            f"{p['raw_ratio_mean'][k] - 1:+.2e}   {p['clip_high_pos'][k]:>12.3f}  {p['clip_low_neg'][k]:>12.3f}  | "
            f"{g['ratio_mean'][k] - 1:+.2e}          {g['clip_high_pos'][k]:>8.3f}  {g['clip_low_neg'][k]:>8.3f}  | "
            f"{gn['plain'][k]:.2e}    {gn['grpo_guard'][k]:.2e}"
        )
    sp = result["grad_norm_spread"]
    lines.append(
        f"gradient-norm spread across steps (max/min): Flow-GRPO {sp['plain']:.1f}x, RatioNorm only "
        f"{sp['ratio_norm']:.1f}x, GRPO-Guard (RatioNorm + 1/|dt|) {sp['grpo_guard']:.2f}x"
    )
    return "\n".join(lines)


def plot_mechanism(result: dict, path) -> None:
    """Write a 3-panel PNG: raw vs normalised ratio shift, clip fractions by advantage sign, grad norms."""
    # matplotlib: imported where used (seconds to import; runs that need none skip it)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p, g = result["ratio_stats"]["plain"], result["ratio_stats"]["ratio_norm"]
    steps = list(range(len(p["count"])))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    ax = axes[0]
    ax.plot(steps, [m - 1 for m in p["raw_ratio_mean"]], "o-", label="Flow-GRPO raw ratio")
    ax.plot(steps, [m - 1 for m in g["ratio_mean"]], "s-", label="RatioNorm ratio")
    ax.axhline(0, color="k", lw=0.5)
    ax.set(title="mean ratio - 1 per step", xlabel="denoising step (high noise -> low)", yscale="symlog")
    ax.set_yscale("symlog", linthresh=1e-7)
    ax.legend()
    ax = axes[1]
    ax.plot(steps, p["clip_high_pos"], "o-", label="Flow-GRPO P(r > 1+eps | A > 0)")
    ax.plot(steps, p["clip_low_neg"], "o--", label="Flow-GRPO P(r < 1-eps | A < 0)")
    ax.plot(steps, g["clip_high_pos"], "s-", label="RatioNorm P(> | A > 0)")
    ax.plot(steps, g["clip_low_neg"], "s--", label="RatioNorm P(< | A < 0)")
    ax.set(title="clip fractions by advantage sign", xlabel="denoising step", ylim=(-0.02, 1.02))
    ax.legend(fontsize=7)
    ax = axes[2]
    for name, label in (("plain", "Flow-GRPO"), ("ratio_norm", "RatioNorm"), ("grpo_guard", "GRPO-Guard")):
        ax.plot(steps, result["grad_norms"][name], "o-", label=f"{label} ({result['grad_norm_spread'][name]:.1f}x)")
    ax.set(title="per-step gradient norm (on-policy)", xlabel="denoising step", yscale="log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

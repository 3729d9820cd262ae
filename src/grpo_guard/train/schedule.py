"""The sampler's step grid, shared by the rollout, the update and the evaluation.

A :class:`StepSchedule` says which of the K denoising steps are stochastic (the SDE window) and which
of those are trained, and holds the SDE coefficients of every step, computed once per device and
dtype. The rollout steps with them and the update gathers the trained rows from the same table, so
that both passes use bit for bit the same coefficients (the on-policy ratio is exactly 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..core import SDECoefficients, sde_coefficients
from ..core._checks import check_finite
from ..seeding import derive_generator
from ..core.sde import compute_dtype

__all__ = ["StepSchedule"]


@dataclass
class StepSchedule:
    """K denoising steps from sigma = 1 (noise) to 0 (data).

    Attributes:
        sigmas: (K + 1,) the grid, strictly decreasing from a value in (0, 1] to a value >= 0.
        trained_steps: schedule indices k whose transitions the update trains (each in ``sde_steps``).
        sde_steps: schedule indices sampled with the SDE at ``noise_level``; the others take the
            deterministic Euler (ODE) step.
        noise_level: the SDE's ``a`` (Flow-GRPO's noise level, DanceGRPO's eta).
        sde_type: ``"flow_grpo"`` or ``"dance_grpo"`` (see :mod:`grpo_guard.core.sde`).
    """

    sigmas: Tensor
    trained_steps: Sequence[int]
    sde_steps: Sequence[int]
    noise_level: float
    sde_type: str = "flow_grpo"
    _tables: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_config(cls, sample, sigmas: Tensor, trained_steps: Sequence[int]) -> StepSchedule:
        """The schedule of a run's ``sample`` config (:class:`grpo_guard.config.SampleConfig`) on the
        backbone's ``sigmas``; ``trained_steps`` from ``RunConfig.trained_step_indices()`` (``[]`` for a
        sampler that trains nothing, e.g. the evaluation)."""
        window = range(*sample.sde_window) if sample.sde_window else range(sample.num_steps)
        return cls(sigmas, list(trained_steps), list(window), sample.noise_level, sample.sde_type)

    @classmethod
    def for_epoch(cls, cfg, sigmas: Tensor, epoch: int) -> StepSchedule:
        """The schedule of ``epoch`` of a run (``cfg``: :class:`grpo_guard.config.RunConfig`): the run's fixed one,
        or with ``sample.sde_window_size`` (Flow-GRPO-Fast) a window of that many SDE steps whose start is drawn
        uniformly within ``sample.sde_window_range`` for this epoch (seeded by the run seed and the epoch, the
        same on every process); the other steps take the ODE step."""
        s = cfg.sample
        if not s.sde_window_size:
            return cls.from_config(s, sigmas, cfg.trained_step_indices())
        lo, hi = s.window_range()
        g = derive_generator(cfg.seed, "sde-window", epoch)
        start = lo + int(torch.randint(hi - lo - s.sde_window_size + 1, (1,), generator=g))
        window = (start, start + s.sde_window_size)
        return cls(sigmas, cfg.trained_step_indices(window), list(range(*window)), s.noise_level, s.sde_type)

    @property
    def num_steps(self) -> int:
        return self.sigmas.shape[0] - 1

    def levels(self) -> list[float]:
        """The noise level of each of the K steps: ``noise_level`` on the SDE steps, 0 on the ODE steps."""
        sde = set(self.sde_steps)
        return [self.noise_level if k in sde else 0.0 for k in range(self.num_steps)]

    def coefficient_table(self, device: torch.device | str, dtype: torch.dtype) -> SDECoefficients:
        """(K,) :func:`~grpo_guard.core.sde_coefficients` of every step, in the compute dtype of a state of
        ``dtype`` (float32, or float64 for float64 states) on ``device``; computed once per (device, dtype).
        Elementwise, so each entry is bit for bit what a per-sample call computes."""
        dtype = compute_dtype(dtype)
        key = (str(torch.device(device)), dtype)
        table = self._tables.get(key)
        if table is None:
            sig = self.sigmas.to(device=device, dtype=dtype)
            levels = torch.tensor(self.levels(), dtype=dtype, device=device)
            table = self._tables[key] = sde_coefficients(sig[:-1], sig[1:], levels, self.sde_type)
        return table

    def step_coefficients(self, ks: Tensor, state: Tensor) -> SDECoefficients:
        """The coefficients of schedule steps ``ks`` (one row each, (N,) long) on the device and in the
        compute dtype of ``state``: rows of :meth:`coefficient_table`."""
        table = self.coefficient_table(state.device, state.dtype)
        ks = ks.to(state.device)
        return SDECoefficients(*(t.index_select(0, ks) for t in table))

    def validate(self) -> None:
        """Raise ValueError for a trained step listed twice or not stochastic, or a grid that is not
        finite and strictly decreasing from a value in (0, 1] to a value >= 0."""
        if len(set(self.trained_steps)) != len(self.trained_steps):
            raise ValueError(f"trained_steps: contains a step twice ({list(self.trained_steps)})")
        if not set(self.trained_steps) <= set(self.sde_steps):
            raise ValueError("trained_steps: every trained step must be stochastic (in sde_steps)")
        s = self.sigmas
        check_finite("sigmas", s)
        if not bool(((s[:-1] <= 1) & (s[:-1] > 0) & (s[1:] >= 0) & (s[1:] < s[:-1])).all()):
            raise ValueError("sigmas: must decrease strictly from a value in (0, 1] to a value >= 0")

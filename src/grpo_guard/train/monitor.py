"""The over-optimization monitor: proxy up, gold down.

It follows the normalised gold score (``gold_normalized_avg``, 1 = base model) and the proxy reward
epoch by epoch. It flags *hacking* at the first epoch of ``patience`` consecutive evaluations in
which the gold has fallen more than ``drop`` (a fraction) below its best so far **while** the
smoothed proxy is above its value at that best-gold epoch (the proxy still rises while real quality
falls: the paper's "implicit over-optimization"). It also says when a new best gold is reached, so
that the loop keeps the best-gold weights. Its state is saved in every checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..config import MonitorConfig

__all__ = ["MonitorEvent", "OveroptimizationMonitor"]

_SMOOTH = 0.5  # EMA factor of the proxy (per epoch)


@dataclass
class MonitorEvent:
    new_best: bool = False
    hacking: bool = False  # hacking is (or was already) flagged
    hacking_epoch: int | None = None


@dataclass
class _State:
    best_gold: float | None = None
    best_epoch: int | None = None
    proxy_at_best: float | None = None
    proxy_smooth: float | None = None
    streak_start: int | None = None
    streak: int = 0
    hacking_epoch: int | None = None
    last_gold: float | None = None
    history: list = field(default_factory=list)  # [epoch, proxy, gold] per epoch


class OveroptimizationMonitor:
    def __init__(self, cfg: MonitorConfig):
        self.cfg = cfg
        self.s = _State()

    def update(self, epoch: int, proxy: float | None, gold: float | None) -> MonitorEvent:
        """Feed one epoch (``None`` where a value was not measured this epoch)."""
        s = self.s
        s.history.append([epoch, proxy, gold])
        if proxy is not None:
            s.proxy_smooth = proxy if s.proxy_smooth is None else _SMOOTH * s.proxy_smooth + (1 - _SMOOTH) * proxy
        ev = MonitorEvent(hacking=s.hacking_epoch is not None, hacking_epoch=s.hacking_epoch)
        if gold is None or not self.cfg.enabled:
            return ev
        s.last_gold = gold
        if s.best_gold is None or gold > s.best_gold:
            s.best_gold, s.best_epoch, s.proxy_at_best = gold, epoch, s.proxy_smooth
            s.streak, s.streak_start = 0, None
            ev.new_best = True
            return ev
        fallen = gold < (1 - self.cfg.drop) * s.best_gold
        rising = (s.proxy_smooth is not None and s.proxy_at_best is not None and s.proxy_smooth > s.proxy_at_best)
        if fallen and rising:
            s.streak += 1
            s.streak_start = epoch if s.streak_start is None else s.streak_start
            if s.streak >= self.cfg.patience and s.hacking_epoch is None:
                s.hacking_epoch = s.streak_start
        else:
            s.streak, s.streak_start = 0, None
        ev.hacking, ev.hacking_epoch = s.hacking_epoch is not None, s.hacking_epoch
        return ev

    def row_fields(self) -> dict:
        s = self.s
        return {"monitor/best_gold": s.best_gold, "monitor/best_gold_epoch": s.best_epoch,
                "monitor/hacking": s.hacking_epoch is not None, "monitor/hacking_epoch": s.hacking_epoch}

    def state_dict(self) -> dict:
        return asdict(self.s)

    def load_state_dict(self, state: dict) -> None:
        self.s = _State(**state) if state else _State()

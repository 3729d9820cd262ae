from grpo_guard.config import MonitorConfig
from grpo_guard.train.monitor import OveroptimizationMonitor


def _run(stream, **kw):
    mon = OveroptimizationMonitor(MonitorConfig(**kw))
    events = [mon.update(e, p, g) for e, (p, g) in enumerate(stream)]
    return mon, events


def test_flags_first_epoch_of_sustained_drop_while_proxy_rises():
    # gold peaks at epoch 3 (1.10), then falls below 0.9 * 1.10 = 0.99 from epoch 6 while the proxy rises
    gold = [1.0, 1.05, 1.08, 1.10, 1.05, 1.00, 0.95, 0.90, 0.85, 0.80]
    proxy = [0.1 * e for e in range(10)]
    mon, events = _run(zip(proxy, gold), drop=0.1, patience=2)
    assert [e.hacking for e in events] == [False] * 7 + [True] * 3
    assert events[-1].hacking_epoch == 6
    assert mon.row_fields()["monitor/best_gold_epoch"] == 3
    assert [e.new_best for e in events][:4] == [True] * 4


def test_no_flag_when_proxy_falls_too():
    gold = [1.0, 1.1, 0.9, 0.8, 0.7, 0.6]
    proxy = [1.0, 1.1, 0.9, 0.8, 0.7, 0.6]
    _, events = _run(zip(proxy, gold), drop=0.1, patience=2)
    assert not any(e.hacking for e in events)


def test_single_noisy_dip_is_not_flagged():
    gold = [1.0, 1.0, 0.85, 1.0, 0.99, 1.0]
    proxy = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    _, events = _run(zip(proxy, gold), drop=0.1, patience=2)
    assert not any(e.hacking for e in events)


def test_missing_gold_epochs_are_skipped_and_state_round_trips():
    stream = [(0.0, 1.0), (0.1, None), (0.2, 1.2), (0.3, None), (0.4, 1.0), (0.5, 0.9), (0.6, 0.8)]
    mon, events = _run(stream, drop=0.1, patience=2)
    assert events[-1].hacking and events[-1].hacking_epoch == 4
    fresh = OveroptimizationMonitor(MonitorConfig(drop=0.1, patience=2))
    fresh.load_state_dict(mon.state_dict())
    assert fresh.state_dict() == mon.state_dict()
    assert fresh.update(7, 0.7, 0.7).hacking_epoch == 4

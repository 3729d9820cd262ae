import pytest

from grpo_guard.config import ConfigError, RunConfig, apply_overrides, available_configs, dump_config, load_config


def test_defaults_validate():
    cfg = load_config(None)
    assert isinstance(cfg, RunConfig) and cfg.loss.ratio_mode == "plain"


def test_overrides_and_types():
    cfg = load_config(None, ["train.lr=3e-4", "loss.clip_range=[1e-4, 2e-4]", "sample.sde_window=[2, 6]",
                             "rewards.0.weight=2", "eval.evaluator=null", "monitor.stop_on_hacking=true"])
    assert cfg.train.lr == 3e-4 and cfg.loss.clip_range == [1e-4, 2e-4]
    assert cfg.sample.sde_window == [2, 6] and cfg.rewards[0].weight == 2.0
    assert cfg.eval.evaluator is None and cfg.monitor.stop_on_hacking is True
    assert cfg.trained_step_indices() == [2, 3, 4]  # int(4 * 0.99) = 3 steps of the window


def test_yaml_float_strings_are_numbers(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 1e-4\n")  # YAML 1.1 reads 1e-4 as a string
    assert load_config(str(p)).train.lr == 1e-4


@pytest.mark.parametrize("override, key", [
    (["train.lrr=1"], "train.lrr"),
    (["bogus=1"], "bogus"),
    (["train.lr=fast"], "train.lr"),
    (["train.epochs=1.5"], "train.epochs"),
    (["sample.group_size=1"], "sample.group_size"),
    (["loss.ratio_mode=guard"], "loss.ratio_mode"),
    (["loss.clip_range=0"], "loss.clip_range"),
    (["train.updates_per_epoch=3"], "train.updates_per_epoch"),
    (["sample.sde_window=[5, 2]"], "sample.sde_window"),
    (["rewards.0.role=optimised"], "rewards[0].role"),
    (["rewards.3.weight=1"], "rewards.3"),
    (["prompts.source=file"], "prompts.path"),
    (["train.lr"], "train.lr"),
    (["monitor.stop_on_hacking=1"], "monitor.stop_on_hacking"),
])
def test_bad_config_is_one_clear_error(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, override)
    msg = str(e.value)
    assert key in msg and "\n" not in msg


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such config"):
        load_config("no_such_config_name")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(str(top))


def test_inherit_and_cycle(tmp_path):
    (tmp_path / "a.yaml").write_text(f"inherit: {tmp_path / 'b.yaml'}\ntrain:\n  lr: 0.5\n")
    (tmp_path / "b.yaml").write_text("train:\n  epochs: 7\n  lr: 0.1\n")
    cfg = load_config(str(tmp_path / "a.yaml"))
    assert cfg.train.epochs == 7 and cfg.train.lr == 0.5
    (tmp_path / "c.yaml").write_text(f"inherit: {tmp_path / 'd.yaml'}\n")
    (tmp_path / "d.yaml").write_text(f"inherit: {tmp_path / 'c.yaml'}\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(str(tmp_path / "c.yaml"))


def test_dump_round_trip(tmp_path):
    cfg = load_config(None, ["train.lr=3e-4", "rewards=[{name: ink, weight: 0.5}]"])
    p = tmp_path / "resolved.yaml"
    p.write_text(dump_config(cfg))
    assert load_config(str(p)) == cfg


def test_builtin_configs_load():
    names = available_configs()
    for required in ("flow_grpo", "flow_grpo_kl", "grpo_guard", "mean_revised", "ratio_norm", "temp_reweight"):
        assert required in names
    for name in names:
        if name.startswith(("sd35m_", "flux_")):  # the GPU configs need the user's prompt file
            with pytest.raises(ConfigError, match="prompts.path"):
                load_config(name)
            cfg = load_config(name, [f"prompts.path={__file__}"])
            assert cfg.backbone.name in ("sd3", "flux") and cfg.train.mixed_precision == "bf16"
        else:
            load_config(name)


def test_apply_overrides_does_not_mutate():
    base = {"train": {"lr": 1.0}}
    out = apply_overrides(base, ["train.lr=2"])
    assert base["train"]["lr"] == 1.0 and out["train"]["lr"] == 2

from pathlib import Path

import pytest

from dualattn.train.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    build_config,
    config_differences,
    dump_config,
    load_config,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RUN_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith(("reproduce", "transfer", "finetune")))


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert cfg.model.dim % cfg.model.num_heads == 0


def test_uea_recipe_matches_paper():
    cfg = load_config(CONFIGS / "uea.yaml")
    assert (cfg.model.depth, cfg.model.dim, cfg.model.num_heads) == (2, 512, 8)
    assert cfg.model.dropout == 0.1 and cfg.optim.name == "radam" and cfg.optim.lr == 1e-3
    assert cfg.data.batch_size == 16
    lra = load_config(CONFIGS / "lra-listops.yaml")
    assert (lra.model.depth, lra.model.num_heads, lra.model.dim, lra.model.mlp_hidden) == (2, 2, 64, 128)


def test_typo_is_an_error_naming_the_field(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data: {name: JapaneseVowels}\noptim: {lr_rate: 0.1}\n")
    with pytest.raises(ConfigError, match=r"optim\.lr_rate"):
        load_config(p)


def test_overrides_are_applied_and_validated(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data: {name: JapaneseVowels}\n")
    cfg = load_config(p, ["optim.lr=3e-4", "model.variant=bn+sh", "trainer.max_epochs=7", "data.options.val_fraction=0.3"])
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.model.variant == "bn+sh"
    assert cfg.trainer.max_epochs == 7
    assert cfg.data.options == {"val_fraction": 0.3}
    with pytest.raises(ConfigError, match="trainer.max_epochs"):
        load_config(p, ["trainer.max_epochs=zero"])
    with pytest.raises(ConfigError, match="model.nope"):
        load_config(p, ["model.nope=1"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(p, ["model.dim"])


def test_semantic_errors():
    with pytest.raises(ConfigError, match="variant"):
        build_config({"data": {"name": "x"}, "model": {"variant": "softmaxx"}})
    with pytest.raises(ConfigError, match="divisible"):
        build_config({"data": {"name": "x"}, "model": {"dim": 30, "num_heads": 4}})
    with pytest.raises(ConfigError, match="data"):
        build_config({"model": {"dim": 32}})
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/cfg.yaml")


def test_dump_roundtrip(tmp_path):
    cfg = build_config(apply_overrides({"data": {"name": "BasicMotions"}}, ["seed=3"]))
    dump_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_config_differences_names_changed_fields_and_skips_ignored():
    base = build_config({"data": {"name": "x"}}).model_dump(mode="json")
    now = build_config({"name": "b", "data": {"name": "x"}, "trainer": {"min_delta": 0.001, "num_threads": 2}})
    now = now.model_dump(mode="json")
    assert config_differences(base, base) == []
    diffs = config_differences(base, now)
    assert "trainer.min_delta: 0.0 -> 0.001" in diffs and "trainer.num_threads: None -> 2" in diffs
    assert any(d.startswith("name: ") for d in diffs)
    assert config_differences(base, now, {"name", "trainer.num_threads"}) == ["trainer.min_delta: 0.0 -> 0.001"]
    # a section missing from the saved config counts as different, not as an error
    assert "trainer.min_delta: None -> 0.001" in config_differences({"name": "b"}, now)


def test_resume_refuses_a_changed_config(tmp_path):
    from dualattn.train.run import RunError, _check_resume_compatible

    dump_config(build_config({"data": {"name": "x"}}), tmp_path / "config.yaml")
    _check_resume_compatible(tmp_path, build_config({"data": {"name": "x"}, "trainer": {"max_epochs": 7}}))  # allowed
    with pytest.raises(RunError, match=r"optim.lr: 0.001 -> 0.01"):
        _check_resume_compatible(tmp_path, build_config({"data": {"name": "x"}, "optim": {"lr": 0.01}}))

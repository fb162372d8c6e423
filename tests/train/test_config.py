from pathlib import Path

import pytest

from dualattn.train.config import ConfigError, RunConfig, apply_overrides, build_config, dump_config, load_config

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

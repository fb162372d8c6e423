"""Transfer config: widths, head/task consistency, solver choice, shipped configs."""

import pytest

from dualattn.transfer import TransferConfig, load_config
from dualattn.transfer.runner import resolve_solver

CONFIG = {
    "tasks": [{"name": "digits", "backbone": "tiny-vit", "tokens": 5, "widths": [2, 3, "full"]}],
    "heads": [
        {"name": "linear-probe", "kind": "baseline", "beta_grid": [0.1, 1.0]},
        {"name": "convex:linear", "kind": "convex", "head": "linear", "beta_grid": [0.3, 3.0], "widths": [2, 3]},
        {"name": "mlp", "kind": "baseline", "widths": [3]},
        {"name": "adam:linear", "kind": "nonconvex", "head": "linear", "beta_from": "convex:linear",
         "widths": [2, 3]},
    ],
}


def test_width_and_solver_validation():
    tc = TransferConfig.model_validate(CONFIG).tasks[0]
    assert tc.resolve_widths(32) == [2, 3, 32]
    with pytest.raises(ValueError, match="width 64 exceeds the backbone width 32"):
        tc.model_copy(update={"widths": [8, 64]}).resolve_widths(32)
    with pytest.raises(ValueError, match="pca_dim .* or widths"):
        TransferConfig.model_validate(dict(CONFIG, tasks=[dict(CONFIG["tasks"][0], pca_dim=4)]))
    with pytest.raises(ValueError, match="width 5 is not among"):
        TransferConfig.model_validate(dict(CONFIG, heads=[dict(CONFIG["heads"][2], widths=[5])]))
    with pytest.raises(ValueError, match="source head must run at every width"):
        TransferConfig.model_validate(dict(CONFIG, heads=[*CONFIG["heads"][:3], dict(CONFIG["heads"][3], widths=None)]))
    with pytest.raises(ValueError, match="beta_grid"):
        TransferConfig.model_validate(dict(CONFIG, heads=[dict(CONFIG["heads"][0], beta_grid=[1.0])]))
    assert resolve_solver("auto") == "auto"
    assert resolve_solver("fista") == "fista"
    with pytest.raises(ValueError, match="solver: expected one of .*'factorised'.*got 'newton'"):
        resolve_solver("newton")


def test_shipped_configs_validate():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs"
    for name in ("transfer.yaml", "transfer-quick.yaml", "transfer-width.yaml"):
        load_config(root / name)


def test_config_validation_names_the_problem():
    bad = dict(CONFIG, heads=[{"name": "convex:x", "kind": "convex"}])
    with pytest.raises(ValueError, match="needs head"):
        TransferConfig.model_validate(bad)
    with pytest.raises(ValueError, match="seeds"):
        TransferConfig.model_validate(dict(CONFIG, seeds=[]))
    with pytest.raises(ValueError, match="unique"):
        TransferConfig.model_validate(dict(CONFIG, heads=[CONFIG["heads"][0]] * 2))


def test_with_max_time_copies_and_touches_only_the_named_convex_heads():
    cfg = TransferConfig.model_validate(CONFIG)
    convex = [h.name for h in cfg.heads if h.kind == "convex"]
    assert convex, "the test config needs a convex head"
    capped = cfg.with_max_time(120, heads=convex[:1])
    assert capped.heads[[h.name for h in cfg.heads].index(convex[0])].options["max_time"] == 120.0
    assert all("max_time" not in h.options for h in capped.heads if h.name != convex[0])
    assert all("max_time" not in h.options for h in cfg.heads)  # the original is unchanged
    assert all(h.options.get("max_time") == 5.0 for h in cfg.with_max_time(5).heads if h.kind == "convex")
    with pytest.raises(ValueError, match="max_time: expected a positive number"):
        cfg.with_max_time(0)

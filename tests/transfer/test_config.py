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


def test_width_validation_and_solver_fallback():
    from dualattn.convex.api import SOLVERS

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
    assert resolve_solver("auto") == ("auto" if "auto" in SOLVERS else "fista")
    assert resolve_solver("fista") == "fista"
    with pytest.raises(ValueError, match="solver"):
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

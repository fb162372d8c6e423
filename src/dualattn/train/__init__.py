"""dualattn.train: configs, Lightning training loop, metrics and the reproduce protocol.

Heavy imports (lightning) happen in the submodules; import what you need::

    from dualattn.train.config import load_config
    from dualattn.train.run import train_run
"""

from dualattn.train.config import ConfigError, RunConfig, load_config
from dualattn.train.metrics import head_redundancy

__all__ = ["ConfigError", "RunConfig", "load_config", "head_redundancy"]

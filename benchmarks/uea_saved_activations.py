"""Saved activations of the paper's 8-head UEA model (d_model 512, 2 layers, FFN 512) on the reference path:
softmax vs SH / BN+SH (default factors [1, 1, 2, 2, 4, 4, 8, 8]) at N = 512, 1024, 2048, one forward, batch 1.

    python benchmarks/uea_saved_activations.py
"""
import torch
from dualattn.nn.attention import Attention
from dualattn.nn.models import SequenceClassifier
from dualattn.train.metrics import saved_activation_mb
torch.manual_seed(0)
for n in (512, 1024, 2048):
    x = torch.randn(1, n, 12); mask = torch.ones(1, n, dtype=torch.bool)
    res = {}
    for v in ("softmax", "sh", "bn+sh"):
        m = SequenceClassifier(4, max_len=n, in_features=12, dim=512, depth=2, num_heads=8, mlp_ratio=1.0, dropout=0.1, variant=v)
        for a in m.modules():
            if isinstance(a, Attention):
                a.fused = False
        res[v] = saved_activation_mb(m, x, mask)
    print(n, {k: round(val, 1) for k, val in res.items()}, "ratios", {k: round(res[k] / res["softmax"], 3) for k in res})

"""dualattn.nn: attention modules, encoder blocks, models, attention swapping."""

from .attention import CAPABILITIES, VARIANT_OPTIONS, VARIANTS, Attention, ksvd_regularizer, set_fused_attn
from .encoder import Encoder, EncoderBlock
from .swap import HFAttention, swap_attention

__all__ = [
    "Attention",
    "Encoder",
    "EncoderBlock",
    "HFAttention",
    "swap_attention",
    "ksvd_regularizer",
    "set_fused_attn",
    "VARIANTS",
    "VARIANT_OPTIONS",
    "CAPABILITIES",
]

"""The taxonomy: every model is one spec plus a thin public function."""

from scandsl.ops.abc import abc, abc_spec
from scandsl.ops.deltanet import deltanet, deltanet_spec
from scandsl.ops.dfw import dfw, dfw_spec
from scandsl.ops.gated_deltanet import gated_deltanet, gated_deltanet_spec
from scandsl.ops.gated_rfa import gated_rfa, gated_rfa_spec
from scandsl.ops.gla import gla, gla_spec
from scandsl.ops.gsa import gsa, gsa_spec
from scandsl.ops.hgrn2 import hgrn2, hgrn2_spec
from scandsl.ops.linear_attn import linear_attn, linear_attn_normalized_spec, linear_attn_spec
from scandsl.ops.mamba import mamba, mamba_spec
from scandsl.ops.mamba2 import mamba2, mamba2_spec
from scandsl.ops.mlstm import mlstm, mlstm_spec
from scandsl.ops.retention import retention, retention_spec
from scandsl.ops.rwkv6 import rwkv6, rwkv6_spec
from scandsl.ops.s4 import s4, s4_spec

# taxonomy order (../shared/taxonomy.md); name -> (public function, its spec(s))
TAXONOMY = {
    "linear_attn": (linear_attn, (linear_attn_spec, linear_attn_normalized_spec)),
    "deltanet": (deltanet, (deltanet_spec,)),
    "gated_rfa": (gated_rfa, (gated_rfa_spec,)),
    "s4": (s4, (s4_spec,)),
    "abc": (abc, (abc_spec,)),
    "dfw": (dfw, (dfw_spec,)),
    "retention": (retention, (retention_spec,)),
    "mamba": (mamba, (mamba_spec,)),
    "gla": (gla, (gla_spec,)),
    "rwkv6": (rwkv6, (rwkv6_spec,)),
    "hgrn2": (hgrn2, (hgrn2_spec,)),
    "mlstm": (mlstm, (mlstm_spec,)),
    "mamba2": (mamba2, (mamba2_spec,)),
    "gsa": (gsa, (gsa_spec,)),
    "gated_deltanet": (gated_deltanet, (gated_deltanet_spec,)),
}

__all__ = ["TAXONOMY"] + list(TAXONOMY)

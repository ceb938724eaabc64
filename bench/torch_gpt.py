"""crystalline's GPT (workers/model.py) as a PyTorch module, for the benchmarks that compare against torch.

nanoGPT's model with bias=True and dropout 0: pre-LayerNorm blocks (eps 1e-5, with bias), fused qkv,
every Linear with a bias, tanh GELU (or squared ReLU with ``mlp="relu2"``), the output head tied to the
token embedding (or its own ``lm_head`` with ``head="untied"``). Module names follow
the ParamTable's ("h.3.mlp.fc.weight" is "h3.mlp.fc.w"), so ``load_params`` can copy a flat numpy
parameter vector in. Needs torch, which is not a project dependency; scripts in bench/ import it as

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from torch_gpt import TorchGPT, adamw, load_params
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from crystalline.workers.model_config import ModelConfig
from crystalline.workers.params import ParamTable


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, self.head_dim).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).contiguous().view(b, t, c))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.embed_dim, cfg.mlp_ratio * cfg.embed_dim)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.embed_dim, cfg.embed_dim)
        self.relu2 = cfg.mlp == "relu2"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        return self.proj(F.relu(h).square() if self.relu2 else F.gelu(h, approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(cfg.embed_dim), Attention(cfg)
        self.ln2, self.mlp = nn.LayerNorm(cfg.embed_dim), MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TorchGPT(nn.Module):
    """forward(windows) takes (B, T+1) token ids and returns the mean next-token cross-entropy."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.embed_dim)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.lnf = nn.LayerNorm(cfg.embed_dim)
        self.lm_head = nn.Linear(cfg.embed_dim, cfg.vocab_size, bias=False) if cfg.head == "untied" else None
        # nanoGPT's init (from torch's global RNG): N(0, 0.02) weights and embeddings, zero biases,
        # N(0, 0.02 / sqrt(2L)) residual projections; LayerNorms keep torch's ones / zeros
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.num_layers))
            elif p.dim() == 2:
                nn.init.normal_(p, 0.0, 0.02)
            elif ".ln" not in name and not name.startswith("lnf."):
                nn.init.zeros_(p)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        idx, targets = windows[:, :-1], windows[:, 1:]
        x = self.wte(idx) + self.wpe.weight[: idx.shape[1]]
        for block in self.h:
            x = block(x)
        head = self.wte.weight if self.lm_head is None else self.lm_head.weight
        logits = self.lnf(x) @ head.T
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def torch_name(name: str) -> str:
    """ParamTable name -> torch parameter name: "h3.mlp.fc.w" -> "h.3.mlp.fc.weight"."""
    if name in ("wte", "wpe", "lm_head"):
        return name + ".weight"
    head, _, kind = name.rpartition(".")
    if head.startswith("h") and head[1].isdigit():
        layer, _, rest = head.partition(".")
        head = f"h.{layer[1:]}.{rest}"
    return head + (".weight" if kind == "w" else ".bias")


def load_params(model: TorchGPT, table: ParamTable, flat: np.ndarray) -> dict[str, tuple[nn.Parameter, bool]]:
    """Copies numpy's parameters into the model; name -> (parameter, transposed: numpy's W is (in, out))."""
    named = dict(model.named_parameters())
    pairs = {}
    with torch.no_grad():
        for name, view in table.views(flat).items():
            tname, tr = torch_name(name), view.ndim == 2 and name not in ("wte", "wpe", "lm_head")
            named[tname].copy_(torch.from_numpy(view.T.copy() if tr else view.copy()))
            pairs[name] = (named[tname], tr)
    assert len(pairs) == len(named), "every torch parameter maps to one table entry"
    return pairs


def adamw(
    model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float, eps: float = 1e-8
) -> torch.optim.AdamW:
    """nanoGPT's configure_optimizers: weight decay on the 2-D tensors only."""
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)

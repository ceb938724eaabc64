"""A GPT-style decoder in numpy with a hand-written backward pass.

Token + positional embeddings, N pre-LayerNorm blocks (causal multi-head attention,
GELU MLP), a final LayerNorm and an output head tied to the token embedding, trained
with softmax cross-entropy. ModelConfig options: a squared-ReLU MLP (``mlp="relu2"``) and an
untied, zero-initialised head (``head="untied"``). One implementation serves `crystalline train`, the worker
processes and the tests (which run it in float64 for finite-difference checks).

Speed notes (baby size: 4 layers, 128 wide, context 64, batch 12 is ~3.7 GFLOP a step):
- every scalar is a Python float, so float32 arrays stay float32 (a NumPy float64
  scalar silently promotes and halves the speed);
- activations live in a Workspace preallocated per batch shape and element-wise work
  runs in place with ``out=``;
- attention runs as contiguous 4-D batched matmuls with an additive causal mask;
- the embedding gradient is a sort + ``np.add.reduceat`` (``np.add.at`` is slow).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .model_config import ModelConfig
from .params import ParamTable

LN_EPS = 1e-5
GELU_K = math.sqrt(2.0 / math.pi)
GELU_C = 0.044715


def init_params(
    table: ParamTable, seed: int, dtype: type[np.floating] = np.float32, embedding: str = "normal"
) -> np.ndarray:
    """Fresh parameters: N(0, 0.02) weights, GPT-2's 1/sqrt(2L) scaling on residual projections,
    zero biases, unit LayerNorm gains. ``embedding="lattice"`` takes the token embedding from
    the prime/Ulam-spiral lattice instead (an initialisation whose value the benchmark measures)."""
    if embedding not in ("normal", "lattice"):
        raise ValueError(f"unknown embedding init {embedding!r} (choose normal or lattice)")
    rng = np.random.default_rng(seed)
    flat = np.zeros(table.size, dtype=dtype)
    views = table.views(flat)
    residual_std = 0.02 / math.sqrt(2 * table.config.num_layers)
    for spec in table:
        view = views[spec.name]
        if spec.name.endswith((".ln1.w", ".ln2.w")) or spec.name == "lnf.w":
            view[...] = 1.0
        elif spec.name.endswith(".b"):
            view[...] = 0.0
        elif spec.name.endswith("proj.w"):
            view[...] = rng.normal(0.0, residual_std, spec.shape)
        elif spec.name == "lm_head":
            view[...] = 0.0  # untied head: zero init, as the modded-nanogpt speedrun
        else:
            view[...] = rng.normal(0.0, 0.02, spec.shape)
    if embedding == "lattice":
        from .lattice import lattice_embedding

        cfg = table.config
        views["wte"][...] = lattice_embedding(cfg.vocab_size, cfg.embed_dim, std=0.02)
    return flat


@dataclass
class _LayerCache:
    """Activations of one block kept for the backward pass."""

    ln1_xhat: np.ndarray
    ln1_rstd: np.ndarray
    ln1_out: np.ndarray
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    att: np.ndarray
    y: np.ndarray
    ln2_xhat: np.ndarray
    ln2_rstd: np.ndarray
    ln2_out: np.ndarray
    pre: np.ndarray
    tanh: np.ndarray
    gelu: np.ndarray


@dataclass
class Workspace:
    """Preallocated activation and scratch buffers for one (batch, seq_len, dtype)."""

    batch: int
    seq_len: int
    dtype: np.dtype
    config: ModelConfig
    layers: list[_LayerCache] = field(default_factory=list)

    def __post_init__(self) -> None:
        b, t, cfg = self.batch, self.seq_len, self.config
        c, h, hd, hid, n = cfg.embed_dim, cfg.num_heads, cfg.head_dim, cfg.mlp_ratio * cfg.embed_dim, b * t

        def z(*shape: int) -> np.ndarray:
            return np.zeros(shape, dtype=self.dtype)

        for _ in range(cfg.num_layers):
            self.layers.append(
                _LayerCache(
                    ln1_xhat=z(n, c), ln1_rstd=z(n, 1), ln1_out=z(n, c),
                    q=z(b, h, t, hd), k=z(b, h, t, hd), v=z(b, h, t, hd), att=z(b, h, t, t),
                    y=z(n, c), ln2_xhat=z(n, c), ln2_rstd=z(n, 1), ln2_out=z(n, c),
                    pre=z(n, hid), tanh=z(n, hid), gelu=z(n, hid),
                )
            )  # fmt: skip
        self.x = z(n, c)  # the residual stream
        self.lnf_xhat, self.lnf_rstd, self.lnf_out = z(n, c), z(n, 1), z(n, c)
        self.probs = z(n, cfg.vocab_size)
        self.mask = np.triu(np.full((t, t), -np.inf, dtype=self.dtype), k=1)
        self.scores = z(b, h, t, t)  # attention scores before the softmax
        self.att_sum = z(b, h, t, 1)
        self.logits = z(n, cfg.vocab_size)
        self.ones_t = np.ones((t, 1), dtype=self.dtype)
        self.ones_v = np.ones((cfg.vocab_size, 1), dtype=self.dtype)
        self.mean_c = np.full((c, 1), 1.0 / c, dtype=self.dtype)
        # scratch shared by all layers
        self.qkv = z(n, 3 * c)
        self.tmp_c = z(n, c)
        self.tmp_hid = z(n, hid)
        self.dx = z(n, c)
        self.dtmp = z(n, c)
        self.dqkv = z(n, 3 * c)
        self.dy4 = z(b, h, t, hd)
        self.datt = z(b, h, t, t)
        self.dhid = z(n, hid)
        self.stat = z(n, 1)


def _layernorm(x: np.ndarray, w: np.ndarray, b: np.ndarray, xhat: np.ndarray, rstd: np.ndarray,
               out: np.ndarray, mean_vec: np.ndarray) -> None:  # fmt: skip
    """``mean_vec`` is a (C, 1) column of 1/C: row means as a matrix-vector product run
    several times faster than ``mean(axis=-1)`` at these sizes."""
    np.matmul(x, mean_vec, out=rstd)  # rstd as scratch for the mean
    np.subtract(x, rstd, out=xhat)
    np.multiply(xhat, xhat, out=out)  # out as scratch for the variance
    np.matmul(out, mean_vec, out=rstd)
    rstd += LN_EPS
    np.sqrt(rstd, out=rstd)
    np.reciprocal(rstd, out=rstd)
    xhat *= rstd
    np.multiply(xhat, w, out=out)
    out += b


def _layernorm_backward(dout: np.ndarray, xhat: np.ndarray, rstd: np.ndarray, w: np.ndarray,
                        dw: np.ndarray, db: np.ndarray, dx_acc: np.ndarray, scratch: np.ndarray,
                        stat: np.ndarray, mean_vec: np.ndarray) -> None:  # fmt: skip
    """Adds the input gradient into ``dx_acc`` (the residual stream's gradient)."""
    np.multiply(dout, xhat, out=scratch)
    np.sum(scratch, axis=0, out=dw)
    np.sum(dout, axis=0, out=db)
    np.multiply(dout, w, out=scratch)  # dxhat
    # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    np.matmul(scratch, mean_vec, out=stat)
    scratch -= stat
    # mean(dxhat * xhat) equals mean((dxhat - mean) * xhat) because xhat has zero mean
    np.multiply(scratch, xhat, out=dout)  # dout is free now
    np.matmul(dout, mean_vec, out=stat)
    np.multiply(xhat, stat, out=dout)
    scratch -= dout
    scratch *= rstd
    dx_acc += scratch


def _softmax(scores: np.ndarray, out: np.ndarray, row_sum: np.ndarray, ones: np.ndarray) -> None:
    """Softmax of ``scores`` over the last axis into ``out``; ``ones`` is a column of ones.

    It exponentiates without subtracting the row maximum, which is exact while no score
    exceeds ~88 (float32's exp overflow) and no row underflows; either shows up in the row
    sums, and then the rows are redone the textbook way. The max reduction it saves costs
    more than the exp itself, and the row sums run as a matrix-vector product for the same
    reason (5x faster than ``sum(axis=-1)`` at these sizes).
    """
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):  # detected below
        np.exp(scores, out=out)
        np.matmul(out, ones, out=row_sum)
    if not (np.isfinite(row_sum).all() and row_sum.min() > 1e-30):
        np.subtract(scores, scores.max(axis=-1, keepdims=True), out=out)
        np.exp(out, out=out)
        np.matmul(out, ones, out=row_sum)
    np.reciprocal(row_sum, out=row_sum)
    out *= row_sum


class GPT:
    """The decoder for one ModelConfig; parameters are passed in as a flat vector."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.table = ParamTable(config)
        self.head_name = "lm_head" if config.head == "untied" else "wte"
        self._workspaces: dict[tuple[int, int, str], Workspace] = {}

    @property
    def num_params(self) -> int:
        return self.table.size

    def _workspace(self, batch: int, seq_len: int, dtype: np.dtype) -> Workspace:
        key = (batch, seq_len, dtype.str)
        ws = self._workspaces.get(key)
        if ws is None:
            ws = Workspace(batch, seq_len, dtype, self.config)
            self._workspaces = {key: ws}  # keep one: shapes change rarely (training vs eval)
        return ws

    def _check_tokens(self, idx: np.ndarray) -> None:
        if idx.ndim != 2 or idx.shape[1] > self.config.seq_len or idx.shape[1] < 1:
            raise ValueError(f"token block has shape {idx.shape}; need (batch, 1..{self.config.seq_len})")

    def _forward(self, params: np.ndarray, idx: np.ndarray) -> Workspace:
        """Runs the network up to the output probabilities, keeping what backward needs."""
        self._check_tokens(idx)
        cfg = self.config
        b, t = idx.shape
        c, h, hd = cfg.embed_dim, cfg.num_heads, cfg.head_dim
        p = self.table.views(params)
        ws = self._workspace(b, t, params.dtype)
        scale = 1.0 / math.sqrt(hd)
        relu2 = cfg.mlp == "relu2"
        mask = ws.mask
        x = ws.x
        np.take(p["wte"], idx.reshape(-1), axis=0, out=x)
        x.reshape(b, t, c)[...] += p["wpe"][:t]
        for i, lc in enumerate(ws.layers):
            pre = f"h{i}."
            _layernorm(x, p[pre + "ln1.w"], p[pre + "ln1.b"], lc.ln1_xhat, lc.ln1_rstd, lc.ln1_out, ws.mean_c)
            np.matmul(lc.ln1_out, p[pre + "attn.qkv.w"], out=ws.qkv)
            ws.qkv += p[pre + "attn.qkv.b"]
            qkv5 = ws.qkv.reshape(b, t, 3, h, hd)
            np.copyto(lc.q, qkv5[:, :, 0].transpose(0, 2, 1, 3))
            lc.q *= scale  # fold 1/sqrt(hd) into q
            np.copyto(lc.k, qkv5[:, :, 1].transpose(0, 2, 1, 3))
            np.copyto(lc.v, qkv5[:, :, 2].transpose(0, 2, 1, 3))
            np.matmul(lc.q, lc.k.transpose(0, 1, 3, 2), out=ws.scores)
            ws.scores += mask
            _softmax(ws.scores, lc.att, ws.att_sum, ws.ones_t)
            np.matmul(lc.att, lc.v, out=ws.dy4)  # dy4 as scratch for the per-head output
            np.copyto(lc.y.reshape(b, t, h, hd), ws.dy4.transpose(0, 2, 1, 3))
            np.matmul(lc.y, p[pre + "attn.proj.w"], out=ws.tmp_c)
            ws.tmp_c += p[pre + "attn.proj.b"]
            x += ws.tmp_c
            _layernorm(x, p[pre + "ln2.w"], p[pre + "ln2.b"], lc.ln2_xhat, lc.ln2_rstd, lc.ln2_out, ws.mean_c)
            np.matmul(lc.ln2_out, p[pre + "mlp.fc.w"], out=lc.pre)
            lc.pre += p[pre + "mlp.fc.b"]
            if relu2:  # squared ReLU: relu(x)^2, its relu(x) kept in lc.tanh for backward
                np.maximum(lc.pre, 0.0, out=lc.tanh)
                np.multiply(lc.tanh, lc.tanh, out=lc.gelu)
            else:
                # tanh-approximated GELU; x*x*x beats x**3 (pow) several times over
                u = lc.tanh
                np.multiply(lc.pre, lc.pre, out=u)
                u *= lc.pre
                u *= GELU_C
                u += lc.pre
                u *= GELU_K
                np.tanh(u, out=u)
                np.add(u, 1.0, out=lc.gelu)
                lc.gelu *= lc.pre
                lc.gelu *= 0.5
            np.matmul(lc.gelu, p[pre + "mlp.proj.w"], out=ws.tmp_c)
            ws.tmp_c += p[pre + "mlp.proj.b"]
            x += ws.tmp_c
        _layernorm(x, p["lnf.w"], p["lnf.b"], ws.lnf_xhat, ws.lnf_rstd, ws.lnf_out, ws.mean_c)
        np.matmul(ws.lnf_out, p[self.head_name].T, out=ws.logits)
        _softmax(ws.logits, ws.probs, ws.stat, ws.ones_v)
        return ws

    def probabilities(self, params: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Next-token distributions, shape (batch, t, vocab) (a copy)."""
        ws = self._forward(params, idx)
        return ws.probs.reshape(idx.shape[0], idx.shape[1], -1).copy()

    def loss(self, params: np.ndarray, windows: np.ndarray) -> tuple[float, int]:
        """Sum of token losses and token count for windows of shape (batch, t+1)."""
        idx, targets = windows[:, :-1], windows[:, 1:]
        ws = self._forward(params, idx)
        return self._loss_sum(ws, targets), targets.size

    @staticmethod
    def _loss_sum(ws: Workspace, targets: np.ndarray) -> float:
        picked = ws.probs[np.arange(targets.size), targets.reshape(-1)]
        # probabilities underflow to 0 only for hopeless predictions; clamp so the loss stays finite
        return float(-np.log(np.maximum(picked, np.finfo(ws.dtype).tiny)).sum(dtype=np.float64))

    def loss_and_grad(self, params: np.ndarray, windows: np.ndarray, grad: np.ndarray,
                      scale: float | None = None) -> tuple[float, int]:  # fmt: skip
        """Forward and backward on windows of shape (batch, t+1).

        Writes ``scale * d(sum of token losses)/d(params)`` into ``grad`` (overwritten, same
        layout as ``params``); ``scale`` defaults to 1/tokens, the gradient of the mean loss.
        Data-parallel workers pass 1/(global tokens) so that the reduction is a plain sum.
        Returns (sum of token losses, number of tokens).
        """
        if grad.shape != params.shape or grad.dtype != params.dtype:
            raise ValueError("grad must match params in shape and dtype")
        idx, targets = windows[:, :-1], windows[:, 1:]
        b, t = idx.shape
        n = b * t
        if scale is None:
            scale = 1.0 / n
        ws = self._forward(params, idx)
        loss_sum = self._loss_sum(ws, targets)
        cfg = self.config
        c, h, hd = cfg.embed_dim, cfg.num_heads, cfg.head_dim
        relu2 = cfg.mlp == "relu2"
        p = self.table.views(params)
        g = self.table.views(grad)

        # softmax cross-entropy: dlogits = scale * (probs - onehot)
        dlogits = ws.probs
        dlogits[np.arange(n), targets.reshape(-1)] -= 1.0
        dlogits *= scale
        # head: logits = lnf_out @ W.T with W the token embedding (tied; its gradient from the
        # embedding lookup is added at the end) or lm_head
        np.matmul(dlogits.T, ws.lnf_out, out=g[self.head_name])
        if self.head_name != "wte":
            g["wte"][...] = 0.0
        dlnf = ws.dtmp
        np.matmul(dlogits, p[self.head_name], out=dlnf)
        dx = ws.dx
        dx[...] = 0.0
        _layernorm_backward(dlnf, ws.lnf_xhat, ws.lnf_rstd, p["lnf.w"], g["lnf.w"], g["lnf.b"],
                            dx, ws.tmp_c, ws.stat, ws.mean_c)  # fmt: skip

        for i in range(cfg.num_layers - 1, -1, -1):
            lc = ws.layers[i]
            pre = f"h{i}."
            # --- MLP: x += gelu(ln2(x) @ Wfc + bfc) @ Wp + bp
            np.matmul(lc.gelu.T, dx, out=g[pre + "mlp.proj.w"])
            np.sum(dx, axis=0, out=g[pre + "mlp.proj.b"])
            dg = ws.dhid
            np.matmul(dx, p[pre + "mlp.proj.w"].T, out=dg)
            if relu2:  # d relu(x)^2 / dx = 2 relu(x)
                dg *= lc.tanh
                dg *= 2.0
            else:
                # gelu'(x) = 0.5*(1+t) + 0.5*x*(1-t^2)*K*(1+3C x^2)
                tmp = ws.tmp_hid
                np.multiply(lc.pre, lc.pre, out=tmp)
                tmp *= 3.0 * GELU_C
                tmp += 1.0
                tmp *= GELU_K
                tmp *= lc.pre
                th = lc.tanh  # consumed: becomes 1 + t
                one_minus_t2 = lc.gelu  # consumed as scratch: its forward value was used above
                np.multiply(th, th, out=one_minus_t2)
                np.subtract(1.0, one_minus_t2, out=one_minus_t2)
                tmp *= one_minus_t2
                th += 1.0
                tmp += th
                tmp *= 0.5
                dg *= tmp
            np.matmul(lc.ln2_out.T, dg, out=g[pre + "mlp.fc.w"])
            np.sum(dg, axis=0, out=g[pre + "mlp.fc.b"])
            dln2 = ws.dtmp
            np.matmul(dg, p[pre + "mlp.fc.w"].T, out=dln2)
            _layernorm_backward(dln2, lc.ln2_xhat, lc.ln2_rstd, p[pre + "ln2.w"], g[pre + "ln2.w"],
                                g[pre + "ln2.b"], dx, ws.tmp_c, ws.stat, ws.mean_c)  # fmt: skip
            # --- attention: x += merge(softmax(q k^T + mask) v) @ Wo + bo
            np.matmul(lc.y.T, dx, out=g[pre + "attn.proj.w"])
            np.sum(dx, axis=0, out=g[pre + "attn.proj.b"])
            dy = ws.dtmp
            np.matmul(dx, p[pre + "attn.proj.w"].T, out=dy)
            dy4 = ws.dy4
            np.copyto(dy4, dy.reshape(b, t, h, hd).transpose(0, 2, 1, 3))
            datt = ws.datt
            np.matmul(dy4, lc.v.transpose(0, 1, 3, 2), out=datt)
            dqkv5 = ws.dqkv.reshape(b, t, 3, h, hd)
            # dv = att^T @ dy, written straight into its slot of dqkv
            dqkv5[:, :, 2] = np.matmul(lc.att.transpose(0, 1, 3, 2), dy4).transpose(0, 2, 1, 3)
            # softmax backward: ds = att * (datt - sum(datt * att))
            np.multiply(datt, lc.att, out=datt)
            np.matmul(datt, ws.ones_t, out=ws.att_sum)
            lc.att *= ws.att_sum  # consumed: att is not needed after this
            datt -= lc.att
            # q was pre-scaled, so s = q_scaled @ k^T: dq = ds @ k * scale, dk = ds^T @ q_scaled
            scale_q = 1.0 / math.sqrt(hd)
            dq = np.matmul(datt, lc.k)
            dq *= scale_q
            dqkv5[:, :, 0] = dq.transpose(0, 2, 1, 3)
            dqkv5[:, :, 1] = np.matmul(datt.transpose(0, 1, 3, 2), lc.q).transpose(0, 2, 1, 3)
            np.matmul(lc.ln1_out.T, ws.dqkv, out=g[pre + "attn.qkv.w"])
            np.sum(ws.dqkv, axis=0, out=g[pre + "attn.qkv.b"])
            dln1 = ws.dtmp
            np.matmul(ws.dqkv, p[pre + "attn.qkv.w"].T, out=dln1)
            _layernorm_backward(dln1, lc.ln1_xhat, lc.ln1_rstd, p[pre + "ln1.w"], g[pre + "ln1.w"],
                                g[pre + "ln1.b"], dx, ws.tmp_c, ws.stat, ws.mean_c)  # fmt: skip

        # embeddings: x = wte[idx] + wpe[:t]
        gpe = g["wpe"]
        gpe[...] = 0.0
        np.sum(dx.reshape(b, t, c), axis=0, out=gpe[:t])
        flat_idx = idx.reshape(-1)
        order = np.argsort(flat_idx, kind="stable")
        sorted_idx = flat_idx[order]
        starts = np.flatnonzero(np.r_[True, sorted_idx[1:] != sorted_idx[:-1]])
        g["wte"][sorted_idx[starts]] += np.add.reduceat(dx[order], starts, axis=0)
        return loss_sum, n

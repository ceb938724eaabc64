"""Generation beside training: a process of its own that samples from the published parameters.

Started by the supervisor as ``python -m crystalline.daemon.generation_process SPEC_JSON`` with
BLAS threads 1. It maps the engine's ``state`` segment read-only (``PROT_READ``: it cannot
write the parameters, whatever it does), copies the published buffer (of the weights' moving
average when the run keeps one, else of the weights) and keeps the copy only
if the engine's ``published`` sequence did not move meanwhile (the step that follows a publish
writes the other buffer, so an unchanged sequence means a consistent copy). Sampling uses a
key/value cache: one token costs one position of attention, not a forward over the context.
Control never stops for it; the cost to training is CPU time shared with the workers.

Protocol on stdin/stdout: one JSON object per line (no pickle). A request
``{"id", "prompt", "n", "temperature", "top_k", "seed"}`` is answered with ``{"id", "text"}``
pieces as tokens are generated, then ``{"id", "done": true, "tokens", "seconds",
"tokens_per_s", "version"}``, or ``{"id", "error"}``.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import mmap
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..log_lines import log_to_stderr
from ..shm.blocks import HEADER_SIZE, decode_table
from ..shm.segments import SHM_DIR, segment_name
from ..tokens.tokenizer import Tokenizer, load_tokenizer
from ..workers.model import GELU_C, GELU_K, GPT, LN_EPS
from ..workers.sampling import pick_token
from ..workers.train_config import TrainConfig
from ..workers.trainer import engine_instance
from .commands import CommandError
from .generate_fields import generate_fields

log = logging.getLogger("crystalline.generate")

COPY_TRIES = 200  # a copy races a publish at most this many times in a row before giving up
MAX_REQUEST = 64 * 1024


class NotPublished(RuntimeError):
    """No parameters to sample from: training has not started (or is restarting)."""


class PublishedParams:
    """The engine's ``state`` segment mapped read-only; :meth:`copy` returns a consistent
    copy of the published parameters and their version."""

    def __init__(self, instance: str, num_params: int) -> None:
        self.name = segment_name(instance, "state")
        self.num_params = num_params
        self._map: mmap.mmap | None = None
        self._inode: int | None = None
        self._params: np.ndarray | None = None
        self._published: np.ndarray | None = None

    def _attach(self) -> None:
        path = SHM_DIR / self.name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise NotPublished("no model yet: training has not started (waiting for data)") from None
        try:
            st = os.fstat(fd)
            if st.st_ino == self._inode:
                return
            self._detach()
            mapped = mmap.mmap(fd, st.st_size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        table = {a.name: a for a in decode_table(mapped[:HEADER_SIZE], st.st_size, self.name)}
        if "published" not in table or "params" not in table:
            mapped.close()
            raise NotPublished(f"{self.name} does not announce its published parameters")
        # the weights' moving average when the run keeps one (written and published with them)
        params, pub = table.get("ema", table["params"]), table["published"]
        if params.shape != (2, self.num_params):
            mapped.close()
            raise NotPublished(
                f"{self.name} holds {params.shape[-1]} parameters, the model {self.num_params}"
            )
        self._params = np.frombuffer(mapped, params.dtype, 2 * self.num_params, params.offset).reshape(2, -1)
        self._published = np.frombuffer(mapped, pub.dtype, 3, pub.offset)
        self._map, self._inode = mapped, st.st_ino

    def _detach(self) -> None:
        self._params = self._published = None
        if self._map is not None:
            self._map.close()
        self._map = self._inode = None

    def copy(self, out: np.ndarray) -> int:
        """Copy the published parameters into ``out``; their version (steps taken)."""
        if self._map is None or not (SHM_DIR / self.name).exists() or self._stale():
            self._attach()
        assert self._params is not None and self._published is not None
        pub = self._published
        for _ in range(COPY_TRIES):
            seq = int(pub[0])
            if seq % 2 == 0 and seq > 0:
                src, version = int(pub[1]), int(pub[2])
                np.copyto(out, self._params[src])
                if int(pub[0]) == seq:
                    return version
            time.sleep(0.0005)
        raise NotPublished("the parameters kept changing under the copy; try again")

    def _stale(self) -> bool:
        try:
            return os.stat(SHM_DIR / self.name).st_ino != self._inode
        except FileNotFoundError:
            return True

    def close(self) -> None:
        self._detach()


def _layernorm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + LN_EPS) * w + b


class CachedDecoder:
    """The model's forward pass one position at a time, with the keys and values of earlier
    positions kept per layer (the same arithmetic as ``GPT._forward``, which tests compare)."""

    def __init__(self, model: GPT, params: np.ndarray) -> None:
        cfg = model.config
        self.cfg = cfg
        self.p = model.table.views(params)
        self.head = self.p[model.head_name]  # wte (tied) or lm_head (untied)
        self.relu2 = cfg.mlp == "relu2"
        shape = (cfg.num_layers, cfg.num_heads, cfg.seq_len, cfg.head_dim)
        self.k = np.zeros(shape, params.dtype)
        self.v = np.zeros(shape, params.dtype)
        self.pos = 0

    def reset(self) -> None:
        self.pos = 0

    def step(self, token: int) -> np.ndarray:
        """Feed one token at the next position; the next-token probabilities (float64)."""
        cfg, p = self.cfg, self.p
        if self.pos >= cfg.seq_len:
            raise ValueError("the cache is full: reset and feed the last tokens again")
        t = self.pos
        h, hd = cfg.num_heads, cfg.head_dim
        x = p["wte"][token] + p["wpe"][t]
        scale = 1.0 / math.sqrt(hd)
        for i in range(cfg.num_layers):
            pre = f"h{i}."
            a = _layernorm(x, p[pre + "ln1.w"], p[pre + "ln1.b"])
            qkv = a @ p[pre + "attn.qkv.w"] + p[pre + "attn.qkv.b"]
            q, k, v = qkv.reshape(3, h, hd)
            self.k[i, :, t] = k
            self.v[i, :, t] = v
            scores = np.einsum("hd,htd->ht", q * scale, self.k[i, :, : t + 1])
            scores -= scores.max(axis=-1, keepdims=True)
            att = np.exp(scores)
            att /= att.sum(axis=-1, keepdims=True)
            y = np.einsum("ht,htd->hd", att, self.v[i, :, : t + 1]).reshape(-1)
            x = x + y @ p[pre + "attn.proj.w"] + p[pre + "attn.proj.b"]
            m = _layernorm(x, p[pre + "ln2.w"], p[pre + "ln2.b"])
            pre_act = m @ p[pre + "mlp.fc.w"] + p[pre + "mlp.fc.b"]
            if self.relu2:
                act = np.maximum(pre_act, 0.0) ** 2
            else:
                act = 0.5 * pre_act * (1.0 + np.tanh(GELU_K * (pre_act + GELU_C * pre_act**3)))
            x = x + act @ p[pre + "mlp.proj.w"] + p[pre + "mlp.proj.b"]
        self.pos += 1
        f = _layernorm(x, p["lnf.w"], p["lnf.b"])
        logits = (f @ self.head.T).astype(np.float64)
        logits -= logits.max()
        probs = np.exp(logits)
        return probs / probs.sum()

    def feed(self, tokens: list[int]) -> np.ndarray:
        """Reset and feed ``tokens`` (at most seq_len of them); the last probabilities."""
        self.reset()
        probs = np.empty(0)
        for tok in tokens:
            probs = self.step(tok)
        return probs


class TextStream:
    """Decoded text piece by piece: a token that ends inside a UTF-8 sequence is held back
    until the rest arrives (byte-level tokens split characters)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.sent = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(np.asarray(self.ids, dtype=np.int64))
        if text.endswith("\ufffd"):
            return ""
        piece, self.sent = text[self.sent :], len(text)
        return piece

    def flush(self) -> str:
        text = self.tokenizer.decode(np.asarray(self.ids, dtype=np.int64))
        piece, self.sent = text[self.sent :], len(text)
        return piece


def token_label(tokenizer: Tokenizer, token: int) -> str:
    """A token as a short readable label: its text, escaped where it is not printable, or its
    id when it is part of a UTF-8 sequence."""
    text = tokenizer.decode(np.asarray([token], dtype=np.int64))
    if "\ufffd" in text:
        return f"<{token}>"
    return text if text.isprintable() else repr(text)[1:-1]


class Generator:
    def __init__(self, config: TrainConfig, state_dir: Path) -> None:
        self.tokenizer = load_tokenizer(config.tokenizer)
        self.model = GPT(config.model_config(self.tokenizer.vocab_size))
        self.params = np.zeros(self.model.num_params, np.float32)
        self.published = PublishedParams(engine_instance(state_dir / "checkpoints"), self.model.num_params)

    def vocabulary(self, req: dict[str, Any], send: Any) -> None:
        """Every token's label and a colour from the embeddings (for the dashboard's spiral):
        each token's embedding projected on their first principal component, scaled to 0-255."""
        version = self.published.copy(self.params)
        wte = self.model.table.views(self.params)["wte"].astype(np.float64)
        centred = wte - wte.mean(axis=0)
        _, vectors = np.linalg.eigh(centred.T @ centred)  # C x C: cheap for any vocabulary
        projection = centred @ vectors[:, -1]
        span = float(projection.max() - projection.min()) or 1.0
        colour = np.round((projection - projection.min()) / span * 255).astype(np.uint8)
        send(
            {
                "id": req.get("id"),
                "done": True,
                "vocab": int(wte.shape[0]),
                "labels": [token_label(self.tokenizer, i) for i in range(wte.shape[0])],
                "colour": base64.b64encode(colour.tobytes()).decode(),
                "version": version,
            }
        )

    def run(self, req: dict[str, Any], send: Any) -> None:
        if req.get("cmd") == "vocabulary":
            self.vocabulary(req, send)
            return
        rid = req.get("id")
        fields = generate_fields(req)  # the supervisor's check, again for a request sent unchecked
        prompt, n, temperature, top_k = fields["prompt"], fields["n"], fields["temperature"], fields["top_k"]
        rng = np.random.default_rng(fields["seed"])
        version = self.published.copy(self.params)
        started = time.monotonic()
        seq_len = self.model.config.seq_len
        ids = [int(t) for t in self.tokenizer.encode(prompt)] or [0]
        decoder = CachedDecoder(self.model, self.params)
        probs = decoder.feed(ids[-seq_len:])
        text = TextStream(self.tokenizer)
        for _ in range(n):
            token = pick_token(probs, temperature, top_k, rng)
            ids.append(token)
            piece = text.push(token)
            if piece:
                send({"id": rid, "text": piece})
            # a full window slides by half: the cache is refilled with the last seq_len/2 tokens
            full = decoder.pos >= seq_len
            probs = decoder.feed(ids[-(seq_len // 2) :]) if full else decoder.step(token)
        rest = text.flush()
        if rest:
            send({"id": rid, "text": rest})
        seconds = time.monotonic() - started
        send(
            {
                "id": rid,
                "done": True,
                "tokens": n,
                "seconds": round(seconds, 4),
                "tokens_per_s": round(n / max(seconds, 1e-9), 1),
                "version": version,
                "source": "generation process",
            }
        )


def serve(generator: Generator, stdin: Any, stdout: Any) -> None:
    def send(obj: dict[str, Any]) -> None:
        stdout.write(json.dumps(obj) + "\n")
        stdout.flush()

    for line in stdin:
        if len(line) > MAX_REQUEST:
            send({"error": "request too long"})
            continue
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("a request is a JSON object")
        except ValueError as exc:
            send({"error": f"bad request: {exc}"})
            continue
        try:
            generator.run(req, send)
        except (NotPublished, CommandError, ValueError, TypeError) as exc:
            send({"id": req.get("id"), "error": str(exc)})


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    log_to_stderr("%(levelname)s generate: %(message)s")
    spec = json.loads(args[0])
    generator = Generator(TrainConfig(**spec["train"]), Path(spec["state_dir"]))
    try:
        serve(generator, sys.stdin, sys.stdout)
    finally:
        generator.published.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Model presets: ``[train] preset`` names a model and its optimizer, resolved by the settings
tree (the preset's values sit below a file's, the environment's and the flags', and
`crystalline config` shows them as ``preset small``/``preset base``).

- ``small``: the 0.834M-parameter byte model the daemon has always trained (embed 128, 4
  layers, context 64) with Muon on its hidden matrices (README, "Time to quality");
- ``base``: 6 layers, 384 wide, context 256, Muon, on the vocabulary the daemon learns from
  the first text it ingests (``tokenizer = "learned"``: tokens/learned_vocab.py).

``crystalline run`` resolves ``small`` by default; ``crystalline train`` none (its keys' own
defaults) unless asked. A state directory keeps what it was started with: when it holds a
checkpoint, every key that decides the model, its batches or its optimizer and that was not
given explicitly (a file, the environment, a flag) is taken from the newest checkpoint's
configuration (``adopt_checkpoint``), so a directory made before presets resumes as ``small``
with AdamW, and a ``base`` directory stays ``base`` under a later default.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from crystalline.settings_tree import Resolved, Source

log = logging.getLogger(__name__)

NONE = "none"  # no preset: the keys' own defaults
PRESETS: dict[str, dict[str, Any]] = {
    "small": {
        "tokenizer": "bytes",
        "embed_dim": 128,
        "num_layers": 4,
        "num_heads": 4,
        "seq_len": 64,
        "optimizer": "muon",
        "muon_lr": 0.02,
    },
    "base": {
        "tokenizer": "learned",
        "embed_dim": 384,
        "num_layers": 6,
        "num_heads": 6,
        "seq_len": 256,
        "optimizer": "muon",
        "muon_lr": 0.02,
    },
}
# what a checkpoint written before presets (or before the optimizer key) was trained with
BEFORE_PRESETS = {"preset": "small", "optimizer": "adamw"}

# what a resumed run must keep of its checkpoint (the trainer refuses a resume that differs)
RUN_KEYS = (
    "preset", "tokenizer", "embed_dim", "num_layers", "num_heads", "seq_len", "seed",
    "batch_size", "init", "mlp", "head", "optimizer",
)  # fmt: skip


def newest_config(checkpoint_dir: Path) -> tuple[dict[str, Any], Path] | None:
    """The [train] configuration of the newest readable checkpoint (None: none)."""
    # imported here: the settings tree (and every command line) imports this module for its
    # presets, and a checkpoint's reader brings numpy
    from .checkpoint import CheckpointError, list_checkpoints, load_state

    for path in reversed(list_checkpoints(checkpoint_dir) if checkpoint_dir.is_dir() else []):
        try:
            config = load_state(path).get("config")
        except CheckpointError as exc:
            log.warning("presets: skipping %s", exc)
            continue
        if isinstance(config, dict):
            return {**BEFORE_PRESETS, **config}, path
    return None


def saved_value(name: str, value: Any) -> Any:
    """A checkpoint's ``value`` of ``name`` as a run adopts it: the learned vocabulary, saved as
    the absolute path it resolved to (``<state-dir>/vocab/tokenizer.json``), is the symbolic
    ``learned`` again, which resolves to the vocabulary of the state directory as it is now
    (one moved elsewhere does not train with the old path)."""
    from ..tokens.learned_vocab import LEARNED  # with numpy and the tokenizers library

    learned = isinstance(value, str) and Path(value).parts[-2:] == ("vocab", "tokenizer.json")
    return LEARNED if name == "tokenizer" and learned else value


def adopt_checkpoint(resolved: Resolved, checkpoint_dir: Path) -> Resolved:
    """``resolved`` with each of ``RUN_KEYS`` that no file, variable or flag gave taken from the
    newest checkpoint in ``checkpoint_dir`` (source ``checkpoint <path>``); as it was without
    one. A key given explicitly keeps its value, and the trainer refuses it if it differs."""
    found = newest_config(checkpoint_dir)
    if found is None:
        return resolved
    saved, path = found
    preset_given = resolved.sources[("train", "preset")].kind in ("file", "env", "flag")
    train = resolved.tables["train"]
    changes: dict[str, Any] = {}
    shown, sources = dict(resolved.shown), dict(resolved.sources)
    for name in RUN_KEYS:
        slot = ("train", name)
        kind = sources[slot].kind
        if name not in saved or kind in ("file", "env", "flag") or (kind == "preset" and preset_given):
            continue
        value = saved_value(name, saved[name])
        if value != getattr(train, name):
            log.info("[train] %s = %r, as %s was trained", name, value, path)
        changes[name] = value
        shown[slot], sources[slot] = value, Source("checkpoint", str(path))
    tables = {**resolved.tables, "train": dataclasses.replace(train, **changes)}
    return Resolved(tables, shown, sources)

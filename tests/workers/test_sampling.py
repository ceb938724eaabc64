"""Sampling: temperature, top-k, seeds."""

from __future__ import annotations

import numpy as np
import pytest

from crystalline.workers.model import GPT, init_params
from crystalline.workers.model_config import ModelConfig
from crystalline.workers.sampling import sample

CFG = ModelConfig(vocab_size=30, seq_len=8, embed_dim=16, num_layers=1, num_heads=2)


@pytest.fixture(scope="module")
def model_and_params() -> tuple[GPT, np.ndarray]:
    model = GPT(CFG)
    params = init_params(model.table, 0)
    # a larger init makes the distribution peaked enough for top-k to matter
    params *= 20.0
    return model, params


def test_same_seed_same_sample_and_context_is_cropped(model_and_params: tuple[GPT, np.ndarray]) -> None:
    model, params = model_and_params
    prompt = np.array([1, 2, 3], dtype=np.uint16)
    a = sample(model, params, prompt, 20, temperature=5.0, seed=5)
    b = sample(model, params, prompt, 20, temperature=5.0, seed=5)
    c = sample(model, params, prompt, 20, temperature=5.0, seed=6)
    assert len(a) == 20 and a.max() < CFG.vocab_size  # 23 tokens > seq_len 8: cropping exercised
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_temperature_zero_and_top_k_one_are_greedy(model_and_params: tuple[GPT, np.ndarray]) -> None:
    model, params = model_and_params
    prompt = np.array([4], dtype=np.uint16)
    greedy = sample(model, params, prompt, 10, temperature=0.0)
    top1 = sample(model, params, prompt, 10, temperature=1.0, top_k=1, seed=123)
    np.testing.assert_array_equal(greedy, top1)
    probs = model.probabilities(params, prompt[None, :].astype(np.int64))[0, -1]
    assert greedy[0] == int(np.argmax(probs))


def test_top_k_restricts_the_choice(model_and_params: tuple[GPT, np.ndarray]) -> None:
    model, params = model_and_params
    prompt = np.array([7], dtype=np.uint16)
    probs = model.probabilities(params, prompt[None, :].astype(np.int64))[0, -1]
    allowed = set(np.argsort(probs)[-3:].tolist())
    firsts = {int(sample(model, params, prompt, 1, temperature=2.0, top_k=3, seed=s)[0]) for s in range(40)}
    assert firsts <= allowed


def test_bad_arguments(model_and_params: tuple[GPT, np.ndarray]) -> None:
    model, params = model_and_params
    with pytest.raises(ValueError, match="prompt"):
        sample(model, params, np.array([], dtype=np.uint16), 5)
    with pytest.raises(ValueError, match="temperature"):
        sample(model, params, np.array([1], dtype=np.uint16), 5, temperature=-1.0)

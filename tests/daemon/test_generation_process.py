"""The generation process: its cached decoder against the model's forward pass, the read-only
copy of the published parameters (version checked, a moving sequence retried, a replaced
segment re-mapped) and its JSON-lines protocol, against real shared memory."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from crystalline.daemon import generation_process as gp
from crystalline.daemon import generation_service
from crystalline.daemon.config import DaemonConfig, Settings
from crystalline.daemon.generation_service import CpuWindow, GenerationService
from crystalline.daemon.status_server import CommandError
from crystalline.shm.blocks import ArrayBlock
from crystalline.shm.segments import segment_name
from crystalline.tokens.tokenizer import load_tokenizer
from crystalline.workers.engine import segment_specs
from crystalline.workers.model import GPT, init_params
from crystalline.workers.sampling import sample
from crystalline.workers.train_config import TrainConfig
from crystalline.workers.trainer import engine_instance

pytestmark = pytest.mark.timeout(60)

CONFIG = TrainConfig(embed_dim=32, num_layers=2, num_heads=2, seq_len=16)


def _model() -> tuple[GPT, np.ndarray]:
    model = GPT(CONFIG.model_config(256))
    return model, init_params(model.table, seed=3)


@pytest.fixture
def state_block(tmp_path: Path) -> Iterator[tuple[ArrayBlock, Path]]:
    """A ``state`` segment laid out as the engine lays it out, for the instance of ``tmp_path``."""
    model, _ = _model()
    state_dir = tmp_path / f"s-{uuid.uuid4().hex[:8]}"
    instance = engine_instance(state_dir / "checkpoints")
    spec = segment_specs(model.num_params, 2, 4, CONFIG.seq_len, 256, 2)["state"]
    block = ArrayBlock.create(segment_name(instance, "state"), spec)
    try:
        yield block, state_dir
    finally:
        block.close()
        block.unlink()


def _publish(block: ArrayBlock, src: int, params: np.ndarray, version: int) -> None:
    """What the engine does: the buffer first, then the announcement."""
    block.arrays["params"][src] = params
    pub = block.arrays["published"]
    pub[1], pub[2] = src, version
    pub[0] += 2 - pub[0] % 2


@pytest.mark.parametrize("options", [{}, {"mlp": "relu2", "head": "untied"}])
def test_cached_decoder_matches_the_forward_pass(options: dict[str, str]) -> None:
    model = GPT(dataclasses.replace(CONFIG, **options).model_config(256))
    params = init_params(model.table, seed=3)
    if options:  # the untied head starts at zero: give it values so it is really compared
        model.table.views(params)["lm_head"][...] = np.random.default_rng(1).normal(0, 0.02, (256, 32))
    tokens = [int(t) for t in np.random.default_rng(0).integers(0, 256, CONFIG.seq_len)]
    full = model.probabilities(params, np.asarray(tokens)[None, :])[0]
    decoder = gp.CachedDecoder(model, params)
    for t, tok in enumerate(tokens):
        probs = decoder.step(tok)
        np.testing.assert_allclose(probs, full[t], rtol=2e-4, atol=1e-6)
    with pytest.raises(ValueError, match="cache is full"):
        decoder.step(0)


def test_copy_is_read_only_and_versioned(state_block: tuple[ArrayBlock, Path]) -> None:
    block, state_dir = state_block
    model, params = _model()
    published = gp.PublishedParams(engine_instance(state_dir / "checkpoints"), model.num_params)
    with pytest.raises(gp.NotPublished):
        published.copy(np.empty_like(params))  # nothing announced yet
    _publish(block, 1, params, 7)
    block.arrays["params"][0] = -1.0  # the other buffer, being written by the next step
    out = np.empty_like(params)
    assert published.copy(out) == 7
    np.testing.assert_array_equal(out, params)
    assert published._params is not None
    with pytest.raises(ValueError, match="read-only"):
        published._params[1, 0] = 5.0  # mapped PROT_READ: this process cannot touch training
    published.close()


def test_copy_retries_while_a_load_is_in_progress(
    state_block: tuple[ArrayBlock, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    block, state_dir = state_block
    model, params = _model()
    _publish(block, 0, params, 1)
    block.arrays["published"][0] += 1  # odd: a load_state is writing
    monkeypatch.setattr(gp, "COPY_TRIES", 5)
    published = gp.PublishedParams(engine_instance(state_dir / "checkpoints"), model.num_params)
    with pytest.raises(gp.NotPublished, match="kept changing"):
        published.copy(np.empty_like(params))
    published.close()


def test_protocol_streams_pieces_then_done(state_block: tuple[ArrayBlock, Path]) -> None:
    block, state_dir = state_block
    model, params = _model()
    _publish(block, 0, params, 3)
    generator = gp.Generator(CONFIG, state_dir)
    tokenizer = load_tokenizer("bytes")
    prompt = "the cat"
    greedy_n = CONFIG.seq_len - len(prompt)  # within one window: the same context as sample()
    requests = "\n".join(
        [
            json.dumps({"id": 1, "prompt": prompt, "n": 40, "temperature": 0.8, "seed": 1}),
            "not json",
            json.dumps({"id": 2, "n": 0}),
            json.dumps({"id": 3, "prompt": prompt, "n": greedy_n, "temperature": 0}),
        ]
    )
    out = io.StringIO()
    gp.serve(generator, io.StringIO(requests + "\n"), out)
    replies = [json.loads(x) for x in out.getvalue().splitlines()]
    first = [r for r in replies if r.get("id") == 1]
    assert len([r for r in first if "text" in r]) > 1  # streamed, not one block
    assert first[-1]["done"] is True and first[-1]["tokens"] == 40 and first[-1]["version"] == 3
    assert any("bad request" in r.get("error", "") for r in replies)
    assert next(r for r in replies if r.get("id") == 2)["error"].startswith("n must be")
    greedy = "".join(r.get("text", "") for r in replies if r.get("id") == 3)
    expected = sample(model, params, tokenizer.encode(prompt), greedy_n, temperature=0)
    assert greedy == tokenizer.decode(expected)
    generator.published.close()


def test_a_replaced_segment_is_mapped_again(tmp_path: Path) -> None:
    model, params = _model()
    state_dir = tmp_path / f"s-{uuid.uuid4().hex[:8]}"
    instance = engine_instance(state_dir / "checkpoints")
    spec = segment_specs(model.num_params, 2, 4, CONFIG.seq_len, 256, 2)["state"]
    published = gp.PublishedParams(instance, model.num_params)
    out = np.empty_like(params)
    for version in (5, 1):  # a control restart: a new segment under the same name
        block = ArrayBlock.create(segment_name(instance, "state"), spec)
        try:
            _publish(block, 0, params * version, version)
            assert published.copy(out) == version
            np.testing.assert_array_equal(out, params * version)
        finally:
            block.close()
            block.unlink()
    published.close()


def test_vocabulary_labels_and_colours(state_block: tuple[ArrayBlock, Path]) -> None:
    block, state_dir = state_block
    _, params = _model()
    _publish(block, 0, params, 9)
    generator = gp.Generator(CONFIG, state_dir)
    out = io.StringIO()
    gp.serve(generator, io.StringIO(json.dumps({"id": 4, "cmd": "vocabulary"}) + "\n"), out)
    reply = json.loads(out.getvalue())
    assert reply["done"] is True and reply["vocab"] == 256 and reply["version"] == 9
    labels = reply["labels"]
    assert (labels[65], labels[10], labels[200]) == ("A", "\\n", "<200>")
    colour = np.frombuffer(base64.b64decode(reply["colour"]), np.uint8)
    assert colour.shape == (256,) and colour.min() == 0 and colour.max() == 255
    generator.published.close()


@pytest.mark.timeout(120)
def test_service_streams_and_survives_a_reader_that_leaves(state_block: tuple[ArrayBlock, Path]) -> None:
    block, state_dir = state_block
    _, params = _model()
    _publish(block, 0, params, 11)
    settings = Settings(DaemonConfig(state_dir=str(state_dir)), CONFIG)

    async def scenario() -> None:
        service = GenerationService(settings)
        try:
            async with contextlib.aclosing(service.stream({"prompt": "the", "n": 2000})) as pieces:
                async for piece in pieces:
                    assert "text" in piece
                    break  # the page went away after one piece
            assert service.stats()["pid"] is None  # the abandoned sampling was stopped
            service.sample_cpu()
            reply = await service.generate({"prompt": "the", "n": 30, "temperature": 0})
            assert reply["step"] == 11 and len(reply["text"]) > 0
            service.sample_cpu()  # the process's start and sampling took CPU time
            assert 0 < service.stats()["cpu_share"] <= 1
            assert service.stats()["starts"] == 2
            with pytest.raises(CommandError, match="n must be"):
                await service.generate({"prompt": "x", "n": 0})
        finally:
            await service.stop()

    asyncio.run(scenario())


def test_cpu_window_keeps_a_replaced_process_and_forgets_past_the_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    readings = {1: 0.0, 2: 0.0}
    monkeypatch.setattr(generation_service, "process_cpu_s", lambda pid: readings.get(pid))
    window = CpuWindow(window_s=60.0, cores=2)
    window.sample(1, 0.0)
    readings[1] = 4.0
    window.sample(1, 10.0)
    assert window.share() == pytest.approx(4.0 / 10.0 / 2)
    readings[2] = 1.0  # process 1 was replaced; its 4 s stay counted
    window.sample(2, 20.0)
    assert window.share() == pytest.approx(5.0 / 20.0 / 2)
    window.sample(2, 90.0)  # nothing since: the busy minute has left the window
    window.sample(2, 100.0)
    assert window.share() == pytest.approx(0.0)


@pytest.mark.timeout(120)
def test_generation_serves_the_moving_average_of_a_real_engine(tmp_path: Path) -> None:
    """A run that keeps an EMA of its weights (2 worker processes, a few steps): the generation
    process copies the published average, not the raw weights, and samples from it."""
    from crystalline.tokens.windows import batch_for_step
    from crystalline.workers.engine import EngineSettings, ProcessEngine

    model, params = _model()
    state_dir = tmp_path / f"s-{uuid.uuid4().hex[:8]}"
    tokens = np.random.default_rng(2).integers(0, 256, 10_000).astype(np.uint16)
    adamw = dataclasses.replace(CONFIG, ema_decay=0.9, schedule="stable").adamw_config()
    engine = ProcessEngine(
        model,
        adamw,
        lambda step: batch_for_step(tokens, 0, step, 4, CONFIG.seq_len),
        4,
        EngineSettings(workers=2, instance=engine_instance(state_dir / "checkpoints")),
    )
    try:
        engine.load_state(params, np.zeros_like(params), np.zeros_like(params))
        for step in range(4):
            engine.step(step, 1e-2)
        ema = engine.ema()
        assert ema is not None and not np.array_equal(ema, engine.params())
        generator = gp.Generator(CONFIG, state_dir)
        out = np.empty_like(params)
        assert generator.published.copy(out) == 4
        np.testing.assert_array_equal(out, ema)
        replies = io.StringIO()
        request = {"id": 1, "prompt": "the", "n": 8, "temperature": 0}
        gp.serve(generator, io.StringIO(json.dumps(request) + "\n"), replies)
        text = "".join(json.loads(x).get("text", "") for x in replies.getvalue().splitlines())
        tokenizer = load_tokenizer("bytes")
        assert text == tokenizer.decode(sample(model, ema, tokenizer.encode("the"), 8, temperature=0))
        generator.published.close()
    finally:
        engine.close()

"""The training step, EMA, checkpoints and config on the tiny preset, with tensors made here (no data set)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import resource
import signal
from pathlib import Path

import pytest
import torch

from sanasr_cli.training.config import ConfigError, TrainConfig

TORCH_THREADS = 1  # tiny tensors: one intra-op thread (see tests/conftest.py)


def _config(tmp_path, **kw):
    base = dict(
        model="tiny",
        hq=[tmp_path],
        output=tmp_path / "run",
        lora_rank=4,
        lora_alpha=4,
        crop=16,
        perceptual_backbone="random",
        precision="fp32",
        num_workers=0,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def step_setup(tmp_path_factory):
    """Accelerator + tiny model with LoRA + objective + optimizer, as the loop builds them (shared by the
    tests of this module, which only ever step it forward; the loss test, which changes the protocol, comes
    last)."""
    from sanasr_cli.training import loop

    config = _config(tmp_path_factory.mktemp("cfg"), lr=1e-3)
    accelerator = loop.create_accelerator(config)
    torch.manual_seed(0)
    model = loop.load_model_with_lora(config, accelerator)
    objective = loop.build_objective(config, model, accelerator.device)
    optimizer, scheduler = loop.create_optimizer(config, objective)
    ema = loop.create_ema(config, model.transformer)
    objective, optimizer = accelerator.prepare(objective, optimizer)
    params = [p for p in objective.parameters() if p.requires_grad]
    gens = loop.make_generators(config, accelerator)
    g = torch.Generator().manual_seed(3)
    lq, hq = torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)
    embeds, mask = model.prompts.encode(["tree, clean", "tree, clean"])

    def step():
        return loop.run_training_step(
            objective, (lq, hq), embeds, mask, optimizer, scheduler, accelerator, config, gens, params
        )

    return dict(
        config=config,
        accelerator=accelerator,
        model=model,
        objective=objective,
        optimizer=optimizer,
        scheduler=scheduler,
        ema=ema,
        gens=gens,
        step=step,
        batch=(lq, hq, embeds, mask),
    )


def test_config_errors_name_the_flag(tmp_path):
    assert _config(tmp_path).validate()
    cases = [
        (dict(batch_size=0), "--batch-size"),
        (dict(lr=0.0), "--lr"),
        (dict(precision="fp8"), "--precision"),
        (dict(protocol="x"), "--protocol"),
        (dict(crop=30), "--crop"),
        (dict(hq=[]), "--hq"),
        (dict(hq=[tmp_path / "missing"]), "--hq"),
        (dict(ema_decay=1.0), "--ema-decay"),
        (dict(lora_targets="mlp"), "--lora-targets"),
        (dict(lambda_align=-1.0), "--lambda-align"),
        (dict(pairs=(tmp_path, tmp_path / "nope"), hq=[]), "--pairs"),
        (dict(perceptual_backbone="alex"), "--perceptual-backbone"),
    ]
    for kw, flag in cases:
        with pytest.raises(ConfigError) as e:
            _config(tmp_path, **kw).validate()
        assert str(e.value).startswith(flag), (kw, str(e.value))


def test_config_round_trip_and_resume_differences(tmp_path):
    a = _config(tmp_path)
    a.save(tmp_path / "c.json")
    b = TrainConfig.load(tmp_path / "c.json")
    assert b == a
    b.max_steps, b.save_every = 7, 3  # may change on resume
    assert a.differences(b) == []
    b.lora_rank, b.lr = 8, 1.0
    assert {d.split(":")[0] for d in a.differences(b)} == {"lora_rank", "lr"}


def test_only_lora_weights_change_and_ema_follows(step_setup):
    model, ema = step_setup["model"], step_setup["ema"]
    before = {k: v.clone() for k, v in model.transformer.state_dict().items()}
    vae_before = {k: v.clone() for k, v in model.codec.vae.state_dict().items()}
    text_before = {k: v.clone() for k, v in model.prompts.text_encoder.state_dict().items()}
    shadow0 = [s.clone() for s in ema.shadow]
    metrics, stepped = step_setup["step"]()
    assert stepped and set(metrics) >= {
        "loss",
        "pixel",
        "perceptual",
        "align",
        "consistency",
        "t",
        "grad_norm",
    }
    ema.update()
    after = model.transformer.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)
    assert any("lora_B" in k for k in changed)  # lora_B starts at 0 and must move
    assert all(torch.equal(v, model.codec.vae.state_dict()[k]) for k, v in vae_before.items())
    assert all(torch.equal(v, model.prompts.text_encoder.state_dict()[k]) for k, v in text_before.items())
    # EMA: shadow = d * shadow + (1 - d) * param, by hand
    d = ema.decay
    for s0, s1, p in zip(shadow0, ema.shadow, ema.params, strict=False):
        torch.testing.assert_close(s1, d * s0 + (1 - d) * p.detach().float())


def test_alignment_term_uses_one_noise_for_both_latents(tiny_model):
    """L_align by hand: KL(f_0(perturb(z_hat, eps, s)), f_0(perturb(z_H, eps, s))), the step's t and eps."""
    from sanasr_cli.models.schedule import flow_sigma, perturb
    from sanasr_cli.training.losses import (
        LossWeights,
        PromptProtocol,
        channel_gaussian_kl,
        compute_task_losses,
        sample_alignment_timestep,
    )

    m = tiny_model
    g = torch.Generator().manual_seed(0)
    lq, hq = torch.rand(1, 3, 16, 16, generator=g), torch.rand(1, 3, 16, 16, generator=g)
    embeds, mask = m.prompts.encode(["sky"])
    protocol = PromptProtocol()
    with torch.no_grad():
        terms = compute_task_losses(
            m.restorer,
            m.codec,
            lq,
            hq,
            embeds,
            mask,
            LossWeights(perceptual=0),
            protocol,
            None,
            generator=torch.Generator().manual_seed(9),
        )
        g2 = torch.Generator().manual_seed(9)
        t = sample_alignment_timestep(protocol, g2)
        z_hat = m.restorer(m.codec.encode(lq), embeds, mask)
        eps = torch.randn(z_hat.shape, generator=g2)
        s = float(flow_sigma(t, m.restorer.flow_shift))
        q_hat = m.restorer.velocity(perturb(z_hat, eps, s), t, embeds, mask)
        q_hq = m.restorer.velocity(perturb(m.codec.encode(hq), eps, s), t, embeds, mask)
    assert terms.timestep == t
    torch.testing.assert_close(terms.align, channel_gaussian_kl(q_hat, q_hq), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        terms.pixel, ((m.codec.decode(z_hat, clamp=False) - hq) ** 2).mean(), rtol=1e-5, atol=1e-6
    )


def _save(setup, run_dir, step):
    from sanasr_cli.training import loop
    from sanasr_cli.training.data import BatchStream, ShardedBatchSampler

    stream = BatchStream(None, ShardedBatchSampler(8, 2, 0, 1, 0), lambda s: [])
    stream.seek(1, 2)
    return loop.save_training_checkpoint(
        run_dir,
        step,
        setup["model"],
        setup["ema"],
        setup["optimizer"],
        setup["scheduler"],
        setup["accelerator"],
        setup["gens"],
        stream,
        setup["config"],
    )


def test_checkpoint_is_a_model_dir_and_restores_training_state(step_setup, tmp_path):
    from peft import PeftModel

    from sanasr_cli.models.presets import PRESETS
    from sanasr_cli.models.sanasr import build_random_transformer, load_model
    from sanasr_cli.training import loop
    from sanasr_cli.training.checkpoint import latest_checkpoint

    step_setup["step"]()
    step_setup["ema"].update()
    run = tmp_path / "run"
    run.mkdir()
    ckpt = _save(step_setup, run, 1)
    assert ckpt == run / "checkpoint-1" == latest_checkpoint(run)
    for rel in (
        "sanasr.json",
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "adapter_ema/adapter_model.safetensors",
        "adapter_ema/adapter_config.json",
        "train/optimizer.pt",
        "train/rng.safetensors",
        "train/state.json",
        "train/train_config.json",
    ):
        assert (ckpt / rel).is_file(), rel
    # a valid model directory over the trained adapter
    live = dict(step_setup["model"].transformer.named_parameters())
    loaded = load_model(ckpt)
    assert loaded.description.lora["rank"] == 4
    for n, p in loaded.transformer.named_parameters():
        if "lora_" in n:
            assert torch.equal(p, live[n].detach())
    # both adapters are PEFT folders that peft itself loads; adapter_ema/ holds the EMA shadow
    ema_named = dict(zip(step_setup["ema"].names, step_setup["ema"].shadow, strict=True))
    for folder, expected in (
        ("adapter", {n: p.detach() for n, p in live.items()}),
        ("adapter_ema", ema_named),
    ):
        peft_model = PeftModel.from_pretrained(build_random_transformer(PRESETS["tiny"], 0), str(ckpt / folder))
        got = {n.removeprefix("base_model.model."): p for n, p in peft_model.named_parameters() if "lora_" in n}
        assert got and all(torch.equal(p, expected[n]) for n, p in got.items()), folder
    assert not all(torch.equal(ema_named[n], live[n].detach()) for n in ema_named)  # they differ after a step
    # resume: weights, EMA, optimizer, scheduler, RNG, data position
    expected_next = torch.randn(3, generator=step_setup["gens"]["noise"])
    fresh = _fresh_setup(dataclasses.replace(step_setup["config"], lambda_perceptual=0.0))
    state = loop.restore_training_state(
        ckpt,
        fresh["model"],
        fresh["ema"],
        fresh["optimizer"],
        fresh["scheduler"],
        fresh["accelerator"],
        fresh["gens"],
    )
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (1, 1, 2)
    assert fresh["scheduler"].state_dict()["last_epoch"] == step_setup["scheduler"].state_dict()["last_epoch"]
    torch.testing.assert_close(torch.randn(3, generator=fresh["gens"]["noise"]), expected_next)
    fresh_params = dict(fresh["model"].transformer.named_parameters())
    for n, p in live.items():
        if "lora_" in n:
            assert torch.equal(fresh_params[n].detach(), p.detach())
    for a, b in zip(fresh["ema"].shadow, step_setup["ema"].shadow, strict=False):
        assert torch.equal(a, b)
    sa, sb = fresh["optimizer"].state_dict()["state"], step_setup["optimizer"].state_dict()["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"]) for k in sa)


def _fresh_setup(config):
    from sanasr_cli.training import loop

    accelerator = loop.create_accelerator(config)
    model = loop.load_model_with_lora(config, accelerator)
    objective = loop.build_objective(config, model, accelerator.device)
    optimizer, scheduler = loop.create_optimizer(config, objective)
    ema = loop.create_ema(config, model.transformer)
    objective, optimizer = accelerator.prepare(objective, optimizer)
    return dict(
        accelerator=accelerator,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        ema=ema,
        gens=loop.make_generators(config, accelerator),
    )


@contextlib.contextmanager
def _file_size_limit(limit: int):
    """A real write failure without root: the kernel refuses to grow any file of this process past `limit`
    bytes (RLIMIT_FSIZE; write() fails with EFBIG, SIGXFSZ ignored), as it refuses any write on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


@pytest.mark.parametrize("fails_at", ["adapter/adapter_model.safetensors", "train/optimizer.pt"])
def test_a_failing_disk_leaves_no_partial_checkpoint(step_setup, tmp_path, fails_at):
    """The write of checkpoint-2 fails for real at `fails_at` (the first file larger than the limit): one
    CheckpointError naming the file, no staging leftovers, checkpoint-1 byte for byte as it was."""
    from sanasr_cli.training.checkpoint import CheckpointError, list_checkpoints

    run = tmp_path / "run"
    run.mkdir()
    _save(step_setup, run, 1)
    sizes = {p.relative_to(run / "checkpoint-1").as_posix(): p.stat().st_size for p in run.rglob("*") if p.is_file()}
    earlier = ["adapter/adapter_model.safetensors", "adapter_ema/adapter_model.safetensors", "train/optimizer.pt"]
    limit = sizes[fails_at] - 1
    assert all(sizes[f] <= limit for f in earlier[: earlier.index(fails_at)])  # written before it
    good = {p.relative_to(run).as_posix(): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with _file_size_limit(limit), pytest.raises(CheckpointError) as err:
        _save(step_setup, run, 2)
    assert f"({Path(fails_at).name}: File too large)" in str(err.value)
    assert "earlier checkpoints are untouched" in str(err.value)
    assert [s for s, _ in list_checkpoints(run)] == [1]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-1"]  # no staging leftovers
    assert {p.relative_to(run).as_posix(): p.read_bytes() for p in run.rglob("*") if p.is_file()} == good


def test_checkpoints_total_limit_keeps_the_newest(tmp_path):
    from sanasr_cli.training.checkpoint import list_checkpoints, prune_checkpoints

    for s in (1, 2, 3):
        (tmp_path / f"checkpoint-{s}" / "train").mkdir(parents=True)
        (tmp_path / f"checkpoint-{s}" / "train" / "state.json").write_text("{}")
    (tmp_path / "checkpoint-9").mkdir()  # incomplete: ignored
    prune_checkpoints(tmp_path, 2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3]


def test_validation_grid_layout():
    from sanasr_cli.training.validation import make_grid

    lq, sr, hq = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.5), torch.ones(2, 3, 4, 4)
    grid = make_grid(lq, sr, hq, gap=2)
    assert grid.shape == (3, 2 * 4 + 2, 3 * 4 + 4)
    assert grid[:, 0:4, 0:4].max() == 0 and (grid[:, 0:4, 6:10] == 0.5).all() and (grid[:, 6:10, 12:16] == 1).all()


def test_validation_grid_marks_the_tagged_column():
    from sanasr_cli.training.validation import TAGGED_MARK, make_grid

    lq, sr, hq = torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5), torch.ones(1, 3, 4, 4)
    mark = torch.tensor(TAGGED_MARK).view(3, 1, 1)
    for tagged, col in (("lq", 0), ("hq", 2)):
        grid = make_grid(lq, sr, hq, gap=2, tagged=tagged)
        assert grid.shape == (3, 4 + 4, 3 * 4 + 4)  # a 2*gap bar on top, the rows below it
        for j in range(3):
            bar = grid[:, :4, j * 6 : j * 6 + 4]
            assert (bar == mark).all() if j == col else (bar == 1).all(), (tagged, j)
        assert grid[:, 4:8, 0:4].max() == 0 and (grid[:, 4:8, 6:10] == 0.5).all()


def test_auto_precision_is_fp16_with_loss_scaling_on_cuda():
    """App. B trains in FP16: auto -> accelerate's fp16 (GradScaler) on CUDA; fp32 on the CPU; bf16 on request."""
    from sanasr_cli.training.loop import create_accelerator, training_mixed_precision

    assert training_mixed_precision("auto", cuda=True) == "fp16"
    assert training_mixed_precision("auto", cuda=False) == "no"
    assert training_mixed_precision("bf16", cuda=True) == "bf16"
    assert training_mixed_precision("fp32", cuda=True) == "no"
    with pytest.raises(ConfigError, match="--precision"):
        training_mixed_precision("fp16", cuda=False)
    if not torch.cuda.is_available():  # (the process-wide accelerate state is this module's: fp32)
        accelerator = create_accelerator(TrainConfig(hq=[], precision="auto"))
        assert accelerator.mixed_precision == "no" and accelerator.scaler is None


def test_sharded_sampler_partitions_each_epoch_and_seeks():
    from sanasr_cli.training.data import ShardedBatchSampler

    shards = [ShardedBatchSampler(11, 2, r, 2, seed=5) for r in range(2)]
    e0 = [list(s) for s in shards]
    flat = [i for batches in e0 for b in batches for i in b]
    assert len(flat) == 8 and len(set(flat)) == 8  # 2 batches x 2 ranks x 2 images, disjoint, tail dropped
    for s in shards:
        s.epoch = 1
    assert [list(s) for s in shards] != e0  # reshuffled per epoch
    s = ShardedBatchSampler(11, 2, 0, 2, seed=5)
    s.epoch, s.start = 1, 1
    assert list(s) == [list(shards[0])[1]]


def test_loss_falls_on_a_fixed_batch(step_setup):
    """With t and eps fixed the objective is deterministic; each of 4 AdamW steps must lower it."""
    from sanasr_cli.training.losses import PromptProtocol

    objective = step_setup["objective"]
    objective.protocol = PromptProtocol(900.0, 300, 300)
    losses = []
    for _ in range(4):
        step_setup["gens"]["noise"].manual_seed(11)
        metrics, _ = step_setup["step"]()
        losses.append(metrics["loss"])
    assert all(math.isfinite(v) for v in losses)
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert losses[-1] < 0.98 * losses[0], losses


def test_benchmark_script_measures_the_training_step():
    """benchmarks/train_step.py on the tiny preset (the real-size run needs a GPU)."""
    import importlib.util

    from tests.helpers import REPO_ROOT

    spec = importlib.util.spec_from_file_location("train_step_bench", REPO_ROOT / "benchmarks" / "train_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rec = bench.measure_train_step("tiny", batch_size=1, crop=16, steps=1, warmup=1, precision="fp32", lora_rank=4)
    assert rec["steps_timed"] == 1 and len(rec["losses"]) == 1 and math.isfinite(rec["losses"][0])
    assert rec["step_seconds_median"] > 0 and rec["device"] == "cpu"
    assert 0 < rec["trainable_params"] < rec["transformer_params"]


def test_the_train_step_benchmark_is_seeded():
    """benchmarks/train_step.py gives the same losses in two runs, whatever the global RNG did before (issue 36:
    its LoRA init and LPIPS trunk came from the unseeded global RNG)."""
    import importlib.util

    from tests.helpers import REPO_ROOT

    spec = importlib.util.spec_from_file_location("train_step", REPO_ROOT / "benchmarks" / "train_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    runs = []
    for noise in (1, 2):
        torch.manual_seed(noise)  # the global RNG in another state before each run
        torch.rand(noise)
        record = bench.measure_train_step(
            "tiny", batch_size=1, crop=16, steps=2, warmup=0, precision="fp32", lora_rank=4
        )
        runs.append(record["losses"])
    assert runs[0] == runs[1]

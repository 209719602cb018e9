"""MAML through the LightningModule reproduces the original's first-order MAML (reference vector):
the support loss before each inner step, the adapted query loss and the meta-gradient."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

import dsaml.meta.batched as batched
from dsaml.meta import meta_backward
from dsaml.meta.adaptation import META_ENGINES
from dsaml.models.compat import config_from_original, original_key_to_ours, state_dict_from_original
from dsaml.training.module import DSAMLModule

REFERENCE = Path("/work/shared/reference/dsaml_small.pt")
pytestmark = pytest.mark.skipif(not REFERENCE.is_file(), reason="reference vector not available")


@pytest.fixture(scope="module")
def ref():
    return torch.load(REFERENCE, weights_only=True)


def _module(ref, engine: str = "sequential") -> DSAMLModule:
    cfg = config_from_original(ref["config"])
    task = {
        "name": "pdmer",
        "episodes": 1,
        "shots": 1,
        "queries": 1,
        "inner_steps": int(ref["maml_adapt_steps"]),
        "inner_lr": float(ref["maml_inner_lr"]),
        "first_order": True,
        "lr": 5e-5,
        "test_protocols": ["pdmer_within_song"],
        "meta_engine": engine,
    }
    module = DSAMLModule(model=cfg.to_dict(), task=task)
    module.net.load_state_dict(state_dict_from_original(ref["state_dict"]))
    return module


def _task(ref) -> dict:
    inputs, (arousal, valence) = ref["inputs"], ref["labels"]

    def sample(i: int) -> dict:
        return {
            "logmel": inputs["log_mel_spectrogram"][i : i + 1],
            "global": inputs["global_imagebind_audio_embedding"][i : i + 1],
            "arousal": arousal[i : i + 1],
            "valence": valence[i : i + 1],
            "songs": [f"s{i}"],
        }

    return {"rater": "r", "support": sample(0), "query": sample(1), "songs": ["s0", "s1"]}


def _assert_grads(module: DSAMLModule, ref) -> None:
    ours = dict(module.net.named_parameters())
    checked = 0
    for key, expected in ref["maml_grads"].items():
        name = original_key_to_ours(key)
        grad = ours[name].grad
        assert grad is not None, name
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}")
        checked += 1
    assert checked == len(ref["maml_grads"]) == 60


@pytest.mark.parametrize("engine", META_ENGINES)
def test_meta_backward_matches_reference(ref, engine):
    module = _module(ref).train()
    steps = module.task_cfg.inner_steps
    stats = meta_backward(module.maml, [_task(ref)], steps, episodes_in_meta_batch=1, engine=engine)
    torch.testing.assert_close(
        torch.tensor(stats.adapt_losses[0]), ref["maml_adapt_losses"], rtol=1e-5, atol=1e-6
    )
    assert stats.query_loss == pytest.approx(float(ref["maml_query_loss"]), rel=1e-5, abs=1e-6)
    _assert_grads(module, ref)


@pytest.mark.parametrize("engine", META_ENGINES)
def test_training_step_through_trainer_matches_reference(ref, tmp_path, engine, monkeypatch):
    """One real meta-step via Trainer.fit (manual optimisation) with each task.meta_engine: the logged
    losses and the gradient left in .grad equal the reference, and the Adam step moved the weights by about
    lr."""
    calls = []
    batched_engine = batched.batched_meta_backward
    monkeypatch.setattr(batched, "batched_meta_backward", lambda *a: calls.append(1) or batched_engine(*a))
    module = _module(ref, engine)
    before = {k: v.detach().clone() for k, v in module.net.named_parameters()}
    batch = {"step": 0, "episodes_per_step": 1, "episodes": [_task(ref)]}
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        inference_mode=False,
    )
    trainer.fit(module, train_dataloaders=DataLoader([batch], batch_size=None))
    metrics = trainer.callback_metrics
    assert float(metrics["train/loss_step"]) == pytest.approx(float(ref["maml_query_loss"]), rel=1e-5)
    assert float(metrics["train/support_loss_before"]) == pytest.approx(
        float(ref["maml_adapt_losses"][0]), rel=1e-5
    )
    _assert_grads(module, ref)
    assert len(calls) == (engine == "batched")
    # Adam's first step moves each parameter with a non-zero gradient by ~lr in the direction of -grad
    for name, p in module.net.named_parameters():
        delta = p.detach() - before[name]
        moving = p.grad.abs() > 1e-6
        if moving.any():
            assert torch.all(torch.sign(delta[moving]) == -torch.sign(p.grad[moving])), name
            assert delta[moving].abs().max() <= 5e-5 * 1.01

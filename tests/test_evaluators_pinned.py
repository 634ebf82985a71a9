"""Guard rail for the end-of-training evaluation: fixed tiny encoders, recorded scores.

The evaluation of a run (``results.json``'s keys and values) is computed for a randomly
initialised (seeded) tiny encoder of a two-view method with the segmentation probe, and of a
multi-exit method (named features: backbone, sub-network, ensemble), with every baseline on.
The scores were recorded before the evaluators moved out of the trainer
(``tests/data/evaluation_pinned.json``); they must not change (to float32 rounding: the
percentages are rounded to 2 decimals, so a difference of at most 0.01 is accepted).

Regenerate (only for a deliberate change of the evaluation):
  SSLJAX_PIN_EVALUATION=1 python -m pytest tests/test_evaluators_pinned.py
"""

import json
import os
import types

import jax
import jax.numpy as jnp
import pytest

from helpers import tiny_config
from ssljax import data, methods, sharding, train

PINNED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                      "evaluation_pinned.json")

CASES = {
    "simclr_segmentation": ("simclr", {"eval.segmentation": True,
                                       "eval.segmentation_epochs": 1,
                                       "eval.segmentation_train_examples": 128}),
    "selfcon_named": ("selfcon", {}),
}


def _evaluate(name: str) -> dict:
    method_name, overrides = CASES[name]
    cfg = tiny_config(method_name, **{"data.train_split": "train[:256]",
                                      "data.test_split": "test[:128]",
                                      "eval.baselines": True, "eval.batch_size": 64,
                                      **overrides})
    info = data.dataset_info(cfg.data.name)
    method = methods.get_method(cfg.method)(cfg, num_classes=info.num_classes)
    example = {"views": jnp.zeros((1, cfg.data.num_views, cfg.data.image_size,
                                   cfg.data.image_size, 1), jnp.float32)}
    params, state = jax.jit(method.init_model)(train.init_key(3), example)
    ts = types.SimpleNamespace(params=params, state=state)
    return train.evaluate_encoder(cfg, method, ts, sharding.make_mesh(1), info)


@pytest.mark.parametrize("name", sorted(CASES))
def test_evaluation_matches_the_recorded_scores(name):
    got = _evaluate(name)
    if os.environ.get("SSLJAX_PIN_EVALUATION"):
        pinned = json.load(open(PINNED)) if os.path.exists(PINNED) else {}
        pinned[name] = got
        with open(PINNED, "w") as f:
            json.dump(pinned, f, indent=1, sort_keys=True)
            f.write("\n")
    with open(PINNED) as f:
        want = json.load(f)[name]
    assert sorted(got) == sorted(want)
    for key in want:
        assert abs(got[key] - want[key]) <= 0.01 + 1e-9, (key, got[key], want[key])


def test_the_config_selects_the_evaluators():
    from ssljax.evaluate import evaluators
    cfg = tiny_config("simclr")
    memory, stream = data.dataset_info("fashion_mnist"), data.dataset_info("imagenet2012")
    assert evaluators.selected(cfg, memory) == ["encoder"]
    cfg.eval.baselines = True
    assert evaluators.selected(cfg, memory) == ["encoder", "random_encoder", "raw_pixels"]
    assert evaluators.selected(cfg, stream) == ["encoder", "random_encoder"]  # no raw pixels
    assert evaluators.selected(cfg, memory, trained=False) == ["random_encoder", "raw_pixels"]
    cfg.eval.segmentation = True
    assert evaluators.selected(cfg, memory)[-1] == "segmentation"
    with pytest.raises(ValueError, match="already registered"):
        evaluators.register("encoder", when=lambda c, i: True)(lambda ctx, ts: {})

"""Typed method settings (issue 22): built once from the config and validated there, one
sentence per bad value; run facts passed in; input specs the trainer reads. No JAX
computation: building a method only builds module descriptions."""

import pytest

from helpers import load_config, set_fields, tiny_config
from ssljax import methods
from ssljax.config import ConfigError


def build(name, run=None, **overrides):
    # MetaMask's config has two projectors, not tiny_config's one.
    cfg = (set_fields(load_config(name), overrides) if name == "metamask"
           else tiny_config(name, **overrides))
    return methods.get_method(name)(cfg, num_classes=10, run=run)


@pytest.mark.parametrize("name, key, value, words", [
    ("simclr", "loss.temperature", 0.0, "loss.temperature=0.0 must be > 0"),
    ("barlow_twins", "loss.ddof", 2, "loss.ddof=2 must be 0 or 1"),
    ("vicreg", "loss.cov_coeff", -1.0, "loss.cov_coeff=-1.0 must be >= 0"),
    ("corinfomax", "loss.la_R", 2.0, "loss.la_R=2.0 must be in [0, 1]"),
    ("byol", "byol.base_momentum", 1.5, "byol.base_momentum=1.5 must be in [0, 1]"),
    ("moco", "moco.temperature", -0.2, "moco.temperature=-0.2 must be > 0"),
    ("infomin", "infomin.beta", 2.0, "infomin.beta=2.0 must be in [0, 1]"),
    ("metamask", "metamask.temperature", 0.0, "metamask.temperature=0.0 must be > 0"),
    ("mrcl", "mrcl.contrast", "nce", "mrcl.contrast='nce' is not known"),
    ("selfcon", "loss.base_temperature", 0.0, "loss.base_temperature=0.0 must be > 0"),
    ("supcon", "loss.block_size", -1, "loss.block_size=-1 must be >= 0"),
    ("subnet_ce", "loss.alpha", -1.0, "loss.alpha=-1.0 must be >= 0"),
    ("infomin_views", "views.temperature", 0.0, "views.temperature=0.0 must be > 0"),
])
def test_a_bad_value_is_one_sentence_naming_its_key(name, key, value, words):
    with pytest.raises(ValueError) as err:
        build(name, **{key: value})
    message = str(err.value)
    assert words in message and f"--config.{key.split('.')[0]}" in message
    assert message.count(". ") == 0 and message.endswith((".", ")")), message


def test_settings_are_frozen_and_typed():
    method = build("simclr", **{"loss.temperature": 0.2})
    assert method.settings.temperature == 0.2
    with pytest.raises(AttributeError):
        method.settings.temperature = 0.5


def test_run_facts_are_passed_in_not_set_afterwards():
    run = methods.RunFacts(total_steps=40, peak_lr=0.3, batch_size=16)
    byol = build("byol", run=run)
    assert byol.run is run
    assert float(byol.momentum(40)) == 1.0 and float(byol.momentum(0)) == pytest.approx(0.99)
    # Without run facts, the config's total_steps (tiny_config: 6) is the run's length.
    assert build("byol").run.total_steps == 6
    with pytest.raises(ValueError, match="run length"):
        build("byol", run=methods.RunFacts()).momentum(0)
    assert build("metamask", run=run).peak_lr == 0.3


def test_moco_checks_the_batch_size_of_the_run():
    with pytest.raises(ConfigError, match="moco.queue_size=40 is smaller than batch_size=64"):
        build("moco", run=methods.RunFacts(batch_size=64), **{"moco.queue_size": 40})


def test_input_specs_name_what_the_batches_carry():
    assert build("simclr").input_spec == methods.InputSpec(min_views=2)
    mrcl = build("mrcl").input_spec
    assert mrcl.masks["ratio"] == 0.25 and mrcl.jigsaw is None
    assert build("mrcl", **{"data.mask.enabled": False, "mrcl.rec_on": "all"}).input_spec.masks \
        is None
    infomin = build("infomin").input_spec
    assert infomin.jigsaw["patch"] == 8 and infomin.masks is None
    assert build("selfcon").input_spec.labels
    assert not build("selfcon", **{"selfcon.label": False}).input_spec.labels
    assert not build("infomin_views").input_spec.labels
    assert build("infomin_views", **{"views.supervised_weight": 1.0}).input_spec.labels


def test_the_trainer_names_no_method_and_no_method_specific_input():
    # Issue 22: a method's inputs reach the pipeline through InputSpec and
    # ssljax.data.batch_extras; train.py reads neither a method's name nor one of its inputs.
    import re
    from pathlib import Path

    import ssljax.train
    source = Path(ssljax.train.__file__).read_text().lower()
    words = set(re.findall(r"[a-z_]+", source))
    names = {n.replace("-", "_") for n in methods.available()}
    inputs = {"jigsaw", "mask", "masks", "segmentation", "queue", "target"}
    assert not (names | inputs) & words, sorted((names | inputs) & words)

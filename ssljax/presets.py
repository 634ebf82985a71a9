"""Dataset presets and the one variant parser of the config files (``configs/*.py``).

A config file builds ``base_config()``, sets its method's recipe, then applies the preset
of the dataset its variant names (:func:`apply_dataset`) and states only what its recipe
changes on top. The presets:

=================  ==========================================================================
``fashion_mnist``  the CPU-sized run every method's default variant shares: 28 x 28
                   grayscale images, a narrow ResNet-18 (width 16, stride-2 stem), batch
                   256, crops of 20-100%, logs every 20 and checkpoints every 200 steps, and
                   the benchmark's converged linear probe (AdamW lr 1e-2, 30 epochs)
``cifar10/100``    32 x 32 images at full width (CIFAR stem), checkpoints every 5000 steps
``stl10``          96 x 96 images, checkpoints every 5000 steps
``imagenet``       ImageNet-1k at 224 x 224, ResNet-50 (ImageNet stem) in bfloat16,
                   checkpoints every 5000 steps, feature extraction in batches of 2048
=================  ==========================================================================

Config files are loaded by path (``--config=configs/x.py:variant``), so this helper lives
in the package: ``from ssljax import presets`` works from any directory.
"""

from __future__ import annotations

import importlib.util
import os
import types
from collections.abc import Sequence

import ml_collections

__all__ = ["DATASETS", "apply_dataset", "cifar", "fashion_mnist_cpu", "imagenet",
           "parse_variant", "sibling", "stl10"]

DATASETS = ("fashion_mnist", "cifar10", "cifar100", "stl10", "imagenet")


def _one_of(names: Sequence[str]) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def parse_variant(variant: str, config_file: str, variants: Sequence[str],
                  modifiers: Sequence[str] = ()) -> tuple[str, tuple[str, ...]]:
    """Splits ``'<variant>[,<modifier>...]'`` and checks both parts.

    Args:
      variant: what follows the colon of ``--config=configs/<config_file>.py:<variant>``.
      config_file: the config file's name without ``.py`` (for the error).
      variants: the variants the file accepts (usually datasets).
      modifiers: the modifiers it accepts after a comma (none by default).

    Returns:
      ``(variant, modifiers)``, e.g. ``('fashion_mnist', ('vit',))``.

    Raises:
      ValueError: one sentence naming the unknown variant and the valid ones.

    >>> parse_variant("fashion_mnist,vit", "mrcl", ("fashion_mnist",), ("vit", "block"))
    ('fashion_mnist', ('vit',))
    >>> parse_variant("mnist", "byol", ("fashion_mnist", "cifar10"))
    Traceback (most recent call last):
    ...
    ValueError: Unknown variant 'mnist' of configs/byol.py; use fashion_mnist or cifar10.
    """
    name, *mods = [part.strip() for part in variant.split(",")]
    if name not in variants or any(m not in modifiers for m in mods) or len(set(mods)) < len(mods):
        hint = (f", optionally followed by ,<modifier> with modifiers from {_one_of(modifiers)}"
                if modifiers else "")
        raise ValueError(f"Unknown variant {variant!r} of configs/{config_file}.py; use "
                         f"{_one_of(variants)}{hint}.")
    return name, tuple(mods)


def fashion_mnist_cpu(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The CPU-sized Fashion-MNIST run (the default variant of every method)."""
    c.data.name = "fashion_mnist"
    c.data.image_size = 28
    # Small garments lose their identity under 8% crops.
    c.data.augment.crop_scale = (0.2, 1.0)
    # A narrow ResNet-18 whose stride-2 3x3 stem suits 28 x 28 images.
    c.model.width = 16
    c.model.stem_stride = 2
    c.batch_size = 256
    c.log_every = 20
    c.checkpoint_every = 200
    # AdamW lr 1e-2, not the base 1e-3: at 1e-3 the probe had not converged after 30 epochs
    # (the benchmark's probe, ssljax/benchmark.py; experiments/simclr_recipe_sweep.md).
    c.eval.linear_epochs = 30
    c.eval.linear_lr = 1e-2
    return c


def cifar(c: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """CIFAR-10 or CIFAR-100 (``name``) at 32 x 32, base ResNet (CIFAR stem)."""
    if name not in ("cifar10", "cifar100"):
        raise ValueError(f"cifar() takes 'cifar10' or 'cifar100', not {name!r}.")
    c.data.name = name
    c.data.image_size = 32
    c.checkpoint_every = 5000
    return c


def stl10(c: ml_collections.ConfigDict, image_size: int = 96) -> ml_collections.ConfigDict:
    """STL-10 (unlabelled + train for pre-training) at ``image_size``."""
    c.data.name = "stl10"
    c.data.image_size = image_size
    c.checkpoint_every = 5000
    return c


def imagenet(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """ImageNet-1k at 224 x 224: ResNet-50 with the ImageNet stem, in bfloat16."""
    c.data.name = "imagenet2012"
    c.data.image_size = 224
    c.model.name = "resnet50"
    c.model.stem = "imagenet"
    c.model.dtype = "bfloat16"
    c.checkpoint_every = 5000
    c.eval.batch_size = 2048
    return c


def apply_dataset(c: ml_collections.ConfigDict, dataset: str) -> ml_collections.ConfigDict:
    """The preset of ``dataset`` (one of :data:`DATASETS`) applied to ``c``; returns ``c``."""
    if dataset == "fashion_mnist":
        return fashion_mnist_cpu(c)
    if dataset in ("cifar10", "cifar100"):
        return cifar(c, dataset)
    if dataset == "stl10":
        return stl10(c)
    if dataset == "imagenet":
        return imagenet(c)
    raise ValueError(f"No dataset preset named {dataset!r}; use one of {', '.join(DATASETS)}.")


def sibling(config_file: str, name: str) -> types.ModuleType:
    """The config file ``<name>.py`` beside ``config_file`` (a config's ``__file__``), loaded
    by path as ``--config`` loads it, for a config that starts from another's recipe.

    >>> import os, ssljax
    >>> configs = os.path.join(os.path.dirname(os.path.dirname(ssljax.__file__)), "configs")
    >>> sibling(os.path.join(configs, "ce.py"), "selfcon").VARIANTS
    ('fashion_mnist', 'cifar10', 'cifar100')
    """
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
    if not os.path.exists(path):
        raise ValueError(f"No config file {path}; a config can only start from a config file "
                         "in its own directory.")
    spec = importlib.util.spec_from_file_location(f"_ssljax_configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

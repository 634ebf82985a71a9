"""The fields every run shares, and the checks that turn bad configs into one clear sentence.

A method's config file (``configs/<method>.py``) starts from :func:`base_config`, sets
what its recipe needs and adds its own section; ``ssljax.main`` locks it, so an override of
a key that does not exist is an error that names the closest valid key.
"""

from __future__ import annotations

import difflib
from typing import Iterable

import ml_collections
from ml_collections import config_dict


def base_config() -> ml_collections.ConfigDict:
    """Defaults for a small CPU run of a two-view method on Fashion-MNIST."""
    c = ml_collections.ConfigDict()
    c.method = "simclr"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "fashion_mnist"
    c.data.data_dir = config_dict.placeholder(str)
    c.data.train_split = ""  # e.g. 'train[:10000]'; empty: the dataset's training split
    c.data.test_split = ""  # empty: the dataset's test split
    c.data.image_size = 28
    c.data.num_views = 2
    c.data.tf_threads = 1  # tf.data shares the CPU with the train step: keep it lean
    # SimCLR augmentation (ssljax.data.augment.AugmentConfig fields); ``augment2`` overrides
    # fields for the second view (asymmetric recipes such as BYOL, VICReg, CorInfoMax).
    c.data.augment = ml_collections.ConfigDict(dict(
        crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), flip_p=0.5, jitter_p=0.8,
        brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, grayscale_p=0.2,
        blur_p=0.0, blur_sigma=(0.1, 2.0), solarize_p=0.0))
    c.data.augment2 = ml_collections.ConfigDict()

    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet18"
    c.model.width = 64
    # One channel count per stage (e.g. (32, 64, 128, 384)); empty: width * 2**k.
    c.model.stage_widths = ()
    c.model.stem = "cifar"
    c.model.stem_stride = 1
    c.model.zero_init_residual = False
    c.model.dtype = "float32"  # 'bfloat16' for mixed precision (params and loss stay float32)
    # ViT backbones (model.name 'vit_tiny' | 'vit_small' | 'vit_base'): patch side, pooling.
    c.model.patch_size = 4
    c.model.pool = "cls"  # or 'mean'

    c.batch_size = 256  # global, over all devices and hosts

    # Mesh: 'data' x 'fsdp'. fsdp > 1 splits parameters and optimizer state over that many
    # devices (arrays of at least fsdp_min_size elements); 1 = pure data parallelism.
    c.sharding = ml_collections.ConfigDict()
    c.sharding.fsdp = 1
    c.sharding.fsdp_min_size = 2 ** 14
    c.num_epochs = 100
    c.total_steps = -1  # > 0 overrides num_epochs
    c.stop_after_step = -1  # > 0: checkpoint and exit after this step; the schedule is unchanged

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "lars"
    c.optimizer.lr = 0.3
    c.optimizer.lr_scaling = "linear"
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.weight_decay = 1e-6
    c.optimizer.exclude_bias_and_norm = True
    c.optimizer.trust_coefficient = 0.001
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.warmup_epochs = 10.0
    c.optimizer.warmup_init = 0.0
    c.optimizer.final_lr_ratio = 0.0
    c.optimizer.step_per_epoch = False

    c.log_every = 50
    c.checkpoint_every = 1000  # steps
    c.keep_checkpoints = 3

    c.eval = ml_collections.ConfigDict()
    c.eval.online_probe = True
    c.eval.probe_lr = 1e-3  # Adam on a stop-gradient linear head
    c.eval.batch_size = 1024  # feature extraction
    # Side of the images the probes see. 0: in-memory datasets (MNIST-like, CIFAR, STL) at
    # their own size, streamed ones (ImageNet) at data.image_size. > 0: resized (bilinear,
    # antialiased) and centre-cropped to it, e.g. to evaluate at a reduced training resolution.
    c.eval.image_size = 0
    c.eval.knn_k = 200
    c.eval.knn_temperature = 0.1
    c.eval.linear_epochs = 30
    c.eval.linear_lr = 1e-3
    c.eval.linear_weight_decay = 1e-4
    c.eval.linear_batch_size = 1024
    c.eval.linear_optimizer = "adamw"  # or 'sgd' (momentum 0.9), some papers' protocol
    c.eval.linear_final_lr_ratio = 0.0  # cosine to this fraction of linear_lr
    # 'cosine', or 'piecewise': linear_lr times linear_decay_rate at each of linear_decay_epochs
    c.eval.linear_schedule = "cosine"
    c.eval.linear_decay_epochs = (60, 80)
    c.eval.linear_decay_rate = 0.1
    c.eval.baselines = True  # also score a random encoder and raw pixels with the same code
    c.eval.train_examples = -1  # > 0: use only the first N training examples for the probes
    # Dense probe (ssljax.evaluate.segmentation): a linear 1x1 head on frozen feature maps
    # segmenting Fashion-MNIST garments by class; scored by mean IoU into results.json.
    c.eval.segmentation = False
    c.eval.segmentation_stages = ("stage3", "stage4")  # ResNet maps (a ViT gives its tokens)
    c.eval.segmentation_threshold = 0.1  # foreground: pixel > threshold * 255
    c.eval.segmentation_epochs = 10
    c.eval.segmentation_lr = 1e-2
    c.eval.segmentation_train_examples = 10000
    return c


def flatten_keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """All dotted key paths of ``cfg``, sections included."""
    keys = []
    for k, v in cfg.items():
        path = f"{prefix}{k}"
        keys.append(path)
        if isinstance(v, ml_collections.ConfigDict):
            keys.extend(flatten_keys(v, path + "."))
    return keys


class ConfigError(ValueError):
    """A config problem, explained in one sentence that says what to do."""


def check_overrides(argv: Iterable[str], cfg: ml_collections.ConfigDict,
                    flag: str = "config") -> None:
    """Reject ``--config.<key>=...`` overrides whose key is not in ``cfg``, naming the closest key."""
    valid = flatten_keys(cfg)
    for arg in argv:
        if not arg.startswith(f"--{flag}."):
            continue
        key = arg[len(flag) + 3:].split("=", 1)[0]
        if key in valid:
            continue
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
        hint = f"; did you mean '{close[0]}'?" if close else "."
        raise ConfigError(f"Unknown config key '{key}' in {arg.split('=')[0]}{hint}")

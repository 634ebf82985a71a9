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
    # Where the views are augmented: 'host' (tf.data), 'device' (JAX, inside the jitted step;
    # the host only reads, decodes and resizes) or 'auto' (device on GPU/TPU, host on the CPU;
    # see ssljax.data.device_input.resolve).
    c.data.augment_on = "auto"
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
    # ViT softmax attention: 'auto' (cuDNN's fused kernel on a GPU in bfloat16, else XLA's),
    # 'xla', 'cudnn', or 'reference' (Flax's: scores and softmax in the compute dtype).
    c.model.attention = "auto"
    c.model.remat = False  # ViT: recompute each block in the backward pass (less memory)

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
    c.eval.probe_lr = 1e-3  # Adam on a stop-gradient linear head
    c.eval.batch_size = 1024  # feature extraction
    # > 0: also run the evaluators of the trained encoder every this many steps (metrics.jsonl,
    # as eval/<metric>); 0: only at the end of training.
    c.eval.every = 0
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
    # The final evaluation draws WORKDIR/embedding.png: a t-SNE map of 2,000 test features
    # coloured by class (needs ssljax[plot]; seconds on a CPU).
    c.eval.embedding_plot = True
    # Dense probe (ssljax.evaluate.segmentation): a linear 1x1 head on frozen feature maps
    # segmenting Fashion-MNIST garments by class; scored by mean IoU into results.json.
    c.eval.segmentation = False
    c.eval.segmentation_stages = ("stage3", "stage4")  # ResNet maps (a ViT gives its tokens)
    c.eval.segmentation_threshold = 0.1  # foreground: pixel > threshold * 255
    c.eval.segmentation_epochs = 10
    c.eval.segmentation_lr = 1e-2
    c.eval.segmentation_train_examples = 10000
    # A paper's own linear protocol beside ours (ssljax.evaluate.paper_linear): 'selfcon',
    # 'corinfomax' (a classifier on augmented images through the frozen backbone) or
    # 'metamask' (its kNN); '' (default): none. paper_epochs > 0 shortens it.
    c.eval.paper_protocol = ""
    c.eval.paper_epochs = 0
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


# ----------------------------------------------------------------------------- validation
# Ranges, by key pattern (fnmatch on the dotted key; every matching rule applies). Tuples
# (hidden_dims, stage_widths) are checked element by element. Method sections are covered by
# name patterns (``*temperature``, ``*.out_dim``), so a new section gets the same checks.
_POSITIVE = "a number > 0"
_NON_NEGATIVE = "a number >= 0"
_PROBABILITY = "a probability in [0, 1]"
_MOMENTUM = "a number in [0, 1)"
_RULES: tuple[tuple[str, str], ...] = (
    ("batch_size", _POSITIVE), ("log_every", _POSITIVE), ("checkpoint_every", _POSITIVE),
    ("keep_checkpoints", _POSITIVE), ("data.image_size", _POSITIVE),
    ("data.num_views", _POSITIVE), ("data.tf_threads", _POSITIVE), ("model.width", _POSITIVE),
    ("model.stage_widths", _POSITIVE), ("model.patch_size", _POSITIVE),
    ("model.stem_stride", _POSITIVE), ("sharding.fsdp", _POSITIVE),
    ("sharding.fsdp_min_size", _NON_NEGATIVE), ("num_epochs", _NON_NEGATIVE),
    ("optimizer.lr", _POSITIVE), ("*_lr", _POSITIVE), ("*temperature", _POSITIVE),
    ("*.out_dim", _POSITIVE), ("*.hidden_dims", _POSITIVE), ("*queue_size", _POSITIVE),
    ("*.eps", _POSITIVE), ("*weight_decay", _NON_NEGATIVE),
    ("optimizer.warmup_epochs", _NON_NEGATIVE), ("optimizer.warmup_init", _PROBABILITY),
    ("optimizer.final_lr_ratio", _PROBABILITY), ("optimizer.trust_coefficient", _POSITIVE),
    ("optimizer.momentum", _MOMENTUM), ("optimizer.b1", _MOMENTUM), ("optimizer.b2", _MOMENTUM),
    ("*.*momentum", _PROBABILITY), ("data.augment*.*_p", _PROBABILITY),
    ("data.augment*.brightness", _NON_NEGATIVE), ("data.augment*.contrast", _NON_NEGATIVE),
    ("data.augment*.saturation", _NON_NEGATIVE), ("data.augment*.hue", _NON_NEGATIVE),
    ("data.jigsaw.flip_p", _PROBABILITY), ("data.jigsaw.size", _POSITIVE),
    ("data.jigsaw.patch", _POSITIVE), ("data.mask.ratio", _PROBABILITY),
    ("data.mask.patch_size", _POSITIVE), ("decoder.channels", _POSITIVE),
    ("decoder.dim", _POSITIVE), ("decoder.depth", _POSITIVE), ("decoder.heads", _POSITIVE),
    ("eval.batch_size", _POSITIVE), ("eval.every", _NON_NEGATIVE), ("eval.knn_k", _POSITIVE),
    ("eval.linear_epochs", _POSITIVE), ("eval.linear_batch_size", _POSITIVE),
    ("eval.linear_final_lr_ratio", _PROBABILITY), ("eval.linear_decay_rate", _POSITIVE),
    ("eval.image_size", _NON_NEGATIVE), ("eval.segmentation_epochs", _POSITIVE),
    ("eval.segmentation_threshold", _PROBABILITY),
    ("eval.segmentation_train_examples", _POSITIVE), ("eval.paper_epochs", _NON_NEGATIVE),
    ("*_coeff", _NON_NEGATIVE), ("*lambd*", _NON_NEGATIVE), ("*weight_*", _NON_NEGATIVE),
    ("*_weight", _NON_NEGATIVE), ("*.alpha", _NON_NEGATIVE), ("*.beta", _NON_NEGATIVE),
)
_CHOICES = {
    "optimizer.name": ("sgd", "lars", "adamw", "adam"),
    "optimizer.lr_scaling": ("linear", "sqrt", "none"),
    "model.stem": ("cifar", "imagenet"), "model.dtype": ("float32", "bfloat16", "float64"),
    "model.pool": ("cls", "mean"), "model.attention": ("auto", "xla", "cudnn", "reference"),
    "model.remat": (False, True), "eval.linear_optimizer": ("adamw", "sgd"),
    "eval.linear_schedule": ("cosine", "piecewise"),
    "eval.paper_protocol": ("", "selfcon", "corinfomax", "metamask"),
    "data.augment_on": ("auto", "host", "device"),
}
_CHECKS = {
    _POSITIVE: lambda v: v > 0, _NON_NEGATIVE: lambda v: v >= 0,
    _PROBABILITY: lambda v: 0 <= v <= 1, _MOMENTUM: lambda v: 0 <= v < 1,
}


def _value(cfg: ml_collections.ConfigDict, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _check_range(key: str, value, allowed: str) -> None:
    values = value if isinstance(value, (tuple, list)) else (value,)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{key}={value!r} is not a number; set --config.{key} to "
                              f"{allowed}.")
        if v != v or not _CHECKS[allowed](v):  # NaN fails every range
            raise ConfigError(f"{key}={value!r} is out of range; set --config.{key} to "
                              f"{allowed}.")


def _downsampling(model: ml_collections.ConfigDict) -> int:
    """How many pixels of the input one position of the backbone's last map covers."""
    if model.name.startswith("vit"):
        return model.patch_size
    stem = 4 if model.stem == "imagenet" else model.stem_stride  # conv 7x7/2 and max pool
    return stem * 8  # stages 2-4 halve the map


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks every value of ``config`` before any work starts; raises :class:`ConfigError`.

    Ranges (positive sizes, learning rates, temperatures and intervals; probabilities in
    [0, 1]), choices, and combinations: a run length, enough views for the method, an image
    size the model can downsample. The method, its augmentations, masks and jigsaw are
    built once (cheap, no JAX computation) so that their own checks run now too.

    Raises:
      ConfigError: one sentence naming the key, its value and what is allowed.

    >>> cfg = base_config(); cfg.batch_size = 0
    >>> validate(cfg)
    Traceback (most recent call last):
    ...
    ssljax.config.ConfigError: batch_size=0 is out of range; set --config.batch_size to a number > 0.
    """
    import fnmatch
    keys = [k for k in flatten_keys(config)
            if not isinstance(_value(config, k), ml_collections.ConfigDict)]
    for key in keys:
        value = _value(config, key)
        for pattern, allowed in _RULES:
            if fnmatch.fnmatchcase(key, pattern) and value is not None:
                _check_range(key, value, allowed)
        if key in _CHOICES and value not in _CHOICES[key]:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(_CHOICES[key])}; "
                              f"set --config.{key} to one of them.")
    if config.get("total_steps", -1) <= 0 and config.num_epochs <= 0:
        raise ConfigError(f"num_epochs={config.num_epochs} and total_steps="
                          f"{config.get('total_steps', -1)} give a run of no steps; set "
                          "--config.num_epochs or --config.total_steps to a number > 0.")
    _validate_combinations(config)


def validate_or_exit(config: ml_collections.ConfigDict) -> None:
    """:func:`validate` for scripts (``experiments/``): a bad value is one sentence on stderr
    and exit status 2, as ``python -m ssljax.main`` does."""
    import sys
    try:
        validate(config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _validate_combinations(config: ml_collections.ConfigDict) -> None:
    """The checks that need several keys, or the objects the run will build from them."""
    from ssljax import data, methods
    try:
        info = data.dataset_info(config.data.name)
        method_cls = methods.get_method(config.method)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if config.data.num_views < method_cls.min_views:
        raise ConfigError(f"data.num_views={config.data.num_views} is too few for "
                          f"{config.method}, which contrasts {method_cls.min_views} views; set "
                          f"--config.data.num_views={method_cls.min_views}.")
    need = _downsampling(config.model)
    for key in ("data.image_size", "eval.image_size"):
        size = _value(config, key)
        if size and (size < need or (config.model.name.startswith("vit") and size % need)):
            rule = (f"a multiple of model.patch_size={need}" if config.model.name.startswith("vit")
                    else f"at least the model's downsampling, {need} pixels")
            raise ConfigError(f"{key}={size} does not fit model {config.model.name} (stem "
                              f"{config.model.get('stem')}); set --config.{key} to {rule}.")
    try:  # the objects the pipeline and the trainer build, with their own checks
        data.augment_configs(config.data)
        data.jigsaw_config_from(config.data.get("jigsaw"))
        mask = data.mask_config_from(config.data.get("mask"))
        if mask is not None:
            mask.grid(config.data.image_size)
            bad = [v for v in mask.views if not 0 <= v < config.data.num_views]
            if bad:
                raise ValueError(f"data.mask.views={mask.views} names view(s) {bad} of "
                                 f"{config.data.num_views}; set --config.data.mask.views to "
                                 "indices below data.num_views.")
        method = methods.get_method(config.method)(config, num_classes=info.num_classes)
        if config.data.get("augment_on", "host") == "device":  # an op the device path lacks
            reason = data.device_input.unsupported_reason(
                data.augment_configs(config.data), **data.batch_extras(method.input_spec))
            if reason:
                raise ConfigError(reason)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        if isinstance(e, ConfigError):
            raise
        text = str(e).strip("'\"")
        if isinstance(e, (KeyError, AttributeError)) and text.isidentifier():
            # ml_collections names only the missing field.
            text = (f"the config has no '{text}' section or key, which method "
                    f"{config.method!r} needs; start from configs/{config.method}.py")
        raise ConfigError(text) from None

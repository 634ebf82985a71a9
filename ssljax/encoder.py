"""Use what you trained: load a run's encoder into your own code, or export it to one file.

:func:`load_encoder` takes a workdir (``runs/simclr``, ``gs://bucket/runs/simclr``), one of
its checkpoint step directories (``runs/simclr/checkpoints/1200``) or a file written by
``python -m ssljax.export`` (:func:`export_encoder`), and returns an :class:`Encoder`: the
method's Flax module, the variables its evaluation reads, the preprocessing it expects and
a jitted ``__call__(images) -> features`` that gives the features the run's evaluation
extracted (``ssljax.evaluate.features``), to float32 rounding.

Only what the evaluation reads is restored. Which parameters and statistics that is comes
from the method itself: the jaxpr of its ``embed_named`` on abstract shapes says which
leaves it uses, and orbax restores only those (a partial restore, on the host, whatever the
number of devices the run trained on). So projector and predictor heads, EMA targets,
queues, covariances, the optimizer state and the online probe never enter memory.

An exported file is safetensors: the restored arrays under their tree paths
(``params/backbone/stem/conv/kernel``) and, as JSON in the header's metadata, the run's
config (the architecture: ``ssljax.methods`` rebuilds the module from it), the
preprocessing and the tree structure. Loading it needs jax, flax, numpy and safetensors:
no TensorFlow, no orbax, no config file.

>>> import ssljax
>>> encoder = ssljax.load_encoder("runs/simclr")               # doctest: +SKIP
>>> features = encoder(test_images_uint8)                      # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from ssljax.config import ConfigError

__all__ = ["Encoder", "Preprocessing", "export_encoder", "load_encoder", "resolve"]

FORMAT = "ssljax.encoder/1"
CHECKPOINTS = "checkpoints"
_COMMIT = "commit_success.txt"  # orbax's marker of a complete step (and of each item)
PyTree = Any


# ----------------------------------------------------------------------------- preprocessing

@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """What the encoder expects: square images of ``image_size`` pixels and ``channels``
    channels, with pixel values in 0..255, normalised per channel by ``mean`` and ``std``
    (in [0, 1] units) as the run's evaluation normalised them."""
    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, images: Any) -> np.ndarray:
        """``[N, S, S, C]`` (or ``[N, S, S]`` for one channel) pixels in 0..255 ->
        normalised float32, exactly as :func:`ssljax.data.make_eval_batches` computes it."""
        x = np.asarray(images)
        if x.ndim == 3 and self.channels == 1:
            x = x[..., None]
        want = (self.image_size, self.image_size, self.channels)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"The encoder takes images of shape [N, {want[0]}, {want[1]}, "
                             f"{want[2]}] with pixel values in 0..255, not {list(x.shape)}; "
                             f"resize (shorter side to {self.image_size}, centre crop) first.")
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        return (x.astype(np.float32) / 255.0 - mean) / std

    def to_dict(self) -> dict:
        return dict(image_size=self.image_size, channels=self.channels, mean=list(self.mean),
                    std=list(self.std))

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(int(d["image_size"]), int(d["channels"]), tuple(map(float, d["mean"])),
                   tuple(map(float, d["std"])))

    @classmethod
    def of(cls, config) -> Preprocessing:
        """The preprocessing of the evaluation of a run of ``config`` (see
        ``ssljax.evaluate.EvalContext``): the dataset's normalisation, at ``eval.image_size``
        or, when 0, at the dataset's own size (in memory) or ``data.image_size`` (streamed)."""
        from ssljax.data.specs import dataset_info  # TensorFlow-free
        info = dataset_info(config.data.name)
        size = config.eval.get("image_size", 0) or (
            info.image_shape[0] if info.in_memory else config.data.image_size)
        return cls(int(size), int(info.image_shape[-1]), tuple(info.mean), tuple(info.std))


# ----------------------------------------------------------------------------- the encoder

class Encoder:
    """A trained encoder: ``encoder(images) -> features [N, D]`` (NumPy, float32).

    Attributes:
      module: the method's Flax module (``method.model``); heads are part of its
        definition, but their variables are not loaded (unless exported with them).
      variables: ``{'params': ..., 'batch_stats': ..., ...}``, only the leaves the
        evaluation's feature extraction reads (``module.apply(variables, x,
        method=type(module).features)`` for most methods).
      preprocessing: :class:`Preprocessing`.
      method: the ``ssljax.methods`` object; ``method.embed_named(params, state, x)`` is
        the evaluation's feature extraction.
      params, state: the method's parameter and state trees, pruned as ``variables``.
      config: the run's config (``ml_collections.ConfigDict``).
      step: the training step of the checkpoint.
      source: where it was loaded from.
    """

    def __init__(self, method, params: PyTree, state: PyTree, preprocessing: Preprocessing, *,
                 config, step: int, source: str):
        self.method, self.config, self.step, self.source = method, config, step, source
        self.module = getattr(method, "model", None)
        self.params = jax.device_put(params)
        self.state = jax.device_put(state)
        self.preprocessing = preprocessing
        self.embed = jax.jit(lambda p, s, x: method.embed_named(p, s, x))
        self._head = None

    @property
    def variables(self) -> dict:
        return {"params": self.params, **self.state}

    def features(self, images: Any, *, batch_size: int = 256) -> dict[str, np.ndarray]:
        """Every named feature set of ``images`` (pixels 0..255): ``{'': [N, D]}``, or one
        entry per exit for multi-exit networks (``'backbone'``, ``'subnet...'``)."""
        x = self.preprocessing(images)
        n = len(x)
        batch_size = max(1, min(batch_size, n))
        out = []
        for first in range(0, n, batch_size):
            chunk = x[first:first + batch_size]
            pad = batch_size - len(chunk)  # one compiled shape for every chunk
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
            f = jax.device_get(self.embed(self.params, self.state, jnp.asarray(chunk)))
            out.append({k: np.asarray(v, np.float32)[:batch_size - pad] for k, v in f.items()})
        return {k: np.concatenate([o[k] for o in out]) for k in out[0]}

    def __call__(self, images: Any, *, batch_size: int = 256) -> np.ndarray:
        """Features ``[N, D]`` of ``images`` (``[N, S, S, C]``, pixels 0..255): the ones the
        run's probes scored (a multi-exit network's backbone)."""
        named = self.features(images, batch_size=batch_size)
        return named[""] if "" in named else named["backbone"]

    @property
    def has_projector(self) -> bool:
        return isinstance(self.params, dict) and "head" in self.params

    def project(self, features: Any) -> np.ndarray:
        """The projector head on ``features`` (inference mode); only for an encoder exported
        with ``--projector``."""
        if not self.has_projector:
            raise ValueError(f"This encoder ({self.source}) has no projector; export it with "
                             "`python -m ssljax.export --projector`.")
        if self._head is None:
            head = self.module.head
            bn = self.state.get("batch_stats", {}).get("head", {})
            self._head = jax.jit(lambda p, b, f: head.apply(
                {"params": p, **({"batch_stats": b} if b else {})}, f, train=False))
        bn = self.state.get("batch_stats", {}).get("head", {})
        return np.asarray(self._head(self.params["head"], bn, jnp.asarray(features)))

    def __repr__(self) -> str:
        p = self.preprocessing
        return (f"Encoder({self.config.method}, step {self.step}, {p.image_size}x{p.image_size}"
                f"x{p.channels}, from {self.source})")


# ----------------------------------------------------------------------------- paths

@dataclasses.dataclass(frozen=True)
class Source:
    """What a path names: an exported ``file``, or a ``checkpoint`` (its workdir and step)."""
    kind: str
    path: str
    workdir: str = ""
    step: int = -1


def _steps(ckpt_dir: epath.Path) -> list[int]:
    return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())


def resolve(path: str, step: int | None = None) -> Source:
    """What ``path`` names (a workdir, a checkpoint step directory or an exported file) and
    which step to read; reads nothing but listings and markers, writes nothing.

    Raises:
      ConfigError: one sentence: the path does not exist, is not a run, has no complete
        checkpoint, or ``step`` is not one of its complete checkpoints.
    """
    if not path or not str(path).strip():
        raise ConfigError("The path is empty; pass a run's workdir, one of its checkpoint "
                          "directories, or a file written by `python -m ssljax.export`.")
    path = str(path).rstrip("/")
    p = epath.Path(path)
    if not p.exists():
        raise ConfigError(f"{path} does not exist; pass a run's workdir (the --workdir of "
                          "ssljax.main), one of its checkpoint directories, or an exported file.")
    if not p.is_dir():
        if step is not None:
            raise ConfigError(f"{path} is an exported file, which holds one step; drop the "
                              "step argument.")
        return Source("file", path)
    if p.name.isdigit() and p.parent.name == CHECKPOINTS:  # a step directory
        if step is not None and step != int(p.name):
            raise ConfigError(f"{path} is the checkpoint of step {p.name}, not {step}; pass "
                              "the workdir with the step, or this directory alone.")
        workdir, step = p.parent.parent, int(p.name)
    elif p.name == CHECKPOINTS and not (p / CHECKPOINTS).exists():
        workdir = p.parent
    else:
        workdir = p
    ckpt_dir = workdir / CHECKPOINTS
    if not ckpt_dir.is_dir():
        raise ConfigError(f"{workdir} has no {CHECKPOINTS}/ folder, so it is not a run's "
                          "workdir (or the run has not saved a checkpoint yet); pass the "
                          "--workdir a run of ssljax.main wrote.")
    steps = _steps(ckpt_dir)
    complete = [s for s in steps if (ckpt_dir / str(s) / _COMMIT).exists()
                and (ckpt_dir / str(s) / "state" / _COMMIT).exists()]
    if step is None:
        if not complete:
            what = (f"only the incomplete checkpoint(s) {steps}" if steps else "no checkpoint")
            raise ConfigError(f"{ckpt_dir} holds {what}, so there are no trained weights to "
                              "load yet; let the run save one (or resume it with the same "
                              "command).")
        return Source("checkpoint", path, str(workdir), complete[-1])
    if step not in complete:
        why = ("is incomplete (a save was cut off)" if step in steps else "does not exist")
        listed = ", ".join(map(str, complete)) or "none"
        raise ConfigError(f"The checkpoint of step {step} in {ckpt_dir} {why}; complete "
                          f"steps: {listed}.")
    return Source("checkpoint", path, str(workdir), step)


# ----------------------------------------------------------------------------- the run's config

def run_config(workdir: str):
    """The config of the run's last start: ``run.json``'s first config with the changes
    of the last start in ``config_history.jsonl`` (only free keys, e.g. ``eval.*``, can
    differ); ``config.json`` for a workdir older than ``run.json``."""
    import ml_collections
    root = epath.Path(workdir)
    record = root / "run.json"
    try:
        if record.exists():
            cfg = json.loads(record.read_text())["config"]
            history = root / "config_history.jsonl"
            if history.exists():
                lines = [ln for ln in history.read_text().splitlines() if ln.strip()]
                if lines:
                    for key, change in json.loads(lines[-1]).get("changes", {}).items():
                        if change.get("now") is not None:
                            node = cfg
                            *parents, last = key.split(".")
                            for part in parents:
                                node = node.setdefault(part, {})
                            node[last] = change["now"]
        else:
            cfg = json.loads((root / "config.json").read_text())
    except FileNotFoundError:
        raise ConfigError(f"{workdir} has neither run.json nor config.json, so the model it "
                          "trained is unknown; pass a workdir written by ssljax.main.") from None
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"The config record in {workdir} (run.json) is unreadable; restore "
                          "it from a copy.") from None
    return ml_collections.ConfigDict(_tuples(cfg))


def _tuples(tree):
    """JSON lists back to tuples (configs hold tuples: stage widths, hidden dims, scales)."""
    if isinstance(tree, dict):
        return {k: _tuples(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return tuple(_tuples(v) for v in tree)
    return tree


def build_method(config):
    """The run's method object, as the trainer built it (no JAX computation)."""
    from ssljax import methods
    from ssljax.data.specs import dataset_info
    try:
        info = dataset_info(config.data.name)
        return methods.get_method(config.method)(config, num_classes=info.num_classes)
    except (ValueError, KeyError, AttributeError, TypeError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"The run's config does not build its method {config.method!r} "
                          f"with this version of ssljax ({type(e).__name__}: {e}).") from None


# ----------------------------------------------------------------------------- pruning

def _path_key(path) -> tuple:
    out = []
    for entry in path:
        for attr in ("key", "idx", "name"):
            if hasattr(entry, attr):
                out.append(getattr(entry, attr))
                break
        else:
            out.append(str(entry))
    return tuple(out)


def _used_paths(fn: Callable, *abstract_args) -> set[tuple]:
    """Tree paths (into ``abstract_args``) of the leaves ``fn`` reads: the inputs of its
    jaxpr that any equation or output uses."""
    from jax.extend.core import Var
    closed = jax.make_jaxpr(fn)(*abstract_args)
    used = {v for eqn in closed.jaxpr.eqns for v in eqn.invars if isinstance(v, Var)}
    used |= {v for v in closed.jaxpr.outvars if isinstance(v, Var)}
    paths = [_path_key(p) for p, _ in jax.tree_util.tree_flatten_with_path(abstract_args)[0]]
    return {p for p, v in zip(paths, closed.jaxpr.invars) if v in used}


_DROP = object()


def _select(tree, keep: set[tuple], prefix: tuple = ()):
    """``tree`` with only the leaves at paths in ``keep``; dicts lose the keys whose leaves
    are all dropped (empty dicts stay: a method may index them); any other container is
    kept whole when any of its leaves is kept."""
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            sub = _select(v, keep, prefix + (k,))
            if sub is not _DROP:
                out[k] = sub
        return _DROP if tree and not out else out
    paths = [prefix + _path_key(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    return tree if any(p in keep for p in paths) else _DROP


def needed_variables(method, config, *, feature_maps: bool = False,
                     projector: bool = False) -> tuple[PyTree, PyTree]:
    """Abstract ``(params, state)`` of ``method``, cut to the leaves its evaluation reads:
    ``embed_named`` (and ``feature_maps`` for the dense probe; the ``head`` for
    ``projector``)."""
    prep = Preprocessing.of(config)
    train_size = config.data.image_size
    example = {"views": jax.ShapeDtypeStruct((1, 1, train_size, train_size, prep.channels),
                                             jnp.float32)}
    params, state = jax.eval_shape(method.init_model, jax.random.key(0, impl="rbg"), example)
    x = jax.ShapeDtypeStruct((2, prep.image_size, prep.image_size, prep.channels), jnp.float32)
    keep = _used_paths(method.embed_named, params, state, x)
    if feature_maps:
        try:
            keep |= _used_paths(method.feature_maps, params, state, x)
        except NotImplementedError:
            pass
    if projector:
        if not (isinstance(params, dict) and "head" in params
                and hasattr(getattr(method, "model", None), "head")):
            raise ConfigError(f"Method {config.method!r} has no single projector head "
                              "(`model.head`); export it without --projector.")
        flat = jax.tree_util.tree_flatten_with_path((params, state))[0]
        for path, _ in flat:
            key = _path_key(path)
            if (key[0] == 0 and key[1] == "head") or key[:3] == (1, "batch_stats", "head"):
                keep.add(key)
    p = _select(params, {k[1:] for k in keep if k[0] == 0})
    s = _select(state, {k[1:] for k in keep if k[0] == 1})
    return ({} if p is _DROP else p), ({} if s is _DROP else s)


# ----------------------------------------------------------------------------- restoring

def _flat(tree) -> dict[tuple, Any]:
    return {_path_key(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def restore_variables(workdir: str, step: int, params: PyTree, state: PyTree,
                      ) -> tuple[PyTree, PyTree]:
    """Only the leaves of abstract ``params``/``state`` from the checkpoint of ``step``, as
    host NumPy arrays (a partial orbax restore: nothing else is read; the stored sharding
    and the number of devices that wrote it do not matter).

    Raises:
      ConfigError: the checkpoint holds other arrays than the run's config builds.
    """
    import orbax.checkpoint as ocp
    directory = str(epath.Path(workdir) / CHECKPOINTS / str(step) / "state")
    target = {"params": params, "state": state}
    flat = _flat(target)
    if not flat:
        return params, state
    item = _nest({k: v for k, v in flat.items()})
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    ckptr = ocp.PyTreeCheckpointer()
    try:
        stored = _flat(ckptr.metadata(directory).item_metadata.tree)
    except Exception as e:  # noqa: BLE001 - unreadable metadata: one sentence
        raise ConfigError(f"The checkpoint of step {step} in {workdir} is unreadable "
                          f"({type(e).__name__}); pick another step with --step.") from None
    for key, want in flat.items():
        got = stored.get(key)
        if got is None or tuple(got.shape) != tuple(want.shape):
            raise ConfigError(
                f"The checkpoint of step {step} in {workdir} holds another model than its "
                f"config builds ({'/'.join(map(str, key))}: "
                f"{'missing' if got is None else tuple(got.shape)} on disk, "
                f"{tuple(want.shape)} expected); was run.json edited?")
    try:
        with jax.enable_x64(True):  # float64 leaves (CorInfoMax's state) stay float64
            restored = ckptr.restore(directory, args=ocp.args.PyTreeRestore(
                item=item, restore_args=restore_args, partial_restore=True))
    except Exception as e:  # noqa: BLE001 - damaged array data: one sentence
        first = (str(e).splitlines() or [""])[0][:120]
        raise ConfigError(f"The checkpoint of step {step} in {workdir} is damaged "
                          f"({type(e).__name__}: {first}); pick another step with --step."
                          ) from None
    values = _flat(restored)
    out = jax.tree_util.tree_map_with_path(lambda p, _: values[_path_key(p)], target)
    return out["params"], out["state"]


def _nest(flat: dict[tuple, Any]) -> dict:
    """``{('a', 'b'): x}`` -> ``{'a': {'b': x}}`` (string keys; other containers become
    dicts keyed by their index, as orbax stores them)."""
    out: dict = {}
    for key, value in flat.items():
        node = out
        for part in key[:-1]:
            node = node.setdefault(str(part) if not isinstance(part, str) else part, {})
        node[key[-1] if isinstance(key[-1], str) else str(key[-1])] = value
    return out


# ----------------------------------------------------------------------------- loading

def load_encoder(path: str, *, step: int | None = None, projector: bool = False) -> Encoder:
    """The trained encoder of a run, ready to embed images.

    Args:
      path: a workdir (local or ``gs://``), a checkpoint step directory
        (``WORKDIR/checkpoints/<step>``), or a file from ``python -m ssljax.export``.
      step: the checkpoint to read (a workdir; default: the newest complete one).
      projector: also load the projector head (:meth:`Encoder.project`).

    Returns:
      An :class:`Encoder`; ``encoder(images)`` gives the features the run's evaluation
      extracted.

    Raises:
      ConfigError: one sentence for a missing or unreadable path, step or checkpoint.
    """
    source = resolve(path, step)
    if source.kind == "file":
        return _load_file(source.path)
    config = run_config(source.workdir)
    method = build_method(config)
    params, state = needed_variables(method, config, projector=projector)
    params, state = restore_variables(source.workdir, source.step, params, state)
    return Encoder(method, params, state, Preprocessing.of(config), config=config,
                   step=source.step, source=path)


# ----------------------------------------------------------------------------- export

def _skeleton(tree, prefix: str):
    """The structure of ``tree`` as JSON: dicts as dicts, each leaf as its tensor's name."""
    if isinstance(tree, dict):
        return {k: _skeleton(v, f"{prefix}/{k}") for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_skeleton(v, f"{prefix}/{i}") for i, v in enumerate(tree)]
    return prefix


def _unskeleton(skeleton, tensors: dict[str, np.ndarray]):
    if isinstance(skeleton, dict):
        return {k: _unskeleton(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return tuple(_unskeleton(v, tensors) for v in skeleton)
    return tensors[skeleton]


def export_encoder(encoder: Encoder, out: str) -> dict:
    """Writes ``encoder`` to ``out`` as one safetensors file (the arrays it holds, and
    the run's config, preprocessing and tree structure as JSON metadata in the header).

    Returns the metadata written (strings)."""
    from safetensors.numpy import save
    params = jax.device_get(encoder.params)
    state = jax.device_get(encoder.state)
    skeleton = {"params": _skeleton(params, "params"), "state": _skeleton(state, "state")}
    tensors = {}
    for tree, root in ((params, "params"), (state, "state")):
        for key, value in _flat(tree).items():
            tensors["/".join([root, *map(str, key)])] = np.ascontiguousarray(np.asarray(value))
    config = encoder.config
    model = config.model.to_dict() if "model" in config else {}
    metadata = {
        "format": FORMAT,
        "method": str(config.method),
        "step": str(encoder.step),
        "source": str(encoder.source),
        "architecture": json.dumps({"method": config.method, "model": model,
                                    "projector": bool(encoder.has_projector)}, default=list),
        "preprocessing": json.dumps(encoder.preprocessing.to_dict()),
        "structure": json.dumps(skeleton),
        "config": config.to_json_best_effort(),
    }
    data = save(tensors, metadata=metadata)
    target = epath.Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp"
    tmp.write_bytes(data)
    tmp.replace(target)
    return metadata


def read_file(path: str) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """``(metadata, tensors)`` of a safetensors file (local or ``gs://``)."""
    from safetensors.numpy import load
    data = epath.Path(path).read_bytes()
    try:
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + size])
        tensors = load(data)
    except Exception:  # noqa: BLE001 - not safetensors at all: one sentence
        raise ConfigError(f"{path} is not a file written by `python -m ssljax.export` (not "
                          "safetensors); pass that file, or a run's workdir.") from None
    return header.get("__metadata__") or {}, tensors


def _load_file(path: str) -> Encoder:
    import ml_collections
    metadata, tensors = read_file(path)
    if metadata.get("format") != FORMAT:
        raise ConfigError(f"{path} is a safetensors file but not an ssljax encoder (format "
                          f"{metadata.get('format')!r}, expected {FORMAT!r}); export one with "
                          "`python -m ssljax.export`.")
    config = ml_collections.ConfigDict(_tuples(json.loads(metadata["config"])))
    method = build_method(config)
    trees = _unskeleton(json.loads(metadata["structure"]), tensors)
    return Encoder(method, trees["params"], trees["state"],
                   Preprocessing.from_dict(json.loads(metadata["preprocessing"])),
                   config=config, step=int(metadata["step"]), source=path)

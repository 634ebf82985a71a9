"""The generic training loop: mesh, sharded init, one jitted step, checkpoints, evaluation.

Flat and in sections, like big_vision's ``train.py``. Nothing here is method-specific: the
method (``ssljax.methods``) supplies the model, the objective and the step; this file
supplies devices, data, optimizers, checkpoints and logs, and runs the evaluators
(``ssljax.evaluate.evaluators``, selected from ``config.eval``) at the end.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import math
import os
import time
from typing import Any

import jax
import ml_collections
import optax
from etils import epath

from ssljax import _extras

# The trainer saves with orbax (``ssljax[train]``). TensorFlow is asked for only where a
# run reads through tf.data (ssljax.data's pipeline); device views of an in-memory dataset
# (data.augment_on=device) and experiments/bench_gpu_step.py run without it.
_extras.check("orbax.checkpoint", part="ssljax.train")

from ssljax import (checkpoint, data, distributed, evaluate, methods, optim,  # noqa: E402
                    preemption, sharding)
from ssljax import workdir as workdir_lib  # noqa: E402
from ssljax.config import ConfigError, validate  # noqa: E402

logger = logging.getLogger("ssljax")

# The evaluation of a run lives in ssljax.evaluate.evaluators; re-exported at their old path.
evaluate_encoder = evaluate.evaluate_encoder
baseline_scores = evaluate.baseline_scores


class NonFiniteLossError(FloatingPointError):
    """Raised when the loss becomes NaN or infinite; the last good checkpoint is kept."""


Preempted = preemption.Preempted  # raised after SIGTERM, once the step's checkpoint is saved


class MetricsWriter:
    """``metrics.jsonl`` (one JSON object per logged step), TensorBoard, and ``curves.png``
    (:meth:`write_curves`), on process 0 only."""

    def __init__(self, workdir: str, *, start_step: int = 0):
        """``start_step``: the step training resumes after; rows of later steps (written by
        the interrupted run, about to be redone) and of an earlier final evaluation are
        dropped, so the file never repeats a step (evaluations during training, ``eval/``
        rows of steps up to ``start_step``, are kept)."""
        self.enabled = jax.process_index() == 0
        self._tb = None
        self._workdir = workdir
        if not self.enabled:
            return
        self._path = epath.Path(workdir) / "metrics.jsonl"  # gs:// too
        self._drop_rows_after(start_step)
        self._jsonl = self._path.open("a")
        try:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        except ImportError:  # TensorBoard is a nicety; metrics.jsonl is the record
            logger.warning("tensorboardX is not installed (pip install 'ssljax[train]' gives "
                           "it): writing metrics.jsonl only.")

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        line = json.dumps({"step": step, **scalars}) + "\n"
        try:
            self._jsonl.write(line)
            self._jsonl.flush()
        except OSError as e:
            if workdir_lib.is_disk_full(e):
                raise workdir_lib.DiskFullError(str(self._path), len(line)) from None
            raise
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)

    def write_curves(self) -> None:
        """``WORKDIR/curves.png`` from the rows so far (``ssljax.plot``; process 0 only).
        Never raises: without matplotlib, or when drawing fails, one log line."""
        if not self.enabled:
            return
        from ssljax import plot
        t0 = time.time()
        if plot.write_curves(self._workdir):
            logger.debug("curves.png drawn in %.2fs.", time.time() - t0)

    def _drop_rows_after(self, start_step: int) -> None:
        if not self._path.exists():
            return
        lines = self._path.read_text().splitlines()
        kept = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:  # a line cut off by a crash
                continue
            periodic = any(k.startswith("eval/") for k in row)  # eval.every's rows
            if ("loss" in row or periodic) and row.get("step", 0) <= start_step:
                kept.append(line)
        if len(kept) != len(lines):
            tmp = self._path.parent / f".{self._path.name}.tmp"
            tmp.write_text("".join(k + "\n" for k in kept))
            tmp.replace(self._path)

    def close(self) -> None:
        if self.enabled:
            try:
                self._jsonl.close()
            except OSError:  # a full disk was already reported
                pass
            if self._tb is not None:
                self._tb.close()


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def init_key(seed: int) -> jax.Array:
    """The key for parameter initialisation.

    An RBG key: XLA compiles initialisation from it about 6x faster than from threefry
    (13 s vs 78 s for a ResNet-18 on a 2-core CPU), and init needs no cross-device guarantees.
    """
    return jax.random.key(seed, impl="rbg")


class CompiledStep:
    """A method's init and train step, jitted with the shardings of ``mesh``."""

    def __init__(self, method, tx, probe_tx, schedule, mesh, *, fsdp_min_size: int = 2 ** 14):
        self.method, self.tx, self.probe_tx, self.schedule = method, tx, probe_tx, schedule
        self.mesh = mesh
        self.fsdp_min_size = fsdp_min_size
        # ``prepare(batch, step) -> batch`` runs first in the jitted step: the device
        # augmentation (ssljax.data.device_input.make_prepare); None when the host made the views.
        self.prepare = None
        self._init = lambda rng, batch: method.init(rng, self._prepared(batch, 0), tx, probe_tx)
        self._state_sharding = None

    def abstract_state(self, example: dict) -> tuple[Any, Any]:
        """Shapes and shardings of the train state, from an example global batch."""
        abstract = jax.eval_shape(self._init, init_key(0), example)
        self._state_sharding = sharding.state_sharding(self.mesh, abstract,
                                                       fsdp_min_size=self.fsdp_min_size)
        return abstract, self._state_sharding

    def _prepared(self, batch, step):
        return batch if self.prepare is None else self.prepare(batch, step)

    def init(self, rng: jax.Array, example: dict):
        if self._state_sharding is None:
            self.abstract_state(example)
        init = jax.jit(self._init, out_shardings=self._state_sharding)
        return init(rng, example)

    @functools.cached_property
    def train_step(self):
        """``(state, batch, rng) -> (state, metrics)``; the state is donated."""
        repl = sharding.replicated(self.mesh)
        fsdp = sharding.FSDP_AXIS in self.mesh.axis_names

        def step(ts, batch, rng):
            if fsdp:
                # Gather the split parameters once per step (the gradients are whole too, see
                # build_step). Left to itself, the compiler follows the weights' split into
                # the activations (channels split over 'fsdp') and moves activations instead:
                # 26 GiB per device per step for a ResNet-50 on 8 x 8 devices. The updated
                # parameters and the optimizer state stay split (the out_shardings).
                ts = ts.replace(params=jax.lax.with_sharding_constraint(ts.params, repl))
            batch = self._prepared(batch, ts.step)  # keyed by the step: resumes exactly
            return self.method.train_step(ts, batch, rng, self.tx, self.probe_tx, self.schedule)

        return jax.jit(
            step,
            in_shardings=(self._state_sharding, sharding.batch_sharding(self.mesh), repl),
            out_shardings=(self._state_sharding, repl), donate_argnums=(0,))


def _whole_gradients(tx: optax.GradientTransformation,
                     repl: jax.sharding.Sharding) -> optax.GradientTransformation:
    """``tx`` that asks for whole (all-reduced) gradients: with FSDP, this keeps the split of
    the optimizer state from flowing back into the backward pass; each device then updates
    its slice of the state locally."""
    def update(updates, state, params=None):
        return tx.update(jax.lax.with_sharding_constraint(updates, repl), state, params)
    return optax.GradientTransformation(tx.init, update)


def build_step(config: ml_collections.ConfigDict, method, mesh, *, total_steps: int,
               steps_per_epoch: int) -> CompiledStep:
    """The optimizer and schedule of ``config.optimizer`` around ``method``'s train step."""
    schedule = optim.make_schedule(config.optimizer, global_batch_size=config.batch_size,
                                   total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    tx = optim.make_optimizer(config.optimizer, schedule)
    if sharding.FSDP_AXIS in mesh.axis_names:
        tx = _whole_gradients(tx, sharding.replicated(mesh))
    probe_tx = optax.adam(config.eval.probe_lr)
    fsdp_min_size = config.get("sharding", {}).get("fsdp_min_size", 2 ** 14)
    return CompiledStep(method, tx, probe_tx, schedule, mesh, fsdp_min_size=fsdp_min_size)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       mesh: jax.sharding.Mesh | None = None) -> dict[str, Any]:
    """Pre-train ``config.method``, checkpointing to ``workdir``; evaluate when training is done.

    Before any work: the config is validated (:func:`ssljax.config.validate`), the workdir
    locked (:class:`ssljax.workdir.Lock`) and checked against the config of its first start
    (:func:`ssljax.workdir.check_identity`). SIGTERM and SIGINT stop the run in order
    (:class:`ssljax.preemption.PreemptionWatcher`).

    Returns the results dict (also written to ``workdir/results.json``), or ``{}`` when the
    run stopped early at ``config.stop_after_step``.

    Raises:
      ConfigError: a bad config or workdir (one sentence).
      Preempted: a signal during training; the checkpoint of the current step was saved.
      preemption.Interrupted: a signal during set-up or evaluation; nothing was lost.
      NonFiniteLossError: the loss became NaN or infinite.
      ssljax.workdir.DiskFullError: no space left for a checkpoint or a log.
    """
    validate(config)
    workdir_lib.check_path(workdir)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    messages = {"setup": "nothing needed saving yet; run the same command again to start",
                "now": f"the last complete checkpoint in {ckpt_dir} is intact; run the same "
                       "command again to resume from it"}
    with preemption.PreemptionWatcher(messages) as watcher:
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # a local or gs:// directory
        with workdir_lib.Lock(workdir) as lock:
            watcher.on_exit_now = lock.release
            workdir_lib.check_identity(config, workdir)
            # The checkpointer and the metrics writer close on every way out, errors included
            # (a NaN loss, a full disk), before the lock is released.
            with contextlib.ExitStack() as closing:
                return _train_and_evaluate(config, workdir, mesh, watcher, closing)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        mesh: jax.sharding.Mesh | None,
                        watcher: preemption.PreemptionWatcher,
                        closing: contextlib.ExitStack) -> dict[str, Any]:
    setup_start = time.time()
    is_main = jax.process_index() == 0
    augment_on = config.data.get("augment_on", "host")
    if augment_on == "host" or (augment_on == "auto" and jax.default_backend() == "cpu"):
        data.configure_tf(config.data.tf_threads)  # before a TFDS read starts TensorFlow

    # ---- Devices -------------------------------------------------------------------------
    mesh = mesh or sharding.make_mesh(fsdp=config.get("sharding", {}).get("fsdp", 1))
    sharding.check_batch_size(config.batch_size, mesh)
    batch_sharding = sharding.batch_sharding(mesh)
    logger.info("Mesh %s over %d devices (%d processes).", dict(mesh.shape), mesh.devices.size,
                 jax.process_count())

    # ---- Data ----------------------------------------------------------------------------
    info = data.dataset_info(config.data.name)
    # Pre-training may use more data than the labelled split (STL-10's unlabelled images);
    # a ``data.train_split`` override applies to both.
    pretrain_split = config.data.train_split or info.pretrain_split
    if info.in_memory:
        pretrain_images, pretrain_labels = data.load_arrays(config.data.name, pretrain_split,
                                                            data_dir=config.data.data_dir)
        num_pretrain = len(pretrain_images)
    else:
        num_pretrain = info.num_pretrain
    steps_per_epoch = num_pretrain // config.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size={config.batch_size} exceeds the {num_pretrain} training "
                          "examples; lower --config.batch_size.")
    total_steps = (config.total_steps if config.total_steps > 0
                   else int(math.ceil(config.num_epochs * steps_per_epoch)))

    # ---- Method and optimizers -----------------------------------------------------------
    run = methods.RunFacts.of(config, total_steps=total_steps)
    method = methods.get_method(config.method)(config, num_classes=info.num_classes, run=run)
    steps = build_step(config, method, mesh, total_steps=total_steps,
                       steps_per_epoch=steps_per_epoch)
    spec = method.input_spec  # what the method's batches must carry besides views and labels
    on_device, why = data.device_input.resolve(
        augment_on, jax.default_backend(), data.augment_configs(config.data),
        **data.batch_extras(spec))
    logger.info("Views made on the %s (%s).", "device" if on_device else "host", why)
    if on_device:
        steps.prepare = data.device_input.make_prepare(
            configs=data.augment_configs(config.data), seed=config.seed,
            image_size=config.data.image_size, mean=info.mean, std=info.std,
            **data.batch_extras(spec))
    if not (on_device and info.in_memory):  # the plain host loop needs no TensorFlow
        data.configure_tf(config.data.tf_threads)  # (again: harmless)

    def make_dataset(start_step: int):
        if on_device:
            where = dict(global_batch_size=config.batch_size, seed=config.seed,
                         start_step=start_step, process_index=jax.process_index(),
                         process_count=jax.process_count())
            if info.in_memory:
                return data.device_input.host_batches(pretrain_images, pretrain_labels, **where)
            return data.make_tfds_image_stream(
                config.data.name, pretrain_split, data_dir=config.data.data_dir,
                image_size=data.device_input.source_size(config.data.image_size), **where)
        common = dict(global_batch_size=config.batch_size, num_views=config.data.num_views,
                      augment=data.augment_configs(config.data), seed=config.seed,
                      image_size=config.data.image_size, mean=info.mean, std=info.std,
                      start_step=start_step, process_index=jax.process_index(),
                      process_count=jax.process_count(), **data.batch_extras(spec))
        if info.in_memory:
            return data.make_pretrain_dataset(pretrain_images, pretrain_labels, **common)
        return data.make_tfds_stream(config.data.name, pretrain_split,
                                     data_dir=config.data.data_dir, **common)

    # ---- Sharded init and restore --------------------------------------------------------
    first = make_dataset(0)
    first = first.take(1).as_numpy_iterator() if hasattr(first, "take") else first
    example = data.to_global(next(iter(first)), batch_sharding)
    abstract_state, state_sharding = steps.abstract_state(example)
    logger.info("Data and model ready in %.0fs.", time.time() - setup_start)

    ckpt = closing.enter_context(contextlib.closing(checkpoint.Checkpointer(
        os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints)))
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract_state, state_sharding)
    # Newest good checkpoint first; damaged ones are moved aside (ssljax.checkpoint).
    found = ckpt.restore_latest(abstract)
    earlier_train_s = 0.0  # training time of the segments before a resume
    if found is None:
        ts = steps.init(init_key(config.seed), example)
        start_step = 0
    else:
        start_step, ts, meta = found
        earlier_train_s = float(meta.get("train_time_s", 0.0))
        if meta.get("method") != config.method:
            raise ConfigError(f"{workdir} holds a checkpoint of method {meta.get('method')!r}, not "
                             f"{config.method!r}; use a fresh --workdir.")
        logger.info("Resumed from the checkpoint at step %d.", start_step)
    del example

    train_step = steps.train_step
    step_rng = jax.random.fold_in(jax.random.key(config.seed), 1)

    writer = closing.enter_context(contextlib.closing(
        MetricsWriter(workdir, start_step=start_step)))
    meta = {"method": config.method, "total_steps": total_steps}
    last_step = total_steps
    if config.stop_after_step > 0:
        last_step = min(total_steps, config.stop_after_step)

    # ---- The loop ------------------------------------------------------------------------
    def check_finite(step: int, metrics: dict[str, float]) -> None:
        if not math.isfinite(metrics["loss"]):
            good = ckpt.latest_step()
            where = (f"the checkpoint at step {good} in {ckpt.directory} is intact" if good is not None
                     else "no checkpoint was written yet")
            raise NonFiniteLossError(
                f"The loss became {metrics['loss']} at step {step}; {where}. Lower "
                "--config.optimizer.lr (or raise the warm-up) and run the same command again.")

    # ---- Evaluation during training (eval.every > 0) -------------------------------------
    eval_every = config.eval.get("every", 0)
    eval_context = None

    def evaluate_now(ts) -> dict[str, float]:
        """The evaluators of the trained state (not the baselines), as ``eval/<metric>``."""
        nonlocal eval_context
        eval_context = eval_context or evaluate.EvalContext.create(config, method, mesh, info)
        scores = evaluate.run_evaluators(config, method, ts, mesh, info, baselines=False,
                                         context=eval_context)
        return {f"eval/{k}": v for k, v in scores.items()}

    metrics = None
    train_start = time.time()
    if start_step < last_step:
        batches = data.global_iterator(make_dataset(start_step), batch_sharding)
        if jax.process_count() > 1:  # every process compiles before any runs the step
            first_batch = next(batches)
            train_step = distributed.compile_together(train_step, ts, first_batch, step_rng,
                                                      name=f"ssljax_train_step_{start_step}")
            batches = itertools.chain([first_batch], batches)
        logger.info("Training steps %d..%d of %d (%d per epoch).", start_step + 1, last_step,
                    total_steps, steps_per_epoch)
        first_step = start_step + 1
        first_done = None  # wall time when the first (compiling) step finished
        pending = None  # (step, metrics) read one step late, so the host never stalls the device

        def flush() -> None:
            nonlocal pending
            if pending is None:
                return
            step, metrics = pending
            pending = None
            scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
            check_finite(step, scalars)
            done = step - first_step
            rate = done * config.batch_size / (time.time() - first_done) if done else float("nan")
            eta = (last_step - step) * config.batch_size / rate if done else float("nan")
            scalars["images_per_sec"] = rate
            logger.info("step %d/%d | loss %.4f | lr %.4g | %.0f img/s | eta %s", step,
                        last_step, scalars["loss"], scalars["lr"], rate,
                        _format_eta(eta) if done else "?")
            writer.write(step, {k: v for k, v in scalars.items() if math.isfinite(v)})

        # SIGTERM (preemption) or SIGINT lets the current step finish, then saves it and stops.
        if watcher.requested:  # a signal in set-up that no handler could raise through
            raise preemption.Interrupted(watcher.message())
        watcher.phase = "train"
        for step in range(first_step, last_step + 1):
            ts, metrics = train_step(ts, next(batches), step_rng)
            flush()
            if step == first_step:
                jax.block_until_ready(metrics)
                first_done = time.time()
                logger.info("First step (compilation included) took %.0fs.",
                            first_done - train_start)
            preempted = watcher.reached(step)
            if step % config.log_every == 0 or step == last_step or preempted:
                pending = (step, metrics)
            if step % config.checkpoint_every == 0 or step == last_step or preempted:
                flush()
                check_finite(step, {"loss": float(metrics["loss"])})  # never save a NaN state
                meta["train_time_s"] = round(earlier_train_s + time.time() - train_start, 1)
                ckpt.save(step, ts, meta)
                if not preempted:  # after a signal, exit at once; the restart redraws
                    writer.write_curves()
            if preempted:  # also at the last step: exit now, evaluate on the restart
                logger.warning("Preempted: saved step %d; exiting.", step)
                raise preemption.Preempted(step, ckpt.directory, watcher.signame)
            if eval_every and step % eval_every == 0 and step < total_steps:
                flush()
                eval_t0 = time.time()
                writer.write(step, evaluate_now(ts))
                first_done += time.time() - eval_t0  # throughput and ETA: training only
        flush()
    # Every segment's pre-training time, from the first start (a resume adds the earlier ones).
    train_time = earlier_train_s + time.time() - train_start
    if watcher.requested:  # the signal came during the last save: it is complete
        raise preemption.Preempted(last_step, ckpt.directory, watcher.signame)

    if last_step < total_steps:
        logger.info("Stopped after step %d of %d as asked (stop_after_step); run the same "
                     "command again to continue.", last_step, total_steps)
        return {}

    # ---- Evaluation ----------------------------------------------------------------------
    # A signal now loses nothing: the final checkpoint is complete and a rerun goes
    # straight to evaluation.
    watcher.messages["eval"] = (f"the checkpoint of step {last_step}, the end of pre-training, "
                                f"is complete in {ckpt.directory}; run the same command again "
                                "to evaluate it")
    watcher.phase = "eval"
    eval_start = time.time()
    results = evaluate.run_evaluators(config, method, ts, mesh, info, workdir=workdir)
    if watcher.requested:  # a signal whose exception a callback swallowed: still stop
        raise preemption.Interrupted(watcher.message())
    if metrics is not None:
        results["online_probe_top1"] = round(100 * float(metrics["probe_top1"]), 2)
    results.update(method=config.method, steps=total_steps, train_time_s=round(train_time, 1),
                   eval_time_s=round(time.time() - eval_start, 1))
    if earlier_train_s:  # the part of train_time_s spent before this process's resume
        results["train_time_earlier_s"] = round(earlier_train_s, 1)
    if is_main:
        text = json.dumps(results, indent=2)
        try:
            (epath.Path(workdir) / "results.json").write_text(text)
        except OSError as e:
            if workdir_lib.is_disk_full(e):
                raise workdir_lib.DiskFullError(os.path.join(workdir, "results.json"),
                                                len(text)) from None
            raise
    writer.write(total_steps, {k: v for k, v in results.items() if k.endswith("top1")})
    writer.write_curves()  # with the final evaluation's kNN
    return results

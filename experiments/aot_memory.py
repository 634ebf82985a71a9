"""Will it fit? Compile a config's train step for a mesh of fake CPU devices and print the
per-device bytes of parameters, optimizer state, the batch and the compiler's temporaries.

  python experiments/aot_memory.py --config=configs/simclr.py:imagenet --devices=64
  python experiments/aot_memory.py --config=configs/simclr.py:imagenet --devices=64 --fsdp=8 \
      --set batch_size=4096 --set model.dtype=bfloat16

Nothing runs and no data is read: the train state and the batch are abstract
(``jax.ShapeDtypeStruct`` with their shardings); ``jit(...).lower(...).compile()`` partitions
the step for ``--devices`` devices (``--fsdp`` of them on the ``fsdp`` axis) exactly as a real
run would, and ``compiled.memory_analysis()`` reports the partitioned program's buffers,
which are one device's. The XLA CPU backend compiles it, so the temporaries are those of
CPU's buffer assignment and fusion decisions: a TPU or GPU compiler schedules differently
(typically fewer temporaries, since it fuses more), so read the figure as an estimate, and
the parameter, optimizer and batch bytes as exact.

``--hlo`` also prints the collectives of the compiled step (see :func:`collectives`).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import re
import sys
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # this checkout's ssljax, also when another one is installed


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/simclr.py:fashion_mnist",
                   help="configs/<method>.py[:<variant>]")
    p.add_argument("--devices", type=int, default=8, help="number of (fake) devices")
    p.add_argument("--fsdp", type=int, default=None,
                   help="size of the fsdp mesh axis (default: the config's sharding.fsdp)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set batch_size=4096 (repeatable)")
    p.add_argument("--hlo", action="store_true", help="also list the step's collectives")
    return p.parse_args(argv)


def setup_devices(n: int) -> None:
    """``n`` fake CPU devices; must run before JAX touches a device."""
    import jax
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", n)


def load_config(spec: str, overrides: list[str]):
    path, _, variant = spec.partition(":")
    if not os.path.isabs(path) and not os.path.exists(path):
        path = os.path.join(REPO, path)
    module_spec = importlib.util.spec_from_file_location("_aot_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    cfg = module.get_config(variant) if variant else module.get_config()
    for item in overrides:
        key, _, text = item.partition("=")
        node = cfg
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        if last not in node:
            raise SystemExit(f"error: unknown config key {key!r}.")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        node[last] = type(node[last])(value) if isinstance(node[last], (int, float)) and \
            not isinstance(node[last], bool) else value
    return cfg


@dataclass
class StepMemory:
    """Per-device bytes of one compiled train step."""
    params: int
    opt_state: int
    other_state: int  # BatchNorm statistics, method state, online probe, step
    batch: int
    arguments: int  # everything passed in (state + batch + rng), from the compiler
    outputs: int
    aliased: int  # outputs written in place of donated arguments
    temporaries: int
    code: int

    @property
    def peak(self) -> int:
        """Live at once at worst: inputs, outputs not aliased to inputs, temporaries."""
        return self.arguments + self.outputs - self.aliased + self.temporaries


def _local_bytes(tree, shardings) -> int:
    import jax
    import numpy as np
    return int(sum(np.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
                   for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings))))


def compile_step(cfg, num_devices: int, fsdp: int):
    """``(compiled, abstract_state, state_shardings, batch)`` of ``cfg``'s train step."""
    import jax
    import numpy as np

    from ssljax import data, methods, sharding, train

    info = data.dataset_info(cfg.data.name)
    mesh = sharding.make_mesh(num_devices, fsdp=fsdp)
    sharding.check_batch_size(cfg.batch_size, mesh)
    method = methods.get_method(cfg.method)(cfg, num_classes=info.num_classes,
                                            run=methods.RunFacts.of(cfg, total_steps=1000))
    steps = train.build_step(cfg, method, mesh, total_steps=1000, steps_per_epoch=100)
    bs = sharding.batch_sharding(mesh)
    size, channels = cfg.data.image_size, len(info.mean)
    batch = {"views": jax.ShapeDtypeStruct(
                 (cfg.batch_size, cfg.data.num_views, size, size, channels), np.float32,
                 sharding=bs),
             "label": jax.ShapeDtypeStruct((cfg.batch_size,), np.int32, sharding=bs)}
    abstract, shardings = steps.abstract_state(batch)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         abstract, shardings)
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=sharding.replicated(mesh))
    compiled = steps.train_step.lower(state, batch, rng).compile()
    return compiled, abstract, shardings, batch


def step_memory(compiled, abstract, shardings, batch) -> StepMemory:
    ma = compiled.memory_analysis()
    params = _local_bytes(abstract.params, shardings.params)
    opt = _local_bytes(abstract.opt_state, shardings.opt_state)
    everything = _local_bytes(abstract, shardings)
    batch_bytes = _local_bytes(batch, [x.sharding for x in batch.values()])
    return StepMemory(params=params, opt_state=opt, other_state=everything - params - opt,
                      batch=batch_bytes, arguments=ma.argument_size_in_bytes,
                      outputs=ma.output_size_in_bytes, aliased=ma.alias_size_in_bytes,
                      temporaries=ma.temp_size_in_bytes,
                      code=ma.generated_code_size_in_bytes)


# ---- Collectives in the compiled HLO -----------------------------------------------------

_OP = re.compile(r"=\s*(?P<shape>\([^=]*?\)|[a-z0-9]+\[[0-9,]*\][^ ]*)\s+"
                 r"(?P<op>all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)"
                 r"(?:-start)?\((?P<rest>.*)$", re.M)
_ARRAY = re.compile(r"([a-z]+[0-9]*)\[([0-9,]*)\]")
_GROUPS_LIST = re.compile(r"replica_groups=\{(\{[0-9,]*\}(?:,\{[0-9,]*\})*)\}")
_GROUPS_IOTA = re.compile(r"replica_groups=\[(\d+),(\d+)\]")
# Newer XLA: replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_1'} (the axes in braces form
# a group; without braces, all of them).
_GROUPS_MESH = re.compile(r"replica_groups=mesh\[([^\]]*)\](?: \{([^}]*)\})?")
_COMMENT = re.compile(r"/\*.*?\*/")
_BYTES = {"f64": 8, "s64": 8, "u64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2,
          "s16": 2, "u16": 2, "s8": 1, "u8": 1, "pred": 1}


def _shape_bytes(text: str) -> int:
    total = 0
    for dtype, dims in _ARRAY.findall(text):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * _BYTES.get(dtype, 4)
    return total


def _group_size(rest: str, num_devices: int) -> int:
    if m := _GROUPS_MESH.search(rest):
        sizes = dict((k.strip("'"), int(v)) for k, v in
                     (kv.split("=") for kv in m.group(1).split(",")))
        axes = [a.strip().strip("'") for a in m.group(2).split(",")] if m.group(2) else sizes
        n = 1
        for a in axes:
            n *= sizes[a]
        return n
    if m := _GROUPS_IOTA.search(rest):
        return int(m.group(2))
    if m := _GROUPS_LIST.search(rest):
        first = m.group(1).split("}")[0].strip("{")
        return len([x for x in first.split(",") if x]) or num_devices
    return num_devices  # replica_groups={} : all devices


@dataclass
class Collective:
    op: str
    result_bytes: int  # the op's output on one device
    group: int  # devices taking part together

    @property
    def sent_bytes(self) -> float:
        """Bytes one device sends, with the bandwidth-optimal (ring) algorithm."""
        n, s = self.group, self.result_bytes
        if n <= 1:
            return 0.0
        if self.op == "all-reduce":
            return 2 * (n - 1) / n * s  # reduce-scatter then all-gather
        if self.op == "all-gather":
            return (n - 1) / n * s  # receives the other n-1 shards of the result
        if self.op == "reduce-scatter":
            return (n - 1) * s  # its operand is n results
        if self.op == "all-to-all":
            return (n - 1) / n * s
        return float(s)  # collective-permute


def collectives(hlo_text: str, num_devices: int) -> list[Collective]:
    """The cross-device collectives of a compiled (partitioned) HLO module's text.

    >>> hlo = "%ar = f32[10,4]{1,0} all-reduce(f32[10,4]{1,0} %x), replica_groups=[1,8]<=[8]"
    >>> c = collectives(hlo, 8)[0]
    >>> c.op, c.result_bytes, c.group, c.sent_bytes
    ('all-reduce', 160, 8, 280.0)
    >>> hlo = ("%ag = (f32[8]{0}, /*index=1*/bf16[4,2]{1,0}) all-gather(%a, %b), "
    ...        "replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_1'}")
    >>> c = collectives(hlo, 8)[0]
    >>> c.op, c.result_bytes, c.group, c.sent_bytes
    ('all-gather', 48, 4, 36.0)
    """
    ops = []
    for m in _OP.finditer(_COMMENT.sub("", hlo_text)):
        if "-done" in m.group(0).split("(")[0]:
            continue
        ops.append(Collective(m.group("op"), _shape_bytes(m.group("shape")),
                              _group_size(m.group("rest"), num_devices)))
    return ops


def fmt(n: float) -> str:
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def main(argv=None) -> None:
    args = parse_args(argv)
    setup_devices(args.devices)
    cfg = load_config(args.config, args.set)
    from ssljax.config import validate_or_exit
    validate_or_exit(cfg)
    fsdp = args.fsdp if args.fsdp is not None else cfg.get("sharding", {}).get("fsdp", 1)
    import time
    t0 = time.time()
    compiled, abstract, shardings, batch = compile_step(cfg, args.devices, fsdp)
    mem = step_memory(compiled, abstract, shardings, batch)
    print(f"{args.config}: {cfg.method}, {cfg.model.name} width {cfg.model.width}, "
          f"{cfg.model.dtype}, global batch {cfg.batch_size} x {cfg.data.num_views} views of "
          f"{cfg.data.image_size}px, optimizer {cfg.optimizer.name}")
    print(f"mesh: {args.devices} devices (data {args.devices // max(fsdp, 1)} x fsdp "
          f"{max(fsdp, 1)}); compiled in {time.time() - t0:.0f}s\n")
    print("per device:")
    for name in ("params", "opt_state", "other_state", "batch", "arguments", "outputs",
                 "aliased", "temporaries", "code"):
        print(f"  {name:14s}{fmt(getattr(mem, name)):>14s}")
    print(f"  {'peak':14s}{fmt(mem.peak):>14s}   (arguments + outputs - aliased + temporaries)")
    if args.hlo:
        ops = collectives(compiled.as_text(), args.devices)
        print(f"\ncollectives ({len(ops)}):")
        by_op: dict[str, list[Collective]] = {}
        for c in ops:
            by_op.setdefault(c.op, []).append(c)
        for op, cs in sorted(by_op.items()):
            print(f"  {op:20s}{len(cs):5d} ops, results {fmt(sum(c.result_bytes for c in cs)):>12s},"
                  f" sent {fmt(sum(c.sent_bytes for c in cs)):>12s}")


if __name__ == "__main__":
    main()

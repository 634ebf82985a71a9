"""Bytes each device communicates per train step, read from the compiled HLO, on 1, 2, 4 and
8 fake CPU devices, against the minimum; writes the table of ``experiments/scaling.md``.

  python experiments/scaling.py --config=configs/simclr.py:fashion_mnist [--fsdp]

Each device count runs in its own process (the fake device count is fixed at start-up).
Bytes *sent* per device assume the bandwidth-optimal ring algorithms
(``aot_memory.Collective.sent_bytes``): an all-reduce of S bytes over n devices sends
2 (n-1)/n S, an all-gather with an S-byte result (n-1)/n S.

The minimum for a data-parallel step of a contrastive method: the gradients reduced once
(an all-reduce of the parameters' bytes) and the projector's embeddings gathered once (an
all-gather of the 2N x D float32 matrix), as the issue defines it. BatchNorm over the global
batch (SimCLR's cross-replica BN) adds two all-reduces of its channels per BN layer in the
forward pass and two in the backward pass; they are listed apart.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def measure(config: str, devices: int, fsdp: int, overrides: list[str]) -> dict:
    """In this process: compile the step for ``devices`` devices and sum its collectives."""
    import aot_memory as am
    am.setup_devices(devices)
    import jax
    import numpy as np
    cfg = am.load_config(config, overrides)
    compiled, abstract, shardings, batch = am.compile_step(cfg, devices, fsdp)
    ops = am.collectives(compiled.as_text(), devices)
    by_op: dict[str, float] = {}
    for c in ops:
        by_op[c.op] = by_op.get(c.op, 0.0) + c.sent_bytes
    param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract.params))
    # BatchNorm channels: one running mean per channel in the batch statistics.
    bn_channels = sum(int(np.prod(x.shape)) for path, x in
                      jax.tree_util.tree_leaves_with_path(abstract.state)
                      if jax.tree_util.keystr(path).endswith("['mean']"))
    out_dim = cfg.projector.out_dim
    embed_bytes = cfg.data.num_views * cfg.batch_size * out_dim * 4
    n = devices
    mem = am.step_memory(compiled, abstract, shardings, batch)
    return dict(devices=n, fsdp=fsdp, ops=len(ops), sent=by_op,
                total=sum(by_op.values()),
                min_grads=2 * (n - 1) / n * param_bytes,
                min_embed=(n - 1) / n * embed_bytes,
                bn=4 * 2 * (n - 1) / n * bn_channels * 4,
                param_bytes=param_bytes, temporaries=mem.temporaries, peak=mem.peak,
                params_local=mem.params, opt_local=mem.opt_state)


def fmt(b: float) -> str:
    return f"{b / 2 ** 20:.2f}"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/simclr.py:fashion_mnist")
    p.add_argument("--devices", default="1,2,4,8")
    p.add_argument("--fsdp", action="store_true", help="all devices on the fsdp axis")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # worker mode
    args = p.parse_args()
    if args.one is not None:
        fsdp = args.one if args.fsdp else 1
        print(json.dumps(measure(args.config, args.one, fsdp, args.set)))
        return
    rows = []
    for n in map(int, args.devices.split(",")):
        cmd = [sys.executable, __file__, "--config", args.config, "--one", str(n),
               *(["--fsdp"] if args.fsdp else []), *sum([["--set", s] for s in args.set], [])]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"# {n} devices done", file=sys.stderr)
    print(f"{args.config} {' '.join(args.set)}{' (FSDP)' if args.fsdp else ''}: "
          f"parameters {fmt(rows[0]['param_bytes'])} MiB\n")
    print("| devices | all-gather | all-reduce | reduce-scatter | all-to-all + permute | "
          "total | minimum (grads + embeddings) | BN statistics | total / (min + BN) | "
          "params + opt / device | temporaries |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        s = r["sent"]
        moved = s.get("all-to-all", 0) + s.get("collective-permute", 0)
        floor = r["min_grads"] + r["min_embed"] + r["bn"]
        ratio = f"{r['total'] / floor:.2f}" if floor else "-"
        print(f"| {r['devices']} | {fmt(s.get('all-gather', 0))} | {fmt(s.get('all-reduce', 0))} | "
              f"{fmt(s.get('reduce-scatter', 0))} | {fmt(moved)} | {fmt(r['total'])} | "
              f"{fmt(r['min_grads'] + r['min_embed'])} | {fmt(r['bn'])} | {ratio} | "
              f"{fmt(r['params_local'] + r['opt_local'])} | {fmt(r['temporaries'])} |")
    print("\n(MiB sent per device per step)")


if __name__ == "__main__":
    main()

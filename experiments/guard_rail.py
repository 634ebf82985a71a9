"""The methods' guard rail: first train steps and checkpoint keys of every config variant.

For every method and every variant of ``configs/*.py`` (``get_config(arg)``, plus a few
command-line settings the benchmark and the papers' variants use), shrunk by one override
shared by all (:func:`tiny`), this records

* the sorted tree paths, shapes and dtypes of the train state (what a checkpoint holds);
* the loss and every logged metric of the first 3 train steps on one fixed synthetic batch,
  on 1 device and on 8 (fake CPU) devices, per CPU kind (:func:`cpu_kind`),

and writes them to ``tests/data/guard_rail.json``. ``tests/test_guard_rail.py`` recomputes
them and compares: keys and shapes exactly, metrics to 1e-5 relative. A refactor of the
methods must leave both unchanged.

Why per CPU kind: XLA's CPU kernels sum in an order that depends on the vector ISA. On an
AMD EPYC without AVX-512 the first step's losses differ from the AVX-512 EPYC's by up to 2e-4
relative (InfoMin's instance loss at initialisation), and three small-batch steps amplify
that to percents (MoCo's probe loss at step 3: 2.36 against 2.60). So each kind keeps its
own record, compared at 1e-5; on a kind with no record only step 1 is compared, at
:data:`FOREIGN_RTOL`, with every kind's record (record the kind to compare all steps).

  python experiments/guard_rail.py                 # every case (about half an hour on 2 cores)
  python experiments/guard_rail.py --only simclr   # cases whose id starts with 'simclr'
  python experiments/guard_rail.py --check         # compare instead of writing
  python experiments/guard_rail.py --devices 1      # keys and 1-device steps only (a first pass)
  python experiments/guard_rail.py --missing        # what this CPU kind has not recorded yet

Record from the commit *before* a refactor (e.g. ``git worktree add /tmp/before <commit>``
and run this script there): the file is the behaviour to keep. A new CPU kind is recorded the
same way, from the commit before the refactor, then checked on the current one
(``--data`` names the file to write or check).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import os
import platform
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "tests", "data", "guard_rail.json")
NUM_STEPS = 3
DEVICES = (1, 8)
RTOL = 1e-5
# Step 1 on a CPU kind with no record of its own, against every recorded kind: the two
# recorded kinds (AVX-512 and AVX2 AMD EPYC) differ at step 1 by at most 1.9e-4.
FOREIGN_RTOL = 1e-3

# configs/<file>.py -> its get_config variants; "variant|key=value;key=value" adds overrides
# (values are Python literals).
VARIANTS: dict[str, tuple[str, ...]] = {
    "simclr": ("fashion_mnist", "fashion_mnist_long", "cifar10", "cifar100", "stl10",
               "imagenet", "fashion_mnist|loss.block_size=4"),
    "barlow_twins": ("fashion_mnist", "cifar10", "cifar100", "imagenet"),
    "vicreg": ("fashion_mnist", "cifar10", "cifar100", "imagenet"),
    "corinfomax": ("fashion_mnist", "cifar10", "cifar100", "tiny_imagenet", "imagenet100",
                   "imagenet", "fashion_mnist|corinfomax.state_dtype='float32'"),
    "byol": ("fashion_mnist", "cifar10", "cifar100", "imagenet",
             "fashion_mnist|byol.target_init='copy'"),
    "moco": ("fashion_mnist", "fashion_mnist,infomin_aug", "cifar10", "cifar100", "imagenet",
             "fashion_mnist|moco.shuffle_bn=False"),
    "infomin": ("fashion_mnist", "cifar10", "cifar100", "imagenet"),
    "metamask": ("fashion_mnist", "cifar10", "cifar100",
                 "fashion_mnist|metamask.meta_grad='first_order'",
                 "fashion_mnist|metamask.meta_grad='finite_difference'",
                 "fashion_mnist|metamask.meta_grad='none'"),
    "mrcl": ("fashion_mnist", "cifar10", "cifar100", "imagenet",
             "fashion_mnist,masking_only", "fashion_mnist,reconstruction_only",
             "fashion_mnist,simclr", "fashion_mnist,vit", "fashion_mnist,infonce",
             "fashion_mnist,block", "cifar10,vit,infonce",
             # The Fashion-MNIST recipe's mask ratio went from 0.5 to 0.25 (issue 19's
             # mrcl_mask025 run); these keep the behaviour recorded before issue 22 at 0.5.
             *(f"fashion_mnist{v}|data.mask.ratio=0.5"
               for v in ("", ",masking_only", ",vit", ",infonce", ",block"))),
    # Not "fashion_mnist,token": on main (5c4c83f) it fails to initialise (MRCLModel._resnet
    # calls self.param outside a compact method), before and after the redesign.
    "selfcon": ("fashion_mnist", "cifar10", "cifar100",
                "fashion_mnist|selfcon.multiview=True;data.num_views=2",
                "fashion_mnist|selfcon.label=False",
                "fashion_mnist|selfcon.anchors='subnet'"),
    "supcon": ("fashion_mnist", "cifar10", "cifar100", "fashion_mnist|supcon.label=False"),
    "ce": ("fashion_mnist", "cifar10", "cifar100"),
    "subnet_ce": ("fashion_mnist", "cifar10", "cifar100"),
    "infomin_views": ("fashion_mnist", "fashion_mnist_semi", "stl10", "stl10_semi"),
    "view_contrast": ("rgb", "ydbdr", "ycbcr", "lab", "lab_stl10"),
}

# The default test tier: one case per method (the benchmark's variant), 1 device.
REPRESENTATIVE = {name: f"{name}:{variants[0]}" for name, variants in VARIANTS.items()}

# Datasets the configs name that ssljax.data has no entry for: (channels, classes).
_OTHER_DATASETS = {"tiny_imagenet": (3, 200), "imagenet100": (3, 100)}


@functools.cache
def _host_cpuinfo() -> str | None:
    """``/proc/cpuinfo`` (read once per process), or None where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return None


def cpu_kind(cpuinfo: str | None = None) -> str:
    """The CPU kind a record holds for: the vendor and the widest vector ISA XLA can emit for,
    e.g. ``'AuthenticAMD avx512'``, ``'GenuineIntel avx2'``; ``platform.machine()`` where
    there is no ``/proc/cpuinfo`` (e.g. ``'arm64'`` on macOS). ``cpuinfo``: its text, to test."""
    if cpuinfo is None:
        cpuinfo = _host_cpuinfo()
        if cpuinfo is None:
            return platform.machine()
    fields = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    if not flags:
        return fields.get("vendor_id") or platform.machine()
    isa = next((name for name, need in (("avx512", {"avx512f", "avx512bw", "avx512vl"}),
                                        ("avx2", {"avx2", "fma"}), ("avx", {"avx"}))
                if need <= flags), "sse")
    return f"{fields.get('vendor_id', platform.machine())} {isa}"


def cases() -> list[str]:
    """Every case id, ``'<config file>:<variant>'``: the representative ones first."""
    every = [f"{name}:{v}" for name, variants in VARIANTS.items() for v in variants]
    first = list(REPRESENTATIVE.values())
    return first + [c for c in every if c not in first]


def load_config(case: str):
    """The config of ``case`` (its overrides applied), before :func:`tiny`."""
    name, _, rest = case.partition(":")
    variant, _, overrides = rest.partition("|")
    spec = importlib.util.spec_from_file_location(f"_guard_rail_{name}",
                                                  os.path.join(REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(variant)
    for item in filter(None, overrides.split(";")):
        key, _, value = item.partition("=")
        _set(c, key, eval(value))  # noqa: S307 (literals written above)
    return c


def _set(c, key: str, value) -> None:
    *path, last = key.split(".")
    for p in path:
        c = c[p]
    c[last] = value


def tiny(c):
    """The one override every case shares: a width-4 ResNet-18 (stride-2 3x3 stem) or
    ViT-Tiny, 16x16 images, batch 16, 16-wide heads, 4-pixel mask and ViT patches, 8-pixel
    jigsaw patches; every method hyper-parameter and the optimizer stay the variant's."""
    c.model.name = "vit_tiny" if c.model.name.startswith("vit") else "resnet18"
    c.model.stem = "cifar"
    c.model.stem_stride = 2
    c.model.width = 4
    c.model.stage_widths = ()
    c.model.patch_size = 4
    c.data.image_size = 16
    c.batch_size = 16
    for section in c.values():
        if not hasattr(section, "keys"):
            continue
        if "hidden_dims" in section:
            section.hidden_dims = (16,) * len(section.hidden_dims)
        if "hidden_dim" in section:
            section.hidden_dim = 16
        if "out_dim" in section:
            section.out_dim = 8
    if "decoder" in c:
        c.decoder.channels = (8,) * len(c.decoder.channels)
        c.decoder.dim, c.decoder.heads = 16, 2
    if "mask" in c.data:
        c.data.mask.patch_size = 4
    if "jigsaw" in c.data:
        c.data.jigsaw.patch = 8
    return c


def dataset_facts(c) -> tuple[int, int]:
    """``(channels, num_classes)`` of the case's dataset."""
    if c.data.name in _OTHER_DATASETS:
        return _OTHER_DATASETS[c.data.name]
    from ssljax import data
    info = data.dataset_info(c.data.name)
    return info.image_shape[-1], info.num_classes


def synthetic_batch(c, seed: int = 0) -> dict:
    """One fixed batch with everything the case's method may read: views, labels, patch
    masks (``data.mask``: exactly the configured count on the masked views) and jigsaw
    patches (``data.jigsaw``)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    channels, num_classes = dataset_facts(c)
    b, v, s = c.batch_size, c.data.num_views, c.data.image_size
    x = rng.normal(size=(b, v, s, s, channels))
    if v > 1:
        x[:, 1] = 1.5 * x[:, 1] + 0.5
    batch = {"views": x.astype(np.float32),
             "label": rng.integers(0, num_classes, size=(b,)).astype(np.int32)}
    mask = c.data.get("mask")
    if mask is not None and mask.get("enabled", True):
        grid = s // mask.patch_size
        count = int(round(mask.ratio * grid * grid))
        masks = np.zeros((b, v, grid * grid), bool)
        for i in range(b):
            for j in mask.views:
                masks[i, j, rng.permutation(grid * grid)[:count]] = True
        batch["masks"] = masks.reshape(b, v, grid, grid)
    jig = c.data.get("jigsaw")
    if jig:
        batch["jigsaw"] = rng.normal(size=(b, 9, jig.patch, jig.patch, channels)).astype(
            np.float32)
    return batch


def build(c, num_classes: int, mesh, *, total_steps: int = 100, steps_per_epoch: int = 1):
    """The case's method and compiled step (the trainer's ``build_step``)."""
    from ssljax import methods, train
    cls = methods.get_method(c.method)
    if hasattr(methods, "RunFacts"):  # run facts are given when the method is built
        method = cls(c, num_classes=num_classes,
                     run=methods.RunFacts.of(c, total_steps=total_steps))
    else:  # before issue 22: build_step set method.total_steps
        method = cls(c, num_classes=num_classes)
    return method, train.build_step(c, method, mesh, total_steps=total_steps,
                                    steps_per_epoch=steps_per_epoch)


def state_keys(case: str) -> list[str]:
    """``'<tree path> <shape> <dtype>'`` of every leaf of the case's train state, sorted."""
    import jax

    from ssljax import sharding
    c = tiny(load_config(case))
    _, num_classes = dataset_facts(c)
    _, steps = build(c, num_classes, sharding.make_mesh(1))
    abstract = jax.eval_shape(steps._init, jax.random.key(0, impl="rbg"),
                              jax.tree.map(jax.numpy.asarray, synthetic_batch(c)))
    leaves = jax.tree.leaves_with_path(abstract)
    return sorted(f"{jax.tree_util.keystr(p)} {tuple(x.shape)} {x.dtype}" for p, x in leaves)


def first_steps(case: str, num_devices: int) -> list[dict[str, float]]:
    """The metrics (loss included) of the case's first :data:`NUM_STEPS` train steps on its
    fixed batch, on a mesh of ``num_devices``."""
    import jax

    from ssljax import sharding, train
    c = tiny(load_config(case))
    _, num_classes = dataset_facts(c)
    mesh = sharding.make_mesh(num_devices)
    _, steps = build(c, num_classes, mesh)
    put = functools.partial(jax.device_put, device=sharding.batch_sharding(mesh))
    batch = put(synthetic_batch(c))
    ts = steps.init(train.init_key(0), batch)
    out = []
    for _ in range(NUM_STEPS):
        ts, metrics = steps.train_step(ts, batch, jax.random.key(7))
        out.append({k: float(v) for k, v in sorted(jax.device_get(metrics).items())})
    return out


def recorded_steps(entry: dict, kind: str | None = None) -> dict[str, list[dict]]:
    """A recorded case's steps on CPU ``kind`` (default: this one), by device count
    (``'1'``, ``'8'``); empty when that kind has none."""
    return entry.get("steps", {}).get(kind or cpu_kind(), {})


def record(case: str, devices=DEVICES, entry: dict | None = None) -> dict:
    """``entry`` (a recorded case) with the keys, and this CPU kind's steps on each of
    ``devices``."""
    entry = dict(entry or {}, keys=state_keys(case))
    steps = {k: dict(v) for k, v in entry.get("steps", {}).items()}
    mine = steps.setdefault(cpu_kind(), {})
    for n in devices:
        mine[str(n)] = first_steps(case, n)
    entry["steps"] = steps
    return entry


def check(entry: dict, case: str, num_devices: int) -> tuple[list[str], str]:
    """Compare the case's first steps on ``num_devices`` with its record: ``(problems,
    how)``. On a recorded CPU kind every step to :data:`RTOL`; on another, step 1 to
    :data:`FOREIGN_RTOL` against each kind that recorded ``num_devices``."""
    n, kind = str(num_devices), cpu_kind()
    mine = recorded_steps(entry, kind)
    if n in mine:
        return compare_metrics(mine[n], first_steps(case, num_devices)), f"{kind}, every step"
    others = {k: v[n] for k, v in entry.get("steps", {}).items() if n in v}
    if not others:
        return [f"no CPU kind recorded {num_devices} device(s)"], "nothing"
    actual = first_steps(case, num_devices)[:1]
    problems = [f"{k}: {p}" for k, rec in sorted(others.items())
                for p in compare_metrics(rec[:1], actual, FOREIGN_RTOL)]
    return problems, (f"step 1 only, to {FOREIGN_RTOL:g}, against {sorted(others)}: this CPU "
                      f"({kind}) has no record")


def compare_metrics(expected: list[dict], actual: list[dict], rtol: float = RTOL) -> list[str]:
    """One line per difference (a missing or extra metric, or a value off by more than
    ``rtol`` relative); empty when they agree."""
    problems = []
    for step, (e, a) in enumerate(zip(expected, actual, strict=True)):
        if sorted(e) != sorted(a):
            problems.append(f"step {step + 1}: metrics {sorted(a)} != recorded {sorted(e)}")
            continue
        for k in e:
            ev, av = e[k], a[k]
            same = (math.isnan(ev) and math.isnan(av)) or math.isclose(
                ev, av, rel_tol=rtol, abs_tol=rtol * 1e-3)
            if not same:
                problems.append(f"step {step + 1}: {k} = {av!r}, recorded {ev!r}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="cases whose id starts with this")
    parser.add_argument("--representative", action="store_true",
                        help="only each method's benchmark variant (the tests' cases)")
    parser.add_argument("--check", action="store_true", help="compare with the recorded file")
    parser.add_argument("--devices", type=int, nargs="+", default=list(DEVICES),
                        help="device counts to run (default: 1 and 8)")
    parser.add_argument("--missing", action="store_true",
                        help="skip the device counts this CPU kind already has recorded")
    parser.add_argument("--data", default=DATA, help=f"the record file (default {DATA})")
    args = parser.parse_args()
    os.environ.setdefault("SSLJAX_XLA_CPU_DEFAULTS", "0")  # the test suite's numerics
    import jax
    jax.config.update("jax_num_cpu_devices", max(DEVICES))
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_compilation_cache_dir", os.path.join(REPO, ".pytest_cache", "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    sys.path.insert(0, REPO)

    recorded = {}
    if os.path.exists(args.data):
        with open(args.data) as f:
            recorded = json.load(f)
    kind = cpu_kind()
    print(f"CPU kind: {kind}", flush=True)
    failures = 0
    for case in cases():
        if not case.startswith(args.only):
            continue
        if args.representative and case not in REPRESENTATIVE.values():
            continue
        if args.check and case not in recorded:
            print(f"{case}: not recorded", flush=True)
            continue
        t0 = time.time()
        if args.check:  # the device counts some kind recorded
            old = recorded[case]
            devices = [n for n in args.devices
                       if any(str(n) in v for v in old.get("steps", {}).values())]
            problems = ([] if old["keys"] == state_keys(case) else ["state keys differ"])
            hows = set()
            for n in devices:
                found, how = check(old, case, n)
                problems += [f"{n} device(s): {p}" for p in found]
                hows.add(how)
            failures += bool(problems)
            print(f"{case}: {'OK' if not problems else '; '.join(problems)} "
                  f"({'; '.join(sorted(hows))}; {time.time() - t0:.0f}s)", flush=True)
            continue
        have = recorded_steps(recorded.get(case, {}), kind)
        devices = [n for n in args.devices if not (args.missing and str(n) in have)]
        if not devices:
            continue
        entry = record(case, devices, recorded.get(case))
        recorded[case] = entry
        losses = {n: [s["loss"] for s in entry["steps"][kind][str(n)]] for n in devices}
        print(f"{case}: loss {losses} ({time.time() - t0:.0f}s)", flush=True)
        os.makedirs(os.path.dirname(args.data), exist_ok=True)
        with open(args.data + ".tmp", "w") as f:
            json.dump(recorded, f, indent=1, sort_keys=True)
        os.replace(args.data + ".tmp", args.data)  # a killed run leaves the last whole file
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()

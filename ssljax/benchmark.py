"""The benchmark: every method under one protocol, the same probes, one table.

  python -m ssljax.benchmark --suite fashion_mnist [--methods simclr byol ...] [--seeds 0 1 2]
  python -m ssljax.benchmark --suite fashion_mnist --report      # table, chart, README only

A suite fixes the protocol: the backbone, input resolution, epochs, batch size and probes
(``Suite.protocol``, config overrides given to every run). What a method may tune, as its
paper does (learning rate, temperature, loss weights, augmentation), lives in its config
variant (``configs/<method>.py:fashion_mnist``). Each run is one ``python -m ssljax.main``
command in its own process and workdir (``--workroot``/<suite>/<method>_s<seed>): an
interrupted run resumes from its checkpoint when the benchmark is started again; its
``wall_s`` adds the training time of the segments before the resume (kept in the checkpoint).

Every finished run appends one JSON object to ``experiments/benchmark/<suite>.jsonl``
(method, seed, protocol, commit, command, epochs, wall_s, linear_top1, knn_top1,
effective_rank, ...); a (method, seed, protocol) already there is not run again, so the same
command continues a benchmark across sessions. The raw-pixel and random-encoder rows come
from the same probe code (``raw_pixels``, ``random_encoder``). The Markdown table
(``<suite>.md``), the bar chart (``<suite>.png``) and the README's table are generated from
the JSONL after every row; the hand-written ``## Notes`` of the Markdown file are kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "experiments", "benchmark")
BASELINES = ("raw_pixels", "random_encoder")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One row of the table: a config variant plus the overrides that make it this method."""
    config: str  # configs/<config>.py
    variant: str = "fashion_mnist"
    overrides: tuple[tuple[str, Any], ...] = ()
    label: str = ""  # the table's name; default: the key
    supervised: bool = False  # uses the labels (CE, SupCon, SelfCon): not held to the SSL targets
    # A diagnostic run: a variant of the entry ``of`` that answers ``question`` about it. It is
    # run only when named (``--methods``), has its own table, and no target, claim or bar.
    of: str = ""
    question: str = ""


@dataclasses.dataclass(frozen=True)
class Claim:
    """A paper's claim: ``better`` beats each of ``than`` (on ``metric``)."""
    paper: str
    statement: str
    better: str
    than: tuple[str, ...]
    metric: str = "linear_top1"


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    protocol: tuple[tuple[str, Any], ...]  # config overrides every run gets
    entries: dict[str, Entry]
    claims: tuple[Claim, ...]
    raw_pixels_linear: float  # the target's reference, for the README's text only
    margin_methods: tuple[str, ...]  # must beat raw pixels by ``margin`` points
    margin: float = 2.0
    supervised_target: tuple[str, float] = ("ce", 92.0)

    @property
    def protocol_id(self) -> str:
        """A short hash of the protocol: rows of another protocol are neither skipped nor shown."""
        text = json.dumps([[k, _jsonable(v)] for k, v in sorted(self.protocol)])
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    @property
    def epochs(self) -> float:
        return float(dict(self.protocol)["num_epochs"])

    @property
    def methods(self) -> tuple[str, ...]:
        """The entries of the main table (diagnostic runs excluded)."""
        return tuple(n for n, e in self.entries.items() if not e.of)

    @property
    def diagnostics(self) -> tuple[str, ...]:
        return tuple(n for n, e in self.entries.items() if e.of)


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v


# ---- Suites ----------------------------------------------------------------------------------
# Fashion-MNIST on a 2-core CPU: ResNet-18 width 16 (stages 16-32-64-128, 128 features) with
# a stride-2 3x3 stem, 28 px, batch 256, 8 epochs; the same AdamW linear probe (lr 1e-2, 30
# epochs, standardised features; 100 epochs move it by under 0.3) and kNN (k 200, T 0.1) for
# every method and both baselines. Sized so that seed 0 of every method fits in about 4 hours
# on the 2-core AVX-512 machine (measured per method in experiments/benchmark/fashion_mnist.md;
# MetaMask's bilevel step alone is a third of it).
FASHION_MNIST = Suite(
    name="fashion_mnist",
    protocol=(
        ("data.name", "fashion_mnist"), ("data.image_size", 28),
        ("model.name", "resnet18"), ("model.stem", "cifar"), ("model.stem_stride", 2),
        ("model.width", 16), ("model.stage_widths", ()),
        ("batch_size", 256), ("num_epochs", 8), ("total_steps", -1),
        ("eval.image_size", 0), ("eval.train_examples", -1),
        ("eval.linear_optimizer", "adamw"), ("eval.linear_schedule", "cosine"),
        ("eval.linear_lr", 1e-2), ("eval.linear_epochs", 30), ("eval.linear_batch_size", 1024),
        ("eval.linear_weight_decay", 1e-4), ("eval.linear_final_lr_ratio", 0.0),
        ("eval.knn_k", 200), ("eval.knn_temperature", 0.1),
        ("eval.baselines", False),
    ),
    entries={
        # The segmentation probe too: MRCL's second claim compares its mIoU with SimCLR's.
        "simclr": Entry("simclr", overrides=(("eval.segmentation", True),), label="SimCLR"),
        "moco": Entry("moco", label="MoCo v2"),
        "byol": Entry("byol", label="BYOL"),
        "barlow_twins": Entry("barlow_twins", label="Barlow Twins"),
        "vicreg": Entry("vicreg", label="VICReg"),
        "corinfomax": Entry("corinfomax", label="CorInfoMax"),
        "metamask": Entry("metamask", label="MetaMask"),
        "infomin": Entry("infomin", label="InfoMin (Aug + jigsaw)"),
        "moco_infomin_aug": Entry("moco", "fashion_mnist,infomin_aug",
                                  label="MoCo v2 + InfoMin Aug"),
        "mrcl": Entry("mrcl", label="MRCL"),
        "mrcl_masking_only": Entry("mrcl", "fashion_mnist,masking_only",
                                   label="MRCL, masking only"),
        "mrcl_reconstruction_only": Entry("mrcl", "fashion_mnist,reconstruction_only",
                                          label="MRCL, reconstruction only"),
        "supcon": Entry("supcon", label="SupCon", supervised=True),
        "selfcon": Entry("selfcon", label="SelfCon-S", supervised=True),
        "ce": Entry("ce", label="Cross-entropy", supervised=True),
        # Diagnostics: why a method falls short (issue 19); each answers one question.
        "supcon_one_view": Entry(
            "supcon", overrides=(("data.num_views", 1),), label="SupCon, one view",
            supervised=True, of="supcon",
            question="Is SelfCon-S's gap to SupCon its single view? (SelfCon-S trains on one)"),
        "selfcon_m": Entry(
            "selfcon", overrides=(("selfcon.multiview", True), ("data.num_views", 2)),
            label="SelfCon-M (two views)", supervised=True, of="selfcon",
            question="Does SelfCon close the gap to SupCon with two views?"),
        "byol_copy_tau098": Entry(
            "byol", overrides=(("byol.target_init", "copy"), ("byol.base_momentum", 0.98)),
            label="BYOL, target copied, tau 0.98", of="byol",
            question="Does a target that starts as the online network and moves faster help "
                     "BYOL in 1,872 steps?"),
        "barlow_twins_wide": Entry(
            "barlow_twins", overrides=(("projector.hidden_dims", (2048, 2048)),
                                       ("projector.out_dim", 2048), ("optimizer.lr", 0.2)),
            label="Barlow Twins, 2048 projector, LARS lr 0.2", of="barlow_twins",
            question="Is Barlow Twins' shortfall the narrow projector and lr of its recipe?"),
        "vicreg_wide": Entry(
            "vicreg", overrides=(("projector.hidden_dims", (2048, 2048)),
                                 ("projector.out_dim", 2048), ("optimizer.lr", 0.2)),
            label="VICReg, 2048 projector, LARS lr 0.2", of="vicreg",
            question="Is VICReg's shortfall the narrow projector and lr of its recipe?"),
        "moco_lr024": Entry(
            "moco", overrides=(("optimizer.lr", 0.24),), label="MoCo v2, lr 0.24", of="moco",
            question="Is MoCo v2's shortfall the CIFAR demo's lr 0.06?"),
        "mrcl_mask025": Entry(
            "mrcl", overrides=(("data.mask.ratio", 0.25),), label="MRCL, mask ratio 0.25",
            of="mrcl", question="Is MRCL's shortfall against its ablations the 0.5 mask ratio, "
                                "which hides half of a 28-px image? (Adopted: MRCL's recipe "
                                "masks 0.25 since, so MRCL's row repeats this run; at 0.5 it "
                                "read 82.00 / 79.30.)"),
        "infomin_no_jigsaw": Entry(
            "infomin", overrides=(("infomin.beta", 0.0),), label="InfoMin, jigsaw weight 0",
            of="infomin", question="With the jigsaw loss off, does InfoMin learn as MoCo v2 + "
                                   "InfoMin Aug does?"),
        "infomin_t02": Entry(
            "infomin", overrides=(("moco.temperature", 0.2),), label="InfoMin, T 0.2",
            of="infomin", question="Is InfoMin's failure to learn its temperature 0.15 (MoCo v2 + "
                                   "InfoMin Aug learns at T 0.2)?"),
        "infomin_t02_no_jigsaw": Entry(
            "infomin", overrides=(("moco.temperature", 0.2), ("infomin.beta", 0.0)),
            label="InfoMin, T 0.2, jigsaw weight 0", of="infomin",
            question="With MoCo v2 + InfoMin Aug's objective (T 0.2, no jigsaw term) on "
                     "InfoMin's network, does InfoMin learn as that row does?"),
        "moco_infomin_aug_t015": Entry(
            "moco", "fashion_mnist,infomin_aug", overrides=(("moco.temperature", 0.15),),
            label="MoCo v2 + InfoMin Aug, T 0.15", of="moco_infomin_aug",
            question="Does InfoMin's temperature 0.15 alone stop MoCo v2 + InfoMin Aug "
                     "learning?"),
        "moco_infomin_aug_jitter04": Entry(
            "moco", "fashion_mnist,infomin_aug",
            overrides=(("data.augment.brightness", 0.4), ("data.augment.contrast", 0.4),
                       ("data.augment.saturation", 0.4), ("data.augment.hue", 0.1)),
            label="MoCo v2 + InfoMin Aug, MoCo v2's jitter 0.4", of="moco_infomin_aug",
            question="Is it InfoMin Aug's RandAugment (n 2, m 10) or its stronger colour "
                     "jitter (0.8 against MoCo v2's 0.4) that slows MoCo v2 at 28 px?"),
        "infomin_m5": Entry(
            "infomin", overrides=(("data.augment.randaugment_m", 5.0),),
            label="InfoMin, RandAugment m 5", of="infomin",
            question="Does InfoMin (Aug + jigsaw) learn at 28 px with RandAugment at half its "
                     "magnitude (m 5 against 10: translations of about 23% of the side, not 45%)?"),
        "moco_infomin_aug_m5": Entry(
            "moco", "fashion_mnist,infomin_aug", overrides=(("data.augment.randaugment_m", 5.0),),
            label="MoCo v2 + InfoMin Aug, RandAugment m 5", of="moco_infomin_aug",
            question="Does a milder RandAugment (m 5) let MoCo v2 + InfoMin Aug catch up with "
                     "MoCo v2's own augmentation at 28 px?"),
        "metamask_no_meta": Entry(
            "metamask", overrides=(("metamask.meta_grad", "none"),),
            label="MetaMask, no meta-learned mask", of="metamask",
            question="Is MetaMask's gain over Barlow Twins its meta-learned mask, or the SimCLR "
                     "head (weight 10) and recipe it adds? (The official --disable-meta: the "
                     "mask fixed at ones.)"),
        "ce_crop08": Entry(
            "ce", overrides=(("data.augment.crop_scale", (0.8, 1.0)),),
            label="Cross-entropy, crop scale 0.8-1", supervised=True, of="ce",
            question="Is cross-entropy's shortfall from 92% the strong crop (scale 0.2-1) at "
                     "8 epochs?"),
    },
    claims=(
        Claim("SelfCon", "SelfCon-S beats SupCon", "selfcon", ("supcon",)),
        Claim("SelfCon", "SelfCon-S beats cross-entropy", "selfcon", ("ce",)),
        Claim("MetaMask", "MetaMask beats Barlow Twins", "metamask", ("barlow_twins",)),
        Claim("CorInfoMax", "CorInfoMax beats Barlow Twins and VICReg", "corinfomax",
              ("barlow_twins", "vicreg")),
        Claim("InfoMin", "InfoMin Aug beats MoCo v2's augmentation (both MoCo v2)",
              "moco_infomin_aug", ("moco",)),
        Claim("MRCL", "MRCL beats masking only, reconstruction only and SimCLR", "mrcl",
              ("mrcl_masking_only", "mrcl_reconstruction_only", "simclr")),
        Claim("MRCL", "MRCL's segmentation mIoU beats masking only's, reconstruction only's "
              "and SimCLR's", "mrcl", ("mrcl_masking_only", "mrcl_reconstruction_only",
                                       "simclr"), metric="segmentation_miou"),
    ),
    raw_pixels_linear=84.54,
    margin_methods=("simclr", "byol", "barlow_twins", "vicreg", "corinfomax", "metamask"),
)

SUITES = {s.name: s for s in (FASHION_MNIST,)}
# The order runs are taken in: the cheaper methods first, so a session's first hours cover
# most; MetaMask (a second-order step, about 80 min on 2 cores) last.
DEFAULT_ORDER = ("simclr", "corinfomax", "barlow_twins", "vicreg", "byol", "moco", "ce",
                 "selfcon", "supcon", "mrcl", "infomin", "moco_infomin_aug",
                 "mrcl_masking_only", "mrcl_reconstruction_only", "metamask")


# ---- Running ---------------------------------------------------------------------------------
def _override_arg(key: str, value: Any) -> str:
    if isinstance(value, tuple):
        value = "(" + ",".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return f"--config.{key}={value}"


def command(suite: Suite, method: str, seed: int, workdir: str) -> list[str]:
    """The ``ssljax.main`` command of one run (what the JSONL's ``command`` records)."""
    entry = suite.entries[method]
    args = ["python", "-m", "ssljax.main", f"--config=configs/{entry.config}.py:{entry.variant}",
            f"--workdir={workdir}", f"--config.seed={seed}"]
    args += [_override_arg(k, v) for k, v in suite.protocol]
    args += [_override_arg(k, v) for k, v in entry.overrides]
    return args


def git_commit() -> str:
    def git(*a):
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()
    sha = git("rev-parse", "--short=12", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "ssljax", "configs")
    return sha + ("-dirty" if dirty else "")


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        name = re.search(r"model name\s*:\s*(.*)", text)
        family = re.search(r"cpu family\s*:\s*(\d+)", text)
        flags = re.search(r"flags\s*:\s*(.*)", text)
        model = name.group(1).strip() if name else model
        if family:
            model += f" (family {family.group(1)}"
            model += ", AVX-512)" if flags and "avx512f" in flags.group(1).split() else ")"
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def read_rows(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SystemExit(f"error: line {n} of {path} is not JSON ({e}); fix or delete "
                                 "that line and run again.") from None
    return rows


def append_row(path: str, row: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def done(rows: list[dict], suite: Suite, method: str, seed: int) -> bool:
    return any(r["method"] == method and r["seed"] == seed and r["protocol"] == suite.protocol_id
               for r in rows)


def _base_row(suite: Suite, method: str, seed: int, cmd: str) -> dict:
    return {"suite": suite.name, "protocol": suite.protocol_id, "method": method, "seed": seed,
            "epochs": suite.epochs, "commit": git_commit(), "command": cmd,
            "machine": machine(), "date": datetime.datetime.now().isoformat(timespec="seconds")}


def run_method(suite: Suite, method: str, seed: int, workroot: str) -> dict:
    """Pre-train and evaluate one (method, seed) in its own process; the JSONL row."""
    workdir = os.path.join(workroot, suite.name, f"{method}_s{seed}")
    os.makedirs(workdir, exist_ok=True)
    shown = os.path.relpath(workdir, REPO)  # the recorded command runs from the repository root
    args = command(suite, method, seed, workdir if shown.startswith("..") else shown)
    results_path = os.path.join(workdir, "results.json")
    if os.path.exists(results_path):
        # Finished, but the runner stopped before it wrote the row: record it from the run's
        # own files (wall time: pre-training plus evaluation, start-up not included).
        print(f"[benchmark] {method} seed {seed}: finished in {workdir}; recording it.")
        with open(results_path) as f:
            res = json.load(f)
        row = _base_row(suite, method, seed, shlex.join(args))
        # The commit that was HEAD when the run wrote its config (uncommitted changes unknown).
        started = os.path.getmtime(os.path.join(workdir, "config.json"))
        row["commit"] = subprocess.run(
            ["git", "log", "-1", f"--before={int(started)}", "--format=%h"], cwd=REPO,
            capture_output=True, text=True).stdout.strip() + "?"
        wall = (res.get("train_time_s") or 0) + (res.get("eval_time_s") or 0)
        row["recovered"] = True
    else:
        row, res, wall = _run(suite, method, seed, workdir, args)
    row.update(wall_s=round(wall, 1), train_s=res.get("train_time_s"),
               eval_s=res.get("eval_time_s"),
               linear_top1=res["linear_probe_top1"], knn_top1=res["knn_top1"],
               effective_rank=res.get("effective_rank"),
               online_probe_top1=res.get("online_probe_top1"))
    images_per_sec = _images_per_sec(workdir)
    if images_per_sec:
        row["images_per_sec"] = images_per_sec
    extras = {k: v for k, v in res.items()
              if k.startswith(("subnet", "ensemble", "segmentation"))}
    row.update(extras)
    return row


def _run(suite: Suite, method: str, seed: int, workdir: str, args: list[str]):
    resumed = os.path.isdir(os.path.join(workdir, "checkpoints")) and any(
        n.isdigit() for n in os.listdir(os.path.join(workdir, "checkpoints")))
    print(f"[benchmark] {method} seed {seed}: {shlex.join(args)}", flush=True)
    row = _base_row(suite, method, seed, shlex.join(args))  # the commit the run starts from
    row["resumed"] = resumed
    t0 = time.time()
    with open(os.path.join(workdir, "log.txt"), "a") as log:
        proc = subprocess.run([sys.executable] + args[1:], cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{method} seed {seed} failed with status {proc.returncode}; see "
                           f"{workdir}/log.txt (run the benchmark again to resume it).")
    with open(os.path.join(workdir, "results.json")) as f:
        res = json.load(f)
    # A resumed run: add the pre-training time of the segments before this process.
    return row, res, wall + (res.get("train_time_earlier_s") or 0)


def _images_per_sec(workdir: str) -> float | None:
    """The pre-training throughput of the run's last logged step (metrics.jsonl)."""
    path = os.path.join(workdir, "metrics.jsonl")
    rate = None
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                rate = json.loads(line).get("images_per_sec", rate)
    return round(rate, 1) if rate else None


def baseline_rows(suite: Suite, seed: int) -> list[dict]:
    """Raw pixels and the random encoder (the protocol's backbone, untrained), same probes."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from ssljax import train
    config = load_config(suite, "simclr", seed)
    t0 = time.time()
    scores = train.baseline_scores(config)
    wall = round(time.time() - t0, 1)
    cmd = shlex.join(["python", "-m", "ssljax.benchmark", f"--suite={suite.name}",
                      f"--seeds={seed}", "--methods", "baselines"])
    rows = []
    for name in BASELINES:
        row = _base_row(suite, name, seed, cmd)
        row.update(wall_s=wall, linear_top1=scores[f"{name}_linear_probe_top1"],
                   knn_top1=scores[f"{name}_knn_top1"],
                   effective_rank=scores.get(f"{name}_effective_rank"))
        rows.append(row)
    return rows


def load_config(suite: Suite, method: str, seed: int):
    """The resolved config of a run (the variant plus the protocol and the entry's overrides)."""
    import importlib.util
    entry = suite.entries[method]
    spec = importlib.util.spec_from_file_location(
        f"_bench_cfg_{entry.config}", os.path.join(REPO, "configs", f"{entry.config}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(entry.variant)
    for key, value in tuple(suite.protocol) + tuple(entry.overrides):
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    c.seed = seed
    return c


# ---- Reporting -------------------------------------------------------------------------------
def _stats(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return mean, std


def _fmt(mean: float, std: float, n: int) -> str:
    return f"{mean:.2f}" if n < 2 else f"{mean:.2f} ± {std:.2f}"


def summarise(suite: Suite, rows: list[dict]) -> dict[str, dict]:
    """Per method: seeds, mean and std of each metric (rows of this protocol only)."""
    out = {}
    for name in BASELINES + tuple(suite.entries):
        mine = [r for r in rows if r["method"] == name and r["protocol"] == suite.protocol_id]
        if not mine:
            continue
        by_seed = {r["seed"]: r for r in mine}  # a rerun of a seed replaces the older row
        rs = [by_seed[s] for s in sorted(by_seed)]
        s = {"seeds": sorted(by_seed), "n": len(rs), "rows": rs}
        for metric in ("linear_top1", "knn_top1", "effective_rank", "wall_s",
                       "segmentation_miou"):
            vals = [r[metric] for r in rs if r.get(metric) is not None]
            if vals:
                s[metric] = _stats(vals)
        out[name] = s
    return out


def claim_verdict(summary: dict, claim: Claim) -> tuple[str, str]:
    """(verdict, evidence): 'supported', 'contradicted', 'cannot separate' or 'not run yet'.

    With 3 seeds on each side, mean ± one standard deviation intervals: apart and in the
    claimed order supports, apart the other way contradicts, overlapping cannot separate.
    With fewer, 'needs 3 seeds' and the figures so far.
    """
    names = (claim.better,) + claim.than
    if any(claim.metric not in summary.get(n, {}) for n in names):
        return "not run yet", ""

    def figure(name: str) -> str:
        s = summary[name]
        return f"{_fmt(*s[claim.metric], s['n'])} ({name}, {s['n']} seed{'s' * (s['n'] > 1)})"

    fewest = min(summary[n]["n"] for n in names)
    if fewest < 3:
        return "needs 3 seeds", "; ".join(f"{figure(claim.better)} vs {figure(o)}"
                                          for o in claim.than)
    b_mean, b_std = summary[claim.better][claim.metric]
    verdicts, evidence = [], []
    for other in claim.than:
        o_mean, o_std = summary[other][claim.metric]
        evidence.append(f"{b_mean:.2f} ± {b_std:.2f} vs {o_mean:.2f} ± {o_std:.2f} ({other})")
        if b_mean - b_std > o_mean + o_std:
            verdicts.append("supported")
        elif b_mean + b_std < o_mean - o_std:
            verdicts.append("contradicted")
        else:
            verdicts.append("cannot separate")
    verdict = verdicts[0] if len(set(verdicts)) == 1 else "; ".join(
        f"{v} vs {o}" for v, o in zip(verdicts, claim.than))
    return verdict, "; ".join(evidence)


def table_lines(suite: Suite, summary: dict) -> list[str]:
    raw = summary.get("raw_pixels", {}).get("linear_top1", (float("nan"),))[0]
    lines = ["| method | seeds | linear probe % | kNN % | vs raw pixels (linear) | effective rank "
             "| wall time (min) | target |",
             "|---|---|---|---|---|---|---|---|"]
    for name in BASELINES + suite.methods:
        if name not in summary:
            continue
        s = summary[name]
        entry = suite.entries.get(name)
        label = entry.label if entry else name.replace("_", " ")
        lin, knn = s["linear_top1"], s["knn_top1"]
        rank = s.get("effective_rank", (float("nan"), 0))
        wall = s.get("wall_s", (float("nan"), 0))
        delta = "" if name in BASELINES else f"{lin[0] - raw:+.2f}"
        lines.append(f"| {label} | {','.join(map(str, s['seeds']))} | {_fmt(*lin, s['n'])} "
                     f"| {_fmt(*knn, s['n'])} | {delta} | {rank[0]:.1f} | {wall[0] / 60:.1f} "
                     f"| {target(suite, name, s, raw)} |")
    return lines


def target(suite: Suite, name: str, s: dict, raw: float) -> str:
    """The issue's per-method target and whether the mean meets it."""
    if name in BASELINES or math.isnan(raw):
        return ""
    lin = s["linear_top1"][0]
    ce_name, ce_target = suite.supervised_target
    if name == ce_name:
        return f"≥ {ce_target:.0f}: {'met' if lin >= ce_target else 'short'}"
    if suite.entries[name].supervised:
        return ""
    need = raw + (suite.margin if name in suite.margin_methods else 0.0)
    sign = f"raw + {suite.margin:.0f}" if name in suite.margin_methods else "> raw"
    return f"{sign}: {'met' if lin > need else 'short'}"


def diagnostics_lines(suite: Suite, summary: dict) -> list[str]:
    """The diagnostic runs beside the entry each varies (its mean over the same seeds' rows)."""
    ran = [n for n in suite.diagnostics if n in summary]
    if not ran:
        return []
    lines = ["| run | linear probe % | kNN % | vs its method (linear, kNN) | effective rank "
             "| wall time (min) | question |",
             "|---|---|---|---|---|---|---|"]
    for name in ran:
        s, entry = summary[name], suite.entries[name]
        lin, knn = s["linear_top1"], s["knn_top1"]
        base = summary.get(entry.of)
        delta = "not run" if base is None else (
            f"{lin[0] - base['linear_top1'][0]:+.2f}, {knn[0] - base['knn_top1'][0]:+.2f} "
            f"(vs {suite.entries[entry.of].label})")
        rank = s.get("effective_rank", (float("nan"), 0))
        wall = s.get("wall_s", (float("nan"), 0))
        lines.append(f"| {entry.label} (seeds {','.join(map(str, s['seeds']))}) "
                     f"| {_fmt(*lin, s['n'])} | {_fmt(*knn, s['n'])} | {delta} | {rank[0]:.1f} "
                     f"| {wall[0] / 60:.1f} | {entry.question} |")
    return lines


def claims_lines(suite: Suite, summary: dict) -> list[str]:
    lines = ["| paper | claim | metric | verdict (mean ± std over seeds) | evidence |",
             "|---|---|---|---|---|"]
    for c in suite.claims:
        verdict, evidence = claim_verdict(summary, c)
        lines.append(f"| {c.paper} | {c.statement} | {c.metric} | {verdict} | {evidence} |")
    return lines


def report(suite: Suite, rows: list[dict], *, out_dir: str = RESULTS_DIR) -> str:
    """Writes ``<suite>.md`` and ``<suite>.png`` from the rows; the README's table too when
    ``out_dir`` is the committed ``experiments/benchmark``."""
    summary = summarise(suite, rows)
    md_path = os.path.join(out_dir, f"{suite.name}.md")
    notes = kept_notes(md_path)
    protocol = ", ".join(f"`{k}={_jsonable(v)}`" for k, v in suite.protocol)
    body = [f"# Benchmark: {suite.name}", "",
            "Generated by `python -m ssljax.benchmark --suite "
            f"{suite.name} --report` from `{suite.name}.jsonl`; edit only the Notes.", "",
            f"Protocol `{suite.protocol_id}` ({suite.epochs:g} epochs): {protocol}.", "",
            "Each method's own hyper-parameters are its `configs/<method>.py:fashion_mnist` "
            "variant; the exact command of every run is in the JSONL (`command`). "
            "Mean ± standard deviation over the seeds listed.", ""]
    body += table_lines(suite, summary)
    body += ["", "## The papers' claims", ""] + claims_lines(suite, summary)
    diagnostics = diagnostics_lines(suite, summary)
    if diagnostics:
        body += ["", "## Diagnostic runs", "",
                 "Variants of one method, each asking why it falls short; the same protocol and "
                 f"probes (`--methods {' '.join(suite.diagnostics)}`).", ""] + diagnostics
    body += ["", "![bar chart](" + f"{suite.name}.png)", ""]
    body += notes or ["## Notes", "", "(none yet)"]
    os.makedirs(out_dir, exist_ok=True)
    with open(md_path, "w") as f:
        f.write("\n".join(body).rstrip() + "\n")
    chart(suite, summary, os.path.join(out_dir, f"{suite.name}.png"))
    readme = os.path.join(REPO, "README.md")
    if os.path.abspath(out_dir) == os.path.abspath(RESULTS_DIR) and os.path.exists(readme):
        _update_readme(readme, suite, summary)
    return md_path


def kept_notes(path: str) -> list[str]:
    """Lines of the ``## Notes`` section of the report at ``path``, heading included."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        text = f.read()
    i = text.find("\n## Notes")
    return text[i:].strip("\n").split("\n") if i >= 0 else []


def chart(suite: Suite, summary: dict, path: str) -> None:
    """Linear-probe and kNN top-1 per method, error bars one standard deviation."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[benchmark] matplotlib is not installed (pip install -e '.[plot]'): no chart.")
        return
    names = [n for n in BASELINES + suite.methods if n in summary]
    if not names:
        return
    labels = [suite.entries[n].label if n in suite.entries else n.replace("_", " ")
              for n in names]
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(names) + 2), 4.2))
    xs = range(len(names))
    for k, (metric, name) in enumerate((("linear_top1", "linear probe"), ("knn_top1", "kNN"))):
        means = [summary[n][metric][0] for n in names]
        stds = [0 if summary[n]["n"] < 2 else summary[n][metric][1] for n in names]
        ax.bar([x + (k - 0.5) * 0.38 for x in xs], means, 0.38, yerr=stds, capsize=3, label=name)
    raw = summary.get("raw_pixels", {}).get("linear_top1")
    if raw:
        ax.axhline(raw[0], color="gray", ls="--", lw=1, label="raw pixels, linear")
    lo = min(min(summary[n]["linear_top1"][0], summary[n]["knn_top1"][0]) for n in names)
    ax.set_ylim(max(0, math.floor(lo / 5) * 5 - 5), 100)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"ssljax benchmark, {suite.name}, {suite.epochs:g} epochs "
                 f"(protocol {suite.protocol_id})", fontsize=9)
    ax.legend(fontsize=8, loc="upper right", ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _update_readme(path: str, suite: Suite, summary: dict) -> None:
    start, end = f"<!-- benchmark:{suite.name}:start -->", f"<!-- benchmark:{suite.name}:end -->"
    with open(path) as f:
        text = f.read()
    if start not in text or end not in text:
        return
    block = [start, "", *table_lines(suite, summary), "", "The papers' claims:", "",
             *claims_lines(suite, summary), "", end]
    i, j = text.index(start), text.index(end) + len(end)
    with open(path, "w") as f:
        f.write(text[:i] + "\n".join(block) + text[j:])


def _move_aside(workdir: str) -> None:
    """Keeps an earlier run's workdir (renamed with the time) so that --force starts afresh."""
    if os.path.exists(workdir):
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        os.rename(workdir, f"{workdir}.before-{stamp}")
        print(f"[benchmark] moved the earlier run to {workdir}.before-{stamp}")


# Keys that change how a run is computed or logged, not its result: an unfinished run that
# differs from the config only in these is the same run.
_HOW_KEYS = ("log_every", "checkpoint_every", "keep_checkpoints", "data.data_dir",
             "data.tf_threads", "sharding.*", "model.attention", "model.remat")


def _interrupted_run_of(workdir: str, config) -> bool:
    """Whether ``workdir`` holds an unfinished run of this very config (no ``results.json``;
    its run record equals ``config`` in every key but :data:`_HOW_KEYS`, learning rates
    included, which a resume may change but a recipe change must not keep): ``--force``
    resumes it instead of starting again, so a forced rerun stopped by the end of a session
    continues."""
    import fnmatch

    from ssljax import workdir as workdir_lib
    if os.path.exists(os.path.join(workdir, "results.json")):
        return False
    try:
        with open(os.path.join(workdir, workdir_lib.RUN_RECORD)) as f:
            first = json.load(f)["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    changed = workdir_lib.differences(first, workdir_lib.config_record(config))
    return all(any(fnmatch.fnmatchcase(k, p) for p in _HOW_KEYS) for k in changed)


def _log_progress() -> None:
    """The trainer's progress lines (the baselines run in this process) on stderr."""
    import logging
    logger = logging.getLogger("ssljax")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


# ---- Command line ----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ssljax.benchmark", description=__doc__.split("\n")[0])
    p.add_argument("--suite", default="fashion_mnist", choices=sorted(SUITES))
    p.add_argument("--methods", nargs="+", default=None,
                   help="methods to run (default: all, cheapest first); 'baselines' for the "
                        "raw-pixel and random-encoder rows")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--workroot", default=os.path.join(REPO, "runs", "benchmark"))
    p.add_argument("--results", default=None, help="the JSONL (default experiments/benchmark/<suite>.jsonl)")
    p.add_argument("--report", action="store_true", help="only regenerate the table and chart")
    p.add_argument("--dry-run", action="store_true",
                   help="print each row's command (the one that reproduces it), run nothing")
    p.add_argument("--force", action="store_true",
                   help="run even where the ledger has the row (after a recipe change); the "
                        "new row supersedes the old one, whose workdir is moved aside (an "
                        "unfinished run of the same config is resumed instead)")
    args = p.parse_args(argv)
    suite = SUITES[args.suite]
    results = args.results or os.path.join(RESULTS_DIR, f"{suite.name}.jsonl")
    methods = args.methods or ["baselines", *DEFAULT_ORDER]  # diagnostics only when named
    unknown = [m for m in methods if m != "baselines" and m not in suite.entries]
    if unknown:
        print(f"error: unknown method(s) {', '.join(unknown)} for suite {suite.name}; choose "
              f"from baselines, {', '.join(suite.entries)}.", file=sys.stderr)
        return 2
    rows = read_rows(results)
    _log_progress()
    if args.report:
        print(report(suite, rows, out_dir=os.path.dirname(os.path.abspath(results))))
        return 0
    for seed in args.seeds:
        for method in methods:
            key = "raw_pixels" if method == "baselines" else method
            if args.dry_run:  # the command of the row, run or not
                workdir = os.path.join("runs", "benchmark", suite.name, f"{method}_s{seed}")
                print(shlex.join(command(suite, method, seed, workdir))
                      if method != "baselines" else shlex.join(
                          ["python", "-m", "ssljax.benchmark", f"--suite={suite.name}",
                           f"--seeds={seed}", "--methods", "baselines"]))
                continue
            if done(rows, suite, key, seed) and not args.force:
                print(f"[benchmark] {method} seed {seed}: already in {results}, skipped.")
                continue
            if args.force and method != "baselines":
                workdir = os.path.join(args.workroot, suite.name, f"{method}_s{seed}")
                if _interrupted_run_of(workdir, load_config(suite, method, seed)):
                    print(f"[benchmark] {method} seed {seed}: resuming the unfinished run of "
                          f"this config in {workdir}.")
                else:
                    _move_aside(workdir)
            new = (baseline_rows(suite, seed) if method == "baselines"
                   else [run_method(suite, method, seed, args.workroot)])
            for row in new:
                append_row(results, row)
                rows.append(row)
                print(f"[benchmark] {row['method']} seed {seed}: linear {row['linear_top1']}%, "
                      f"kNN {row['knn_top1']}%, {row['wall_s']:.0f}s", flush=True)
            report(suite, rows, out_dir=os.path.dirname(os.path.abspath(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

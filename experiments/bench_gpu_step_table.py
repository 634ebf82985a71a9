"""The README's GPU table from experiments/bench_gpu_step.jsonl (the last row of each label).

  python experiments/bench_gpu_step_table.py [experiments/bench_gpu_step.jsonl]
"""

from __future__ import annotations

import json
import sys

ROWS = (  # backbone, ssljax label, PyTorch eager label, torch.compile label
    ("ResNet-50", "resnet50_simclr", "torch_resnet50_eager", "torch_resnet50_compile"),
    ("ViT-B/16", "vitb16_simclr", "torch_vitb16_eager", "torch_vitb16_compile"),
)
EXTRA = ("vitb16_mrcl_mask50", "vitb16_simclr_reference_attention", "vitb16_simclr_remat")


def _cell(row: dict | None, memory: str) -> str:
    if row is None:
        return "-"
    text = f"{row['ex_per_s']:,.0f}"
    mfu = row.get("mfu", row.get("mfu_analytic"))
    if mfu:
        text += f", {100 * mfu:.0f}% MFU"
    gib = row.get(memory, row.get("mem_gib"))
    if gib:
        text += f", {gib:.0f} GiB"
    return text


def table(rows: list[dict]) -> str:
    """Markdown: examples/s (MFU, ssljax's temporaries / the peers' peak memory) per backbone."""
    last = {r.get("label"): r for r in rows}
    out = ["| backbone | ssljax | PyTorch eager | torch.compile | ssljax / compile |",
           "| --- | --- | --- | --- | --- |"]
    for name, ours, eager, compiled in ROWS:
        a, e, c = last.get(ours), last.get(eager), last.get(compiled)
        ratio = f"{a['ex_per_s'] / c['ex_per_s']:.2f}x" if a and c else "-"
        out.append(f"| {name} | {_cell(a, 'temp_gib')} | {_cell(e, 'mem_gib')} | "
                   f"{_cell(c, 'mem_gib')} | {ratio} |")
    for label in EXTRA:
        if label in last:
            out.append(f"| {label} | {_cell(last[label], 'temp_gib')} | | | |")
    device = next((r["device"] for r in rows if r.get("device")), "?")
    commit = next((r["commit"] for r in rows if r.get("impl") == "ssljax"), "?")
    return "\n".join(out) + f"\n\n{device}, commit {commit}; ssljax memory: compiled temporaries."


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else "experiments/bench_gpu_step.jsonl"
    with open(path) as f:
        print(table([json.loads(line) for line in f if line.strip()]))

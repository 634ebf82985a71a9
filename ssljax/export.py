"""Command line: export a run's trained encoder to one safetensors file.

  python -m ssljax.export --workdir runs/simclr [--step 1200] --out simclr.safetensors \
      [--projector]

The file holds the arrays the run's evaluation reads (the backbone's parameters and
BatchNorm statistics; MetaMask's mask; a multi-exit network's exits) and, as JSON metadata
in its header, the architecture (the run's config), the preprocessing and the tree
structure; ``--projector`` adds the projector head. ``ssljax.load_encoder(FILE)`` restores
it without the workdir or a config file. The workdir is only read.

Exit statuses: 0 written, 2 bad input (one sentence on stderr).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssljax.export", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--workdir", required=True,
                        help="the run's workdir (local or gs://), or a checkpoint step directory")
    parser.add_argument("--step", type=int, default=None,
                        help="the checkpoint's step (default: the newest complete one)")
    parser.add_argument("--out", required=True, help="the file to write (.safetensors)")
    parser.add_argument("--projector", action="store_true",
                        help="also export the projector head (Encoder.project)")
    args = parser.parse_args(argv)
    from ssljax import encoder as enc
    from ssljax.config import ConfigError
    try:
        out = str(args.out)
        if out.endswith("/") or (os.path.isdir(out) if "://" not in out else False):
            raise ConfigError(f"--out={out} is a folder; name the file to write, e.g. "
                              f"--out={os.path.join(out, 'encoder.safetensors')}.")
        source = enc.resolve(args.workdir, args.step)
        if source.kind == "file":
            raise ConfigError(f"{args.workdir} is already an exported file; pass the run's "
                              "workdir to --workdir.")
        encoder = enc.load_encoder(args.workdir, step=args.step, projector=args.projector)
        enc.export_encoder(encoder, out)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Wrote {out}: {encoder.config.method} at step {encoder.step} "
          f"({sum(x.size for x in __import__('jax').tree.leaves(encoder.params))} parameters).")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Runs the PyTorch peer (../shared/bench/torch_simclr_step.py) with its stem conv at stride S.

  TORCH_PYTHON experiments/peer_stem_stride.py --stem-stride 2 [the peer's own arguments]

The peer's ResNet-18 has a fixed stride-1 3x3 stem; the main job's CPU config uses stride 2.
This wrapper loads the peer's file unchanged, sets the stride of its stem convolution after
the model is built, and runs the peer's ``main()`` with the remaining arguments, so the two
steps can be compared at the main job's geometry (experiments/bench_peer.sh).
"""

import importlib.util
import pathlib
import sys

PEER = pathlib.Path(__file__).resolve().parents[2] / "shared" / "bench" / "torch_simclr_step.py"


def main() -> None:
    args = sys.argv[1:]
    stride = 2
    if "--stem-stride" in args:
        i = args.index("--stem-stride")
        stride = int(args[i + 1])
        del args[i:i + 2]
    if not PEER.exists():
        sys.exit(f"No PyTorch peer at {PEER}; it lives in the shared folder next to the repository.")
    spec = importlib.util.spec_from_file_location("torch_simclr_step", PEER)
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)

    build = peer.ResNet18.__init__

    def build_with_stride(self, *a, **k):
        build(self, *a, **k)
        self.stem[0].stride = (stride, stride)

    peer.ResNet18.__init__ = build_with_stride
    sys.argv = [str(PEER), *args]
    peer.main()


if __name__ == "__main__":
    main()

"""A PNG grid of augmented view pairs, so a person can check the augmentations by eye.

  python experiments/show_views.py [--dataset=coloured_fashion_mnist] [--num=6]
      [--out=experiments/show_views.png] [--size=28]

Rows are test images; columns: the original, a SimCLR pair (configs/simclr.py's CIFAR
recipe: crop 0.08-1, flip, jitter (0.4, 0.4, 0.4, 0.1) p 0.8, grayscale p 0.2), an InfoMin
Aug pair (configs/infomin.py: crop 0.2-1, flip, jitter (0.8, 0.8, 0.8, 0.2) p 0.8,
RandAugment n 2 m 10, grayscale p 0.2; no blur at 28 pixels), and the jigsaw view (the 9
patches in grid order, with gaps). Masked views (MRCL) are drawn when the pipeline provides
them (``ssljax.data.masking``). The views are produced by the training pipeline's own
functions (``sample_params`` / ``apply_params``, ``sample_jigsaw`` / ``jigsaw_patches``).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

_DATASET = flags.DEFINE_string("dataset", "coloured_fashion_mnist", "An in-memory dataset.")
_NUM = flags.DEFINE_integer("num", 6, "Images (rows).")
_SIZE = flags.DEFINE_integer("size", 28, "View size.")
_OUT = flags.DEFINE_string("out", "experiments/show_views.png", "Output PNG.")


def main(argv):
    del argv
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import tensorflow as tf

    from ssljax import data
    from ssljax.data import augment as aug
    from ssljax.data import infomin_aug

    info = data.dataset_info(_DATASET.value)
    images, labels = data.load_arrays(_DATASET.value, f"test[:{max(_NUM.value, 8)}]")
    n = _NUM.value
    simclr = data.AugmentConfig(crop_scale=(0.08, 1.0))
    infomin = data.AugmentConfig(crop_scale=(0.2, 1.0), brightness=0.8, contrast=0.8,
                                 saturation=0.8, hue=0.2, randaugment_n=2)
    size = _SIZE.value
    jig = infomin_aug.JigsawConfig(size=30 if size <= 32 else 255, patch=8 if size <= 32 else 64)

    x = tf.constant(images[:n].astype(np.float32) / 255.0)

    def pair(augment, seed):
        # The pipeline's own functions: per-example parameters from a stateless seed.
        return [aug.apply_params(x, aug.sample_params(tf.constant([seed, v]), n,
                                                      tuple(images.shape[1:]), augment),
                                 size).numpy() for v in range(2)]

    s1, s2 = pair(simclr, 1)
    i1, i2 = pair(infomin, 2)
    jig_view = infomin_aug.jigsaw_patches(
        x, infomin_aug.sample_jigsaw(tf.constant([3, 0]), n, images.shape[1], images.shape[2],
                                     jig), jig).numpy()
    columns = [("original", x.numpy()), ("SimCLR 1", s1), ("SimCLR 2", s2),
               ("InfoMin Aug 1", i1), ("InfoMin Aug 2", i2), ("jigsaw (3x3)", jig_view)]
    try:
        from ssljax.data import masking  # MRCL's masked views, when the pipeline has them
        columns.append(("masked", masking.show_mask(x).numpy()))
    except (ImportError, AttributeError):
        pass

    fig, axes = plt.subplots(n, len(columns), figsize=(1.6 * len(columns), 1.6 * n))
    gray = images.shape[-1] == 1
    for r in range(n):
        for c, (title, views) in enumerate(columns):
            ax = axes[r, c]
            ax.axis("off")
            if r == 0:
                ax.set_title(title, fontsize=8)
            img = views[r]
            if img.ndim == 4:  # jigsaw patches [9, P, P, C] -> a 3x3 mosaic with 1-pixel gaps
                p = img.shape[1]
                mosaic = np.ones((3 * p + 2, 3 * p + 2, img.shape[-1]))
                for k in range(9):
                    i, j = divmod(k, 3)
                    mosaic[i * (p + 1):i * (p + 1) + p, j * (p + 1):j * (p + 1) + p] = img[k]
                img = mosaic
            ax.imshow(img[..., 0] if gray else img, cmap="gray" if gray else None, vmin=0,
                      vmax=1)
    fig.tight_layout()
    fig.savefig(_OUT.value, dpi=120)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)

"""Writes the Colab notebooks of this folder from the cell sources below.

  python experiments/notebooks/make_notebooks.py

The notebooks are committed (Colab opens them from GitHub); edit this file and re-run it
rather than editing the .ipynb files by hand, so that the four stay consistent.
``SSLJAX_NOTEBOOK_TINY=1`` shrinks every notebook to seconds (CI runs them so:
tests/test_notebooks.py).
"""

from __future__ import annotations

import os

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))
GITHUB = "ssljax/ssljax"  # owner/name of the GitHub repository the badges and clones use

INSTALL = f'''# Install ssljax: on Colab, clone the repository (configs included) and install it; in a
# checkout (or CI) use that checkout. A CPU runtime is enough for every notebook.
import os, subprocess, sys
REPO = os.environ.get("SSLJAX_REPO") or os.path.abspath(os.path.join(os.getcwd(), "..", ".."))
if not os.path.exists(os.path.join(REPO, "configs", "simclr.py")):
    REPO = "/content/ssljax"
    if not os.path.exists(REPO):
        subprocess.run(["git", "clone", "-q", "https://github.com/{GITHUB}.git", REPO], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", REPO + "[train,plot]"],
                   check=True)
sys.path[:0] = [REPO]
# Tiny settings (seconds, for CI) when SSLJAX_NOTEBOOK_TINY=1.
TINY = os.environ.get("SSLJAX_NOTEBOOK_TINY") == "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")'''


def badge(name: str) -> str:
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{GITHUB}/blob/main/experiments/"
            f"notebooks/{name})")


TRAIN_HELPERS = '''import importlib.util
import jax, numpy as np
from ssljax import data, evaluate, methods, sharding, train

def load_config(method, variant="fashion_mnist"):
    spec = importlib.util.spec_from_file_location(method, os.path.join(REPO, "configs", method + ".py"))
    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
    return module.get_config(variant)

def shrink(cfg):
    """Tiny settings for CI: a width-4 network on 16x16 images, a few steps."""
    cfg.data.image_size, cfg.model.width, cfg.model.stem_stride = 16, 4, 1
    for head in ("projector", "bt_projector", "cl_projector"):
        if head in cfg:
            cfg[head].hidden_dims, cfg[head].out_dim = (32,), 16
    cfg.batch_size = 32
    return cfg

def trainer(cfg, images, labels, total_steps, seed=0):
    """The pieces of ssljax.train, step by step: the method, the jitted step, the data."""
    info = data.dataset_info(cfg.data.name)
    method = methods.get_method(cfg.method)(cfg, num_classes=info.num_classes)
    mesh = sharding.make_mesh()
    steps = train.build_step(cfg, method, mesh, total_steps=total_steps,
                             steps_per_epoch=len(images) // cfg.batch_size)
    ds = data.make_pretrain_dataset(
        images, labels, global_batch_size=cfg.batch_size, num_views=cfg.data.num_views,
        augment=data.augment_configs(cfg.data), seed=seed, image_size=cfg.data.image_size,
        mean=info.mean, std=info.std)
    batches = data.global_iterator(ds, sharding.batch_sharding(mesh))
    first = next(batches)
    state = steps.init(train.init_key(seed), first)
    def batch_stream():
        yield first
        yield from batches
    return method, mesh, steps, state, batch_stream(), info'''


def nb_objectives():
    return [
        new_markdown_cell(f"""# 1. Self-supervised objectives as pure functions, sharded

{badge("01_objectives.ipynb")}

Every objective in `ssljax.losses` is a pure function of the *global* batch of embeddings.
This notebook evaluates them on toy embeddings (aligned pairs vs unrelated pairs), takes
their gradients, and then runs them with the batch split over 8 (fake CPU) devices: the
value is the same, and the compiled program gathers only the embeddings."""),
        new_code_cell(INSTALL),
        new_code_cell('''import jax
jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_num_cpu_devices", 8)  # 8 fake devices, before anything runs
import jax.numpy as jnp
import numpy as np
import ssljax.losses as L
print(jax.devices())'''),
        new_markdown_cell("""## Toy embeddings

Two views `z1`, `z2` of `N` examples: *aligned* pairs share a random direction plus a little
noise; *unrelated* pairs are independent. Every objective should prefer the aligned ones."""),
        new_code_cell('''N, D = (64, 16) if TINY else (512, 64)
key1, key2, key3 = jax.random.split(jax.random.key(0), 3)
base = jax.random.normal(key1, (N, D))
aligned = (base + 0.1 * jax.random.normal(key2, (N, D)), base + 0.1 * jax.random.normal(key3, (N, D)))
unrelated = (jax.random.normal(key2, (N, D)), jax.random.normal(key3, (N, D)))

objectives = {
    "nt_xent (SimCLR)": lambda a, b: L.nt_xent(a, b, temperature=0.2),
    "barlow_twins": lambda a, b: L.barlow_twins(a, b),
    "vicreg": lambda a, b: L.vicreg(a, b),
    "corinfomax": lambda a, b: L.corinfomax(a, b, L.corinfomax_init(D), sim_weight=250.0,
                                            la_R=0.01, la_mu=0.01)[0],
    "byol": lambda a, b: L.byol(a, b),
}
print(f"{'objective':20s}{'aligned':>12s}{'unrelated':>12s}")
for name, f in objectives.items():
    print(f"{name:20s}{float(f(*aligned)):12.4f}{float(f(*unrelated)):12.4f}")'''),
        new_markdown_cell("""## Gradients

They are plain JAX functions: `jax.grad` gives the gradient with respect to the embeddings.
For NT-Xent, the gradient pulls each `z1[i]` towards its positive `z2[i]`."""),
        new_code_cell('''g1 = jax.grad(lambda a: L.nt_xent(a, aligned[1], temperature=0.2))(aligned[0])
# A small step against the gradient lowers the loss.
step = aligned[0] - 1.0 * g1
print(float(L.nt_xent(aligned[0], aligned[1], temperature=0.2)),
      "->", float(L.nt_xent(step, aligned[1], temperature=0.2)))'''),
        new_markdown_cell("""## The same objectives with the batch split over 8 devices

`jax.jit` with a `NamedSharding` places rows `i*N/8 ... (i+1)*N/8` of each view on device `i`.
The objective is still written on the global batch; the compiler adds the collectives."""),
        new_code_cell('''from jax.sharding import NamedSharding, PartitionSpec as P
mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
rows = NamedSharding(mesh, P("data"))
z1, z2 = jax.device_put(aligned[0], rows), jax.device_put(aligned[1], rows)
print("z1 shards:", [s.data.shape for s in z1.addressable_shards][:3], "...")
for name, f in objectives.items():
    sharded = jax.jit(f)(z1, z2)
    single = f(*aligned)
    print(f"{name:20s} 8 devices {float(sharded):10.5f}   1 device {float(single):10.5f}")'''),
        new_code_cell('''import re
hlo = jax.jit(objectives["nt_xent (SimCLR)"]).lower(z1, z2).compile().as_text()
ops = re.findall(r"= (\\S+) (all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)\\(", hlo)
print(f"{len(ops)} collectives in the compiled NT-Xent:")
for shape, op in ops:
    print(f"  {op:16s} {shape}")
print(f"the embeddings: 2 x {N} x {D} floats; an N x N similarity matrix would be {N} x {N}")'''),
    ]


def nb_fashion_mnist():
    return [
        new_markdown_cell(f"""# 2. Pre-train SimCLR on Fashion-MNIST, evaluate with kNN, look at the embeddings

{badge("02_pretrain_fashion_mnist.ipynb")}

A CPU-sized SimCLR (narrow ResNet-18) trained step by step with the library's own pieces:
the method, the jitted sharded step, the step-indexed multi-view pipeline. Every few steps
the frozen encoder is scored with a kNN classifier; at the end, a t-SNE of the test
embeddings. On a Colab CPU runtime the default settings take a few minutes."""),
        new_code_cell(INSTALL),
        new_code_cell(TRAIN_HELPERS),
        new_code_cell('''cfg = load_config("simclr")
STEPS, EVAL_EVERY = (4, 4) if TINY else (200, 25)
N_TRAIN, N_TEST = (512, 256) if TINY else (20000, 2000)
if TINY:
    shrink(cfg)
images, labels = data.load_arrays("fashion_mnist", f"train[:{N_TRAIN}]")
test_images, test_labels = data.load_arrays("fashion_mnist", f"test[:{N_TEST}]")
method, mesh, steps, ts, batches, info = trainer(cfg, images, labels, STEPS)
print(cfg.method, cfg.model.name, "width", cfg.model.width, "batch", cfg.batch_size, "steps", STEPS)'''),
        new_code_cell('''def knn_accuracy(ts):
    embed = lambda x: method.embed(ts.params, ts.state, x)
    kw = dict(mesh=mesh, batch_size=256, mean=info.mean, std=info.std,
              image_size=cfg.data.image_size)
    tr_f, tr_y = evaluate.extract_features(embed, images, labels, **kw)
    te_f, te_y = evaluate.extract_features(embed, test_images, test_labels, **kw)
    return 100 * evaluate.knn_top1(tr_f, tr_y, te_f, te_y, k=20, temperature=0.1, num_classes=10), te_f, te_y

rng = jax.random.fold_in(jax.random.key(0), 1)
acc, feats, ys = knn_accuracy(ts)
losses, knn = [], [(0, acc)]  # step 0: the random encoder
print(f"step 0 (random encoder): kNN top-1 {acc:.1f}%")
for step in range(1, STEPS + 1):
    ts, metrics = steps.train_step(ts, next(batches), rng)
    losses.append(float(metrics["loss"]))
    if step % EVAL_EVERY == 0 or step == STEPS:
        acc, feats, ys = knn_accuracy(ts)
        knn.append((step, acc))
        print(f"step {step}: loss {losses[-1]:.3f}, kNN top-1 {acc:.1f}%")'''),
        new_code_cell('''import matplotlib.pyplot as plt
from sklearn.manifold import TSNE
xy = TSNE(n_components=2, perplexity=min(30, len(feats) // 4), init="pca",
          random_state=0).fit_transform(feats)
fig, ax = plt.subplots(1, 3, figsize=(15, 4))
ax[0].plot(range(1, STEPS + 1), losses); ax[0].set(title="NT-Xent loss", xlabel="step")
ax[1].plot(*zip(*knn), marker="o"); ax[1].set(title="kNN top-1 (%) on the test split", xlabel="step")
classes = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"]
for c in range(10):
    ax[2].scatter(*xy[ys == c].T, s=4, label=classes[c])
ax[2].set(title="t-SNE of test embeddings"); ax[2].legend(markerscale=3, fontsize=7)
plt.tight_layout(); plt.show()
print(f"kNN top-1: random encoder {knn[0][1]:.1f}% -> after {STEPS} steps {acc:.1f}%")'''),
    ]


def nb_metamask():
    return [
        new_markdown_cell(f"""# 3. MetaMask: how the learned dimensional mask evolves

{badge("03_metamask_mask.ipynb")}

MetaMask multiplies the backbone features by a mask `M = sigmoid(m)`, one entry per feature
dimension, and learns `m` by a meta-gradient: the mask should keep the dimensions that make
the contrastive loss of a *virtual* next step low. This notebook trains MetaMask on
Fashion-MNIST and records the mask after every few steps."""),
        new_code_cell(INSTALL),
        new_code_cell(TRAIN_HELPERS),
        new_code_cell('''cfg = load_config("metamask")
STEPS, RECORD_EVERY = (4, 1) if TINY else (150, 5)
if TINY:
    shrink(cfg)
    cfg.metamask.meta_grad = "first_order"  # compiles faster; the default is "exact"
images, labels = data.load_arrays("fashion_mnist", "train[:512]" if TINY else "train[:20000]")
method, mesh, steps, ts, batches, info = trainer(cfg, images, labels, STEPS)
print("meta-gradient:", cfg.metamask.meta_grad, "| batch", cfg.batch_size, "| steps", STEPS)'''),
        new_code_cell('''rng = jax.random.fold_in(jax.random.key(0), 1)
masks, losses = [np.asarray(method.mask_values(ts.state["mask"]))], []
for step in range(1, STEPS + 1):
    ts, metrics = steps.train_step(ts, next(batches), rng)
    losses.append(float(metrics["loss"]))
    if step % RECORD_EVERY == 0:
        masks.append(np.asarray(method.mask_values(ts.state["mask"])))
masks = np.stack(masks)  # [records, feature dimensions]
print("mask shape", masks.shape, "| final mask: min %.3f, mean %.3f, max %.3f"
      % (masks[-1].min(), masks[-1].mean(), masks[-1].max()))'''),
        new_code_cell('''import matplotlib.pyplot as plt
order = np.argsort(masks[-1])  # dimensions sorted by their final mask value
fig, ax = plt.subplots(1, 3, figsize=(15, 4))
im = ax[0].imshow(masks[:, order].T, aspect="auto", cmap="viridis",
                  extent=[0, STEPS, masks.shape[1], 0])
ax[0].set(title="mask M = sigmoid(m), dimensions sorted", xlabel="step", ylabel="dimension")
fig.colorbar(im, ax=ax[0])
ax[1].hist(masks[-1], bins=30); ax[1].set(title=f"final mask values (step {STEPS})")
ax[2].plot(np.arange(len(masks)) * RECORD_EVERY, masks.std(axis=1))
ax[2].set(title="spread of the mask across dimensions (std)", xlabel="step")
plt.tight_layout(); plt.show()'''),
    ]


def nb_views():
    return [
        new_markdown_cell(f"""# 4. Views: augmentations, masks and learned views

{badge("04_views.ipynb")}

What the networks see. The views of each method are stateless-random augmentations drawn
from `(seed, step, view)`; MRCL hides patches of its views; InfoMin *learns* its views.
This notebook shows (1) the augmentation recipes of the methods in `configs/`, (2) the
random and block patch masks of MRCL's masked multi-view batches, drawn by the pipeline's own
sampler, and (3) views learned by InfoMin's adversarial view generator on Coloured
Fashion-MNIST, next to fixed colour-space splits."""),
        new_code_cell(INSTALL),
        new_code_cell(TRAIN_HELPERS),
        new_code_cell('''import numpy as np, tensorflow as tf, jax.numpy as jnp
import matplotlib.pyplot as plt
from ssljax.data import masking

images, labels = data.load_arrays("fashion_mnist", "train[:8]")
x = tf.constant(images[:6], tf.float32) / 255.0
print("images", x.shape, "labels", labels[:6])'''),
        new_markdown_cell("""## Augmentations

One row per example: the original, then views 1 and 2 of each method's recipe (CorInfoMax
and VICReg use asymmetric recipes: blur and solarisation differ between the two views)."""),
        new_code_cell('''recipes = ["simclr", "corinfomax"] if TINY else ["simclr", "barlow_twins", "vicreg", "corinfomax"]
fig, axes = plt.subplots(len(x), 1 + 2 * len(recipes), figsize=(2 * (1 + 2 * len(recipes)), 2 * len(x)))
for r, name in enumerate(recipes):
    views = [data.augment_batch(x, tf.constant([0, v]), c, 28)
             for v, c in enumerate(data.augment_configs(load_config(name).data))]
    for i in range(len(x)):
        axes[i, 0].imshow(x[i, ..., 0], cmap="gray")
        for v in range(2):
            axes[i, 1 + 2 * r + v].imshow(views[v][i, ..., 0], cmap="gray", vmin=0, vmax=1)
    axes[0, 1 + 2 * r].set_title(f"{name} view 1", fontsize=8)
    axes[0, 2 + 2 * r].set_title(f"{name} view 2", fontsize=8)
axes[0, 0].set_title("original", fontsize=8)
for a in axes.flat:
    a.axis("off")
plt.tight_layout(); plt.show()'''),
        new_markdown_cell("""## MRCL's masked views

MRCL's pipeline emits, alongside the views, one boolean patch mask per view
(`ssljax.data.masking.sample_masks`: stateless-random, so the same `(seed, step)` gives the
same masks on every host). The encoder zeroes (ResNet) or drops (ViT) the hidden patches;
the decoder reconstructs them. The MRCL config's own mask comes first, then MAE's random 75% and a
block mask at 50%, of 4 x 4 patches. Hidden patches are drawn grey."""),
        new_code_cell('''mrcl = load_config("mrcl").data.mask
kinds = {f"mrcl config ({mrcl.kind}, {mrcl.ratio:.0%})": masking.mask_config_from(mrcl),
         "random 75% (MAE)": masking.MaskConfig(ratio=0.75, patch_size=4, kind="random"),
         "block 50%": masking.MaskConfig(ratio=0.5, patch_size=4, kind="block", num_blocks=2)}
fig, axes = plt.subplots(len(kinds), len(x), figsize=(2 * len(x), 2.1 * len(kinds)))
for r, (title, mc) in enumerate(kinds.items()):
    m = masking.sample_masks(tf.constant([0, 1], tf.int64), len(x), 2, 28, mc).numpy()
    pixels = masking.pixel_mask(m[:, 0], mc.patch_size)  # view 1: [B, 28, 28]
    hidden = m[:, 0].mean()
    for i in range(len(x)):
        axes[r, i].imshow(np.where(pixels[i], 0.5, x[i, ..., 0]), cmap="gray", vmin=0, vmax=1)
        axes[r, i].axis("off")
    axes[r, 0].set_title(f"{title}: {hidden:.0%} hidden", fontsize=8, loc="left")
    print(f"{title}: {hidden:.1%} of the patches of view 1 hidden")
plt.tight_layout(); plt.show()'''),
        new_markdown_cell("""## Learned views (InfoMin)

InfoMin learns the split of an image into two views: a pixel-wise invertible flow `g` maps
RGB to three channels; view 1 is channel 1, view 2 channels 2-3. Two encoders maximise
InfoNCE between the views while `g` *minimises* it (a gradient-reversal layer), so `g`
removes shared information that the task does not need. On Coloured Fashion-MNIST each
garment is tinted with a random colour: colour is a nuisance shared by all channels, the
information a good view split should drop. (This is our reading of the paper: no official
code exists; see `ssljax/methods/view_learning.py`.) Below: a short unsupervised run, then
the learned views next to the fixed YDbDr and Lab splits (luma or lightness | chroma)."""),
        new_code_cell('''cfg = load_config("infomin_views")  # unsupervised, Coloured Fashion-MNIST
STEPS = 3 if TINY else 300
if TINY:
    shrink(cfg)
rgb_images, rgb_labels = data.load_arrays("coloured_fashion_mnist", "train[:512]" if TINY else "train[:20000]")
method, mesh, steps, ts, batches, info = trainer(cfg, rgb_images, rgb_labels, STEPS)
rng = jax.random.fold_in(jax.random.key(0), 1)
i_nce = []
for step in range(1, STEPS + 1):
    ts, metrics = steps.train_step(ts, next(batches), rng)
    i_nce.append(float(metrics["i_nce"]))
print(f"I_NCE between the learned views: first step {i_nce[0]:.3f} nats, last step {i_nce[-1]:.3f} nats")'''),
        new_code_cell('''from ssljax.models.view_generator import split_views, to_color_space
test_rgb, _ = data.load_arrays("coloured_fashion_mnist", "test[:6]")
rgb = test_rgb.astype(np.float32) / 255.0
normalised = (rgb - np.asarray(info.mean)) / np.asarray(info.std)
learned, _ = method.views(ts.params["generator"], jnp.asarray(normalised))
splits = {"learned": split_views(learned),
          "YDbDr": split_views(to_color_space(jnp.asarray(rgb), "ydbdr")),
          "Lab": split_views(to_color_space(jnp.asarray(rgb), "lab"))}

def scaled(v):  # min-max over the shown images, per channel
    v = np.asarray(v)
    return (v - v.min(axis=(0, 1, 2))) / np.maximum(np.ptp(v, axis=(0, 1, 2)), 1e-8)

cols = [("original", rgb)]
for name, (v1, v2) in splits.items():
    cols.append((f"{name}: view 1", np.repeat(scaled(v1), 3, axis=-1)))
    cols.append((f"{name}: view 2 (as red, green)", np.concatenate([scaled(v2), np.zeros_like(v1)], -1)))
fig, axes = plt.subplots(len(rgb), len(cols), figsize=(1.8 * len(cols), 1.8 * len(rgb)))
for r in range(len(rgb)):
    for c, (title, imgs) in enumerate(cols):
        axes[r, c].imshow(np.clip(imgs[r], 0, 1)); axes[r, c].axis("off")
        if r == 0:
            axes[r, c].set_title(title, fontsize=7)
plt.tight_layout(); plt.show()'''),
    ]


NOTEBOOKS = {
    "01_objectives.ipynb": nb_objectives,
    "02_pretrain_fashion_mnist.ipynb": nb_fashion_mnist,
    "03_metamask_mask.ipynb": nb_metamask,
    "04_views.ipynb": nb_views,
}


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(cells=cells())
        nb.metadata.update({
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
            "colab": {"provenance": []},
        })
        nbformat.validate(nb)
        with open(os.path.join(HERE, name), "w") as f:
            nbformat.write(nb, f)
        print("wrote", name)


if __name__ == "__main__":
    main()

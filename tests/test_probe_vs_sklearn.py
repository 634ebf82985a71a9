"""The default linear probe (AdamW, ssljax/evaluate/linear.py) against an independent solver,
scikit-learn's multinomial LogisticRegression (L-BFGS, run to convergence), on fixed
features: top-1 within half a point (issue 21, item 4).

Features: synthetic Gaussian classes in 32 dimensions (6 classes, one isotropic covariance
under unequal per-feature scales and an offset, so the Bayes classifier is linear),
8,000 training and 4,000 test examples, ~79% accurate at best: the maximum-likelihood
solution is well defined and both solvers reach it (measured: 79.43 vs 79.28).

With an ill-conditioned shared covariance (a random 32 x 32 mixing of the noise) the
probe's 30 epochs (240 AdamW steps here) stay far from the optimum (56.6 vs 88.4; 71.7 after
200 epochs): the probe is a fixed-budget solver, which this test does not hide.
"""

import numpy as np
import pytest

from ssljax.evaluate import linear

sklearn_linear = pytest.importorskip("sklearn.linear_model")

DIM, CLASSES, N_TRAIN, N_TEST = 32, 6, 8000, 4000


def gaussian_classes(seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(CLASSES, DIM)) * 0.4
    scale = rng.uniform(0.2, 5.0, size=DIM)  # unequal feature scales (standardisation matters)

    def sample(n):
        y = rng.integers(0, CLASSES, size=n)
        x = (means[y] + rng.normal(size=(n, DIM))) * scale + 3.0
        return x.astype(np.float32), y.astype(np.int32)

    return sample(N_TRAIN), sample(N_TEST)


def sklearn_top1(train, test):
    (xtr, ytr), (xte, yte) = train, test
    mean, std = xtr.mean(0), xtr.std(0)
    clf = sklearn_linear.LogisticRegression(C=10.0, max_iter=2000, tol=1e-8)
    clf.fit((xtr - mean) / std, ytr)
    return 100.0 * np.mean(clf.predict((xte - mean) / std) == yte)


def test_adamw_probe_matches_logistic_regression():
    train, test = gaussian_classes()
    want = sklearn_top1(train, test)
    assert 70.0 < want < 95.0, want  # neither trivial nor hopeless: the comparison means something
    # The benchmark's probe settings (configs/*.py:fashion_mnist): AdamW lr 1e-2, wd 1e-4,
    # batch 1024, cosine; 30 epochs.
    got = linear.linear_probe(*train, *test, num_classes=CLASSES, epochs=30, lr=1e-2,
                              weight_decay=1e-4, batch_size=1024)
    assert abs(100.0 * got["top1"] - want) <= 0.5, (100.0 * got["top1"], want)

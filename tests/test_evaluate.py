"""kNN and linear probes against brute-force NumPy and separable toy data."""

import numpy as np

from ssljax import evaluate


def numpy_knn(train_f, train_y, test_f, k, t, num_classes):
    tr = train_f / np.linalg.norm(train_f, axis=1, keepdims=True)
    te = test_f / np.linalg.norm(test_f, axis=1, keepdims=True)
    preds = []
    for row in te @ tr.T:
        idx = np.argsort(-row)[:k]
        votes = np.zeros(num_classes)
        for i in idx:
            votes[train_y[i]] += np.exp(row[i] / t)
        preds.append(np.argmax(votes))
    return np.array(preds)


def test_knn_matches_brute_force_numpy():
    rng = np.random.default_rng(0)
    train_f, test_f = rng.normal(size=(300, 16)), rng.normal(size=(70, 16))
    train_y = rng.integers(0, 5, 300)
    for k, t in [(1, 0.1), (7, 0.5), (20, 1.0)]:
        got = evaluate.knn_predict(train_f, train_y, test_f, k=k, temperature=t, num_classes=5,
                                   chunk_size=32)
        np.testing.assert_array_equal(got, numpy_knn(train_f, train_y, test_f, k, t, 5))


def test_knn_top1_on_clustered_data():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 8)) * 5
    y = rng.integers(0, 4, 400)
    x = centres[y] + rng.normal(size=(400, 8))
    assert evaluate.knn_top1(x[:300], y[:300], x[300:], y[300:], k=10, num_classes=4) > 0.95
    # Labels shuffled: chance level.
    acc = evaluate.knn_top1(x[:300], rng.permutation(y[:300]), x[300:], y[300:], k=10,
                            num_classes=4)
    assert acc < 0.5


def test_linear_probe_separates_linear_classes_and_not_xor():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2000, 2))
    y_lin = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int32)
    res = evaluate.linear_probe(x[:1500], y_lin[:1500], x[1500:], y_lin[1500:], num_classes=2,
                                epochs=20, lr=0.05, batch_size=128)
    assert res["top1"] > 0.97
    y_xor = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(np.int32)
    res = evaluate.linear_probe(x[:1500], y_xor[:1500], x[1500:], y_xor[1500:], num_classes=2,
                                epochs=20, lr=0.05, batch_size=128)
    assert res["top1"] < 0.65  # a linear model cannot do XOR


def test_effective_rank_identities():
    rng = np.random.default_rng(3)
    # Equal singular values in d dimensions: exactly d, whatever the rotation.
    q, _ = np.linalg.qr(rng.normal(size=(50, 6)))
    assert abs(evaluate.effective_rank(q * 3.0, center=False) - 6.0) < 1e-9
    # Singular values (3, 1): p = (3/4, 1/4), exp(H) by hand.
    x = np.zeros((4, 2))
    x[0, 0], x[1, 1] = 3.0, 1.0
    expected = np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)))
    assert abs(evaluate.effective_rank(x, center=False) - expected) < 1e-12
    # Data on a line after centring (an offset is not a dimension): rank 1.
    line = np.outer(rng.normal(size=100), rng.normal(size=8)) + 5.0
    assert abs(evaluate.effective_rank(line) - 1.0) < 1e-6
    # A collapsed copy of the features uses fewer dimensions than the features themselves.
    full = rng.normal(size=(200, 16))
    assert evaluate.effective_rank(full[:, :4] @ rng.normal(size=(4, 16))) < 4.0 + 1e-9
    assert evaluate.effective_rank(full) > 12.0

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

"""Independent float64 NumPy transcriptions of the official loss code (no JAX here).

Each function follows the reference repository named in METHODS.md line by line
(the same concatenations, masks and reductions), so a test comparing against it checks
`ssljax.losses` against the official formula, not against itself. Gradients come from
`numeric_grad`, a central finite difference of these float64 functions.
"""
from __future__ import annotations

import numpy as np


def normalize(x, eps=1e-12):
  """torch.nn.functional.normalize(x, p=2, dim=-1)."""
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def logsumexp(x, axis=-1):
  m = np.max(x, axis=axis, keepdims=True)
  return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def cross_entropy(logits, target):
  """torch.nn.functional.cross_entropy, mean reduction."""
  return np.mean(logsumexp(logits, 1) - logits[np.arange(len(target)), target])


def nt_xent_ref(z1, z2, temperature):
  """lightly NTXentLoss (no memory bank): [l01 | l00 without diagonal] etc."""
  out0, out1 = normalize(z1), normalize(z2)
  n = out0.shape[0]
  off = ~np.eye(n, dtype=bool)
  l00 = (out0 @ out0.T / temperature)[off].reshape(n, n - 1)
  l01 = out0 @ out1.T / temperature
  l10 = out1 @ out0.T / temperature
  l11 = (out1 @ out1.T / temperature)[off].reshape(n, n - 1)
  logits = np.concatenate([np.concatenate([l01, l00], 1), np.concatenate([l10, l11], 1)], 0)
  labels = np.concatenate([np.arange(n), np.arange(n)])
  return cross_entropy(logits, labels)


def nt_xent_metamask_ref(z1, z2, temperature):
  """MetaMask `contrastive_loss` (SimCLR objective.py with LARGE_NUM = 1e9), in float64."""
  n = z1.shape[0]
  x0, x1 = normalize(z1), normalize(z2)
  eye = np.eye(n) * 1e9
  l00 = x0 @ x0.T / temperature - eye
  l11 = x1 @ x1.T / temperature - eye
  l01 = x0 @ x1.T / temperature
  l10 = x1 @ x0.T / temperature
  t = np.arange(n)
  return (cross_entropy(np.concatenate([l01, l00], 1), t)
          + cross_entropy(np.concatenate([l10, l11], 1), t)) / 2


def numeric_grad(f, *args, argnum=0, h=1e-6):
  """Central finite difference of a float64 scalar function w.r.t. args[argnum]."""
  args = [np.array(a, dtype=np.float64) if isinstance(a, np.ndarray) else a for a in args]
  x = args[argnum]
  grad = np.zeros_like(x)
  flat, gflat = x.reshape(-1), grad.reshape(-1)
  for i in range(flat.size):
    orig = flat[i]
    flat[i] = orig + h
    up = f(*args)
    flat[i] = orig - h
    down = f(*args)
    flat[i] = orig
    gflat[i] = (up - down) / (2 * h)
  return grad

"""Independent float64 NumPy transcriptions of the official loss code (no JAX here).

Each function follows the reference repository named in METHODS.md line by line
(the same concatenations, masks and reductions), so a test comparing against it checks
`ssljax.losses` against the official formula, not against itself. Gradients come from
`numeric_grad`, a sixth-order central finite difference of these float64 functions.
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


def numeric_grad(f, *args, argnum=0, h=1e-3):
    """Sixth-order central finite difference of a float64 scalar function w.r.t. args[argnum].

    ``(-f(x-3h) + 9 f(x-2h) - 45 f(x-h) + 45 f(x+h) - 9 f(x+2h) + f(x+3h)) / 60h``: truncation
    error O(h^6) (~1e-18 x the seventh derivative at h = 1e-3) and rounding ~1e-16 |f| / h, so
    the float64 parity checks can hold gradients to 1e-10 relative (a second-order difference
    with h = 1e-6 is good to ~1e-8 only).
    """
    args = [np.array(a, dtype=np.float64) if isinstance(a, np.ndarray) else a for a in args]
    x = args[argnum]
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    stencil = ((1, 45.0), (2, -9.0), (3, 1.0))
    for i in range(flat.size):
        orig = flat[i]
        total = 0.0
        for k, c in stencil:
            flat[i] = orig + k * h
            up = f(*args)
            flat[i] = orig - k * h
            down = f(*args)
            total += c * (up - down)
        flat[i] = orig
        gflat[i] = total / (60 * h)
    return grad


def infonce_moco_ref(q, k, queue, temperature):
    """PyContrast RGBMoCo._compute_logit + NCESoftmaxLoss: [pos, neg] / T, target 0."""
    q, k, queue = normalize(q), normalize(k), normalize(queue)
    bsz = q.shape[0]
    pos = np.einsum("nd,nd->n", q, k).reshape(bsz, 1)
    neg = (queue @ q.T).T
    out = np.concatenate([pos, neg], axis=1) / temperature
    return cross_entropy(out, np.zeros(bsz, dtype=int))


def infonce_batch_ref(q, k, temperature):
    """In-batch InfoNCE (MoCo v3 `contrastive_loss`): logits q @ k.T / T, labels arange."""
    q, k = normalize(q), normalize(k)
    return cross_entropy(q @ k.T / temperature, np.arange(q.shape[0]))


def conloss_ref(features, labels=None, temperature=0.07, contrast_mode="all", base_temperature=0.07,
                supcon_s=False, selfcon_s_FG=False, selfcon_m_FG=False):
    """SelfCon `ConLoss.forward` (raymin0223/self-contrastive-learning) on normalised features."""
    features = normalize(features)
    batch_size = features.shape[0] if not selfcon_m_FG else features.shape[0] // 2
    if labels is None:
        mask = np.eye(batch_size)
    else:
        labels = np.asarray(labels).reshape(-1, 1)
        mask = (labels == labels.T).astype(np.float64)
    views = [features[:, i] for i in range(features.shape[1])]
    if not selfcon_s_FG and not selfcon_m_FG:
        contrast_count = features.shape[1]
        contrast_feature = np.concatenate(views, 0)
        if contrast_mode == "one":
            anchor_feature, anchor_count = features[:, 0], 1
        else:
            anchor_feature, anchor_count = contrast_feature, contrast_count
    elif selfcon_s_FG:
        contrast_count = features.shape[1]
        anchor_count = features.shape[1] - 1
        anchor_feature = np.concatenate(views[:-1], 0)
        contrast_feature = np.concatenate([anchor_feature, views[-1]], 0)
    else:
        contrast_count = features.shape[1] * 2
        anchor_count = (features.shape[1] - 1) * 2
        anchor_feature = np.concatenate(views[:-1], 0)
        contrast_feature = np.concatenate([anchor_feature, views[-1]], 0)
    adc = anchor_feature @ contrast_feature.T / temperature
    logits = adc - adc.max(axis=1, keepdims=True)
    mask = np.tile(mask, (anchor_count, contrast_count))
    logits_mask = np.ones_like(mask)
    idx = np.arange(batch_size * anchor_count)
    logits_mask[idx, idx] = 0
    mask = mask * logits_mask
    if supcon_s:
        keep = mask.sum(1) != 0
        mask, logits_mask, logits = mask[keep], logits_mask[keep], logits[keep]
        batch_size = keep.sum()
    exp_logits = np.exp(logits) * logits_mask
    log_prob = logits - np.log(exp_logits.sum(1, keepdims=True))
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    loss = -(temperature / base_temperature) * mean_log_prob_pos
    return loss.reshape(anchor_count, batch_size).mean()


def barlow_twins_ref(z1, z2, lambd=0.0051):
    """facebookresearch/barlowtwins: BatchNorm1d(affine=False) in training mode, c / N."""
    def bn(z):
        return (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5)
    c = bn(z1).T @ bn(z2) / z1.shape[0]
    on_diag = np.sum((np.diagonal(c) - 1) ** 2)
    off = c[~np.eye(c.shape[0], dtype=bool)]
    return on_diag + lambd * np.sum(off ** 2)


def barlow_twins_lightly_ref(z1, z2, lambda_param=5e-3):
    """lightly BarlowTwinsLoss (MetaMask's `loss.py`): z / std (unbiased), c / N."""
    za = (z1 - z1.mean(0)) / z1.std(0, ddof=1)
    zb = (z2 - z2.mean(0)) / z2.std(0, ddof=1)
    n, d = z1.shape
    c = za.T @ zb / n
    c_diff = (c - np.eye(d)) ** 2
    c_diff[~np.eye(d, dtype=bool)] *= lambda_param
    return c_diff.sum()


def vicreg_ref(x, y, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0, parts=False):
    """facebookresearch/vicreg `VICReg.forward` after the encoders (one process)."""
    n, d = x.shape
    repr_loss = np.mean((x - y) ** 2)
    x = x - x.mean(0)
    y = y - y.mean(0)
    std_x = np.sqrt(x.var(0, ddof=1) + 0.0001)
    std_y = np.sqrt(y.var(0, ddof=1) + 0.0001)
    std_loss = np.mean(np.maximum(1 - std_x, 0)) / 2 + np.mean(np.maximum(1 - std_y, 0)) / 2
    cov_x = x.T @ x / (n - 1)
    cov_y = y.T @ y / (n - 1)
    off = ~np.eye(d, dtype=bool)
    cov_loss = np.sum(cov_x[off] ** 2) / d + np.sum(cov_y[off] ** 2) / d
    loss = sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss
    if parts:
        return loss, {"invariance": repr_loss, "variance": std_loss, "covariance": cov_loss}
    return loss


def byol_ref(p, z):
    """deepmind-research byol `helpers.regression_loss` (l2_normalize eps 1e-12 on x^2), mean."""
    def l2n(x):
        return x / np.sqrt(np.maximum(np.sum(x ** 2, -1, keepdims=True), 1e-12))
    return np.mean(np.sum((l2n(p) - l2n(z)) ** 2, -1))


def corinfomax_ref(z1, z2, state, sim_weight, la_R, la_mu, eps, normalise=True):
    """corinfomax-ssl `CovarianceLoss.forward` + `invariance_loss` -> (loss, new_state, parts)."""
    R1, R2, mu1, mu2 = state
    if normalise:
        z1, z2 = normalize(z1), normalize(z2)
    n, d = z1.shape
    new_mu1 = la_mu * mu1 + (1 - la_mu) * z1.mean(0)
    new_mu2 = la_mu * mu2 + (1 - la_mu) * z2.mean(0)
    z1_hat, z2_hat = z1 - new_mu1, z2 - new_mu2
    new_R1 = la_R * R1 + (1 - la_R) * (z1_hat.T @ z1_hat) / n
    new_R2 = la_R * R2 + (1 - la_R) * (z2_hat.T @ z2_hat) / n
    r_eps = eps * np.eye(d)
    cov_loss = -(np.linalg.slogdet(new_R1 + r_eps)[1] + np.linalg.slogdet(new_R2 + r_eps)[1]) / d
    sim_loss = np.mean((z1 - z2) ** 2)
    parts = {"sim": sim_loss, "cov": cov_loss}
    return sim_weight * sim_loss + cov_loss, (new_R1, new_R2, new_mu1, new_mu2), parts


def mae_patchify_nchw(imgs, p):
    """MAE `patchify`: (N, 3, H, W) -> (N, L, p*p*3) via einsum 'nchpwq->nhwpqc'."""
    n, c, hh, ww = imgs.shape
    h, w = hh // p, ww // p
    x = imgs.reshape(n, c, h, p, w, p)
    x = np.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, h * w, p * p * c)


def mae_loss_ref(imgs_nchw, pred_tokens, mask, p, norm_pix_loss=True):
    """MAE `forward_loss` (torch var is unbiased by default)."""
    target = mae_patchify_nchw(imgs_nchw, p)
    if norm_pix_loss:
        mean = target.mean(-1, keepdims=True)
        var = target.var(-1, ddof=1, keepdims=True)
        target = (target - mean) / (var + 1.e-6) ** .5
    loss = ((pred_tokens - target) ** 2).mean(-1)
    return (loss * mask).sum() / mask.sum()

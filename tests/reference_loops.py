"""Independent float64 references written as plain loops, one line of math each.

Deliberately slow and obvious: no broadcasting tricks, no attnkit imports.
"""

import math

import torch


def softmax_row(row):
    finite = [x for x in row if x != float("-inf")]
    if not finite:
        return [0.0] * len(row)
    m = max(finite)
    e = [math.exp(x - m) if x != float("-inf") else 0.0 for x in row]
    s = sum(e)
    return [x / s for x in e]


def attention_2d(q, k, v, allowed=None):
    """q (Nq, d), k (Nk, d), v (Nk, dv), allowed[i][j] bool -> out (Nq, dv), weights (Nq, Nk)."""
    nq, d = q.shape
    nk = k.shape[0]
    out = torch.zeros(nq, v.shape[1], dtype=torch.float64)
    weights = torch.zeros(nq, nk, dtype=torch.float64)
    for i in range(nq):
        scores = []
        for j in range(nk):
            if allowed is not None and not allowed[i][j]:
                scores.append(float("-inf"))
            else:
                scores.append(sum(float(q[i, t]) * float(k[j, t]) for t in range(d)) / math.sqrt(d))
        w = softmax_row(scores)
        for j in range(nk):
            weights[i, j] = w[j]
            out[i] += w[j] * v[j].double()
    return out, weights


def causal_allowed(nq, nk):
    return [[j <= i + nk - nq for j in range(nk)] for i in range(nq)]


def sinusoid(n, d):
    pe = torch.zeros(n, d, dtype=torch.float64)
    for p in range(n):
        for c in range(d):
            i = c // 2
            angle = p / 10000 ** (2 * i / d)
            pe[p, c] = math.sin(angle) if c % 2 == 0 else math.cos(angle)
    return pe


def rope_vector(x, p, theta=10000.0, half=False):
    """Rotate one vector x (d,) at position p."""
    d = len(x)
    out = [0.0] * d
    for i in range(d // 2):
        a, b = (i, i + d // 2) if half else (2 * i, 2 * i + 1)
        phi = p * theta ** (-2 * i / d)
        out[a] = float(x[a]) * math.cos(phi) - float(x[b]) * math.sin(phi)
        out[b] = float(x[a]) * math.sin(phi) + float(x[b]) * math.cos(phi)
    return torch.tensor(out, dtype=torch.float64)


def alibi_slopes_paper(n):
    """The ALiBi authors' published get_slopes, transcribed."""
    def power_of_2(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        return [start * start ** i for i in range(n)]
    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + alibi_slopes_paper(2 * closest)[0::2][: n - closest]

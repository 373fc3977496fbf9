//! Exact recomputations in plain f64 scalar code, in log space: the oracle for golden cases
//! where the reference itself was not finite, independent of burn and of the crate.

/// `log Σ exp xⱼ` over the entries of `x` that `keep` admits (shifted by their maximum).
fn lse(x: &[f64], keep: impl Fn(usize) -> bool) -> f64 {
    let m = (0..x.len())
        .filter(|&j| keep(j))
        .map(|j| x[j])
        .fold(f64::NEG_INFINITY, f64::max);
    m + (0..x.len())
        .filter(|&j| keep(j))
        .map(|j| (x[j] - m).exp())
        .sum::<f64>()
        .ln()
}

/// `KL(p ‖ q)` from log-probabilities; a zero `p` contributes 0.
fn kl(log_p: &[f64], log_q: &[f64]) -> f64 {
    log_p
        .iter()
        .zip(log_q)
        .map(|(&lp, &lq)| {
            if lp == f64::NEG_INFINITY {
                0.0
            } else {
                lp.exp() * (lp - lq)
            }
        })
        .sum()
}

/// The rows of `z` (`c` per row) divided by `t`.
fn rows(z: &[f64], c: usize, t: f64) -> Vec<Vec<f64>> {
    z.chunks(c)
        .map(|r| r.iter().map(|v| v / t).collect())
        .collect()
}

/// The log-softmax of one row (entries at −∞ stay −∞).
pub fn log_softmax(u: &[f64]) -> Vec<f64> {
    let l = lse(u, |_| true);
    u.iter().map(|v| v - l).collect()
}

/// The mean of `row(s_i, t_i)` over the rows `[v]` that `mask` counts; 0 when none.
pub fn masked_mean(
    s: &[f64],
    t: &[f64],
    v: usize,
    mask: &[bool],
    row: impl Fn(&[f64], &[f64]) -> f64,
) -> f64 {
    let rows = s
        .chunks(v)
        .zip(t.chunks(v))
        .zip(mask)
        .filter(|(_, keep)| **keep);
    let (total, count) = rows.fold((0.0, 0), |(sum, k), ((s, t), _)| (sum + row(s, t), k + 1));
    total / count.max(1) as f64
}

/// mdistiller's KD, `T² · batchmean KL(p_t ‖ p_s)` at temperature `t`, and its gradients.
pub struct Kd {
    pub loss: f64,
    pub ds: Vec<f64>,
    pub dt: Vec<f64>,
}

/// KD of student logits `s` and teacher logits `t` (`c` classes per row), with
/// `∂/∂z_s = (T/N)(p_s − p_t)` and `∂/∂z_t = (T/N) p_t ⊙ (a − ⟨p_t, a⟩)`, `a = log p_t − log p_s`.
pub fn kd(s: &[f64], t: &[f64], c: usize, temp: f64) -> Kd {
    let (rs, rt) = (rows(s, c, temp), rows(t, c, temp));
    let n = rs.len() as f64;
    let (mut loss, mut ds, mut dt) = (0.0, Vec::new(), Vec::new());
    for (us, ut) in rs.iter().zip(&rt) {
        let (ls, lt) = (log_softmax(us), log_softmax(ut));
        loss += kl(&lt, &ls);
        let a: Vec<f64> = lt.iter().zip(&ls).map(|(p, q)| p - q).collect();
        let mean: f64 = lt.iter().zip(&a).map(|(p, a)| p.exp() * a).sum();
        ds.extend(
            ls.iter()
                .zip(&lt)
                .map(|(q, p)| temp / n * (q.exp() - p.exp())),
        );
        dt.extend(
            lt.iter()
                .zip(&a)
                .map(|(p, a)| temp / n * p.exp() * (a - mean)),
        );
    }
    Kd {
        loss: temp * temp * loss / n,
        ds,
        dt,
    }
}

/// mdistiller's DKD with an exact target mask, `T² · batchmean(α·TCKD + β·NCKD)`.
pub fn dkd(s: &[f64], t: &[f64], y: &[usize], c: usize, [alpha, beta]: [f64; 2], temp: f64) -> f64 {
    let split = |u: &[f64], y: usize| {
        let all = lse(u, |_| true);
        let rest = lse(u, |j| j != y);
        let binary = [u[y] - all, rest - all];
        let non_target: Vec<f64> = (0..u.len())
            .map(|j| {
                if j == y {
                    f64::NEG_INFINITY
                } else {
                    u[j] - rest
                }
            })
            .collect();
        (binary, non_target)
    };
    let (rs, rt) = (rows(s, c, temp), rows(t, c, temp));
    let mut total = 0.0;
    for ((us, ut), &y) in rs.iter().zip(&rt).zip(y) {
        let ((bs, ns), (bt, nt)) = (split(us, y), split(ut, y));
        total += alpha * kl(&bt, &bs) + beta * kl(&nt, &ns);
    }
    temp * temp * total / rs.len() as f64
}

/// A per-token divergence of the token family, in scalar f64 log space.
#[derive(Debug, Clone, Copy)]
pub enum PerToken {
    /// `KL(p_t ‖ p_s)`, or with `cross_entropy` `−Σ p_t log p_s`.
    Forward { cross_entropy: bool },
    /// `KL(p_s ‖ p_t)`.
    Reverse,
    /// TRL's generalized JSD(β) (β = 0 / 1: forward / reverse KL).
    Jsd(f64),
    /// `λ·forward + (1 − λ)·reverse` (torchtune).
    Symmetric { ratio: f64, cross_entropy: bool },
    /// `KL(p_t ‖ α p_t + (1 − α) p_s)` (or its cross-entropy form).
    SkewForward { alpha: f64, cross_entropy: bool },
    /// `KL(p_s ‖ α p_s + (1 − α) p_t)`.
    SkewReverse(f64),
    /// `½ Σ |p_t − p_s|`.
    Tvd,
}

fn mix(log_p: &[f64], log_q: &[f64], w: f64) -> Vec<f64> {
    // log(w·p + (1 − w)·q)
    log_p
        .iter()
        .zip(log_q)
        .map(|(&a, &b)| {
            let (a, b) = (a + w.ln(), b + (1.0 - w).ln());
            let m = a.max(b);
            m + ((a - m).exp() + (b - m).exp()).ln()
        })
        .collect()
}

fn cross(log_p: &[f64], log_q: &[f64]) -> f64 {
    -log_p
        .iter()
        .zip(log_q)
        .map(|(p, q)| p.exp() * q)
        .sum::<f64>()
}

impl PerToken {
    fn row(self, ls: &[f64], lt: &[f64]) -> f64 {
        match self {
            PerToken::Forward {
                cross_entropy: false,
            } => kl(lt, ls),
            PerToken::Forward {
                cross_entropy: true,
            } => cross(lt, ls),
            PerToken::Reverse => kl(ls, lt),
            PerToken::Jsd(0.0) => kl(lt, ls),
            PerToken::Jsd(1.0) => kl(ls, lt),
            PerToken::Jsd(b) => {
                let m = mix(lt, ls, b);
                b * kl(lt, &m) + (1.0 - b) * kl(ls, &m)
            }
            PerToken::Symmetric {
                ratio,
                cross_entropy,
            } => {
                ratio * PerToken::Forward { cross_entropy }.row(ls, lt) + (1.0 - ratio) * kl(ls, lt)
            }
            PerToken::SkewForward {
                alpha,
                cross_entropy,
            } => {
                let m = if alpha == 0.0 {
                    ls.to_vec()
                } else {
                    mix(lt, ls, alpha)
                };
                if cross_entropy {
                    cross(lt, &m)
                } else {
                    kl(lt, &m)
                }
            }
            PerToken::SkewReverse(alpha) => {
                let m = if alpha == 0.0 {
                    lt.to_vec()
                } else {
                    mix(ls, lt, alpha)
                };
                kl(ls, &m)
            }
            PerToken::Tvd => {
                0.5 * ls
                    .iter()
                    .zip(lt)
                    .map(|(a, b)| (a.exp() - b.exp()).abs())
                    .sum::<f64>()
            }
        }
    }
}

/// A token loss: `divergence` of each valid row (`mask`, all when `None`) at temperature `t`,
/// summed, times `T²` when `t_squared`, divided by `divide(valid)`. Rows that do not count are
/// never evaluated (their logits may be anything).
#[allow(clippy::too_many_arguments)]
pub fn token(
    s: &[f64],
    t: &[f64],
    v: usize,
    mask: Option<&[bool]>,
    divergence: PerToken,
    temp: f64,
    t_squared: bool,
    divide: &dyn Fn(usize) -> f64,
) -> f64 {
    let (rs, rt) = (rows(s, v, temp), rows(t, v, temp));
    let mut total = 0.0;
    let mut valid = 0;
    for (i, (us, ut)) in rs.iter().zip(&rt).enumerate() {
        if mask.is_some_and(|m| !m[i]) {
            continue;
        }
        valid += 1;
        total += divergence.row(&log_softmax(us), &log_softmax(ut));
    }
    let scale = if t_squared { temp * temp } else { 1.0 };
    scale * total / divide(valid)
}

/// PKT's distribution of rows `x` (`d` per row): `x̂ = x / (‖x‖ + ε)` (‖x‖ exactly 0 on an
/// all-zero row), `K = (x̂x̂ᵀ + 1)/2`, `P = K / rowsum K`; returns `(x̂, P, rowsum K)`.
fn pkt_distribution(x: &[f64], d: usize, eps: f64) -> (Vec<Vec<f64>>, Vec<Vec<f64>>, Vec<f64>) {
    let hat: Vec<Vec<f64>> = x
        .chunks(d)
        .map(|r| {
            let norm = r.iter().map(|v| v * v).sum::<f64>().sqrt();
            r.iter().map(|v| v / (norm + eps)).collect()
        })
        .collect();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let k: Vec<Vec<f64>> = hat
        .iter()
        .map(|a| hat.iter().map(|b| (dot(a, b) + 1.0) / 2.0).collect())
        .collect();
    let sums: Vec<f64> = k.iter().map(|r| r.iter().sum()).collect();
    let p = k
        .iter()
        .zip(&sums)
        .map(|(r, s)| r.iter().map(|v| v / s).collect())
        .collect();
    (hat, p, sums)
}

/// The gradient of mdistiller's `pkt_loss` with respect to the student rows `s` (`ds` per row;
/// the teacher rows `t`, `dt` per row), in closed form: `∂L/∂Pˢ = −Pᵗ / (N² (Pˢ + ε))`, through
/// the row normalisation, the cosine kernel and `x̂ = x / (‖x‖ + ε)`, whose Jacobian on an
/// all-zero row is `I / ε` (the norm's subgradient 0 there).
pub fn pkt_student_grad(s: &[f64], ds: usize, t: &[f64], dt: usize, eps: f64) -> Vec<f64> {
    let (hat, ps, sums) = pkt_distribution(s, ds, eps);
    let (_, pt, _) = pkt_distribution(t, dt, eps);
    let n = hat.len();
    let scale = 1.0 / (n * n) as f64;
    // ∂L/∂K, row by row through P = K / rowsum K
    let h: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            let g: Vec<f64> = (0..n)
                .map(|j| -scale * pt[i][j] / (ps[i][j] + eps))
                .collect();
            let mean = (0..n).map(|j| g[j] * ps[i][j]).sum::<f64>();
            g.iter().map(|gj| (gj - mean) / sums[i]).collect()
        })
        .collect();
    let mut out = Vec::with_capacity(s.len());
    for (i, row) in s.chunks(ds).enumerate() {
        // ∂L/∂x̂ᵢ = ½ Σⱼ (Hᵢⱼ + Hⱼᵢ) x̂ⱼ
        let gh: Vec<f64> = (0..ds)
            .map(|k| (0..n).map(|j| 0.5 * (h[i][j] + h[j][i]) * hat[j][k]).sum())
            .collect();
        let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        let along = row.iter().zip(&gh).map(|(x, g)| x * g).sum::<f64>();
        for (x, g) in row.iter().zip(&gh) {
            let radial = match norm > 0.0 {
                true => x * along / (norm * (norm + eps) * (norm + eps)),
                false => 0.0,
            };
            out.push(g / (norm + eps) - radial);
        }
    }
    out
}

/// DistillKit's sparse forward KL: student logits `s` (`v` per row) at temperature `temp`
/// against the teacher's top-k ids and log-probabilities (`k` per row), re-tempered by
/// `alpha = gT / T`; with `symmetric`, both sides get a bucket of their missing mass (at least
/// `eps`), else the teacher is renormalised over its k. `T² ·` the sum over the rows `mask`
/// admits, over their number (0 when none is).
#[allow(clippy::too_many_arguments)]
pub fn sparse_kl(
    s: &[f64],
    v: usize,
    ids: &[f64],
    lp: &[f64],
    k: usize,
    mask: Option<&[bool]>,
    [temp, alpha]: [f64; 2],
    symmetric: bool,
    eps: f64,
) -> f64 {
    let bucket = |log_mass: &[f64]| {
        (1.0 - log_mass.iter().map(|x| x.exp()).sum::<f64>())
            .max(eps)
            .ln()
    };
    let (mut total, mut valid) = (0.0, 0usize);
    for (row, (z, (id, lp))) in rows(s, v, temp)
        .iter()
        .zip(ids.chunks(k).zip(lp.chunks(k)))
        .enumerate()
    {
        if mask.is_some_and(|m| !m[row]) {
            continue;
        }
        valid += 1;
        let ls = log_softmax(z);
        let q: Vec<f64> = id.iter().map(|&i| ls[i as usize]).collect();
        let scaled: Vec<f64> = lp.iter().map(|x| x * alpha).collect();
        let a: Vec<f64> = match (symmetric, alpha == 1.0) {
            (true, true) => lp.to_vec(),
            (true, false) => {
                let mut all = scaled.clone();
                all.push(bucket(lp) * alpha);
                let z = lse(&all, |_| true);
                scaled.iter().map(|x| x - z).collect()
            }
            (false, _) => log_softmax(&scaled),
        };
        total += kl(&a, &q);
        if symmetric {
            let (tb, sb) = (bucket(&a), bucket(&q));
            total += tb.exp() * (tb - sb);
        }
    }
    match valid {
        0 => 0.0,
        n => total * temp * temp / n as f64,
    }
}

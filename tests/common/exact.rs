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

fn log_softmax(u: &[f64]) -> Vec<f64> {
    let l = lse(u, |_| true);
    u.iter().map(|v| v - l).collect()
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

//! Placing what does not run Vivaldi itself, such as a user, in the coordinate space:
//! [`multilaterate`] from RTTs that workers with known coordinates measured to it, and
//! [`geometric_median`] to stand several such points by one.

use oak_api::ldp::{Coord, MAX_COORD_MS};

/// Largest RTT accepted as a measurement, in ms.
const MAX_RTT_MS: f64 = 60_000.0;
/// Levenberg–Marquardt iterations per start.
const ITERATIONS: usize = 100;

/// The point `(x, y, h ≥ 0)` whose predicted RTTs to the coordinates in `obs` best match the
/// measured RTTs (ms) beside them, in the least-squares sense of relative errors. Entries
/// with an invalid coordinate or an RTT that is not a positive finite number of at most a
/// minute are ignored; fewer than 3 usable entries give None. `.error` is the median
/// relative residual. Deterministic: Levenberg–Marquardt from a start at each known
/// coordinate (with the height that explains its RTT) and at their centroid, the best
/// result wins.
pub fn multilaterate(obs: &[(Coord, f64)]) -> Option<Coord> {
    let obs: Vec<(Coord, f64)> = obs
        .iter()
        .copied()
        .filter(|(c, ms)| c.is_valid() && ms.is_finite() && *ms > 0.0 && *ms <= MAX_RTT_MS)
        .collect();
    if obs.len() < 3 {
        return None;
    }
    let n = obs.len() as f64;
    let (cx, cy) = obs.iter().fold((0.0, 0.0), |(x, y), (c, _)| (x + c.x / n, y + c.y / n));
    let min_ms = obs.iter().map(|(_, ms)| *ms).fold(f64::INFINITY, f64::min);
    let starts =
        obs.iter().map(|(c, ms)| [c.x, c.y, (ms - c.h).max(0.0)]).chain([[cx, cy, 0.0], [cx, cy, min_ms / 2.0]]);
    let (best, _) =
        starts.map(|s| refine(&obs, s)).fold(None, |best: Option<([f64; 3], f64)>, (p, cost)| match best {
            Some((_, c)) if c <= cost => best,
            _ => Some((p, cost)),
        })?;
    let point = Coord::new(
        best[0].clamp(-MAX_COORD_MS, MAX_COORD_MS),
        best[1].clamp(-MAX_COORD_MS, MAX_COORD_MS),
        best[2].clamp(0.0, MAX_COORD_MS),
        0.0,
    );
    let residuals: Vec<f64> = obs.iter().map(|(c, ms)| ((point.rtt(c) - ms) / ms).abs()).collect();
    let error = median(residuals).unwrap_or(0.0);
    let point = Coord { error: if error.is_finite() { error.min(MAX_COORD_MS) } else { MAX_COORD_MS }, ..point };
    point.is_valid().then_some(point)
}

/// The point minimising the sum of predicted RTTs to `points` (the geometric median of their
/// planar parts, by Weiszfeld's algorithm with Vardi and Zhang's fix for landing on a point),
/// with the median height and the median error of the points. Invalid points are ignored;
/// None when there are none.
pub fn geometric_median(points: &[Coord]) -> Option<Coord> {
    let pts: Vec<Coord> = points.iter().copied().filter(Coord::is_valid).collect();
    let h = median(pts.iter().map(|c| c.h).collect())?;
    let error = median(pts.iter().map(|c| c.error).collect())?;
    let n = pts.len() as f64;
    let (mut x, mut y) = pts.iter().fold((0.0, 0.0), |(x, y), c| (x + c.x / n, y + c.y / n));
    let scale = pts.iter().map(|c| (c.x - x).hypot(c.y - y)).fold(0.0, f64::max);
    let eps = 1e-12 * (1.0 + scale);
    for _ in 0..1000 {
        let (mut wx, mut wy, mut w, mut rx, mut ry, mut coincident) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        for c in &pts {
            let d = (c.x - x).hypot(c.y - y);
            if d <= eps {
                coincident += 1.0;
                continue;
            }
            wx += c.x / d;
            wy += c.y / d;
            w += 1.0 / d;
            rx += (c.x - x) / d;
            ry += (c.y - y) / d;
        }
        if w == 0.0 {
            break; // every point is here
        }
        let (tx, ty) = (wx / w, wy / w);
        let (nx, ny) = if coincident > 0.0 {
            let r = rx.hypot(ry);
            if r <= coincident {
                break; // the point we are on is the median
            }
            let k = coincident / r;
            ((1.0 - k) * tx + k * x, (1.0 - k) * ty + k * y)
        } else {
            (tx, ty)
        };
        let step = (nx - x).hypot(ny - y);
        (x, y) = (nx, ny);
        if step <= eps {
            break;
        }
    }
    // Weiszfeld can stall short of the optimum when it starts near an input point (it moves
    // by ever smaller steps there): an input point that is better wins.
    let total = |px: f64, py: f64| pts.iter().map(|c| (c.x - px).hypot(c.y - py)).sum::<f64>();
    let mut best = (total(x, y), x, y);
    for c in &pts {
        let t = total(c.x, c.y);
        if t < best.0 {
            best = (t, c.x, c.y);
        }
    }
    let c = Coord::new(best.1, best.2, h, error);
    c.is_valid().then_some(c)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => v.get(n / 2).copied(),
        _ => Some((v.get(n / 2 - 1)? + v.get(n / 2)?) / 2.0),
    }
}

/// Sum of squared relative errors of `p` = [x, y, h].
fn cost(obs: &[(Coord, f64)], p: &[f64; 3]) -> f64 {
    obs.iter().map(|(c, ms)| ((c.x - p[0]).hypot(c.y - p[1]) + p[2] + c.h - ms) / ms).map(|r| r * r).sum()
}

/// Levenberg–Marquardt from `p`, keeping `h ≥ 0` (a step that would leave it is retried with
/// `h` held at 0). Returns the point and its cost.
fn refine(obs: &[(Coord, f64)], mut p: [f64; 3]) -> ([f64; 3], f64) {
    let mut f = cost(obs, &p);
    let mut lambda = 1e-3;
    for _ in 0..ITERATIONS {
        // Normal equations: a = JᵀJ, g = Jᵀr.
        let (mut a, mut g) = ([[0.0; 3]; 3], [0.0; 3]);
        for (c, ms) in obs {
            let d = (p[0] - c.x).hypot(p[1] - c.y);
            let r = (d + p[2] + c.h - ms) / ms;
            let j = if d > 1e-12 {
                [(p[0] - c.x) / (d * ms), (p[1] - c.y) / (d * ms), 1.0 / ms]
            } else {
                [0.0, 0.0, 1.0 / ms]
            };
            for (k, jk) in j.iter().enumerate() {
                g[k] += jk * r;
                for (l, jl) in j.iter().enumerate() {
                    a[k][l] += jk * jl;
                }
            }
        }
        let mut improved = false;
        for _ in 0..30 {
            let candidate =
                step(&a, &g, lambda, &p, false).filter(|q| q[2] >= 0.0).or_else(|| step(&a, &g, lambda, &p, true));
            if let Some(q) = candidate {
                let fq = cost(obs, &q);
                if fq < f {
                    let moved = (q[0] - p[0]).abs() + (q[1] - p[1]).abs() + (q[2] - p[2]).abs();
                    (p, f) = (q, fq);
                    lambda = (lambda / 3.0).max(1e-12);
                    improved = moved > 1e-12 * (1.0 + p[0].abs() + p[1].abs() + p[2]);
                    break;
                }
            }
            lambda *= 4.0;
            if lambda > 1e12 {
                break;
            }
        }
        if !improved {
            break;
        }
    }
    (p, f)
}

/// One damped Gauss–Newton step from `p`; with `fix_h`, `h` is set to 0 and only `x, y`
/// move. None when the system cannot be solved or the result is not finite.
fn step(a: &[[f64; 3]; 3], g: &[f64; 3], lambda: f64, p: &[f64; 3], fix_h: bool) -> Option<[f64; 3]> {
    let dim = if fix_h { 2 } else { 3 };
    let mut m = [[0.0; 4]; 3];
    for k in 0..dim {
        for l in 0..dim {
            m[k][l] = a[k][l];
        }
        m[k][k] += lambda * (a[k][k] + 1e-9);
        m[k][3] = -g[k];
    }
    if fix_h {
        // The gradient of x, y at h = 0 differs from the one at p[2] by the h column.
        for k in 0..2 {
            m[k][3] += a[k][2] * p[2];
        }
    }
    let delta = solve(&mut m, dim)?;
    let q = if fix_h {
        [p[0] + delta[0], p[1] + delta[1], 0.0]
    } else {
        [p[0] + delta[0], p[1] + delta[1], p[2] + delta[2]]
    };
    q.iter().all(|v| v.is_finite()).then_some(q)
}

/// Gaussian elimination with partial pivoting on the augmented `dim × (dim + 1)` block of `m`.
fn solve(m: &mut [[f64; 4]; 3], dim: usize) -> Option<[f64; 3]> {
    for col in 0..dim {
        let pivot = (col..dim).max_by(|&i, &j| m[i][col].abs().total_cmp(&m[j][col].abs()))?;
        if m[pivot][col].abs() < 1e-300 {
            return None;
        }
        m.swap(col, pivot);
        let pivot_row = m[col];
        for row in m.iter_mut().take(dim).skip(col + 1) {
            let factor = row[col] / pivot_row[col];
            for (v, p) in row.iter_mut().zip(pivot_row.iter()).skip(col) {
                *v -= factor * p;
            }
        }
    }
    let mut x = [0.0; 3];
    for row in (0..dim).rev() {
        let tail: f64 = (row + 1..dim).map(|k| m[row][k] * x[k]).sum();
        x[row] = (m[row][3] - tail) / m[row][row];
    }
    Some(x)
}

#[cfg(test)]
mod tests;

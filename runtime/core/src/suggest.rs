//! "Did you mean …?": the known name a mistyped one was probably meant to be.

/// Edit distance counting a swap of two neighbouring characters as one edit (optimal
/// string alignment): `fiel` is one edit from `file`, as from `fuel`. Exact up to
/// [`FAR`]; strings whose lengths differ by more are only said to be that far apart (a
/// lower bound), so that a long mistyped key costs nothing to compare with short names.
pub fn distance(a: &str, b: &str) -> usize {
    let (la, lb) = (a.chars().count(), b.chars().count());
    if la.abs_diff(lb) > FAR {
        return la.abs_diff(lb);
    }
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // rows[i][j]: the distance between a[..i] and b[..j].
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = d;
        }
    }
    rows[a.len()][b.len()]
}

/// Beyond this many edits, [`distance`] is a lower bound (no caller suggests a name
/// that far).
pub const FAR: usize = 8;

/// The closest of `candidates` to `key`, if close enough to be a typo; on a tie, the
/// one listed first (list a driver's own names before the general ones).
pub fn nearest<'a>(key: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (distance(key, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 6) && *d > 0)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_swap_is_one_edit() {
        assert_eq!(distance("fiel", "file"), 1);
        assert_eq!(distance("fiel", "fuel"), 1);
        assert_eq!(distance("file", "file"), 0);
        assert_eq!(distance("", "abc"), 3);
        // A long key against a short name: not computed cell by cell.
        let long = "x".repeat(1 << 20);
        assert_eq!(distance(&long, "file"), (1 << 20) - 4);
        assert_eq!(nearest(&long, &["file"]), None);
        assert_eq!(
            distance("push_notifcation_driver", "push_notification_driver"),
            1
        );
        assert_eq!(nearest("fiel", &["driver", "file", "fuel"]), Some("file"));
        assert_eq!(
            nearest("queue_capacty", &["queue_capacity", "listen"]),
            Some("queue_capacity")
        );
        assert_eq!(nearest("completely_else", &["file", "fuel"]), None);
    }
}

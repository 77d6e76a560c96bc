//! Bounds on Lua's pattern functions, which run in C where the instruction hook cannot
//! interrupt them. A backtracking match tries each start position (one when anchored
//! with `^`); from each it costs up to (subject length) to the power of the repetition
//! items, times its single items (a 100 000-character literal costs that much per
//! start), doubled per optional item. A call whose worst case exceeds [`MAX_STEPS`], or
//! what the call's time left allows, is refused before it starts. Plain searches
//! (`find(s, p, init, true)`) run here in linear time instead of Lua's quadratic one.

use std::time::Duration;

/// The most matcher steps one pattern call may risk (a few seconds of CPU at most).
pub const MAX_STEPS: f64 = 1e9;

/// Matcher steps a second, about (measured: 8e8 steps of `.aaa…b` took 1.9 s).
pub const STEPS_PER_SECOND: f64 = 4e8;

/// The most steps a call may risk with `left` of its time, at `rate` steps a second.
pub fn allowed_steps(left: Duration, rate: f64) -> f64 {
    MAX_STEPS.min(left.as_secs_f64() * rate)
}

/// What a pattern is made of, for the cost bound.
#[derive(Debug, Default, PartialEq, Eq)]
struct Shape {
    /// `*`, `+`, `-` items and `%b` balances.
    repetitions: i32,
    /// `?` items.
    optionals: i32,
    /// Any magic character at all (otherwise the search is a plain one).
    magic: bool,
    /// What checking one character costs, summed over the items: 1 for a literal, `.`
    /// or `%a`, a set's length for a set (Lua walks it), and a frontier's set.
    weight: i32,
    /// Starts with `^` (find, match, gsub: one start position).
    anchored: bool,
}

fn shape(p: &[u8]) -> Shape {
    let mut s = Shape {
        magic: p.iter().any(|b| b"^$*+?.([%-".contains(b)),
        anchored: p.first() == Some(&b'^'),
        ..Shape::default()
    };
    let mut i = usize::from(p.first() == Some(&b'^'));
    while i < p.len() {
        match p[i] {
            b'(' | b')' => {
                i += 1;
                continue;
            }
            b'%' if p.get(i + 1) == Some(&b'b') => {
                s.repetitions += 1;
                i += 4;
                continue;
            }
            // A frontier checks its set at every start, repeated or not.
            b'%' if p.get(i + 1) == Some(&b'f') => {
                let end = skip_set(p, i + 2);
                s.weight = s.weight.saturating_add(set_weight(end - (i + 2)));
                i = end;
                continue;
            }
            // A back-reference compares what its capture matched: another factor of the
            // subject's length per attempt.
            b'%' if p.get(i + 1).is_some_and(|d| (b'1'..=b'9').contains(d)) => {
                s.repetitions += 1;
                i += 2;
                continue;
            }
            b'%' => {
                s.weight = s.weight.saturating_add(1);
                i += 2
            }
            b'[' => {
                let end = skip_set(p, i);
                s.weight = s.weight.saturating_add(set_weight(end - i));
                i = end
            }
            _ => {
                s.weight = s.weight.saturating_add(1);
                i += 1
            }
        }
        match p.get(i) {
            Some(b'*' | b'+' | b'-') => {
                s.repetitions += 1;
                i += 1;
            }
            Some(b'?') => {
                s.optionals += 1;
                i += 1;
            }
            _ => {}
        }
    }
    s
}

/// What checking a character against a set of `len` bytes costs.
fn set_weight(len: usize) -> i32 {
    i32::try_from(len).unwrap_or(i32::MAX).max(1)
}

/// The index just past a `[set]` starting at `i` (or the end).
fn skip_set(p: &[u8], mut i: usize) -> usize {
    if p.get(i) != Some(&b'[') {
        return i;
    }
    i += 1;
    if p.get(i) == Some(&b'^') {
        i += 1;
    }
    // A `]` first in the set is a member.
    let mut first = true;
    while i < p.len() {
        match p[i] {
            b'%' => i += 2,
            b']' if !first => return i + 1,
            _ => i += 1,
        }
        first = false;
    }
    i
}

/// Why matching `p` against `s` by `function` (`find`, `match`, `gmatch`, `gsub`) is
/// refused when `allowed` steps may be risked ([`allowed_steps`]), or `None` when its
/// worst case is bounded.
pub fn refusal(function: &str, s: &[u8], p: &[u8], allowed: f64) -> Option<String> {
    let n = s.len().max(1) as f64;
    let shape = shape(p);
    // gmatch takes a leading `^` literally (Lua 5.4): every position is a start.
    let starts = if shape.anchored && function != "gmatch" {
        1.0
    } else {
        n
    };
    let cost = if shape.magic {
        starts
            * n.powi(shape.repetitions)
            * f64::from(shape.weight.max(1))
            * 2f64.powi(shape.optionals)
    } else {
        n * (p.len().max(1) as f64)
    };
    (cost > allowed).then(|| {
        format!(
            "pattern too costly for the mailpush sandbox: {} repetition and {} optional items, {} character checks per position, over a {}-byte subject could take {cost:.1e} steps, more than {allowed:.1e} (at most {MAX_STEPS:.0e}, less as the call's time runs out); use a plain find, a shorter subject, an anchor (^), smaller sets or fewer repetitions",
            shape.repetitions,
            shape.optionals,
            shape.weight,
            s.len()
        )
    })
}

/// Why `gsub` over a subject of `subject_len` bytes with the replacement string `repl`
/// (at most `n` replacements) is refused, or `None`. Lua works through the replacement's
/// escapes (`%0`…`%9`, `%%`) at each match, even where they add nothing to the result (a
/// capture that is empty), and a pattern that matches the empty string matches at every
/// position: `gsub(s, '', ('%0'):rep(1e6))` took 10¹¹ steps in C with no memory to show
/// for it. Plain bytes of the replacement are copied to the result, which the memory
/// limit bounds.
pub fn replacement_refusal(
    subject_len: usize,
    repl: &[u8],
    n: Option<i64>,
    allowed: f64,
) -> Option<String> {
    let escapes = memchr::memchr_iter(b'%', repl).count();
    let mut matches = subject_len as f64 + 1.0;
    if let Some(n) = n {
        matches = matches.min(n.max(0) as f64);
    }
    let cost = matches * escapes as f64;
    (cost > allowed).then(|| {
        format!(
            "replacement too costly for the mailpush sandbox: its {escapes} escapes (%) worked through at each of up to {matches:.0} matches could take {cost:.1e} steps, more than {allowed:.1e}; use fewer escapes, a shorter subject, a limit on replacements, or a function as the replacement"
        )
    })
}

/// `string.find(s, p, init, true)`: Lua's positions (1-based, inclusive), in linear time.
pub fn plain_find(s: &[u8], p: &[u8], init: Option<i64>) -> Option<(i64, i64)> {
    let len = i64::try_from(s.len()).unwrap_or(i64::MAX);
    let init = match init.unwrap_or(1) {
        i if i > 0 => i,
        0 => 1,
        i if i < -len => 1,
        i => len + i + 1,
    };
    if init > len + 1 {
        return None;
    }
    let start = usize::try_from(init - 1).ok()?;
    if p.is_empty() {
        return Some((init, init - 1));
    }
    let at = memchr::memmem::find(&s[start..], p)?;
    let first = i64::try_from(start + at + 1).ok()?;
    Some((first, first + i64::try_from(p.len()).ok()? - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert_eq!(shape(b"abc").repetitions, 0);
        assert!(!shape(b"abc").magic);
        assert_eq!(shape(b"<(.-)>").repetitions, 1);
        assert_eq!(shape(b"^%s*(.-)%s*$").repetitions, 3);
        assert_eq!(shape(b"[%w%.]+@[%w%.]+").repetitions, 2);
        assert_eq!(shape(b"%*").repetitions, 0, "an escaped star is a literal");
        assert_eq!(
            shape(b"[*+-]").repetitions,
            0,
            "quantifiers inside a set are literals"
        );
        assert_eq!(shape(b"%b()").repetitions, 1);
        assert_eq!(shape(b"a?b?").optionals, 2);
        assert_eq!(
            shape(b"(.-)%1b").repetitions,
            2,
            "a back-reference is one more"
        );
        assert_eq!(shape(b"(a)%1%2").repetitions, 2);
    }

    #[test]
    fn costly_calls_are_refused_cheap_ones_are_not() {
        let second = allowed_steps(Duration::from_secs(5), STEPS_PER_SECOND);
        let refusal = |s: &[u8], p: &[u8]| refusal("find", s, p, second);
        let long = vec![b'a'; 2000];
        assert!(refusal(&long, b".-.-b").is_some());
        assert!(refusal(&[b'a'; 20], "a*".repeat(12).as_bytes()).is_some());
        assert!(refusal(&[b'a'; 30], ("a*".repeat(20) + "b").as_bytes()).is_some());
        assert!(refusal(b"Alice <alice@example.com>", b"<(.-)>").is_none());
        // n² looked affordable; the back-reference makes it n³ (about 15 s in C).
        assert!(refusal(&vec![b'a'; 31_000], b"(.-)%1b").is_some());
        assert!(refusal(&vec![b'x'; 20_000], b"%s+").is_none());
        assert!(refusal(&vec![b'a'; 400_000], &vec![b'a'; 200_000]).is_some());
        // A long pattern without repetitions costs its length per start (33 s of CPU).
        let p = [b".".as_slice(), &[b'a'; 100_000], b"b"].concat();
        assert!(refusal(&vec![b'a'; 200_000], &p).is_some());
        // An anchored pattern has one start: trimming a subject line is affordable.
        let subject = vec![b' '; 284];
        assert!(refusal(&subject, b"^%s*(.-)%s*$").is_none());
        assert!(super::refusal("gmatch", &subject, b"^%s*(.-)%s*$", second).is_some());
        // Less is allowed as the call's time runs out.
        let body = vec![b'x'; 20_000];
        let soon = allowed_steps(Duration::from_millis(10), STEPS_PER_SECOND);
        assert!(super::refusal("gsub", &body, b"%s+", soon).is_some());
        // A set costs its length per check (Lua walks it), a frontier its set per start.
        let set = [b"[".as_slice(), &[b'b'; 100_000], b"]"].concat();
        assert!(refusal(&vec![b'a'; 10_000], &set).is_some());
        let frontiers = [b"%f[%w]".repeat(10_000).as_slice(), b"b"].concat();
        assert!(refusal(&b"a ".repeat(50_000), &frontiers).is_some());
        assert!(refusal(&b"a ".repeat(100), &frontiers).is_none());
    }

    #[test]
    fn plain_find_follows_lua() {
        assert_eq!(plain_find(b"hello", b"ll", None), Some((3, 4)));
        assert_eq!(plain_find(b"hello", b"l", Some(4)), Some((4, 4)));
        assert_eq!(plain_find(b"hello", b"h", Some(-5)), Some((1, 1)));
        assert_eq!(plain_find(b"hello", b"h", Some(-99)), Some((1, 1)));
        assert_eq!(plain_find(b"hello", b"", Some(6)), Some((6, 5)));
        assert_eq!(plain_find(b"hello", b"", Some(7)), None);
        assert_eq!(plain_find(b"hello", b"x", None), None);
        assert_eq!(plain_find(b"a.b", b".", None), Some((2, 2)));
    }
}

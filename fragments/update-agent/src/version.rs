//! Version comparison of OS versions (`2026.12.1`, build ids): pure, no I/O.

use std::cmp::Ordering;

/// Compares two versions as dot-separated parts: parts that are both all digits compare as
/// numbers (of any length), other parts as strings; a version that is a prefix of the other
/// is older (`1.2` < `1.2.0`).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let mut left = a.split('.');
    let mut right = b.split('.');
    loop {
        match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let order = compare_part(x, y);
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

fn is_number(part: &str) -> bool {
    !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit())
}

fn compare_part(x: &str, y: &str) -> Ordering {
    if is_number(x) && is_number(y) {
        let x = x.trim_start_matches('0');
        let y = y.trim_start_matches('0');
        x.len().cmp(&y.len()).then_with(|| x.cmp(y))
    } else {
        x.cmp(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering::*;

    #[test]
    fn versions_compare_as_numbers_then_strings() {
        let table = [
            ("1", "1", Equal),
            ("1", "2", Less),
            ("2", "10", Less),
            ("2026.12.1", "2026.2.9", Greater),
            ("2026.12.1", "2026.12.1", Equal),
            ("1.2", "1.2.0", Less),
            ("1.2.0", "1.2", Greater),
            ("0", "2026.1", Less),
            ("007", "7", Equal),
            ("99999999999999999999999", "100000000000000000000000", Less),
            ("1.0rc1", "1.0rc2", Less),
            ("1.a", "1.b", Less),
            ("1.10", "1.9", Greater),
        ];
        for (a, b, want) in table {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
        }
    }
}

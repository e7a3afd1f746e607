//! The part of a file that a diagnostic shows: the lines its span covers and the lines
//! around them, each line longer than [`MAX_LINE`] bytes clipped to a window around the
//! span (`…` marks what is left out), so that an error in a 10 MB one-line file prints a
//! few hundred bytes, not the file. Line and column numbers stay those of the file. Pure.

use std::ops::Range;

use miette::{MietteError, MietteSpanContents, SourceCode, SourceSpan, SpanContents};

/// Lines up to this many bytes are shown whole.
pub const MAX_LINE: usize = 240;
/// Bytes of a clipped line shown in all.
const WINDOW: usize = 200;
/// Of which, at most this many before the span.
const BEFORE: usize = 80;
/// Lines kept around the span (miette shows one).
const CONTEXT: usize = 2;
/// A span over more lines is cut after this many.
const MAX_SPAN_LINES: usize = 12;
/// Marks what a clipped line leaves out.
const ELLIPSIS: &str = "…";

/// One line of the file as shown.
#[derive(Debug, Clone)]
struct Shown {
    /// Where it starts in [`Excerpt::text`].
    at: usize,
    /// The file's line: its start and end (before the newline).
    line: Range<usize>,
    /// The part of it shown.
    window: Range<usize>,
    /// Bytes of the marker before the window.
    marker: usize,
}

impl Shown {
    /// Where file offset `p` (within or at the end of this line) is in the excerpt.
    fn map(&self, p: usize) -> usize {
        self.at + self.marker + (p.clamp(self.window.start, self.window.end) - self.window.start)
    }
}

/// The lines of a file a diagnostic shows, long ones clipped: a miette [`SourceCode`]
/// whose line and column numbers are the file's.
#[derive(Debug, Clone)]
pub struct Excerpt {
    name: String,
    /// The shown lines, clipped.
    text: String,
    /// The number (from 0) of the file's line that `text` starts with.
    first_line: usize,
    lines: Vec<Shown>,
}

/// The line of `text` holding offset `p`: its start and end (before its newline).
fn line_around(text: &str, p: usize) -> Range<usize> {
    let start = text[..p].rfind('\n').map_or(0, |i| i + 1);
    let end = text[p..].find('\n').map_or(text.len(), |i| p + i);
    start..end
}

/// The largest char boundary of `text` at or before `p`.
fn floor_boundary(text: &str, mut p: usize) -> usize {
    while !text.is_char_boundary(p) {
        p -= 1;
    }
    p
}

/// The window of the line `line` of `text` to show so that `anchor` is visible.
fn window(text: &str, line: &Range<usize>, anchor: usize) -> Range<usize> {
    if line.len() <= MAX_LINE {
        return line.clone();
    }
    let anchor = anchor.clamp(line.start, line.end);
    let mut start = anchor.saturating_sub(BEFORE).max(line.start);
    let end = (start + WINDOW).min(line.end);
    if end - start < WINDOW {
        start = end.saturating_sub(WINDOW).max(line.start);
    }
    floor_boundary(text, start)..floor_boundary(text, end)
}

/// `line` of `text` clipped to at most about [`MAX_LINE`] bytes around `anchor`, with `…`
/// where it is cut: for one-line quotes of a file (`path:line: text`).
pub fn clip_line(text: &str, line: Range<usize>, anchor: usize) -> String {
    let w = window(text, &line, anchor);
    let mut out = String::new();
    if w.start > line.start {
        out.push_str(ELLIPSIS);
    }
    out.push_str(&text[w.clone()]);
    if w.end < line.end {
        out.push_str(ELLIPSIS);
    }
    out
}

impl Excerpt {
    /// The excerpt of `text` (the file `name`) around `span`, and `span` in its terms.
    pub fn new(name: String, text: &str, span: Range<usize>) -> (Excerpt, Range<usize>) {
        let start = floor_boundary(text, span.start.min(text.len()));
        let mut end = floor_boundary(text, span.end.clamp(start, text.len()));
        let first = line_around(text, start);
        // The span's last line; a span over many lines is cut after `MAX_SPAN_LINES`.
        let mut last = line_around(
            text,
            if end > start {
                floor_boundary(text, end - 1)
            } else {
                start
            },
        );
        let mut spanned = first.clone();
        for _ in 1..MAX_SPAN_LINES {
            if spanned.end >= last.start {
                break;
            }
            spanned = line_around(text, spanned.end + 1);
        }
        if spanned.end < last.start {
            last = spanned;
            end = last.end;
        }
        // The context lines before and after.
        let mut from = first.clone();
        for _ in 0..CONTEXT {
            if from.start == 0 {
                break;
            }
            from = line_around(text, from.start - 1);
        }
        let mut to = last.clone();
        for _ in 0..CONTEXT {
            if to.end == text.len() {
                break;
            }
            to = line_around(text, to.end + 1);
        }
        let first_line = text.as_bytes()[..from.start]
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        let mut excerpt = Excerpt {
            name,
            text: String::new(),
            first_line,
            lines: Vec::new(),
        };
        let mut line = from;
        loop {
            let anchor = if line.contains(&start) || line.end == start {
                start
            } else if line.start < end && end <= line.end {
                end
            } else {
                line.start
            };
            let window = window(text, &line, anchor);
            let marker = if window.start > line.start {
                ELLIPSIS.len()
            } else {
                0
            };
            excerpt.lines.push(Shown {
                at: excerpt.text.len(),
                line: line.clone(),
                window: window.clone(),
                marker,
            });
            excerpt.text.push_str(&ELLIPSIS[..marker]);
            excerpt.text.push_str(&text[window.clone()]);
            if window.end < line.end {
                excerpt.text.push_str(ELLIPSIS);
            }
            if line.end == to.end {
                break;
            }
            excerpt.text.push('\n');
            line = line_around(text, line.end + 1);
        }
        if to.end < text.len() {
            excerpt.text.push('\n');
        }
        let map = |p: usize| {
            excerpt
                .lines
                .iter()
                .find(|l| l.line.start <= p && p <= l.line.end)
                .map_or(0, |l| l.map(p))
        };
        let mapped = map(start)..map(end).max(map(start));
        (excerpt, mapped)
    }

    /// How much to add to a column of the excerpt at excerpt offset `at` to get the file's.
    fn column_shift(&self, at: usize) -> isize {
        self.lines.iter().rev().find(|l| l.at <= at).map_or(0, |l| {
            (l.window.start - l.line.start) as isize - l.marker as isize
        })
    }
}

impl SourceCode for Excerpt {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn SpanContents<'a> + 'a>, MietteError> {
        let inner = <[u8] as SourceCode>::read_span(
            self.text.as_bytes(),
            span,
            context_lines_before,
            context_lines_after,
        )?;
        // With context before, miette reports column 0 (the start of the first line).
        let column = if context_lines_before == 0 {
            inner
                .column()
                .saturating_add_signed(self.column_shift(span.offset()))
        } else {
            inner.column()
        };
        Ok(Box::new(MietteSpanContents::new_named(
            self.name.clone(),
            inner.data(),
            *inner.span(),
            inner.line() + self.first_line,
            column,
            inner.line_count() + self.first_line,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The excerpt's text and what the span covers in it.
    fn shown(text: &str, span: Range<usize>) -> (String, String) {
        let (e, s) = Excerpt::new("f".into(), text, span);
        let covered = e.text[s].to_string();
        (e.text, covered)
    }

    #[test]
    fn short_files_are_shown_as_they_are() {
        let text = "a = 1\nb = 2\nc = 3\nd = 4\ne = 5\nf = 6\n";
        let (t, covered) = shown(text, 18..23);
        assert_eq!(t, "b = 2\nc = 3\nd = 4\ne = 5\nf = 6\n");
        assert_eq!(covered, "d = 4");
        // A span at the very end, or past it, is clamped.
        let (_, covered) = shown(text, 500..600);
        assert_eq!(covered, "");
    }

    #[test]
    fn a_long_line_is_clipped_around_the_span() {
        let long = format!("x = \"{}{}\"", "a".repeat(5_000_000), "é".repeat(1000));
        let text = format!("top = 1\n{long}\nnext = 2\n");
        let at = text.find('é').unwrap();
        let (e, s) = Excerpt::new("f".into(), &text, at..at + 4);
        assert!(e.text.len() < 600, "{} bytes", e.text.len());
        assert_eq!(&e.text[s.clone()], "éé");
        assert!(e.text.starts_with("top = 1\n…aaa"), "{}", e.text);
        assert!(e.text.ends_with("é…\nnext = 2\n"), "{}", e.text);
        // Line and column stay those of the file.
        let c = e.read_span(&(s.start, s.len()).into(), 0, 0).unwrap();
        assert_eq!((c.line(), c.column()), (1, at - "top = 1\n".len()));
        assert_eq!(c.name(), Some("f"));
    }

    #[test]
    fn a_span_wider_than_the_window_ends_at_its_edge_and_many_lines_are_cut() {
        let text = format!("{}\n", "y".repeat(1000));
        let (t, covered) = shown(&text, 10..900);
        assert_eq!(t, format!("{}…\n", "y".repeat(WINDOW)));
        assert_eq!(covered.len(), WINDOW - 10);
        let text: String = (0..100).map(|i| format!("k{i} = {i}\n")).collect();
        let (e, s) = Excerpt::new("f".into(), &text, 0..text.len());
        assert_eq!(e.text.lines().count(), MAX_SPAN_LINES + CONTEXT);
        assert!(e.text[s].ends_with("k11 = 11"));
    }

    #[test]
    fn quotes_are_clipped() {
        let text = format!("a = \"{}\"", "z".repeat(10_000));
        let q = clip_line(&text, 0..text.len(), 0);
        assert!(q.starts_with("a = \"zz") && q.ends_with("z…") && q.len() < MAX_LINE);
        assert_eq!(clip_line("a = 1", 0..5, 3), "a = 1");
    }
}

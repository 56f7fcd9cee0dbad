//! Trace analysis: the critical path of a trace.
//!
//! The critical path is the chain of work that determined the trace's duration: starting at the
//! root's end and walking back in time, at each moment it follows the child that finished last
//! before that moment (a child that overruns its parent is clipped to the parent's end), and
//! charges the gaps between children to the parent itself. Shortening any segment on the path
//! shortens the request; shortening work off the path does not.
//!
//! The walk is iterative (no recursion), so a maliciously deep trace cannot overflow the stack,
//! and costs O(n log n) for n spans.

use std::collections::HashMap;

use skein_model::{Span, SpanId};

/// One stretch of the critical path: `span_id` was the work that mattered from `start` to `end`
/// (unix nanoseconds, `start < end`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub span_id: SpanId,
    pub start: u64,
    pub end: u64,
}

/// The critical path of a trace, latest segment first; empty for a trace without spans.
///
/// The walk starts at the trace's root (the earliest root when the trace has several pieces;
/// spans whose parent is missing are not attached anywhere and so are never on the path).
pub fn critical_path(spans: &[Span]) -> Vec<Segment> {
    let Some(root) = spans.iter().filter(|s| s.is_root()).min_by_key(|s| (s.start_time_unix_nano, s.span_id))
    else {
        return Vec::new();
    };
    let index: HashMap<SpanId, usize> = spans.iter().enumerate().map(|(i, s)| (s.span_id, i)).collect();
    // Children of every span, latest end first (ties: latest start first).
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); spans.len()];
    for (i, s) in spans.iter().enumerate() {
        if let Some(&parent) = s.parent_span_id.and_then(|p| index.get(&p))
            && parent != i
        {
            children[parent].push(i);
        }
    }
    for list in &mut children {
        list.sort_by(|&a, &b| {
            let (a, b) = (&spans[a], &spans[b]);
            (b.end_time_unix_nano, b.start_time_unix_nano)
                .cmp(&(a.end_time_unix_nano, a.start_time_unix_nano))
        });
    }

    // A frame walks one span's window [lo, cursor) backwards; `next` is its next child to consider.
    struct Frame {
        span: usize,
        lo: u64,
        cursor: u64,
        next: usize,
    }
    let mut path = Vec::new();
    let root_index = index[&root.span_id];
    let mut stack = vec![Frame {
        span: root_index,
        lo: root.start_time_unix_nano,
        cursor: root.end_time_unix_nano.max(root.start_time_unix_nano),
        next: 0,
    }];
    let mut visited = vec![false; spans.len()];
    visited[root_index] = true;
    while let Some(frame) = stack.last_mut() {
        let span = &spans[frame.span];
        // The child that finished last before the cursor: children are sorted by end, so it is the
        // first one not entirely after the cursor. Children entirely after it can never qualify again
        // because the cursor only moves back.
        let kids = &children[frame.span];
        let mut chosen = None;
        while frame.next < kids.len() {
            let c = kids[frame.next];
            frame.next += 1;
            let child = &spans[c];
            if visited[c]
                || child.start_time_unix_nano >= frame.cursor
                || child.end_time_unix_nano <= frame.lo
            {
                continue;
            }
            chosen = Some(c);
            break;
        }
        match chosen {
            None => {
                if frame.lo < frame.cursor {
                    path.push(Segment { span_id: span.span_id, start: frame.lo, end: frame.cursor });
                }
                stack.pop();
            }
            Some(c) => {
                let child = &spans[c];
                let child_end = child.end_time_unix_nano.min(frame.cursor);
                let child_start = child.start_time_unix_nano.max(frame.lo);
                if child_end < frame.cursor {
                    path.push(Segment { span_id: span.span_id, start: child_end, end: frame.cursor });
                }
                frame.cursor = child_start;
                visited[c] = true;
                stack.push(Frame { span: c, lo: child_start, cursor: child_end, next: 0 });
            }
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use skein_model::SpanId;
    use skein_store::testdata::SpanBuilder;

    use super::*;

    fn id(n: u8) -> SpanId {
        SpanId::from_bytes([0, 0, 0, 0, 0, 0, 0, n]).unwrap()
    }

    fn span(n: u8, parent: Option<u8>, start: u64, end: u64) -> Span {
        let mut s = SpanBuilder::new(1, n).build();
        s.span_id = id(n);
        s.parent_span_id = parent.map(id);
        s.start_time_unix_nano = start;
        s.end_time_unix_nano = end;
        s
    }

    fn path(spans: &[Span]) -> Vec<(u8, u64, u64)> {
        critical_path(spans).iter().map(|s| (s.span_id.as_bytes()[7], s.start, s.end)).collect()
    }

    #[test]
    fn sequential_children_are_all_on_the_path_with_the_gaps_charged_to_the_parent() {
        // root 0..100: a 10..40, b 50..90
        let spans = [span(1, None, 0, 100), span(2, Some(1), 10, 40), span(3, Some(1), 50, 90)];
        assert_eq!(path(&spans), vec![(1, 90, 100), (3, 50, 90), (1, 40, 50), (2, 10, 40), (1, 0, 10)]);
    }

    #[test]
    fn of_parallel_children_the_last_to_finish_is_on_the_path() {
        // a 10..60 and b 10..80 in parallel: b determines the end; a overlaps b entirely.
        let spans = [span(1, None, 0, 100), span(2, Some(1), 10, 60), span(3, Some(1), 10, 80)];
        assert_eq!(path(&spans), vec![(1, 80, 100), (3, 10, 80), (1, 0, 10)]);
    }

    #[test]
    fn a_partly_overlapping_child_is_followed_before_the_later_one_started() {
        // b 50..90 last; a 10..60 overlaps b's start, so a counts from 10 to 50.
        let spans = [span(1, None, 0, 100), span(2, Some(1), 10, 60), span(3, Some(1), 50, 90)];
        assert_eq!(path(&spans), vec![(1, 90, 100), (3, 50, 90), (2, 10, 50), (1, 0, 10)]);
    }

    #[test]
    fn a_child_that_overruns_its_parent_is_clipped_and_grandchildren_are_followed() {
        // async child 80..150 outlives the root 0..100; its child 85..95.
        let spans = [span(1, None, 0, 100), span(2, Some(1), 80, 150), span(3, Some(2), 85, 95)];
        assert_eq!(path(&spans), vec![(2, 95, 100), (3, 85, 95), (2, 80, 85), (1, 0, 80)]);
    }

    #[test]
    fn orphans_and_empty_traces_are_never_on_the_path() {
        assert!(critical_path(&[]).is_empty());
        let spans = [span(1, None, 0, 100), span(2, Some(9), 10, 90)];
        assert_eq!(path(&spans), vec![(1, 0, 100)]);
    }

    #[test]
    fn a_deep_chain_does_not_overflow_the_stack() {
        let mut spans = Vec::new();
        let mut prev = None;
        for i in 0..100_000u64 {
            let mut s = SpanBuilder::new(1, 1).build();
            (s.start_time_unix_nano, s.end_time_unix_nano) = (i, 200_000 - i);
            s.span_id = SpanId::from_bytes((i + 1).to_be_bytes()).unwrap();
            s.parent_span_id = prev;
            prev = Some(s.span_id);
            spans.push(s);
        }
        let p = critical_path(&spans);
        // Every span owns its first and last nanosecond; the innermost owns its whole window.
        assert_eq!(p.len(), 2 * 100_000 - 1);
        assert_eq!(p.iter().map(|s| s.end - s.start).sum::<u64>(), 200_000);
    }
}

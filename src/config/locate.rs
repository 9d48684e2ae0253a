//! Finds the line of a field in a TOML text, so that an error found after parsing (an unknown
//! upstream, a bad CIDR deep in a rule) can name `file:line` like a syntax error does.
//!
//! The serde types keep no positions; `toml_edit` keeps them for every key and value. A field path
//! is the one [`crate::policy::CompileError`] and the config validation use:
//! `policy.services[0].rules[2].when.cidr[1]`, read by [`FieldPath::parse`].

use crate::policy::path::{FieldPath, Segment};
use toml_edit::{ImDocument, Item, Value};

enum Node<'a> {
    Item(&'a Item),
    Value(&'a Value),
}

impl<'a> Node<'a> {
    fn span(&self) -> Option<std::ops::Range<usize>> {
        match self {
            Node::Item(Item::Table(t)) => t.span(),
            Node::Item(Item::Value(v)) => v.span(),
            Node::Value(v) => v.span(),
            Node::Item(Item::ArrayOfTables(a)) => a.span(),
            Node::Item(Item::None) => None,
        }
    }

    fn child(&self, seg: &Segment) -> Option<(Node<'a>, Option<std::ops::Range<usize>>)> {
        match (self, seg) {
            (Node::Item(item), Segment::Field(k)) => match item {
                Item::Value(v) => Node::Value(v).child(seg),
                _ => {
                    let table = item.as_table_like()?;
                    let (key, child) = table.get_key_value(k)?;
                    Some((Node::Item(child), key.span()))
                }
            },
            (Node::Item(Item::Value(v)), _) => Node::Value(v).child(seg),
            (Node::Value(v), _) => match (v, seg) {
                (Value::InlineTable(t), Segment::Field(k)) => {
                    let (key, child) = t.get_key_value(k)?;
                    Some((Node::Item(child), key.span()))
                }
                (Value::Array(a), Segment::Index(i)) => {
                    let child = a.get(*i)?;
                    Some((Node::Value(child), child.span()))
                }
                _ => None,
            },
            _ => None,
        }
    }
}

/// The byte offset where the field at `path` (or the deepest part of it that exists) is written.
pub fn offset_of(text: &str, path: &str) -> Option<usize> {
    offset_of_segments(text, FieldPath::parse(path).segments())
}

/// [`offset_of`] for a path already parsed (`path` may be a tail of a [`FieldPath`]'s segments).
pub fn offset_of_segments(text: &str, path: &[Segment]) -> Option<usize> {
    let doc = ImDocument::parse(text).ok()?;
    let mut best = None;
    let mut node = Node::Item(doc.as_item());
    let mut segs = path.iter().peekable();
    while let Some(seg) = segs.next() {
        // An element of an array of tables is a table: continue inside it directly.
        if let (Node::Item(Item::ArrayOfTables(a)), Segment::Index(i)) = (&node, seg) {
            let Some(t) = a.get(*i) else { break };
            best = t.span().map(|s| s.start).or(best);
            let Some(next) = segs.next() else { break };
            let Segment::Field(k) = next else { break };
            let Some((key, child)) = t.get_key_value(k) else {
                break;
            };
            best = key.span().map(|s| s.start).or(best);
            node = Node::Item(child);
            continue;
        }
        let Some((child, key_span)) = node.child(seg) else {
            break;
        };
        best = key_span.or_else(|| child.span()).map(|s| s.start).or(best);
        node = child;
    }
    best
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "listen = [\"127.0.0.1:8080\"]\n\
        [[upstreams]]\nname = \"a\"\nservers = [\"x\"]\n\
        [[upstreams]]\nname = \"b\"\nservers = [\"y\",\n  \"z weight=0\"]\n\
        [policy]\n[[policy.services]]\nname = \"web\"\n\
        [[policy.services.rules]]\nname = \"r\"\nversion = \"v2\"\nwhen = { cidr = [\"1.2.3.4\", \"10.0.0/8\"] }\n";

    fn line(path: &str) -> usize {
        line_col(TEXT, offset_of(TEXT, path).expect("found")).0
    }

    #[test]
    fn finds_fields_in_tables_arrays_and_inline_tables() {
        assert_eq!(line("listen"), 1);
        assert_eq!(line("upstreams[1].name"), 6);
        assert_eq!(line("upstreams[1].servers[1]"), 8);
        assert_eq!(line("policy.services[0].name"), 11);
        assert_eq!(line("policy.services[0].rules[0].when.cidr[1]"), 15);
        assert_eq!(line("policy.services[0].rules[0].version"), 14);
    }

    #[test]
    fn falls_back_to_the_deepest_existing_part() {
        assert_eq!(line("policy.services[0].rules[0].when.not"), 15);
        assert_eq!(line("upstreams[1].weight"), 5);
    }
}

//! The path of a field in a policy document or a request body, for errors that name where the
//! mistake is: `services[0].rules[1].when.cidr[0]`.
//!
//! Validation builds a [`FieldPath`] as it walks the document, one segment at a time, instead of
//! formatting strings; an error carries the path and its message apart, so that the admin API can
//! return the field on its own and the config loader can find the field's line in the user's TOML
//! file from the segments. The text form is the one serde_path_to_error and the admin API use, and
//! [`FieldPath::parse`] reads it back.

use std::fmt;
use std::str::FromStr;

/// One step of a [`FieldPath`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// A field of a table, or a key of a map (`versions.v1`).
    Field(String),
    /// An element of an array.
    Index(usize),
}

/// Where a field is: the segments from the root of the document, shown as
/// `services[0].rules[1].when.cidr[0]`. The empty path is the whole document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FieldPath {
    segments: Vec<Segment>,
}

impl FieldPath {
    /// The path of a top-level field.
    pub fn new(field: impl Into<String>) -> Self {
        FieldPath {
            segments: vec![Segment::Field(field.into())],
        }
    }

    /// The whole document.
    pub fn root() -> Self {
        FieldPath::default()
    }

    /// The path of `name` inside this field.
    #[must_use]
    pub fn field(&self, name: impl Into<String>) -> Self {
        self.with(Segment::Field(name.into()))
    }

    /// The path of element `i` of this array.
    #[must_use]
    pub fn index(&self, i: usize) -> Self {
        self.with(Segment::Index(i))
    }

    /// This path followed by `rest`: `policy` joined with `services[0]` is `policy.services[0]`.
    #[must_use]
    pub fn join(&self, rest: &FieldPath) -> Self {
        let mut segments = Vec::with_capacity(self.segments.len() + rest.segments.len());
        segments.extend_from_slice(&self.segments);
        segments.extend_from_slice(&rest.segments);
        FieldPath { segments }
    }

    /// The steps from the root.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// True for the whole document.
    pub fn is_root(&self) -> bool {
        self.segments.is_empty()
    }

    /// Reads the text form back: `a.b[2].c`. Never fails: text that is not a path is read as
    /// well as it can (a field named `a[x]` stays a field), since paths come from error messages.
    pub fn parse(text: &str) -> Self {
        let mut segments = Vec::new();
        for part in text.split('.').filter(|p| !p.is_empty()) {
            match split_indexes(part) {
                Some((name, indexes)) => {
                    if !name.is_empty() {
                        segments.push(Segment::Field(name.to_owned()));
                    }
                    segments.extend(indexes.into_iter().map(Segment::Index));
                }
                None => segments.push(Segment::Field(part.to_owned())),
            }
        }
        FieldPath { segments }
    }

    fn with(&self, segment: Segment) -> Self {
        let mut segments = Vec::with_capacity(self.segments.len() + 1);
        segments.extend_from_slice(&self.segments);
        segments.push(segment);
        FieldPath { segments }
    }
}

/// `name[1][2]` as `("name", [1, 2])`; `None` when what follows the name is not indexes.
fn split_indexes(part: &str) -> Option<(&str, Vec<usize>)> {
    let (name, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
    let mut indexes = Vec::new();
    while let Some(inner) = rest.strip_prefix('[') {
        let (index, after) = inner.split_once(']')?;
        indexes.push(index.parse().ok()?);
        rest = after;
    }
    rest.is_empty().then_some((name, indexes))
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Field(name) if i == 0 => f.write_str(name)?,
                Segment::Field(name) => write!(f, ".{name}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

impl FromStr for FieldPath {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(FieldPath::parse(text))
    }
}

/// Reads the text form ([`FieldPath::parse`]), so that a request field can be named as written:
/// `EditError::invalid("version", ...)`.
impl From<&str> for FieldPath {
    fn from(text: &str) -> Self {
        FieldPath::parse(text)
    }
}

/// The text form, for messages and for callers that keep fields as strings.
impl From<FieldPath> for String {
    fn from(path: FieldPath) -> String {
        path.to_string()
    }
}

/// Serialized as its text form (`"services[0].name"`), as the admin API shows it.
impl serde::Serialize for FieldPath {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for FieldPath {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Ok(FieldPath::parse(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_fields_and_indexes_as_the_docs_write_them() {
        let rule = FieldPath::new("services").index(0).field("rules").index(1);
        let cidr = rule.field("when").field("cidr").index(0);
        assert_eq!(cidr.to_string(), "services[0].rules[1].when.cidr[0]");
        assert_eq!(rule.to_string(), "services[0].rules[1]");
        assert_eq!(FieldPath::new("version").to_string(), "version");
        assert_eq!(FieldPath::root().to_string(), "");
        assert!(FieldPath::root().is_root());
        assert_eq!(
            FieldPath::root().index(2).field("key").to_string(),
            "[2].key"
        );
        assert_eq!(
            FieldPath::new("policy").join(&cidr).to_string(),
            "policy.services[0].rules[1].when.cidr[0]"
        );
        assert_eq!(String::from(rule), "services[0].rules[1]");
    }

    #[test]
    fn text_reads_back_into_the_same_path() {
        for text in [
            "services[0].rules[1].when.cidr[0]",
            "services[0].versions.v1",
            "entries[3].key",
            "matrix[1][2]",
            "version",
            "",
        ] {
            let path = FieldPath::parse(text);
            assert_eq!(path.to_string(), text);
            assert_eq!(text.parse::<FieldPath>().unwrap(), path);
        }
        assert_eq!(
            FieldPath::parse("a[2].b").segments(),
            [
                Segment::Field("a".into()),
                Segment::Index(2),
                Segment::Field("b".into())
            ]
        );
        // Moved from config::locate, which reads paths through this parser.
        assert_eq!(
            FieldPath::parse("a.b[2][3].c").segments(),
            [
                Segment::Field("a".into()),
                Segment::Field("b".into()),
                Segment::Index(2),
                Segment::Index(3),
                Segment::Field("c".into())
            ]
        );
        // Not an index: the part stays one field.
        assert_eq!(
            FieldPath::parse("a[x].b").segments(),
            [Segment::Field("a[x]".into()), Segment::Field("b".into())]
        );
        assert_eq!(
            FieldPath::parse("If-Match").segments(),
            [Segment::Field("If-Match".into())]
        );
    }

    #[test]
    fn serializes_as_text() {
        let path = FieldPath::new("services").index(0).field("name");
        let json = serde_json::to_string(&path).unwrap();
        assert_eq!(json, r#""services[0].name""#);
        assert_eq!(serde_json::from_str::<FieldPath>(&json).unwrap(), path);
    }
}

//! The policy's revision on the wire: the number every change moves by one, sent as the `ETag`
//! of every answer about the policy (`"7"`) and expected back in `If-Match` by a change that
//! must not overwrite someone else's. This file owns the rule for writing and reading both.

use serde::{Deserialize, Serialize};

/// A policy revision (0: no policy stored yet).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Revision(pub u64);

/// A header value that is not a revision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a policy revision like \"7\" (the ETag of a GET)")]
pub struct BadRevision {
    /// The value as it was sent.
    pub value: String,
}

impl Revision {
    /// The `ETag` of an answer about this revision: the number in quotes, a strong tag.
    pub fn etag(self) -> String {
        format!("\"{}\"", self.0)
    }

    /// Reads an `ETag` (or one entity tag of `If-Match`): `"7"`, `W/"7"` or a bare `7`.
    pub fn parse_tag(value: &str) -> Result<Revision, BadRevision> {
        let v = value.trim();
        let v = v.strip_prefix("W/").unwrap_or(v).trim_matches('"');
        v.parse::<u64>().map(Revision).map_err(|_| BadRevision {
            value: value.to_string(),
        })
    }
}

impl std::fmt::Display for Revision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What a change expects the policy to be at: the `If-Match` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IfMatch {
    /// No header, or `*`: any revision; a change that lost a race is made again on the newer
    /// policy.
    #[default]
    Any,
    /// Exactly this revision, or the change is refused as stale.
    Exactly(Revision),
}

impl IfMatch {
    /// Reads an `If-Match` value: `*`, or a revision as [`Revision::parse_tag`] reads it.
    pub fn parse(value: &str) -> Result<IfMatch, BadRevision> {
        if value.trim() == "*" {
            return Ok(IfMatch::Any);
        }
        Revision::parse_tag(value).map(IfMatch::Exactly)
    }

    /// The header to send, `None` for [`IfMatch::Any`] (no header at all).
    pub fn header_value(self) -> Option<String> {
        match self {
            IfMatch::Any => None,
            IfMatch::Exactly(revision) => Some(revision.etag()),
        }
    }

    /// The revision a change must start from, if any.
    pub fn expected(self) -> Option<u64> {
        match self {
            IfMatch::Any => None,
            IfMatch::Exactly(Revision(n)) => Some(n),
        }
    }
}

impl From<Option<u64>> for IfMatch {
    fn from(revision: Option<u64>) -> Self {
        revision.map_or(IfMatch::Any, |n| IfMatch::Exactly(Revision(n)))
    }
}

/// An answer about the policy that says its revision in the body, next to its own fields
/// (`{"revision": 8, "service": "web", ...}`); the `ETag` says the same.
///
/// The answer to a change that left the policy as it was says `"unchanged": true`: nothing was
/// written, and `revision` is the current one (absent from every other answer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revisioned<T> {
    pub revision: Revision,
    /// True when a change found nothing to change: no revision was made.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unchanged: bool,
    #[serde(flatten)]
    pub body: T,
}

impl<T> Revisioned<T> {
    /// An answer at `revision` (a read, or a change that made it).
    pub fn new(revision: impl Into<Revision>, body: T) -> Self {
        Revisioned::change(revision, false, body)
    }

    /// The answer to a change: the revision it made, or the current one when it was
    /// `unchanged`.
    pub fn change(revision: impl Into<Revision>, unchanged: bool, body: T) -> Self {
        Revisioned {
            revision: revision.into(),
            unchanged,
            body,
        }
    }
}

/// A document sent as it is (a route, a service, the whole policy), whose revision travels only
/// in the `ETag`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tagged<T> {
    pub revision: Revision,
    pub body: T,
}

impl From<u64> for Revision {
    fn from(n: u64) -> Self {
        Revision(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_the_revision_in_quotes() {
        assert_eq!(Revision(7).etag(), "\"7\"");
        assert_eq!(Revision::parse_tag("\"7\""), Ok(Revision(7)));
        assert_eq!(Revision::parse_tag(&Revision(12).etag()), Ok(Revision(12)));
    }

    #[test]
    fn if_match_reads_revisions() {
        assert_eq!(IfMatch::parse("\"7\""), Ok(IfMatch::Exactly(Revision(7))));
        assert_eq!(IfMatch::parse("7"), Ok(IfMatch::Exactly(Revision(7))));
        assert_eq!(
            IfMatch::parse("W/\"12\""),
            Ok(IfMatch::Exactly(Revision(12)))
        );
        assert_eq!(IfMatch::parse(" * "), Ok(IfMatch::Any));
        let e = IfMatch::parse("abc").unwrap_err();
        assert_eq!(
            e.to_string(),
            "`abc` is not a policy revision like \"7\" (the ETag of a GET)"
        );
        assert!(IfMatch::parse("\"-1\"").is_err());
    }

    #[test]
    fn if_match_is_sent_as_an_etag() {
        assert_eq!(
            IfMatch::from(Some(3)).header_value().as_deref(),
            Some("\"3\"")
        );
        assert_eq!(IfMatch::from(None).header_value(), None);
        assert_eq!(IfMatch::from(Some(3)).expected(), Some(3));
        let sent = IfMatch::from(Some(9)).header_value().unwrap();
        assert_eq!(IfMatch::parse(&sent), Ok(IfMatch::Exactly(Revision(9))));
    }

    #[test]
    fn revisioned_answers_put_the_revision_beside_their_fields() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Body {
            service: String,
        }
        let answer = Revisioned::new(
            4,
            Body {
                service: "web".into(),
            },
        );
        let json = serde_json::to_value(&answer).unwrap();
        assert_eq!(json, serde_json::json!({"revision": 4, "service": "web"}));
        assert_eq!(
            serde_json::from_value::<Revisioned<Body>>(json).unwrap(),
            answer
        );
        // A change that changed nothing says so; a body without the field reads as changed.
        let same = Revisioned::change(
            4,
            true,
            Body {
                service: "web".into(),
            },
        );
        let json = serde_json::to_value(&same).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"revision": 4, "unchanged": true, "service": "web"})
        );
        assert_eq!(
            serde_json::from_value::<Revisioned<Body>>(json).unwrap(),
            same
        );
    }
}

//! Documents given to `policy put`, `routes put`, `services put` and `rules add|replace`: read
//! from a file (TOML for a `.toml` file, else JSON), from `-` (stdin, JSON) or inline (an
//! argument starting with `{`), straight into the policy's own types.
//!
//! Errors name the place in the user's text, not in the JSON that goes over the wire: a document
//! that does not fit its type is a usage error at `file:line:column` with the field
//! (`policy.toml:6:1: services[0].stabel: unknown field ...`; for JSON, serde_json's own
//! `at line L column C`), and when the API refuses a field
//! of a TOML document (`services[0].rules[1].when.cidr[0]`), the refusal is shown at the line
//! that field is written on, found with the config's own locator (`config::locate`).

use super::client::{Answer, Api};
use super::{CtlError, Refusal};
use crate::api::IfMatch;
use crate::config::locate;
use crate::policy::path::{FieldPath, Segment};
use http::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::Read;

/// Which part of the policy a document is: where an API field path lands in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The whole policy: field paths are the document's own.
    Policy,
    /// One route: `routes[i].` is the document.
    Route,
    /// One service: `services[i].` is the document.
    Service,
    /// One rule: `services[i].rules[j].` is the document.
    Rule,
}

impl Part {
    /// The steps of an API field path above the document (each followed by an index).
    fn above(self) -> &'static [&'static str] {
        match self {
            Part::Policy => &[],
            Part::Route => &["routes"],
            Part::Service => &["services"],
            Part::Rule => &["services", "rules"],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Toml,
    Json,
}

/// A document read into its type, with the text it came from.
#[derive(Debug)]
pub struct Document<T> {
    pub value: T,
    /// How messages name it: the file, `stdin` or `argument`.
    name: String,
    text: String,
    format: Format,
    part: Part,
}

/// Reads the document `arg` names as a `T`, the `part` of the policy it is.
pub fn read<T: DeserializeOwned>(arg: &str, part: Part) -> Result<Document<T>, CtlError> {
    let (name, text, format) = if arg.trim_start().starts_with('{') {
        ("argument".to_string(), arg.to_string(), Format::Json)
    } else {
        let format = if arg.ends_with(".toml") {
            Format::Toml
        } else {
            Format::Json
        };
        let name = if arg == "-" { "stdin" } else { arg };
        (name.to_string(), read_text(arg)?, format)
    };
    let value = match format {
        Format::Toml => from_toml(&name, &text)?,
        Format::Json => from_json(&name, &text)?,
    };
    Ok(Document {
        value,
        name,
        text,
        format,
        part,
    })
}

/// The text of a file, or of stdin for `-`.
pub fn read_text(arg: &str) -> Result<String, CtlError> {
    if arg == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CtlError::Usage(format!("cannot read stdin: {e}")))?;
        return Ok(text);
    }
    std::fs::read_to_string(arg).map_err(|e| CtlError::Usage(format!("cannot read {arg}: {e}")))
}

/// `path: ` when the error is about a field (not about the document as a whole).
fn field_prefix(path: &serde_path_to_error::Path) -> String {
    let path = path.to_string();
    if path == "." {
        String::new()
    } else {
        format!("{path}: ")
    }
}

fn from_toml<T: DeserializeOwned>(name: &str, text: &str) -> Result<T, CtlError> {
    serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
        let field = field_prefix(e.path());
        let inner = e.inner();
        let at = inner.span().map_or_else(String::new, |span| {
            let (line, column) = locate::line_col(text, span.start);
            format!("{line}:{column}: ")
        });
        CtlError::Usage(format!("{name}:{at}{field}{}", inner.message().trim_end()))
    })
}

fn from_json<T: DeserializeOwned>(name: &str, text: &str) -> Result<T, CtlError> {
    // serde_json's message ends with the line and column already.
    let shape =
        |field: String, e: &serde_json::Error| CtlError::Usage(format!("{name}: {field}{e}"));
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| shape(field_prefix(e.path()), e.inner()))?;
    de.end().map_err(|e| shape(String::new(), &e))?;
    Ok(value)
}

impl<T: Serialize> Document<T> {
    /// Sends the document; a refusal about one of its fields is shown at its line.
    pub async fn send<A: DeserializeOwned>(
        &self,
        api: &Api,
        method: Method,
        path: &str,
        if_match: IfMatch,
    ) -> Result<Answer<A>, CtlError> {
        let body = super::json_body(&self.value)?;
        api.call(method, path, if_match, Some(body))
            .await
            .map_err(|e| self.locate(e))
    }
}

impl<T> Document<T> {
    /// Shows a refusal about one of this document's fields at the line it is written on.
    pub fn locate(&self, error: CtlError) -> CtlError {
        match error {
            CtlError::Refused(mut refusal) => {
                self.place(&mut refusal);
                CtlError::Refused(refusal)
            }
            other => other,
        }
    }

    fn place(&self, refusal: &mut Refusal) {
        if self.format != Format::Toml {
            return;
        }
        let Some(field) = refusal.field.as_deref() else {
            return;
        };
        let path = FieldPath::parse(field);
        let Some(inside) = within(field, &path, self.part) else {
            return;
        };
        let offset = if inside.is_empty() {
            Some(0)
        } else {
            locate::offset_of_segments(&self.text, inside)
        };
        if let Some(offset) = offset {
            let (line, column) = locate::line_col(&self.text, offset);
            refusal.message = format!("{}:{line}:{column}: {}", self.name, refusal.message);
        }
    }
}

/// The part of an API field path inside a document that is `part` of the policy
/// (`services[0].rules[2].when.cidr[1]` in a rule: `when.cidr[1]`); `None` when the path is
/// elsewhere. A path of the request body itself (`when.heder`) is inside already. `path` is
/// `field` parsed.
fn within<'p>(field: &str, path: &'p FieldPath, part: Part) -> Option<&'p [Segment]> {
    let segments = path.segments();
    let above = part.above();
    let under = above.iter().enumerate().all(|(i, step)| {
        matches!(
            (segments.get(2 * i), segments.get(2 * i + 1)),
            (Some(Segment::Field(f)), Some(Segment::Index(_))) if f == step
        )
    });
    if under {
        Some(&segments[2 * above.len()..])
    } else if field.starts_with("routes[") || field.starts_with("services[") {
        // A path into the whole policy, outside this part.
        None
    } else {
        // A path of the document as it was sent.
        Some(segments)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::{RuleDoc, ServiceDoc};
    use crate::policy::PolicyDoc;
    use http::StatusCode;

    const POLICY: &str = "[[routes]]\nservice = \"web\"\n\n[[services]]\nname = \"web\"\n\
        stable = \"v1\"\nversions = { v1 = \"a\", v2 = \"b\" }\n\n\
        [[services.rules]]\nname = \"office\"\nversion = \"v2\"\n\
        when = { cidr = [\"10.0.0.0/8\", \"10.1.0.0/33\"] }\n";

    fn doc<T>(value: T, text: &str, part: Part) -> Document<T> {
        Document {
            value,
            name: "p.toml".into(),
            text: text.into(),
            format: Format::Toml,
            part,
        }
    }

    fn refused(field: &str) -> CtlError {
        CtlError::Refused(Refusal {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: None,
            field: Some(field.to_string()),
            message: format!("{field}: bad"),
            raw: serde_json::Value::Null,
        })
    }

    fn usage<T: std::fmt::Debug>(result: Result<T, CtlError>) -> String {
        match result {
            Err(CtlError::Usage(m)) => m,
            other => panic!("not a usage error: {other:?}"),
        }
    }

    fn message(e: CtlError) -> String {
        match e {
            CtlError::Refused(r) => r.message,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_toml_shape_error_names_line_column_and_field() {
        let toml_error = |text: &str| usage(from_toml::<RuleDoc>("r.toml", text));
        let text = POLICY.replace("stable = \"v1\"", "stabel = \"v1\"");
        assert_eq!(
            usage(from_toml::<PolicyDoc>("p.toml", &text)),
            "p.toml:6:1: services[0].stabel: unknown field `stabel`, expected one of `name`, \
             `stable`, `versions`, `override`, `follow`, `rules`, `split`, `previous_stable`, \
             `previous_weight`, `rollout`, `mirror`"
        );
        assert_eq!(
            toml_error("name = \"x\"\nversion = 3\nwhen = {}\n"),
            "r.toml:2:11: version: invalid type: integer `3`, expected a string"
        );
        assert_eq!(
            toml_error("name = \"x\nversion = 3\n"),
            "r.toml:1:10: invalid basic string"
        );
    }

    #[test]
    fn a_json_shape_error_names_the_field_and_serde_json_the_position() {
        let json_error = |name: &str, text: &str| usage(from_json::<ServiceDoc>(name, text));
        let m = json_error("argument", "{\"name\": \"a\",\n \"stabel\": 1}");
        assert!(
            m.starts_with("argument: stabel: unknown field `stabel`")
                && m.ends_with("at line 2 column 9"),
            "{m}"
        );
        assert_eq!(
            json_error(
                "f.json",
                r#"{"name": "a", "stable": "v", "versions": {}} x"#
            ),
            "f.json: trailing characters at line 1 column 46"
        );
    }

    #[test]
    fn an_api_field_error_is_shown_at_its_line_in_the_toml() {
        let placed = |d: &Document<_>, field: &str| message(d.locate(refused(field)));
        let policy: PolicyDoc = toml::from_str(POLICY).unwrap();
        let d = doc(policy, POLICY, Part::Policy);
        for (field, shown) in [
            (
                "services[0].rules[0].when.cidr[1]",
                "p.toml:12:32: services[0].rules[0].when.cidr[1]: bad",
            ),
            ("routes[0].service", "p.toml:2:1: routes[0].service: bad"),
        ] {
            assert_eq!(placed(&d, field), shown);
        }

        // One rule on its own: the API names it inside the whole policy.
        let rule_text =
            "name = \"office\"\nversion = \"v2\"\nwhen = { cidr = [\"10.1.0.0/33\"] }\n";
        let rule: RuleDoc = toml::from_str(rule_text).unwrap();
        let d = doc(rule, rule_text, Part::Rule);
        let placed = |d: &Document<_>, field: &str| message(d.locate(refused(field)));
        for (field, shown) in [
            (
                "services[0].rules[2].when.cidr[0]",
                "p.toml:3:18: services[0].rules[2].when.cidr[0]: bad",
            ),
            ("when.heder", "p.toml:3:1: when.heder: bad"),
            (
                "services[0].rules[2]",
                "p.toml:1:1: services[0].rules[2]: bad",
            ),
            // A field elsewhere in the policy stays as the API wrote it.
            ("routes[1].service", "routes[1].service: bad"),
        ] {
            assert_eq!(placed(&d, field), shown);
        }
    }

    /// [`within`] with its answer written back as a path.
    fn inside(field: &str, part: Part) -> Option<String> {
        let path = FieldPath::parse(field);
        within(field, &path, part).map(|segments| {
            segments
                .iter()
                .fold(FieldPath::root(), |p, s| match s {
                    Segment::Field(f) => p.field(f),
                    Segment::Index(i) => p.index(*i),
                })
                .to_string()
        })
    }

    #[test]
    fn paths_inside_a_part() {
        assert_eq!(
            inside("services[3].rules[1].when", Part::Rule),
            Some("when".to_string())
        );
        assert_eq!(
            inside("services[3].split.weights.x", Part::Service),
            Some("split.weights.x".to_string())
        );
        assert_eq!(inside("services[3].split", Part::Rule), None);
        assert_eq!(inside("routes[0].service", Part::Service), None);
        assert_eq!(
            inside("routes[0].service", Part::Route),
            Some("service".to_string())
        );
        assert_eq!(inside("stabel", Part::Service), Some("stabel".to_string()));
        assert_eq!(
            inside("services[0].x", Part::Policy),
            Some("services[0].x".to_string())
        );
    }
}

//! Edits of a policy document, as the admin API makes them: pure functions on a [`PolicyDoc`].
//!
//! Each function changes one part of the document (a route, a service, a version, a rule, the
//! weights) or makes one rollout step (promote, rollback). None of them validates the document as
//! a whole: the caller compiles the edited copy and applies it only if it compiles, so an edit
//! here may leave something `compile` rejects (a rule naming a deleted version) and the change is
//! refused with the path of that field.
//!
//! # Rollout steps
//! - **promote** `V`: `V` becomes the stable version. Nothing else the operator set up is lost:
//!   the rules, the split's `by` and `salt` and the other versions' weights stay as they are.
//!   Only `V`'s own weight leaves the split (the stable version takes none: it gets what the
//!   weights leave, so every request no rule sends elsewhere now goes to `V`); it is kept in
//!   `previous_weight`, and the old stable version in `previous_stable`, the rollback target.
//! - **rollback** right after a promote undoes it exactly: the old stable version is stable
//!   again and `V` gets its weight back, with the rules, `by` and salt as they were (and
//!   `previous_stable`, `previous_weight` are cleared). A second rollback, or one with no
//!   promote to undo, stops the canary: every split weight goes to 0 (the split's `by` and salt
//!   stay, so raising a weight again brings back the same users). Either way the rules are kept,
//!   or cleared on request. So a rollback undoes the latest step: the last promotion, or else a
//!   canary in progress.
//! - Starting a new canary (a weight above 0, a rule added or replaced) clears `previous_stable`
//!   and `previous_weight`: the promotion is accepted, and a later rollback only stops the new
//!   canary.
//!
//! Because a promote keeps the rules, an operator whose next release goes to the same gray
//! servers (the original designs' way: gray users on gray servers, everyone else on production)
//! runs each cycle as: promote (everyone on the gray servers, which run the new release), upgrade
//! the production servers, rollback (production is stable again, now on the new release, and
//! the gray rules are ready for the next cycle, their users on the gray servers). Clearing the
//! gray list's data, if wanted, keeps everyone on production until the next cycle starts.
//!
//! # Overlapping ranges
//! [`overlapping_ranges`] finds two rules of one service whose whole condition is a `range` test
//! on the same source (same header, cookie, query parameter or client IP, through the same lookup)
//! with ranges that share a number and different versions: since the first matching rule wins, the
//! second rule silently never sees those numbers, which is always a mistake. The admin API refuses
//! a change that adds such a pair ([`check_no_new_overlaps`]); `compile` does not reject them, so
//! that a stored policy keeps loading.

use super::model::{Condition, IdentityDoc, PolicyDoc, RouteDoc, RuleDoc, ServiceDoc, SplitDoc};
use super::path::FieldPath;
use std::collections::BTreeMap;

/// Why an edit cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EditError {
    pub kind: EditErrorKind,
    /// The field of the document (`services[0].rules[1]`) or of the request (`version`) at fault.
    pub field: Option<FieldPath>,
    /// What is wrong, without the field.
    pub message: String,
}

/// What kind of refusal an [`EditError`] is; the admin API maps it to a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditErrorKind {
    /// The route, service, version or rule does not exist.
    NotFound,
    /// A create found one with the same name.
    Exists,
    /// The edit makes no sense (promote the stable version, delete a service a route uses).
    Invalid,
}

impl EditError {
    fn not_found(message: String) -> Self {
        EditError {
            kind: EditErrorKind::NotFound,
            field: None,
            message,
        }
    }

    fn exists(field: FieldPath, message: String) -> Self {
        EditError {
            kind: EditErrorKind::Exists,
            field: Some(field),
            message,
        }
    }

    /// An edit that makes no sense, about `field`.
    pub fn invalid(field: impl Into<FieldPath>, message: impl Into<String>) -> Self {
        EditError {
            kind: EditErrorKind::Invalid,
            field: Some(field.into()),
            message: message.into(),
        }
    }
}

/// `routes[i]`.
fn route_field(i: usize) -> FieldPath {
    FieldPath::new("routes").index(i)
}

/// `services[i]`.
fn service_field(i: usize) -> FieldPath {
    FieldPath::new("services").index(i)
}

// ---------------------------------------------------------------------------------------------
// Routes

/// The name a route is addressed by: its `name`, else its service.
pub fn route_name(route: &RouteDoc) -> &str {
    route.name.as_deref().unwrap_or(&route.service)
}

/// The index of the route named `name`.
pub fn route_index(doc: &PolicyDoc, name: &str) -> Result<usize, EditError> {
    let found: Vec<usize> = doc
        .routes
        .iter()
        .enumerate()
        .filter(|(_, r)| route_name(r) == name)
        .map(|(i, _)| i)
        .collect();
    match found.as_slice() {
        [] => Err(EditError::not_found(format!("no route named `{name}`"))),
        [one] => Ok(*one),
        [first, ..] => Err(EditError::invalid(
            route_field(*first).field("name"),
            format!(
                "{} routes are named `{name}`; give them distinct `name`s (replace the whole policy) to address them one by one",
                found.len()
            ),
        )),
    }
}

/// Adds a route; refused if one with the same name exists.
pub fn create_route(doc: &mut PolicyDoc, route: RouteDoc) -> Result<(), EditError> {
    let name = route_name(&route).to_string();
    if let Some(i) = doc.routes.iter().position(|r| route_name(r) == name) {
        return Err(EditError::exists(
            route_field(i),
            format!("a route named `{name}` exists; replace it with PUT"),
        ));
    }
    doc.routes.push(route);
    Ok(())
}

/// Replaces the route named `name`, or adds it; returns true if it was added. The route keeps the
/// name it is addressed by.
pub fn put_route(doc: &mut PolicyDoc, name: &str, mut route: RouteDoc) -> Result<bool, EditError> {
    if route_name(&route) != name {
        route.name = Some(name.to_string());
    }
    match route_index(doc, name) {
        Ok(i) => {
            doc.routes[i] = route;
            Ok(false)
        }
        Err(e) if e.kind == EditErrorKind::NotFound => {
            doc.routes.push(route);
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

pub fn delete_route(doc: &mut PolicyDoc, name: &str) -> Result<RouteDoc, EditError> {
    let i = route_index(doc, name)?;
    Ok(doc.routes.remove(i))
}

// ---------------------------------------------------------------------------------------------
// Services

pub fn service_index(doc: &PolicyDoc, name: &str) -> Result<usize, EditError> {
    doc.services
        .iter()
        .position(|s| s.name == name)
        .ok_or_else(|| EditError::not_found(format!("no service named `{name}`")))
}

fn service_mut<'a>(doc: &'a mut PolicyDoc, name: &str) -> Result<&'a mut ServiceDoc, EditError> {
    let i = service_index(doc, name)?;
    Ok(&mut doc.services[i])
}

pub fn create_service(doc: &mut PolicyDoc, service: ServiceDoc) -> Result<(), EditError> {
    if let Ok(i) = service_index(doc, &service.name) {
        return Err(EditError::exists(
            service_field(i).field("name"),
            format!(
                "a service named `{}` exists; replace it with PUT",
                service.name
            ),
        ));
    }
    doc.services.push(service);
    Ok(())
}

/// Replaces the service named `name`, or adds it; returns true if it was added. The body must
/// carry the same name: renaming a service would leave its routes pointing nowhere.
pub fn put_service(
    doc: &mut PolicyDoc,
    name: &str,
    service: ServiceDoc,
) -> Result<bool, EditError> {
    if service.name != name {
        return Err(EditError::invalid(FieldPath::new("name"),
            format!(
                "the body names service `{}` but the path names `{name}`; a service cannot be renamed in place",
                service.name
            ),
        ));
    }
    match service_index(doc, name) {
        Ok(i) => {
            doc.services[i] = service;
            Ok(false)
        }
        Err(_) => {
            doc.services.push(service);
            Ok(true)
        }
    }
}

/// Deletes a service; refused while a route leads to it.
pub fn delete_service(doc: &mut PolicyDoc, name: &str) -> Result<ServiceDoc, EditError> {
    let i = service_index(doc, name)?;
    if let Some((r, route)) = doc
        .routes
        .iter()
        .enumerate()
        .find(|(_, r)| r.service == name)
    {
        return Err(EditError::invalid(
            route_field(r).field("service"),
            format!(
                "route `{}` leads to service `{name}`; delete or change the route first",
                route_name(route)
            ),
        ));
    }
    Ok(doc.services.remove(i))
}

// ---------------------------------------------------------------------------------------------
// Versions

/// Sets the upstream of a version, adding the version if it is new; returns true if it was added.
pub fn put_version(
    doc: &mut PolicyDoc,
    service: &str,
    version: &str,
    upstream: String,
) -> Result<bool, EditError> {
    if version.trim().is_empty() {
        return Err(EditError::invalid(
            FieldPath::new("name"),
            "a version needs a name",
        ));
    }
    let s = service_mut(doc, service)?;
    Ok(s.versions.insert(version.to_string(), upstream).is_none())
}

/// Adds a version; refused if it exists.
pub fn create_version(
    doc: &mut PolicyDoc,
    service: &str,
    version: &str,
    upstream: String,
) -> Result<(), EditError> {
    let i = service_index(doc, service)?;
    if doc.services[i].versions.contains_key(version) {
        return Err(EditError::exists(
            service_field(i).field("versions").field(version),
            format!("service `{service}` already has a version `{version}`; replace it with PUT"),
        ));
    }
    put_version(doc, service, version, upstream).map(drop)
}

/// Deletes a version. Refused for the stable version; its split weight and rollback target go
/// with it (a rule that still sends to it makes the change fail to compile, naming the rule).
pub fn delete_version(doc: &mut PolicyDoc, service: &str, version: &str) -> Result<(), EditError> {
    let i = service_index(doc, service)?;
    let s = &mut doc.services[i];
    if s.stable == version {
        return Err(EditError::invalid(
            service_field(i).field("stable"),
            format!("`{version}` is the stable version of `{service}`; promote another one first"),
        ));
    }
    if s.versions.remove(version).is_none() {
        return Err(EditError::not_found(format!(
            "service `{service}` has no version `{version}`"
        )));
    }
    if let Some(split) = &mut s.split {
        split.weights.remove(version);
    }
    if s.previous_stable.as_deref() == Some(version) {
        s.previous_stable = None;
        s.previous_weight = None;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Rules

/// Where rule `rule` of `service` is: (service index, rule index).
pub fn rule_index(doc: &PolicyDoc, service: &str, rule: &str) -> Result<(usize, usize), EditError> {
    let s = service_index(doc, service)?;
    let r = doc.services[s]
        .rules
        .iter()
        .position(|r| r.name == rule)
        .ok_or_else(|| EditError::not_found(format!("service `{service}` has no rule `{rule}`")))?;
    Ok((s, r))
}

/// Inserts a rule at `position` (default: last); refused if one with its name exists. Starts a
/// new canary: the rollback target of the last promote is dropped.
pub fn add_rule(
    doc: &mut PolicyDoc,
    service: &str,
    rule: RuleDoc,
    position: Option<usize>,
) -> Result<(), EditError> {
    let i = service_index(doc, service)?;
    let s = &mut doc.services[i];
    if let Some(r) = s.rules.iter().position(|r| r.name == rule.name) {
        return Err(EditError::exists(
            service_field(i).field("rules").index(r).field("name"),
            format!("service `{service}` already has a rule `{}`", rule.name),
        ));
    }
    let at = position.unwrap_or(s.rules.len());
    if at > s.rules.len() {
        return Err(EditError::invalid(
            FieldPath::new("position"),
            format!(
                "position {at} is past the end (service `{service}` has {} rules)",
                s.rules.len()
            ),
        ));
    }
    s.rules.insert(at, rule);
    accept_promotion(s);
    Ok(())
}

/// Replaces the rule named `name` in place (it may be renamed, if the new name is free). Starts a
/// new canary, like [`add_rule`].
pub fn replace_rule(
    doc: &mut PolicyDoc,
    service: &str,
    name: &str,
    rule: RuleDoc,
) -> Result<(), EditError> {
    let (s, r) = rule_index(doc, service, name)?;
    let svc = &mut doc.services[s];
    if rule.name != name {
        if let Some(other) = svc.rules.iter().position(|x| x.name == rule.name) {
            return Err(EditError::exists(
                service_field(s).field("rules").index(other).field("name"),
                format!("service `{service}` already has a rule `{}`", rule.name),
            ));
        }
    }
    svc.rules[r] = rule;
    accept_promotion(svc);
    Ok(())
}

pub fn delete_rule(doc: &mut PolicyDoc, service: &str, name: &str) -> Result<RuleDoc, EditError> {
    let (s, r) = rule_index(doc, service, name)?;
    Ok(doc.services[s].rules.remove(r))
}

// ---------------------------------------------------------------------------------------------
// Weights, promote, rollback

/// Sets the split of a service: `weights` replace the previous ones (a version left out gets
/// nothing); `by` and `salt` replace the previous ones when given and are kept otherwise. A weight
/// above 0 starts a new canary (the rollback target of the last promote is dropped).
pub fn set_weights(
    doc: &mut PolicyDoc,
    service: &str,
    weights: BTreeMap<String, f64>,
    by: Option<IdentityDoc>,
    salt: Option<String>,
) -> Result<(), EditError> {
    let s = service_mut(doc, service)?;
    let old = s.split.take();
    let starts_canary = weights.values().any(|w| *w > 0.0);
    s.split = Some(SplitDoc {
        weights,
        by: by.or_else(|| old.as_ref().and_then(|o| o.by.clone())),
        sticky_cookie: old.as_ref().and_then(|o| o.sticky_cookie.clone()),
        salt: salt.or_else(|| old.and_then(|o| o.salt)),
    });
    if starts_canary {
        accept_promotion(s);
    }
    Ok(())
}

/// A new canary starts: the last promote is accepted, and a rollback no longer undoes it.
fn accept_promotion(s: &mut ServiceDoc) {
    s.previous_stable = None;
    s.previous_weight = None;
}

/// Which version a promote without a named version means: the only version besides stable, else
/// the only one with a weight above 0.
fn promote_target(s: &ServiceDoc) -> Option<String> {
    let others: Vec<&String> = s.versions.keys().filter(|v| **v != s.stable).collect();
    if let [only] = others.as_slice() {
        return Some((*only).clone());
    }
    let weighted: Vec<&String> = s
        .split
        .iter()
        .flat_map(|sp| sp.weights.iter())
        .filter(|(v, w)| **w > 0.0 && **v != s.stable)
        .map(|(v, _)| v)
        .collect();
    match weighted.as_slice() {
        [only] => Some((*only).clone()),
        _ => None,
    }
}

/// Makes `version` (or, without one, the canary: the only version besides stable, else the only
/// one with a weight above 0) the stable version: every request that no rule or other weight
/// sends elsewhere goes to it at once. Rules, `by`, salt and the other weights stay; `version`'s
/// own weight leaves the split and is kept with the old stable version as the rollback target
/// (see the module documentation). Returns `(old stable, new stable)`.
pub fn promote(
    doc: &mut PolicyDoc,
    service: &str,
    version: Option<&str>,
) -> Result<(String, String), EditError> {
    let s = service_mut(doc, service)?;
    let target = match version {
        Some(v) => v.to_string(),
        None => promote_target(s).ok_or_else(|| {
            EditError::invalid(
                FieldPath::new("version"),
                format!(
                    "name the version to promote: service `{service}` has versions {}",
                    s.versions.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })?,
    };
    if !s.versions.contains_key(&target) {
        return Err(EditError::invalid(
            FieldPath::new("version"),
            format!(
                "service `{service}` has no version `{target}` (versions: {})",
                s.versions.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    if target == s.stable {
        return Err(EditError::invalid(
            FieldPath::new("version"),
            format!("`{target}` is already the stable version of `{service}`"),
        ));
    }
    let old = std::mem::replace(&mut s.stable, target.clone());
    s.previous_stable = Some(old.clone());
    s.previous_weight = s
        .split
        .as_mut()
        .and_then(|split| split.weights.remove(&target));
    Ok((old, target))
}

/// What a rollback did.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollback {
    /// The stable version now.
    pub stable: String,
    /// Set when the rollback undid a promote: the version that was stable until now.
    pub demoted: Option<String>,
    /// Set when the rollback undid a promote of a version that had a split weight: that weight,
    /// which it has again.
    pub restored_weight: Option<f64>,
    /// How many rules were cleared.
    pub rules_cleared: usize,
}

/// Undoes the last promote if no new canary started since: stable, the promoted version's
/// weight, rules, `by` and salt as before it. Otherwise sends every request no rule decides to
/// stable: split weights to 0. Rules are cleared if `clear_rules`. See the module documentation.
pub fn rollback(
    doc: &mut PolicyDoc,
    service: &str,
    clear_rules: bool,
) -> Result<Rollback, EditError> {
    let s = service_mut(doc, service)?;
    let mut demoted = None;
    let mut restored_weight = None;
    let previous_weight = s.previous_weight.take();
    match s.previous_stable.take() {
        Some(previous) => {
            let promoted = std::mem::replace(&mut s.stable, previous);
            if let Some(split) = &mut s.split {
                split.weights.remove(&s.stable);
                if let Some(weight) = previous_weight {
                    split.weights.insert(promoted.clone(), weight);
                    restored_weight = Some(weight);
                }
            }
            demoted = Some(promoted);
        }
        None => {
            if let Some(split) = &mut s.split {
                split.weights.remove(&s.stable);
                split.weights.values_mut().for_each(|w| *w = 0.0);
            }
        }
    }
    let rules_cleared = if clear_rules {
        std::mem::take(&mut s.rules).len()
    } else {
        0
    };
    Ok(Rollback {
        stable: s.stable.clone(),
        demoted,
        restored_weight,
        rules_cleared,
    })
}

// ---------------------------------------------------------------------------------------------
// Checks the admin API makes beyond `compile`

/// Two rules whose ranges overlap on the same source but send to different versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    pub service: String,
    /// The earlier rule (it wins the shared numbers) and the later one.
    pub first: String,
    pub second: String,
    /// Path of the later rule's range: `services[0].rules[2].when.range`.
    pub path: FieldPath,
    pub message: String,
}

/// The source a condition reads, as text (`header x-user-id`, with its lookup), or `None` for a
/// combination.
fn source_of(c: &Condition) -> Option<String> {
    let base = if let Some(h) = &c.header {
        format!("header {}", h.trim().to_ascii_lowercase())
    } else if let Some(k) = &c.cookie {
        format!("cookie {k}")
    } else if let Some(q) = &c.query {
        format!("query {q}")
    } else if c.client_ip == Some(true) {
        "client IP".to_string()
    } else {
        return None;
    };
    Some(match &c.lookup {
        Some(l) => format!(
            "{base} looked up in list {} (key {})",
            l.list,
            l.key.as_deref().unwrap_or("{}")
        ),
        None => base,
    })
}

/// Every pair of rules that [`Overlap`] describes, in document order.
pub fn overlapping_ranges(doc: &PolicyDoc) -> Vec<Overlap> {
    let mut out = Vec::new();
    for (si, s) in doc.services.iter().enumerate() {
        // (rule index, source, inclusive lo, inclusive hi)
        let ranges: Vec<(usize, String, i128, i128)> = s
            .rules
            .iter()
            .enumerate()
            .filter_map(|(ri, r)| {
                let range = r.when.range.as_ref()?;
                let source = source_of(&r.when)?;
                let (lo, hi) = if range.exclusive {
                    (i128::from(range.start) + 1, i128::from(range.end) - 1)
                } else {
                    (i128::from(range.start), i128::from(range.end))
                };
                (lo <= hi).then_some((ri, source, lo, hi))
            })
            .collect();
        for (b, (bi, bsrc, blo, bhi)) in ranges.iter().enumerate() {
            for (ai, asrc, alo, ahi) in &ranges[..b] {
                let (first, second) = (&s.rules[*ai], &s.rules[*bi]);
                if asrc != bsrc || first.version == second.version {
                    continue;
                }
                let (lo, hi) = ((*alo).max(*blo), (*ahi).min(*bhi));
                if lo > hi {
                    continue;
                }
                out.push(Overlap {
                    service: s.name.clone(),
                    first: first.name.clone(),
                    second: second.name.clone(),
                    path: service_field(si)
                        .field("rules")
                        .index(*bi)
                        .field("when")
                        .field("range"),
                    message: format!(
                        "overlaps rule `{}` on the same source ({asrc}): {lo}..={hi} would go to `{}`, never to `{}` (the first matching rule wins); make the ranges disjoint",
                        first.name, first.version, second.version
                    ),
                });
            }
        }
    }
    out
}

/// Refuses `after` if it has an overlap `before` did not have (a change may not add one; one that
/// was already there, e.g. from the config file, does not block unrelated changes).
pub fn check_no_new_overlaps(before: &PolicyDoc, after: &PolicyDoc) -> Result<(), EditError> {
    let known = overlapping_ranges(before);
    let is_known = |o: &Overlap| {
        known
            .iter()
            .any(|k| k.service == o.service && k.first == o.first && k.second == o.second)
    };
    match overlapping_ranges(after).into_iter().find(|o| !is_known(o)) {
        Some(o) => Err(EditError::invalid(o.path, o.message)),
        None => Ok(()),
    }
}

/// Lists that a rule looks the client IP up in as it is (key template `{}`), with the path of the
/// first such condition: their keys must be IP addresses, or they never match.
pub fn ip_keyed_lists(doc: &PolicyDoc) -> BTreeMap<String, FieldPath> {
    fn walk(c: &Condition, path: &FieldPath, out: &mut BTreeMap<String, FieldPath>) {
        for (key, items) in [("all", &c.all), ("any", &c.any)] {
            for (i, item) in items.iter().flatten().enumerate() {
                walk(item, &path.field(key).index(i), out);
            }
        }
        if let Some(inner) = &c.not {
            walk(inner, &path.field("not"), out);
        }
        if let Some(l) = &c.lookup {
            if c.client_ip == Some(true) && l.key.as_deref().unwrap_or("{}") == "{}" {
                out.entry(l.list.clone()).or_insert_with(|| path.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    for (si, s) in doc.services.iter().enumerate() {
        for (ri, r) in s.rules.iter().enumerate() {
            let when = service_field(si).field("rules").index(ri).field("when");
            walk(&r.when, &when, &mut out);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::compile;

    const UPSTREAMS: &[&str] = &["prod", "gray", "next"];

    fn doc() -> PolicyDoc {
        serde_json::from_value(serde_json::json!({
            "routes": [{"service": "web"}],
            "services": [{
                "name": "web",
                "stable": "v1",
                "versions": {"v1": "prod", "v2": "gray"},
                "rules": [{"name": "gray-ips", "version": "v2",
                           "when": {"client_ip": true, "lookup": {"list": "gray_ips"}, "equals": "1"}}],
            }]
        }))
        .unwrap()
    }

    fn range_rule(name: &str, version: &str, start: i64, end: i64) -> RuleDoc {
        serde_json::from_value(serde_json::json!({
            "name": name, "version": version,
            "when": {"header": "X-User-Id", "range": {"start": start, "end": end}}
        }))
        .unwrap()
    }

    #[test]
    fn weights_replace_the_split_and_keep_its_identity() {
        let mut d = doc();
        let by = IdentityDoc {
            header: Some("X-User-Id".into()),
            ..IdentityDoc::default()
        };
        set_weights(
            &mut d,
            "web",
            [("v2".to_string(), 10.0)].into(),
            Some(by.clone()),
            None,
        )
        .unwrap();
        set_weights(&mut d, "web", [("v2".to_string(), 50.0)].into(), None, None).unwrap();
        let split = d.services[0].split.as_ref().unwrap();
        assert_eq!(split.weights["v2"], 50.0);
        assert_eq!(split.by.as_ref(), Some(&by), "`by` is kept when not given");
        compile(&d, UPSTREAMS).unwrap();

        let e = set_weights(&mut doc(), "nope", BTreeMap::new(), None, None).unwrap_err();
        assert_eq!(e.kind, EditErrorKind::NotFound);
        assert_eq!(e.message, "no service named `nope`");
    }

    #[test]
    fn impossible_weights_are_left_for_compile_to_name() {
        let mut d = doc();
        set_weights(
            &mut d,
            "web",
            [("v2".to_string(), 150.0)].into(),
            None,
            None,
        )
        .unwrap();
        let e = compile(&d, UPSTREAMS).unwrap_err();
        assert_eq!(e.path.to_string(), "services[0].split.weights.v2");
        assert!(e.message.contains("not a percentage"), "{e}");
    }

    /// The web service with its gray list rule and a sticky, salted split of v2 and v3.
    fn with_split() -> PolicyDoc {
        let mut d = doc();
        d.services[0].versions.insert("v3".into(), "next".into());
        let by = IdentityDoc {
            header: Some("X-User-Id".into()),
            ..IdentityDoc::default()
        };
        let weights = [("v2".to_string(), 50.0), ("v3".to_string(), 5.0)].into();
        set_weights(&mut d, "web", weights, Some(by), Some("s1".into())).unwrap();
        d
    }

    #[test]
    fn promote_switches_stable_and_keeps_rules_by_salt_and_other_weights() {
        let before = with_split();
        let mut d = before.clone();
        assert_eq!(
            promote(&mut d, "web", Some("v2")).unwrap(),
            ("v1".to_string(), "v2".to_string())
        );
        let s = &d.services[0];
        assert_eq!(s.stable, "v2");
        assert_eq!(s.previous_stable.as_deref(), Some("v1"));
        assert_eq!(s.previous_weight, Some(50.0));
        assert_eq!(s.rules, before.services[0].rules, "the rules stay");
        let (split, old) = (
            s.split.as_ref().unwrap(),
            before.services[0].split.as_ref().unwrap(),
        );
        assert_eq!(split.weights, [("v3".to_string(), 5.0)].into());
        assert_eq!((&split.by, &split.salt), (&old.by, &old.salt));
        compile(&d, UPSTREAMS).unwrap();

        let e = promote(&mut d, "web", Some("v2")).unwrap_err();
        assert_eq!(e.message, "`v2` is already the stable version of `web`");
        let e = promote(&mut d, "web", Some("v9")).unwrap_err();
        assert_eq!(e.field, Some("version".into()));

        // Without a split there is no weight to keep.
        let mut d = doc();
        promote(&mut d, "web", None).unwrap();
        assert_eq!(d.services[0].previous_weight, None);
        assert_eq!(d.services[0].split, None);
        assert_eq!(d.services[0].rules, doc().services[0].rules);
    }

    #[test]
    fn a_rollback_right_after_a_promote_restores_the_service_exactly() {
        let mut zero = doc();
        set_weights(
            &mut zero,
            "web",
            [("v2".to_string(), 0.0)].into(),
            None,
            None,
        )
        .unwrap();
        let mut no_rules = with_split();
        no_rules.services[0].rules.clear();
        for (what, before, version) in [
            ("rules and a split", with_split(), "v2"),
            ("the other weighted version", with_split(), "v3"),
            ("a version without a weight", with_split(), "v1"),
            ("rules only", doc(), "v2"),
            ("a weight of 0", zero, "v2"),
            ("a split only", no_rules, "v2"),
        ] {
            let mut d = before.clone();
            // `v1` is stable: promote another one, then bring v1 back, in the case that names it.
            let version = if version == "v1" { "v3" } else { version };
            let (old, new) = promote(&mut d, "web", Some(version)).unwrap();
            let r = rollback(&mut d, "web", false).unwrap();
            assert_eq!(d, before, "{what}: promote + rollback is not the identity");
            assert_eq!((r.stable, r.demoted), (old, Some(new)), "{what}");
            assert_eq!(
                r.restored_weight,
                before.services[0]
                    .split
                    .as_ref()
                    .and_then(|s| s.weights.get(version).copied()),
                "{what}"
            );
        }
    }

    #[test]
    fn rollback_after_promote_restores_the_previous_stable_once() {
        let mut d = with_split();
        promote(&mut d, "web", Some("v2")).unwrap();
        let r = rollback(&mut d, "web", false).unwrap();
        assert_eq!(r.stable, "v1");
        assert_eq!(r.demoted.as_deref(), Some("v2"));
        assert_eq!(d.services[0].previous_stable, None);
        assert_eq!(d.services[0].previous_weight, None);
        // A second rollback has no promote to undo: it stops the canary, keeping `by` and salt.
        let r = rollback(&mut d, "web", false).unwrap();
        assert_eq!(
            (r.stable.as_str(), r.demoted, r.restored_weight),
            ("v1", None, None)
        );
        let split = d.services[0].split.as_ref().unwrap();
        assert!(split.weights.values().all(|w| *w == 0.0), "{split:?}");
        assert_eq!(split.salt.as_deref(), Some("s1"));
        assert!(split.by.is_some());
        assert_eq!(d.services[0].rules.len(), 1);
        compile(&d, UPSTREAMS).unwrap();
        // A third one changes nothing more.
        let third = d.clone();
        rollback(&mut d, "web", false).unwrap();
        assert_eq!(d, third);
    }

    #[test]
    fn rollback_with_clear_rules_clears_them_when_undoing_a_promote_too() {
        let mut d = with_split();
        promote(&mut d, "web", Some("v2")).unwrap();
        let r = rollback(&mut d, "web", true).unwrap();
        assert_eq!((r.rules_cleared, r.restored_weight), (1, Some(50.0)));
        assert!(d.services[0].rules.is_empty());
        assert_eq!(d.services[0].stable, "v1");
    }

    #[test]
    fn a_new_canary_accepts_the_promotion() {
        for start in [
            |d: &mut PolicyDoc| {
                set_weights(d, "web", [("v1".to_string(), 10.0)].into(), None, None).unwrap()
            },
            |d: &mut PolicyDoc| add_rule(d, "web", range_rule("beta", "v1", 1, 10), None).unwrap(),
            |d: &mut PolicyDoc| {
                let rule = range_rule("gray-ips", "v1", 1, 10);
                replace_rule(d, "web", "gray-ips", rule).unwrap()
            },
        ] {
            let mut d = with_split();
            promote(&mut d, "web", Some("v2")).unwrap();
            start(&mut d);
            let s = &d.services[0];
            assert_eq!((&s.previous_stable, s.previous_weight), (&None, None));
        }
        // Deleting the rollback target forgets the promote too.
        let mut d = with_split();
        promote(&mut d, "web", Some("v2")).unwrap();
        delete_version(&mut d, "web", "v1").unwrap();
        assert_eq!(d.services[0].previous_stable, None);
        assert_eq!(d.services[0].previous_weight, None);
    }

    #[test]
    fn a_kept_weight_is_a_percentage_and_means_nothing_without_its_rollback_target() {
        let mut d = with_split();
        d.services[0].previous_weight = Some(150.0);
        let e = compile(&d, UPSTREAMS).unwrap_err();
        assert_eq!(e.path.to_string(), "services[0].previous_weight");
        assert_eq!(e.message, "150 is not a percentage from 0 to 100");
        // No promote to undo: a rollback stops the canary and forgets the weight.
        d.services[0].previous_weight = Some(10.0);
        compile(&d, UPSTREAMS).unwrap();
        let r = rollback(&mut d, "web", false).unwrap();
        assert_eq!((r.demoted, r.restored_weight), (None, None));
        assert_eq!(d.services[0].previous_weight, None);
        assert_eq!(d.services[0].split.as_ref().unwrap().weights["v2"], 0.0);
    }

    #[test]
    fn promote_without_a_version_needs_an_unambiguous_canary() {
        let mut d = doc();
        d.services[0].versions.insert("v3".into(), "next".into());
        let e = promote(&mut d, "web", None).unwrap_err();
        assert!(e.message.starts_with("name the version to promote"), "{e}");
        set_weights(&mut d, "web", [("v3".to_string(), 5.0)].into(), None, None).unwrap();
        assert_eq!(promote(&mut d, "web", None).unwrap().1, "v3");
    }

    #[test]
    fn rollback_of_a_canary_zeroes_weights_and_keeps_or_clears_rules() {
        let mut d = doc();
        promote(&mut d, "web", Some("v2")).unwrap();
        // A new canary accepts the promotion: rollback then only stops the canary.
        set_weights(&mut d, "web", [("v1".to_string(), 10.0)].into(), None, None).unwrap();
        assert_eq!(d.services[0].previous_stable, None);
        let r = rollback(&mut d, "web", false).unwrap();
        assert_eq!((r.stable.as_str(), r.demoted), ("v2", None));
        assert_eq!(d.services[0].split.as_ref().unwrap().weights["v1"], 0.0);

        let mut d = doc();
        assert_eq!(rollback(&mut d, "web", false).unwrap().rules_cleared, 0);
        assert_eq!(d.services[0].rules.len(), 1);
        assert_eq!(rollback(&mut d, "web", true).unwrap().rules_cleared, 1);
        assert!(d.services[0].rules.is_empty());
    }

    #[test]
    fn adding_a_rule_starts_a_new_canary() {
        let mut d = doc();
        promote(&mut d, "web", Some("v2")).unwrap();
        add_rule(&mut d, "web", range_rule("beta", "v1", 1, 10), Some(0)).unwrap();
        assert_eq!(d.services[0].previous_stable, None);
        let e = add_rule(&mut d, "web", range_rule("beta", "v1", 1, 10), None).unwrap_err();
        assert_eq!(e.kind, EditErrorKind::Exists);
        assert_eq!(e.field, Some("services[0].rules[0].name".into()));
        let e = add_rule(&mut d, "web", range_rule("x", "v1", 1, 10), Some(9)).unwrap_err();
        assert_eq!(e.field, Some("position".into()));
    }

    #[test]
    fn rules_are_replaced_in_place_and_deleted() {
        let mut d = doc();
        add_rule(&mut d, "web", range_rule("beta", "v2", 1, 10), None).unwrap();
        replace_rule(&mut d, "web", "beta", range_rule("beta2", "v2", 1, 20)).unwrap();
        assert_eq!(d.services[0].rules[1].name, "beta2");
        let e =
            replace_rule(&mut d, "web", "beta2", range_rule("gray-ips", "v2", 1, 2)).unwrap_err();
        assert_eq!(e.kind, EditErrorKind::Exists);
        assert_eq!(delete_rule(&mut d, "web", "beta2").unwrap().name, "beta2");
        let e = delete_rule(&mut d, "web", "beta2").unwrap_err();
        assert_eq!(e.message, "service `web` has no rule `beta2`");
    }

    #[test]
    fn routes_services_and_versions() {
        let mut d = doc();
        let route: RouteDoc =
            serde_json::from_value(serde_json::json!({"service": "web", "path_prefix": "/api"}))
                .unwrap();
        let e = create_route(&mut d, route.clone()).unwrap_err();
        assert_eq!(e.kind, EditErrorKind::Exists);
        assert!(put_route(&mut d, "api", route).unwrap());
        assert_eq!(d.routes[1].name.as_deref(), Some("api"));
        assert_eq!(route_index(&d, "api").unwrap(), 1);
        delete_route(&mut d, "api").unwrap();

        let e = delete_service(&mut d, "web").unwrap_err();
        assert_eq!(e.field, Some("routes[0].service".into()));
        let mut other = d.services[0].clone();
        other.name = "api".into();
        let e = put_service(&mut d, "web", other.clone()).unwrap_err();
        assert_eq!(e.field, Some("name".into()));
        create_service(&mut d, other).unwrap();
        delete_service(&mut d, "api").unwrap();

        assert!(put_version(&mut d, "web", "v3", "next".into()).unwrap());
        assert!(create_version(&mut d, "web", "v3", "next".into()).is_err());
        set_weights(&mut d, "web", [("v3".to_string(), 5.0)].into(), None, None).unwrap();
        delete_version(&mut d, "web", "v3").unwrap();
        assert!(d.services[0].split.as_ref().unwrap().weights.is_empty());
        let e = delete_version(&mut d, "web", "v1").unwrap_err();
        assert_eq!(e.field, Some("services[0].stable".into()));
        compile(&d, UPSTREAMS).unwrap();
    }

    #[test]
    fn overlapping_ranges_on_one_source_with_different_versions() {
        let mut d = doc();
        add_rule(&mut d, "web", range_rule("a", "v2", 1, 5000), None).unwrap();
        let before = d.clone();
        // Same version: harmless. Disjoint: fine.
        add_rule(&mut d, "web", range_rule("b", "v2", 10, 20), None).unwrap();
        add_rule(&mut d, "web", range_rule("c", "v1", 5001, 6000), None).unwrap();
        check_no_new_overlaps(&before, &d).unwrap();

        add_rule(&mut d, "web", range_rule("d", "v1", 4000, 7000), None).unwrap();
        let e = check_no_new_overlaps(&before, &d).unwrap_err();
        assert_eq!(e.field, Some("services[0].rules[4].when.range".into()));
        assert!(
            e.message.starts_with(
                "overlaps rule `a` on the same source (header x-user-id): 4000..=5000"
            ),
            "{e}"
        );
        // Exclusive ends touch without overlapping.
        let mut d = before.clone();
        let mut r = range_rule("e", "v1", 5000, 6000);
        r.when.range.as_mut().unwrap().exclusive = true;
        add_rule(&mut d, "web", r, None).unwrap();
        assert!(overlapping_ranges(&d).is_empty());
        // An overlap that was already there does not block other changes.
        let mut old = before.clone();
        add_rule(&mut old, "web", range_rule("f", "v1", 1, 2), None).unwrap();
        let mut new = old.clone();
        set_weights(
            &mut new,
            "web",
            [("v2".to_string(), 5.0)].into(),
            None,
            None,
        )
        .unwrap();
        check_no_new_overlaps(&old, &new).unwrap();
    }

    #[test]
    fn lists_looked_up_by_client_ip() {
        let lists = ip_keyed_lists(&doc());
        assert_eq!(
            lists.get("gray_ips").map(ToString::to_string).as_deref(),
            Some("services[0].rules[0].when")
        );
        assert_eq!(lists.len(), 1);
    }
}

//! Which requests the gate lets through in which role: pure functions of the
//! method, the path and the query, table-tested below.
//!
//! Kubernetes paths have a fixed shape (`/api/v1/...` for the core group,
//! `/apis/GROUP/VERSION/...` otherwise, then `namespaces/NS/` for namespaced
//! resources, then `RESOURCE[/NAME[/SUBRESOURCE[/...]]]`), so the resource a
//! request touches can be read from the path without knowing the API
//! server's discovery document.

use std::fmt;

use hyper::Method;

/// What the gate does with a request in each role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Passes in every role: GET, HEAD, OPTIONS (lists and watches too).
    Read,
    /// Changes the cluster: passes only while this pod leads.
    Write,
    /// A write class the operator exempted with `--gate-exempt`.
    Exempt(Exemption),
    /// A POST the API server never persists (access and token reviews,
    /// `dryRun=All`): passes in every role, like a read. A TokenRequest is a
    /// write: the token it mints could write around the fence (an unbound
    /// token carries no pod), and the fencing policy refuses it too.
    NotPersisted,
}

/// Write classes `--gate-exempt` can let through in every role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exemption {
    /// core/v1 and events.k8s.io/v1 Events.
    Events,
    /// coordination.k8s.io Leases: the app's own leader election.
    Leases,
    /// `pods/NAME/exec`, `attach` and `portforward`.
    Exec,
}

impl Exemption {
    pub const ALL: [Exemption; 3] = [Exemption::Events, Exemption::Leases, Exemption::Exec];

    pub fn name(self) -> &'static str {
        match self {
            Exemption::Events => "events",
            Exemption::Leases => "leases",
            Exemption::Exec => "exec",
        }
    }
}

impl fmt::Display for Exemption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The set of exempted write classes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExemptSet {
    events: bool,
    leases: bool,
    exec: bool,
}

/// `--gate-exempt` names something the gate does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--gate-exempt (ZEN_LEAD_GATE_EXEMPT) names {value:?}, which is not a write class; use a \
     comma-separated list of events, leases, exec (or '' for none)"
)]
pub struct UnknownExemption {
    pub value: String,
}

impl ExemptSet {
    /// Parses `events,leases`; empty items are ignored, so `''` is "none".
    pub fn parse(list: &str) -> Result<Self, UnknownExemption> {
        let mut set = ExemptSet::default();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item.to_ascii_lowercase().as_str() {
                "events" => set.events = true,
                "leases" => set.leases = true,
                "exec" => set.exec = true,
                _ => {
                    return Err(UnknownExemption {
                        value: item.to_owned(),
                    });
                }
            }
        }
        Ok(set)
    }

    pub fn contains(&self, class: Exemption) -> bool {
        match class {
            Exemption::Events => self.events,
            Exemption::Leases => self.leases,
            Exemption::Exec => self.exec,
        }
    }

    /// `events,leases` (for logs).
    pub fn names(&self) -> String {
        let names: Vec<&str> = Exemption::ALL
            .iter()
            .filter(|e| self.contains(**e))
            .map(|e| e.name())
            .collect();
        names.join(",")
    }
}

/// A path the gate refuses to classify (and so to forward).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadPath {
    #[error("the request target must be a path starting with '/'")]
    NotAPath,
    #[error(
        "the path has an empty, '.' or '..' segment; the gate only forwards canonical paths, \
         because the API server may resolve them to another resource than the one checked"
    )]
    NotCanonical,
    #[error(
        "the path has a percent-encoded resource, namespace or name; Kubernetes names never \
         need encoding, so the gate refuses what it cannot check"
    )]
    Encoded,
}

/// The resource part of a Kubernetes API path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Target<'a> {
    /// `""` for the core group; `None` for non-resource paths (`/version`).
    group: Option<&'a str>,
    resource: &'a str,
    subresource: Option<&'a str>,
}

/// Classifies one request. `query` is the raw query string (without `?`).
pub fn classify(
    method: &Method,
    path: &str,
    query: Option<&str>,
    exempt: &ExemptSet,
) -> Result<Verdict, BadPath> {
    let target = parse(path)?;
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        // A WebSocket exec/attach/port-forward is a GET with an Upgrade.
        if target.group == Some("") && is_exec(&target) {
            return Ok(exec_verdict(exempt));
        }
        return Ok(Verdict::Read);
    }
    let Some(group) = target.group else {
        return Ok(Verdict::Write);
    };
    if *method != Method::DELETE && is_dry_run(query) {
        return Ok(Verdict::NotPersisted);
    }
    if *method == Method::POST && not_persisted(group, &target) {
        return Ok(Verdict::NotPersisted);
    }
    let class = match (group, target.resource) {
        ("", "events") | ("events.k8s.io", "events") => Some(Exemption::Events),
        ("coordination.k8s.io", "leases") => Some(Exemption::Leases),
        ("", "pods") if is_exec(&target) => Some(Exemption::Exec),
        _ => None,
    };
    Ok(match class {
        Some(class) if exempt.contains(class) => Verdict::Exempt(class),
        _ => Verdict::Write,
    })
}

fn exec_verdict(exempt: &ExemptSet) -> Verdict {
    if exempt.contains(Exemption::Exec) {
        Verdict::Exempt(Exemption::Exec)
    } else {
        Verdict::Write
    }
}

fn is_exec(target: &Target<'_>) -> bool {
    target.resource == "pods"
        && matches!(target.subresource, Some("exec" | "attach" | "portforward"))
}

/// Review and token endpoints answer a POST without storing anything.
fn not_persisted(group: &str, target: &Target<'_>) -> bool {
    matches!(
        (group, target.resource, target.subresource),
        (
            "authorization.k8s.io",
            "selfsubjectaccessreviews"
                | "selfsubjectrulesreviews"
                | "subjectaccessreviews"
                | "localsubjectaccessreviews",
            None,
        ) | (
            "authentication.k8s.io",
            "tokenreviews" | "selfsubjectreviews",
            None
        )
    )
}

/// `dryRun=All`, as the API server reads it: the API server runs admission
/// and validation but stores nothing. Only what the API server certainly
/// takes for a dry run counts, since anything else it stores:
/// - it reads the query with Go's `url.ParseQuery` (pairs split at `&`; a
///   pair containing `;` or an invalid `%` escape is dropped; `+` is a
///   space, `%XX` a byte) into `metav1.*Options`, whose `dryRun` key is
///   matched exactly: `dryrun=All` or `DryRun=All` is an unknown key,
///   ignored, and the write is stored;
/// - every `dryRun` value must be `All` (`dryRun=All&dryRun=All` is a dry
///   run; any other value is refused with 400, so it is not counted here);
/// - a DELETE reads its options from the body when it has one and ignores
///   the query then (the caller never counts a DELETE), and a path that is
///   not a resource's is not judged by the API server's handlers at all.
fn is_dry_run(query: Option<&str>) -> bool {
    let Some(query) = query else {
        return false;
    };
    let mut values = 0usize;
    for pair in query.split('&') {
        if pair.is_empty() || pair.contains(';') {
            continue;
        }
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(key), Some(value)) = (query_unescape(key), query_unescape(value)) else {
            continue;
        };
        if key == b"dryRun" {
            if value != b"All" {
                return false;
            }
            values += 1;
        }
    }
    values > 0
}

/// Go's `url.QueryUnescape`: `+` is a space, `%XX` the byte XX; `None` for
/// a `%` not followed by two hex digits (Go drops that pair).
fn query_unescape(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let digit = |j: usize| bytes.get(j).and_then(|b| (*b as char).to_digit(16));
                out.push(u8::try_from(digit(i + 1)? * 16 + digit(i + 2)?).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

fn parse(path: &str) -> Result<Target<'_>, BadPath> {
    let rest = path.strip_prefix('/').ok_or(BadPath::NotAPath)?;
    let mut segments: Vec<&str> = rest.split('/').collect();
    // One trailing slash is harmless (`/apis/`); anything else empty is not.
    if segments.len() > 1 && segments.last() == Some(&"") {
        segments.pop();
    }
    if segments
        .iter()
        .any(|s| (s.is_empty() && path != "/") || *s == "." || *s == "..")
    {
        return Err(BadPath::NotCanonical);
    }
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return Ok(Target::default()),
    };
    // The deprecated `/api/v1/watch/...` prefix is a GET of the same thing.
    let rest = match rest {
        ["watch", rest @ ..] => rest,
        rest => rest,
    };
    let rest = match rest {
        // `namespaces` itself, or `namespaces/NAME[/status|finalize]`.
        ["namespaces", _] | ["namespaces"] => rest,
        ["namespaces", _ns, "status" | "finalize"] => rest,
        ["namespaces", _ns, rest @ ..] => rest,
        rest => rest,
    };
    let (resource, subresource) = match rest {
        [] => return Ok(Target::default()),
        [resource] | [resource, _] => (*resource, None),
        [resource, _name, sub, ..] => (*resource, Some(*sub)),
    };
    // Everything up to the subresource must be plain: no percent-encoding
    // (what follows `proxy/` is the backend's own path and may be encoded).
    let checked = segments.len().min(segments.len() - rest.len() + 3);
    if segments[..checked].iter().any(|s| s.contains('%')) {
        return Err(BadPath::Encoded);
    }
    Ok(Target {
        group: Some(group),
        resource,
        subresource,
    })
}

/// Whether a GET is a watch (`?watch=true|1`, or the deprecated
/// `/watch/` path prefix): a long-lived stream rather than one answer.
pub fn is_watch(method: &Method, path: &str, query: Option<&str>) -> bool {
    if method != Method::GET {
        return false;
    }
    let by_query = query.is_some_and(|q| {
        q.split('&')
            .any(|kv| matches!(kv, "watch=true" | "watch=1" | "watch=True"))
    });
    let mut segments = path.trim_start_matches('/').split('/');
    let by_path = match (segments.next(), segments.next(), segments.next()) {
        (Some("api"), Some(_), Some("watch")) => true,
        (Some("apis"), Some(_), Some(_)) => segments.next() == Some("watch"),
        _ => false,
    };
    by_query || by_path
}

/// Whether a write may reach the API server later than the app made it
/// (after waiting in the gate for this pod to lead, or sent again after a
/// `Retry-After`): only if the API server itself refuses it when what it
/// was decided on has changed since. A create is refused if the object
/// exists; an update, patch or delete carrying a resourceVersion
/// precondition is refused with 409 Conflict if the object changed. A
/// blind update or patch made while this pod was a standby, sent once it
/// leads, could overwrite what the previous leader wrote after the app's
/// read: a lost update (the overlap checker's `blind` counter found them).
/// The body is JSON, or protobuf: client-go's typed clients encode built-in
/// types as protobuf (since 1.33), so its `Update` reaches the gate in it
/// (the overlap checker found those refused as blind). A body in neither
/// (CBOR, or one that does not parse) cannot be checked and counts as blind.
pub fn survives_a_stale_read(method: &Method, body: &[u8]) -> bool {
    match *method {
        Method::POST => true,
        Method::PUT | Method::PATCH | Method::DELETE => has_version_precondition(body),
        _ => false,
    }
}

/// A resourceVersion the API server checks: `metadata.resourceVersion` of
/// an object, a merge, strategic-merge or apply patch; `preconditions` of
/// DeleteOptions; a JSON patch `test` of `/metadata/resourceVersion`.
fn has_version_precondition(body: &[u8]) -> bool {
    if let Some(unknown) = body.strip_prefix(PROTOBUF_MAGIC) {
        return protobuf_has_version_precondition(unknown);
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    let set = |x: &serde_json::Value| x.as_str().is_some_and(|s| !s.is_empty());
    set(&v["metadata"]["resourceVersion"])
        || set(&v["preconditions"]["resourceVersion"])
        || v.as_array().is_some_and(|ops| {
            ops.iter().any(|op| {
                op["op"] == "test" && op["path"] == "/metadata/resourceVersion" && set(&op["value"])
            })
        })
}

/// What starts a Kubernetes protobuf body, before its `runtime.Unknown`
/// envelope: `typeMeta` (1: `apiVersion` 1, `kind` 2), `raw` (2, the
/// object), `contentEncoding` (3).
const PROTOBUF_MAGIC: &[u8] = b"k8s\0";

/// The same as [`has_version_precondition`] for a protobuf `runtime.Unknown`.
/// Every built-in object carries its `ObjectMeta` as field 1, whose
/// `resourceVersion` is field 6; `DeleteOptions` carries `preconditions` as
/// field 2, whose `resourceVersion` is field 2 (apimachinery's
/// generated.proto).
fn protobuf_has_version_precondition(unknown: &[u8]) -> bool {
    let set = |s: Option<&[u8]>| s.is_some_and(|s| !s.is_empty());
    if set(pb_field(unknown, 3)) {
        return false; // an encoded (compressed) object: cannot look inside
    }
    let Some(raw) = pb_field(unknown, 2) else {
        return false;
    };
    let kind = pb_field(unknown, 1).and_then(|type_meta| pb_field(type_meta, 2));
    if kind == Some(b"DeleteOptions".as_slice()) {
        set(pb_field(raw, 2).and_then(|pre| pb_field(pre, 2)))
    } else {
        set(pb_field(raw, 1).and_then(|meta| pb_field(meta, 6)))
    }
}

/// The last length-delimited field `number` of a protobuf message (a later
/// one wins, as when protobuf merges), or `None` when it is absent or the
/// bytes are not a well-formed message.
fn pb_field(mut msg: &[u8], number: u64) -> Option<&[u8]> {
    fn varint(buf: &mut &[u8]) -> Option<u64> {
        let mut value = 0_u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = buf.split_first()?;
            *buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    fn skip<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let taken = buf.get(..n)?;
        *buf = buf.get(n..)?;
        Some(taken)
    }
    let mut found = None;
    while !msg.is_empty() {
        let key = varint(&mut msg)?;
        match key & 7 {
            0 => {
                varint(&mut msg)?;
            }
            1 => {
                skip(&mut msg, 8)?;
            }
            2 => {
                let len = usize::try_from(varint(&mut msg)?).ok()?;
                let value = skip(&mut msg, len)?;
                if key >> 3 == number {
                    found = Some(value);
                }
            }
            5 => {
                skip(&mut msg, 4)?;
            }
            _ => return None, // groups (deprecated) or not protobuf
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(method: &str, target: &str, exempt: &str) -> String {
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let exempt = ExemptSet::parse(exempt).expect("exempt");
        match classify(&method, path, query, &exempt) {
            Ok(Verdict::Read) => "read".into(),
            Ok(Verdict::Write) => "write".into(),
            Ok(Verdict::Exempt(e)) => format!("exempt:{e}"),
            Ok(Verdict::NotPersisted) => "not-persisted".into(),
            Err(BadPath::NotAPath) => "bad:not-a-path".into(),
            Err(BadPath::NotCanonical) => "bad:not-canonical".into(),
            Err(BadPath::Encoded) => "bad:encoded".into(),
        }
    }

    #[test]
    fn classification_table() {
        let cm = "/api/v1/namespaces/shop/configmaps";
        let rows: &[(&str, &str, &str, &str)] = &[
            // Reads pass in every role, lists and watches included.
            ("GET", cm, "events", "read"),
            ("GET", "/api/v1/namespaces/shop/configmaps/a", "", "read"),
            (
                "GET",
                "/api/v1/namespaces/shop/configmaps?watch=true&resourceVersion=5",
                "",
                "read",
            ),
            (
                "GET",
                "/api/v1/watch/namespaces/shop/configmaps",
                "",
                "read",
            ),
            ("HEAD", "/api/v1/pods", "", "read"),
            ("OPTIONS", "/apis/apps/v1/deployments", "", "read"),
            ("GET", "/version", "", "read"),
            ("GET", "/apis", "", "read"),
            ("GET", "/apis/", "", "read"),
            ("GET", "/", "", "read"),
            ("GET", "/openapi/v3/apis/apps/v1", "", "read"),
            (
                "GET",
                "/api/v1/namespaces/shop/pods/p/log?follow=true",
                "",
                "read",
            ),
            (
                "GET",
                "/api/v1/namespaces/shop/pods/p/proxy/metrics",
                "",
                "read",
            ),
            // Mutations, with subresources.
            ("POST", cm, "events", "write"),
            ("PUT", "/api/v1/namespaces/shop/configmaps/a", "", "write"),
            ("PATCH", "/api/v1/namespaces/shop/configmaps/a", "", "write"),
            (
                "DELETE",
                "/api/v1/namespaces/shop/configmaps/a",
                "",
                "write",
            ),
            ("DELETE", cm, "", "write"),
            (
                "PUT",
                "/apis/apps/v1/namespaces/shop/deployments/d/status",
                "",
                "write",
            ),
            (
                "PATCH",
                "/apis/apps/v1/namespaces/shop/deployments/d/scale",
                "",
                "write",
            ),
            (
                "POST",
                "/api/v1/namespaces/shop/pods/p/eviction",
                "",
                "write",
            ),
            (
                "POST",
                "/api/v1/namespaces/shop/pods/p/binding",
                "",
                "write",
            ),
            ("POST", "/api/v1/namespaces", "", "write"),
            ("PUT", "/api/v1/namespaces/shop/finalize", "", "write"),
            ("PATCH", "/api/v1/nodes/n1/status", "", "write"),
            (
                "POST",
                "/api/v1/namespaces/shop/pods/p/proxy/run",
                "",
                "write",
            ),
            (
                "PATCH",
                "/apis/example.com/v1/namespaces/shop/widgets/w",
                "",
                "write",
            ),
            ("PURGE", cm, "", "write"),
            ("POST", "/version", "", "write"),
            // Exemptions: events by default, leases and exec on request.
            (
                "POST",
                "/api/v1/namespaces/shop/events",
                "events",
                "exempt:events",
            ),
            (
                "PATCH",
                "/api/v1/namespaces/shop/events/e1",
                "events",
                "exempt:events",
            ),
            (
                "POST",
                "/apis/events.k8s.io/v1/namespaces/shop/events",
                "events",
                "exempt:events",
            ),
            ("POST", "/api/v1/namespaces/shop/events", "", "write"),
            (
                "POST",
                "/api/v1/namespaces/events/configmaps",
                "events",
                "write",
            ),
            (
                "PUT",
                "/apis/coordination.k8s.io/v1/namespaces/shop/leases/l",
                "leases",
                "exempt:leases",
            ),
            (
                "PUT",
                "/apis/coordination.k8s.io/v1/namespaces/shop/leases/l",
                "events",
                "write",
            ),
            (
                "PUT",
                "/apis/example.com/v1/namespaces/shop/leases/l",
                "leases",
                "write",
            ),
            // exec, attach, port-forward: writes unless exempted (SPDY uses
            // POST, WebSocket uses GET).
            (
                "POST",
                "/api/v1/namespaces/shop/pods/p/exec?command=ls",
                "events",
                "write",
            ),
            (
                "GET",
                "/api/v1/namespaces/shop/pods/p/exec?command=ls",
                "events",
                "write",
            ),
            ("POST", "/api/v1/namespaces/shop/pods/p/attach", "", "write"),
            (
                "GET",
                "/api/v1/namespaces/shop/pods/p/portforward",
                "",
                "write",
            ),
            (
                "POST",
                "/api/v1/namespaces/shop/pods/p/exec",
                "exec",
                "exempt:exec",
            ),
            (
                "GET",
                "/api/v1/namespaces/shop/pods/p/portforward",
                "exec,events",
                "exempt:exec",
            ),
            // Never persisted: pass in every role.
            (
                "POST",
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                "",
                "not-persisted",
            ),
            (
                "POST",
                "/apis/authorization.k8s.io/v1/namespaces/shop/localsubjectaccessreviews",
                "",
                "not-persisted",
            ),
            (
                "POST",
                "/apis/authentication.k8s.io/v1/tokenreviews",
                "",
                "not-persisted",
            ),
            // A TokenRequest mints a credential: fenced, as the policy does.
            (
                "POST",
                "/api/v1/namespaces/shop/serviceaccounts/sa/token",
                "",
                "write",
            ),
            (
                "POST",
                "/api/v1/namespaces/shop/serviceaccounts",
                "",
                "write",
            ),
            (
                "POST",
                "/api/v1/namespaces/shop/configmaps?dryRun=All",
                "",
                "not-persisted",
            ),
            (
                "PATCH",
                "/api/v1/namespaces/shop/configmaps/a?fieldManager=x&dryRun=All",
                "",
                "not-persisted",
            ),
            (
                "PATCH",
                "/api/v1/namespaces/shop/configmaps/a?dryRun=None",
                "",
                "write",
            ),
            // Paths the gate refuses to judge.
            (
                "POST",
                "/api/v1/namespaces/shop/events/../configmaps",
                "events",
                "bad:not-canonical",
            ),
            (
                "POST",
                "/api/v1/namespaces/shop/./configmaps",
                "",
                "bad:not-canonical",
            ),
            (
                "POST",
                "/api/v1//namespaces/shop/configmaps",
                "",
                "bad:not-canonical",
            ),
            (
                "GET",
                "/api/v1/namespaces/shop/configmaps/..",
                "",
                "bad:not-canonical",
            ),
            (
                "POST",
                "/api/v1/namespaces/shop/%65vents",
                "events",
                "bad:encoded",
            ),
            (
                "POST",
                "/api/v1/namespaces/sh%6fp/events",
                "events",
                "bad:encoded",
            ),
            (
                "GET",
                "/api/v1/namespaces/shop/pods/p/proxy/a%20b",
                "",
                "read",
            ),
            ("GET", "*", "", "bad:not-a-path"),
        ];
        let mut failures = Vec::new();
        for (method, path, exempt, want) in rows {
            let got = verdict(method, path, exempt);
            if got != *want {
                failures.push(format!(
                    "{method} {path} (exempt {exempt:?}): got {got}, want {want}"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// `dryRun` exactly as the API server parses it (Go's `url.ParseQuery`,
    /// then `metav1.*Options` and `ValidateDryRun`): a dry run only when it
    /// certainly is one, since the API server stores everything else. Each
    /// row says what the API server does with the write.
    #[test]
    fn dry_run_is_read_as_the_api_server_reads_it() {
        let cm = "/api/v1/namespaces/shop/configmaps";
        let rows: &[(&str, &str, &str)] = &[
            // Dry runs: every `dryRun` value is `All`.
            ("POST", "dryRun=All", "not-persisted"),
            ("PUT", "fieldManager=x&dryRun=All", "not-persisted"),
            ("PATCH", "dryRun=All&dryRun=All", "not-persisted"),
            ("POST", "&&dryRun=All&", "not-persisted"),
            // Go decodes keys and values: these are `dryRun=All` too.
            ("POST", "dry%52un=All", "not-persisted"),
            ("POST", "dryRun=%41ll", "not-persisted"),
            ("POST", "dryRun=%41%6c%6C", "not-persisted"),
            // A pair Go drops (`;`, a bad escape) leaves the others.
            ("POST", "a=b;c&dryRun=All", "not-persisted"),
            ("POST", "x=%zz&dryRun=All", "not-persisted"),
            // Stored: the key is matched exactly, so these are unknown keys
            // the API server ignores.
            ("POST", "dryrun=All", "write"),
            ("POST", "DryRun=All", "write"),
            ("POST", "DRYRUN=ALL", "write"),
            ("POST", "dryRun%3DAll", "write"),
            ("POST", "dry+Run=All", "write"),
            ("POST", "dry%20Run=All", "write"),
            ("POST", "%64ryRun=Al", "write"),
            // Stored: the pair is dropped (`;` in it, a bad escape).
            ("POST", "dryRun=All;x=y", "write"),
            ("POST", "x=y;dryRun=All", "write"),
            ("POST", "dryRun=All%", "write"),
            ("POST", "dryRun=All%4", "write"),
            ("POST", "dryRun=%+41ll", "write"),
            ("POST", "dry%5=All", "write"),
            // Refused (400) or stored: not every value is `All`.
            ("POST", "dryRun=all", "write"),
            ("POST", "dryRun=ALL", "write"),
            ("POST", "dryRun=All+", "write"),
            ("POST", "dryRun=All%20", "write"),
            ("POST", "dryRun= All", "write"),
            ("POST", "dryRun=", "write"),
            ("POST", "dryRun", "write"),
            ("POST", "dryRun=None", "write"),
            ("POST", "dryRun=All&dryRun=None", "write"),
            ("POST", "dryRun=None&dryRun=All", "write"),
            ("POST", "dryRun=All&dry%52un=x", "write"),
            ("POST", "", "write"),
            // A DELETE with a body (client-go and kube-rs always send one)
            // takes its options from the body and ignores the query.
            ("DELETE", "dryRun=All", "write"),
        ];
        let mut failures = Vec::new();
        for (method, query, want) in rows {
            let got = verdict(method, &format!("{cm}/a?{query}"), "");
            if got != *want {
                failures.push(format!("{method} ?{query}: got {got}, want {want}"));
            }
        }
        // Not a resource's path: no handler of the API server's parses it.
        let got = verdict("POST", "/some/extension?dryRun=All", "");
        if got != "write" {
            failures.push(format!("POST /some/extension?dryRun=All: got {got}"));
        }
        // A dry run of an exempt class stays a dry run (passes either way).
        let got = verdict(
            "POST",
            "/api/v1/namespaces/shop/events?dryRun=All",
            "events",
        );
        if got != "not-persisted" {
            failures.push(format!("POST events?dryRun=All: got {got}"));
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// Every path of up to four segments (after a few real prefixes) from an
    /// alphabet of awkward ones
    /// is classified without panicking (the release build aborts on a
    /// panic), and the invariants hold: reads stay reads (exec aside), dot
    /// segments are always refused.
    #[test]
    fn no_path_panics_and_invariants_hold() {
        let alphabet = [
            "",
            ".",
            "..",
            "api",
            "apis",
            "v1",
            "namespaces",
            "ns",
            "events",
            "pods",
            "exec",
            "status",
            "watch",
            "%2e",
            "proxy",
            "coordination.k8s.io",
            "leases",
        ];
        let exempt = ExemptSet::parse("events,leases").expect("exempt");
        // Grow from the root and from real prefixes, four segments deep, so
        // names and subresources are reached too.
        let prefixes: [&[&str]; 4] = [
            &[],
            &["api", "v1"],
            &["api", "v1", "namespaces", "ns"],
            &["apis", "coordination.k8s.io", "v1", "namespaces", "ns"],
        ];
        let mut stack: Vec<(usize, Vec<&str>)> =
            prefixes.iter().map(|p| (p.len(), p.to_vec())).collect();
        let mut checked = 0usize;
        while let Some((base, segments)) = stack.pop() {
            let path = format!("/{}", segments.join("/"));
            for method in [Method::GET, Method::POST, Method::DELETE] {
                let verdict = classify(&method, &path, Some("dryRun=None"), &exempt);
                checked += 1;
                if segments.iter().any(|s| *s == "." || *s == "..") {
                    assert!(verdict.is_err(), "{method} {path}: {verdict:?}");
                }
                if method == Method::GET
                    && let Ok(v) = verdict
                {
                    assert!(
                        v == Verdict::Read || (v == Verdict::Write && segments.contains(&"exec")),
                        "{method} {path}: {v:?}"
                    );
                }
            }
            if segments.len() < base + 4 {
                for next in alphabet {
                    let mut longer = segments.clone();
                    longer.push(next);
                    stack.push((base, longer));
                }
            }
        }
        assert!(checked > 500_000, "{checked}");
    }

    #[test]
    fn exempt_list_parsing() {
        assert_eq!(ExemptSet::parse("").expect("empty"), ExemptSet::default());
        let set = ExemptSet::parse(" Events , leases,").expect("list");
        assert!(set.contains(Exemption::Events) && set.contains(Exemption::Leases));
        assert!(!set.contains(Exemption::Exec));
        assert_eq!(set.names(), "events,leases");
        let err = ExemptSet::parse("events,configmaps").unwrap_err();
        assert!(err.to_string().contains("--gate-exempt"), "{err}");
        assert!(err.to_string().contains("\"configmaps\""), "{err}");
    }

    #[test]
    fn watches_are_told_from_other_reads() {
        let get = Method::GET;
        for (method, path, query, watch) in [
            (
                &get,
                "/api/v1/namespaces/a/configmaps",
                Some("watch=true&resourceVersion=5"),
                true,
            ),
            (
                &get,
                "/api/v1/namespaces/a/configmaps",
                Some("resourceVersion=5&watch=1"),
                true,
            ),
            (&get, "/api/v1/watch/namespaces/a/configmaps", None, true),
            (&get, "/apis/apps/v1/watch/deployments", None, true),
            (
                &get,
                "/api/v1/namespaces/a/configmaps",
                Some("watch=false"),
                false,
            ),
            (
                &get,
                "/api/v1/namespaces/a/configmaps",
                Some("allowWatchBookmarks=true"),
                false,
            ),
            (&get, "/api/v1/namespaces/watch/configmaps", None, false),
            (&get, "/apis/watch/v1/things", None, false),
            (
                &Method::POST,
                "/api/v1/namespaces/a/configmaps",
                Some("watch=true"),
                false,
            ),
        ] {
            assert_eq!(
                is_watch(method, path, query),
                watch,
                "{method} {path}?{query:?}"
            );
        }
    }

    #[test]
    fn only_writes_the_server_can_check_may_arrive_late() {
        let cases: [(Method, &str, bool); 12] = [
            (Method::POST, r#"{"metadata":{"name":"a"}}"#, true),
            (Method::POST, "\u{8}protobuf", true),
            (
                Method::PUT,
                r#"{"metadata":{"name":"a","resourceVersion":"42"}}"#,
                true,
            ),
            (Method::PUT, r#"{"metadata":{"name":"a"}}"#, false),
            (
                Method::PUT,
                r#"{"metadata":{"name":"a","resourceVersion":""}}"#,
                false,
            ),
            (Method::PATCH, r#"{"data":{"value":"7"}}"#, false),
            (
                Method::PATCH,
                r#"{"metadata":{"resourceVersion":"42"},"data":{"value":"7"}}"#,
                true,
            ),
            (
                Method::PATCH,
                r#"[{"op":"test","path":"/metadata/resourceVersion","value":"42"},{"op":"replace","path":"/data/value","value":"7"}]"#,
                true,
            ),
            (
                Method::PATCH,
                r#"[{"op":"replace","path":"/data/value","value":"7"}]"#,
                false,
            ),
            (
                Method::DELETE,
                r#"{"preconditions":{"resourceVersion":"42"}}"#,
                true,
            ),
            (Method::DELETE, "", false),
            (Method::PUT, "k8s\u{0}protobuf", false),
        ];
        for (method, body, want) in cases {
            assert_eq!(
                survives_a_stale_read(&method, body.as_bytes()),
                want,
                "{method} {body}"
            );
        }
    }

    /// Bodies as client-go encodes them (`tests/cluster/cmd/pbbodies`
    /// wrote them with apimachinery's protobuf serializer).
    #[test]
    fn a_protobuf_write_is_checked_like_a_json_one() {
        let cases: [(Method, &str, &[u8], bool); 5] = [
            (
                Method::PUT,
                "ConfigMap with resourceVersion",
                include_bytes!("../../../tests/golden/gate/put-configmap-with-rv.pb"),
                true,
            ),
            (
                Method::PUT,
                "ConfigMap without",
                include_bytes!("../../../tests/golden/gate/put-configmap-without-rv.pb"),
                false,
            ),
            (
                Method::DELETE,
                "DeleteOptions with preconditions.resourceVersion",
                include_bytes!("../../../tests/golden/gate/delete-options-with-rv.pb"),
                true,
            ),
            (
                Method::DELETE,
                "DeleteOptions with preconditions.uid only",
                include_bytes!("../../../tests/golden/gate/delete-options-with-uid-only.pb"),
                false,
            ),
            (
                Method::DELETE,
                "DeleteOptions without preconditions",
                include_bytes!("../../../tests/golden/gate/delete-options-without-precond.pb"),
                false,
            ),
        ];
        for (method, what, body, want) in cases {
            assert!(
                body.starts_with(PROTOBUF_MAGIC),
                "{what}: not a protobuf body"
            );
            assert_eq!(
                survives_a_stale_read(&method, body),
                want,
                "{method} {what}"
            );
            // Cut anywhere, it never panics.
            for end in PROTOBUF_MAGIC.len()..body.len() {
                let _ = survives_a_stale_read(&method, &body[..end]);
            }
        }
        let with_rv = include_bytes!("../../../tests/golden/gate/put-configmap-with-rv.pb");
        assert!(
            !survives_a_stale_read(&Method::PUT, &with_rv[..with_rv.len() / 2]),
            "a truncated body is not a checked write"
        );
    }
}

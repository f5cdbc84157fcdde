//! Which namespaces the fencing binding covers, free of I/O.
//!
//! The API server gathers the binding's parameters (a label-selector scan of
//! the namespace's Leases) for every namespaced write the binding matches,
//! before the policy's match conditions run; so a binding that matches every
//! namespace costs every write in the cluster, node heartbeats included. The
//! controller keeps the binding's `matchResources.namespaceSelector` to the
//! namespaces that have fenced pools, named by the
//! `kubernetes.io/metadata.name` label every namespace carries.
//!
//! Fail-closed rules (see [`crate::controller::fencing`] for the I/O):
//! a pool's namespace is added before its Lease is marked fenced; the
//! binding is narrowed only to a set that still holds every namespace with
//! a fenced Lease and every namespace a pass asked for recently; a failed
//! write leaves the binding as it was (wider, never narrower).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use tokio::time::Instant;

/// The label the API server puts on every namespace, with its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Stands in when no namespace has a fenced pool: an `In` requirement needs
/// at least one value, and a name with dots is no namespace's (namespace
/// names are DNS labels), so the binding then matches nothing.
pub const NO_NAMESPACE: &str = "none.zen-lead.io";

/// What a binding's namespace selector covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// No selector, or an empty one: every namespace (as the chart ships it).
    All,
    /// Exactly these namespaces, in the controller's own shape.
    Only(BTreeSet<String>),
    /// A selector of another shape (written by someone else): the controller
    /// cannot tell what it covers, and replaces it.
    Other,
}

impl Scope {
    pub fn covers(&self, namespace: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Only(names) => names.contains(namespace),
            Scope::Other => false,
        }
    }
}

/// Reads a binding's `matchResources.namespaceSelector`.
pub fn scope_of(selector: Option<&LabelSelector>) -> Scope {
    let Some(selector) = selector else {
        return Scope::All;
    };
    let labels = selector.match_labels.as_ref().filter(|l| !l.is_empty());
    let expressions = selector
        .match_expressions
        .as_deref()
        .filter(|e| !e.is_empty());
    match (labels, expressions) {
        (None, None) => Scope::All,
        (None, Some([only]))
            if only.key == NAMESPACE_NAME_LABEL
                && only.operator == "In"
                && only.values.is_some() =>
        {
            let names = only.values.iter().flatten();
            Scope::Only(names.filter(|n| *n != NO_NAMESPACE).cloned().collect())
        }
        _ => Scope::Other,
    }
}

/// The selector that covers exactly `namespaces`.
pub fn selector(namespaces: &BTreeSet<String>) -> LabelSelector {
    let values = if namespaces.is_empty() {
        vec![NO_NAMESPACE.to_owned()]
    } else {
        namespaces.iter().cloned().collect()
    };
    LabelSelector {
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: NAMESPACE_NAME_LABEL.to_owned(),
            operator: "In".to_owned(),
            values: Some(values),
        }]),
        match_labels: None,
    }
}

/// The selector to write so that `scope` also covers `namespace`; `None`
/// when it already does. A scope of another shape becomes just `namespace`:
/// the next sweep adds the others that need it.
pub fn widened(scope: &Scope, namespace: &str) -> Option<LabelSelector> {
    if scope.covers(namespace) {
        return None;
    }
    let mut names = match scope {
        Scope::Only(names) => names.clone(),
        Scope::All | Scope::Other => BTreeSet::new(),
    };
    names.insert(namespace.to_owned());
    Some(selector(&names))
}

/// The selector to write so that the binding covers exactly `wanted`; `None`
/// when it already does.
pub fn exact(scope: &Scope, wanted: &BTreeSet<String>) -> Option<LabelSelector> {
    match scope {
        Scope::Only(names) if names == wanted => None,
        _ => Some(selector(wanted)),
    }
}

/// The selector a sweep writes, if any. A controller that watches every
/// namespace sets the scope to exactly `wanted`. One that watches a single
/// namespace (`responsible`) cannot see the others' pools, so it only adds or
/// drops its own namespace, and leaves a binding that covers everything as
/// it is (it cannot say "all but mine").
pub fn swept(
    scope: &Scope,
    wanted: &BTreeSet<String>,
    responsible: Option<&str>,
) -> Option<LabelSelector> {
    let Some(own) = responsible else {
        return exact(scope, wanted);
    };
    match scope {
        Scope::All => None,
        Scope::Only(names) => {
            let mut names = names.clone();
            names.remove(own);
            names.extend(wanted.iter().filter(|n| *n == own).cloned());
            exact(scope, &names)
        }
        Scope::Other if wanted.contains(own) => widened(scope, own),
        Scope::Other => None,
    }
}

/// The namespaces the binding must cover: every namespace with a fenced
/// Lease, and every namespace a pool pass asked for within `grace` (a pass
/// widens the binding before it marks the Lease, and the cache may not show
/// that Lease yet).
pub fn wanted<'a>(
    fenced_leases: impl IntoIterator<Item = &'a str>,
    asked: &'a HashMap<String, Instant>,
    now: Instant,
    grace: Duration,
) -> BTreeSet<String> {
    let recent = asked
        .iter()
        .filter(|(_, at)| now.saturating_duration_since(**at) < grace)
        .map(|(ns, _)| ns.as_str());
    fenced_leases
        .into_iter()
        .chain(recent)
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    fn expression(key: &str, operator: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.to_owned(),
                operator: operator.to_owned(),
                values: Some(values.iter().map(|v| (*v).to_owned()).collect()),
            }]),
            match_labels: None,
        }
    }

    #[test]
    fn a_selector_reads_as_all_only_or_other() {
        let labelled = LabelSelector {
            match_labels: Some(BTreeMap::from([("team".to_owned(), "a".to_owned())])),
            match_expressions: None,
        };
        let cases = [
            (None, Scope::All, "no selector"),
            (Some(LabelSelector::default()), Scope::All, "an empty one"),
            (
                Some(expression(NAMESPACE_NAME_LABEL, "In", &["a", "b"])),
                Scope::Only(set(&["a", "b"])),
                "the controller's shape",
            ),
            (
                Some(expression(NAMESPACE_NAME_LABEL, "In", &[NO_NAMESPACE])),
                Scope::Only(set(&[])),
                "the placeholder is no namespace",
            ),
            (
                Some(expression(NAMESPACE_NAME_LABEL, "NotIn", &["a"])),
                Scope::Other,
                "another operator",
            ),
            (
                Some(expression("team", "In", &["a"])),
                Scope::Other,
                "another key",
            ),
            (Some(labelled), Scope::Other, "matchLabels"),
        ];
        for (selector, want, why) in cases {
            assert_eq!(scope_of(selector.as_ref()), want, "{why}");
        }
    }

    #[test]
    fn widening_adds_the_namespace_only_when_it_is_not_covered() {
        let only = Scope::Only(set(&["a"]));
        assert_eq!(widened(&Scope::All, "a"), None, "all covers it");
        assert_eq!(widened(&only, "a"), None, "listed");
        assert_eq!(
            widened(&only, "b"),
            Some(expression(NAMESPACE_NAME_LABEL, "In", &["a", "b"]))
        );
        assert_eq!(
            widened(&Scope::Other, "b"),
            Some(expression(NAMESPACE_NAME_LABEL, "In", &["b"])),
            "another shape is replaced"
        );
        let widened = widened(&only, "b").expect("widened");
        assert!(scope_of(Some(&widened)).covers("a"), "nothing is dropped");
    }

    #[test]
    fn the_exact_scope_is_written_only_when_it_differs() {
        let wanted = set(&["a", "b"]);
        assert_eq!(exact(&Scope::Only(wanted.clone()), &wanted), None);
        assert_eq!(
            exact(&Scope::All, &wanted),
            Some(expression(NAMESPACE_NAME_LABEL, "In", &["a", "b"])),
            "narrowed from all"
        );
        assert_eq!(
            exact(&Scope::Only(set(&["a"])), &wanted),
            Some(expression(NAMESPACE_NAME_LABEL, "In", &["a", "b"])),
            "a namespace someone removed is put back"
        );
        assert_eq!(
            exact(&Scope::Only(wanted), &set(&[])),
            Some(expression(NAMESPACE_NAME_LABEL, "In", &[NO_NAMESPACE])),
            "no fenced pool: the binding matches no namespace"
        );
    }

    #[test]
    fn a_single_namespace_controller_sweeps_only_its_own_namespace() {
        let own = Some("a");
        let wanted_a = set(&["a"]);
        let none = set(&[]);
        let cases = [
            (Scope::All, &none, None, "cannot narrow all"),
            (Scope::All, &wanted_a, None, "all covers it"),
            (
                Scope::Only(set(&["a", "b"])),
                &none,
                Some(expression(NAMESPACE_NAME_LABEL, "In", &["b"])),
                "drops its own, keeps the others'",
            ),
            (
                Scope::Only(set(&["b"])),
                &wanted_a,
                Some(expression(NAMESPACE_NAME_LABEL, "In", &["a", "b"])),
                "adds its own",
            ),
            (
                Scope::Only(set(&["a", "b"])),
                &wanted_a,
                None,
                "as it should be",
            ),
            (
                Scope::Other,
                &none,
                None,
                "another shape is not its to drop",
            ),
            (
                Scope::Other,
                &wanted_a,
                Some(expression(NAMESPACE_NAME_LABEL, "In", &["a"])),
                "but it must cover its own",
            ),
        ];
        for (scope, wanted, want, why) in cases {
            assert_eq!(swept(&scope, wanted, own), want, "{why}");
        }
        assert_eq!(
            swept(&Scope::All, &wanted_a, None),
            Some(expression(NAMESPACE_NAME_LABEL, "In", &["a"])),
            "a cluster-wide controller narrows"
        );
    }

    #[test]
    fn wanted_is_the_fenced_leases_and_the_recent_asks() {
        let now = Instant::now();
        let grace = Duration::from_secs(120);
        let asked = HashMap::from([
            ("new".to_owned(), now),
            (
                "old".to_owned(),
                now.checked_sub(Duration::from_secs(121)).unwrap_or(now),
            ),
        ]);
        let got = wanted(["a", "a", "b"], &asked, now, grace);
        assert!(got.contains("new"), "asked within the grace");
        assert!(got.contains("a") && got.contains("b"), "fenced Leases");
        // A machine up for less than the grace cannot hold an instant that old.
        if now.checked_sub(Duration::from_secs(121)).is_some() {
            assert!(!got.contains("old"), "asked before the grace");
        }
    }
}

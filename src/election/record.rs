//! What the election reads from and writes to a `coordination.k8s.io/v1`
//! Lease: the client-go fields plus zen-lead's timing and hand-off
//! annotations (see "Lease contract" in docs/ARCHITECTURE.md).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;

use super::{TimingNames, Timings};
use crate::api::keys::{
    HOLDER_INSTANCE_ANNOTATION, PAUSED_ANNOTATION, PREFERRED_HOLDER_ANNOTATION,
    RENEW_DEADLINE_ANNOTATION, RETRY_PERIOD_ANNOTATION,
};

/// `spec.leaseDurationSeconds` when the Lease does not say (client-go's default).
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);

/// The parts of a Lease the election decides on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Record {
    pub uid: String,
    pub resource_version: String,
    /// `None` when `holderIdentity` is absent or empty: the Lease is free.
    pub holder: Option<String>,
    /// `zen-lead.io/holder-instance`: which instance of `holder` wrote it
    /// (`None` when absent, e.g. a Lease written by client-go).
    pub holder_instance: Option<String>,
    pub transitions: i32,
    /// `zen-lead.io/preferred-holder`, if set and non-empty.
    pub preferred: Option<String>,
    /// `zen-lead.io/paused: "true"` (the policy's maintenance pause): only
    /// the holder may write a term; nobody else acquires.
    pub paused: bool,
    /// `spec.leaseDurationSeconds` and the timing annotations, made consistent.
    pub timings: Timings,
    /// `spec.acquireTime`: when the current term began (wall clock; shown to
    /// users only, never used for decisions).
    pub acquired: Option<SystemTime>,
    /// `spec.renewTime`: compared for equality only (a renewal sets a new
    /// one), to tell the holder's writes from the controller's metadata
    /// writes; never compared with a clock.
    pub renewed: Option<SystemTime>,
}

impl Record {
    /// Reads a Lease. A Lease without a resourceVersion cannot be the base of
    /// a compare-and-swap, so it is refused.
    pub fn from_lease(lease: &Lease) -> Option<Record> {
        let resource_version = lease.metadata.resource_version.clone()?;
        let spec = lease.spec.as_ref();
        let annotations = lease.metadata.annotations.as_ref();
        let annotation = |key: &str| {
            annotations
                .and_then(|a| a.get(key))
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
        };
        let holder = spec
            .and_then(|s| s.holder_identity.clone())
            .filter(|h| !h.is_empty());
        let lease_secs = spec
            .and_then(|s| s.lease_duration_seconds)
            .filter(|s| *s > 0);
        Some(Record {
            uid: lease.metadata.uid.clone().unwrap_or_default(),
            resource_version,
            holder_instance: annotation(HOLDER_INSTANCE_ANNOTATION)
                .and_then(|v| instance_of(v, holder.as_deref())),
            holder,
            transitions: spec.and_then(|s| s.lease_transitions).unwrap_or(0),
            preferred: annotation(PREFERRED_HOLDER_ANNOTATION).map(str::to_owned),
            paused: annotation(PAUSED_ANNOTATION) == Some("true"),
            timings: resolve_timings(
                lease_secs,
                annotation(RENEW_DEADLINE_ANNOTATION),
                annotation(RETRY_PERIOD_ANNOTATION),
            ),
            acquired: spec
                .and_then(|s| s.acquire_time.as_ref())
                .map(|t| SystemTime::from(t.0)),
            renewed: spec
                .and_then(|s| s.renew_time.as_ref())
                .map(|t| SystemTime::from(t.0)),
        })
    }
}

/// Timings from `spec.leaseDurationSeconds` and the two annotations. Missing
/// or unusable values fall back to the client-go proportions of the lease
/// duration (15/10/2), so a Lease always yields timings that satisfy the
/// rules of [`Timings::new`].
pub fn resolve_timings(
    lease_secs: Option<i32>,
    renew: Option<&str>,
    retry: Option<&str>,
) -> Timings {
    let lease = lease_secs
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_LEASE_DURATION);
    let fallback = proportional(lease);
    let renew = renew
        .and_then(parse_seconds)
        .unwrap_or(fallback.renew_deadline());
    let retry = retry
        .and_then(parse_seconds)
        .unwrap_or(fallback.retry_period());
    Timings::new(lease, renew, retry, TimingNames::POLICY).unwrap_or(fallback)
}

/// 15 : 10 : 2, for any lease duration.
pub fn proportional(lease: Duration) -> Timings {
    let lease = lease.max(Duration::from_secs(1));
    let renew = lease * 2 / 3;
    let retry = lease * 2 / 15;
    // 2/15 * 1.2 = 0.16 < 2/3, and lease >= 1s keeps both non-zero.
    Timings::new(lease, renew, retry, TimingNames::POLICY).unwrap_or_default()
}

/// Parses the annotation values: decimal seconds with up to millisecond
/// precision (`"10"`, `"0.5"`, `"1.25"`).
pub fn parse_seconds(value: &str) -> Option<Duration> {
    let (whole, frac) = value.split_once('.').unwrap_or((value, ""));
    if whole.is_empty() && frac.is_empty() {
        return None;
    }
    if !whole.chars().all(|c| c.is_ascii_digit())
        || !frac.chars().all(|c| c.is_ascii_digit())
        || frac.len() > 3
    {
        return None;
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let millis: u64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<3}").parse().ok()?
    };
    let total = Duration::from_secs(whole).checked_add(Duration::from_millis(millis))?;
    (!total.is_zero()).then_some(total)
}

/// Formats a duration the way [`parse_seconds`] reads it.
pub fn format_seconds(value: Duration) -> String {
    let millis = value.as_millis();
    if millis.is_multiple_of(1000) {
        format!("{}", millis / 1000)
    } else {
        format!("{}.{:03}", millis / 1000, millis % 1000)
    }
}

/// `spec.leaseDurationSeconds` for a duration: rounded up, so followers never
/// wait less than the writer's own timings assume.
pub fn lease_duration_seconds(value: Duration) -> i32 {
    let secs = value.as_secs() + u64::from(value.subsec_nanos() > 0);
    i32::try_from(secs.max(1)).unwrap_or(i32::MAX)
}

/// A Lease timestamp for "now".
pub fn now_micro() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// What a write sets in `spec` (and the holder-instance annotation);
/// everything else of the base Lease is kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpecWrite {
    pub holder: Option<String>,
    /// Written as `zen-lead.io/holder-instance` with a holder; the annotation
    /// is removed when `holder` is `None` (a release).
    pub instance: Option<String>,
    pub transitions: i32,
    /// `true`: a new term starts, `acquireTime` = now; `false`: kept.
    pub new_term: bool,
    /// `Some`: write this `leaseDurationSeconds`; `None`: keep the Lease's.
    pub lease_duration_seconds: Option<i32>,
}

/// The annotation's value: `<holderIdentity>/<instance>`. Naming the
/// identity too means a value left behind by a writer that does not know the
/// annotation (client-go, an older zen-lead copying the metadata) never
/// passes for the instance of a later holder.
pub fn instance_value(holder: &str, instance: &str) -> String {
    format!("{holder}/{instance}")
}

/// The instance in an annotation value, if it was written for `holder`.
/// Instances never contain `/`; identities may.
fn instance_of(value: &str, holder: Option<&str>) -> Option<String> {
    let (identity, instance) = value.rsplit_once('/')?;
    (Some(identity) == holder && !instance.is_empty()).then(|| instance.to_owned())
}

/// Sets or removes the holder-instance annotation as `write` says.
pub fn apply_instance(annotations: &mut Option<BTreeMap<String, String>>, write: &SpecWrite) {
    match (&write.holder, &write.instance) {
        (Some(holder), Some(instance)) => {
            annotations.get_or_insert_with(BTreeMap::new).insert(
                HOLDER_INSTANCE_ANNOTATION.to_owned(),
                instance_value(holder, instance),
            );
        }
        _ => {
            if let Some(map) = annotations.as_mut() {
                map.remove(HOLDER_INSTANCE_ANNOTATION);
            }
        }
    }
}

/// A release by `identity` leaves no preference for `identity` behind: the
/// other candidates would defer to it (`preferred_defer`) on a free Lease
/// for a holder that has just gone (a hand-off to it that it already took,
/// then its own release when its pod is deleted).
pub fn drop_own_preference(annotations: &mut Option<BTreeMap<String, String>>, identity: &str) {
    if let Some(map) = annotations.as_mut()
        && map
            .get(PREFERRED_HOLDER_ANNOTATION)
            .is_some_and(|p| p.trim() == identity)
    {
        map.remove(PREFERRED_HOLDER_ANNOTATION);
    }
}

/// Applies `write` to a copy of `spec` (the Lease being replaced).
pub fn apply_spec(spec: Option<&LeaseSpec>, write: &SpecWrite) -> LeaseSpec {
    let mut out = spec.cloned().unwrap_or_default();
    let now = now_micro();
    out.holder_identity = write.holder.clone();
    out.lease_transitions = Some(write.transitions);
    if write.new_term || out.acquire_time.is_none() {
        out.acquire_time = Some(now.clone());
    }
    out.renew_time = Some(now);
    if let Some(secs) = write.lease_duration_seconds {
        out.lease_duration_seconds = Some(secs);
    } else if out.lease_duration_seconds.is_none() {
        out.lease_duration_seconds = Some(lease_duration_seconds(DEFAULT_LEASE_DURATION));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn lease(secs: Option<i32>, annotations: &[(&str, &str)]) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("pool".into()),
                resource_version: Some("7".into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(String::new()),
                lease_duration_seconds: secs,
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn seconds_parse_and_format() {
        assert_eq!(parse_seconds("10"), Some(Duration::from_secs(10)));
        assert_eq!(parse_seconds("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_seconds(".25"), Some(Duration::from_millis(250)));
        assert_eq!(parse_seconds("1.125"), Some(Duration::from_millis(1125)));
        for bad in ["", ".", "0", "1.2345", "-1", "1s", "1e3", " 1"] {
            assert_eq!(parse_seconds(bad), None, "{bad:?}");
        }
        assert_eq!(format_seconds(Duration::from_millis(500)), "0.500");
        assert_eq!(format_seconds(Duration::from_secs(2)), "2");
        assert_eq!(lease_duration_seconds(Duration::from_millis(2500)), 3);
        assert_eq!(lease_duration_seconds(Duration::from_secs(15)), 15);
    }

    #[test]
    fn empty_holder_is_free_and_defaults_apply() {
        let rec = Record::from_lease(&lease(None, &[])).expect("record");
        assert_eq!(rec.holder, None);
        assert_eq!(rec.timings, Timings::default());
    }

    #[test]
    fn annotations_set_renew_and_retry() {
        let rec = Record::from_lease(&lease(
            Some(3),
            &[
                (RENEW_DEADLINE_ANNOTATION, "2"),
                (RETRY_PERIOD_ANNOTATION, "0.5"),
                (PREFERRED_HOLDER_ANNOTATION, "b"),
            ],
        ))
        .expect("record");
        assert_eq!(rec.timings.lease_duration(), Duration::from_secs(3));
        assert_eq!(rec.timings.renew_deadline(), Duration::from_secs(2));
        assert_eq!(rec.timings.retry_period(), Duration::from_millis(500));
        assert_eq!(rec.preferred.as_deref(), Some("b"));
    }

    #[test]
    fn inconsistent_annotations_fall_back_to_proportions() {
        // renew >= lease would let two leaders overlap: ignored.
        let rec = Record::from_lease(&lease(Some(6), &[(RENEW_DEADLINE_ANNOTATION, "9")]))
            .expect("record");
        assert_eq!(rec.timings, proportional(Duration::from_secs(6)));
        assert_eq!(rec.timings.renew_deadline(), Duration::from_secs(4));
    }

    #[test]
    fn the_instance_counts_only_for_the_holder_it_was_written_for() {
        let mut l = lease(Some(3), &[(HOLDER_INSTANCE_ANNOTATION, "team/a/uid-1")]);
        if let Some(spec) = l.spec.as_mut() {
            spec.holder_identity = Some("team/a".into());
        }
        let rec = Record::from_lease(&l).expect("record");
        assert_eq!(rec.holder_instance.as_deref(), Some("uid-1"));
        // Left behind by a writer that copied the metadata: not b's instance.
        if let Some(spec) = l.spec.as_mut() {
            spec.holder_identity = Some("b".into());
        }
        let rec = Record::from_lease(&l).expect("record");
        assert_eq!(rec.holder_instance, None);
        // Written and read back through apply_instance.
        let mut annotations = None;
        let write = SpecWrite {
            holder: Some("b".into()),
            instance: Some("uid-2".into()),
            transitions: 1,
            new_term: true,
            lease_duration_seconds: None,
        };
        apply_instance(&mut annotations, &write);
        l.metadata.annotations = annotations;
        let rec = Record::from_lease(&l).expect("record");
        assert_eq!(rec.holder_instance.as_deref(), Some("uid-2"));
        // A release removes it.
        let mut annotations = l.metadata.annotations.clone();
        apply_instance(
            &mut annotations,
            &SpecWrite {
                holder: None,
                instance: None,
                ..write
            },
        );
        assert!(annotations.is_none_or(|a| !a.contains_key(HOLDER_INSTANCE_ANNOTATION)));
    }

    #[test]
    fn a_release_drops_only_a_preference_for_the_releaser() {
        let with = |preferred: &str| {
            Some(BTreeMap::from([
                (PREFERRED_HOLDER_ANNOTATION.to_owned(), preferred.to_owned()),
                (HOLDER_INSTANCE_ANNOTATION.to_owned(), "x".to_owned()),
            ]))
        };
        let mut own = with("a_1");
        drop_own_preference(&mut own, "a_1");
        assert_eq!(
            own.as_ref()
                .map(|m| m.contains_key(PREFERRED_HOLDER_ANNOTATION)),
            Some(false)
        );
        assert_eq!(own.map(|m| m.len()), Some(1), "other annotations stay");
        let mut other = with("b_2");
        drop_own_preference(&mut other, "a_1");
        assert_eq!(other, with("b_2"));
        let mut none = None;
        drop_own_preference(&mut none, "a_1");
        assert_eq!(none, None);
    }

    #[test]
    fn only_true_pauses() {
        for (value, paused) in [
            ("true", true),
            (" true ", true),
            ("false", false),
            ("", false),
        ] {
            let rec =
                Record::from_lease(&lease(Some(3), &[(PAUSED_ANNOTATION, value)])).expect("record");
            assert_eq!(rec.paused, paused, "{value:?}");
        }
        let rec = Record::from_lease(&lease(Some(3), &[])).expect("record");
        assert!(!rec.paused);
    }

    #[test]
    fn no_resource_version_no_record() {
        let mut l = lease(Some(3), &[]);
        l.metadata.resource_version = None;
        assert_eq!(Record::from_lease(&l), None);
    }
}

use super::*;
use crate::election::TimingNames;

const ME: &str = "me";
/// Our instance (the agent's pod UID).
const MY_POD: &str = "pod-uid-me";

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn timings(lease: u64, renew: u64, retry: u64) -> Timings {
    Timings::new(ms(lease), ms(renew), ms(retry), TimingNames::POLICY).expect("timings")
}

fn cfg() -> MachineConfig {
    MachineConfig {
        identity: ME.into(),
        instance: MY_POD.into(),
        can_create: false,
        fixed: None,
        create_timings: Timings::default(),
        preferred_defer: ms(300),
    }
}

fn rec(rv: u64, holder: Option<&str>, transitions: i32) -> Record {
    Record {
        uid: "u1".into(),
        resource_version: rv.to_string(),
        holder: holder.map(str::to_owned),
        // Every holder writes its instance; ours is MY_POD.
        holder_instance: holder.map(|h| {
            if h == ME {
                MY_POD.to_owned()
            } else {
                format!("{h}-pod")
            }
        }),
        transitions,
        preferred: None,
        paused: false,
        timings: timings(3000, 2000, 500),
        acquired: None,
        // Each version a new renewal, unless a test says otherwise.
        renewed: Some(std::time::UNIX_EPOCH + Duration::from_secs(rv)),
    }
}

fn present(r: Record) -> Observation {
    Observation::Present(r)
}

fn acquire_write(transitions: i32, new_term: bool) -> SpecWrite {
    SpecWrite {
        holder: Some(ME.into()),
        instance: Some(MY_POD.into()),
        transitions,
        new_term,
        lease_duration_seconds: None,
    }
}

/// Makes `m` the leader at `t0` with a lease record at resourceVersion 2.
fn leading_machine(t0: Instant) -> Machine {
    let mut m = Machine::new(cfg());
    m.observe(present(rec(1, None, 4)), t0);
    assert!(matches!(
        m.decide(t0),
        Action::Replace {
            kind: WriteKind::Acquire,
            ..
        }
    ));
    let ev = m.write_ok(WriteKind::Acquire, t0, rec(2, Some(ME), 5), t0);
    assert_eq!(ev, Some(LeadEvent::Started { token: 5, at: t0 }));
    m
}

/// Table: a follower's decision for one observed record at a given age.
#[test]
fn follower_decisions() {
    struct Case {
        name: &'static str,
        holder: Option<&'static str>,
        preferred: Option<&'static str>,
        age_ms: u64,
        want: fn(Instant) -> Action,
    }
    let cases = [
        Case {
            name: "free lease: acquire at once, transitions +1 (client-go counts releases too)",
            holder: None,
            preferred: None,
            age_ms: 0,
            want: |_| Action::Replace {
                kind: WriteKind::Acquire,
                base_resource_version: "10".into(),
                write: acquire_write(8, true),
            },
        },
        Case {
            name: "held by another, not expired: wait for the expiry",
            holder: Some("other"),
            preferred: None,
            age_ms: 1000,
            want: |t0| Action::Wait(Some(t0 + ms(3000))),
        },
        Case {
            name: "held by another, just at expiry: acquire",
            holder: Some("other"),
            preferred: None,
            age_ms: 3000,
            want: |_| Action::Replace {
                kind: WriteKind::Acquire,
                base_resource_version: "10".into(),
                write: acquire_write(8, true),
            },
        },
        Case {
            name: "holder is me (restarted process): reclaim, same term and count",
            holder: Some(ME),
            preferred: None,
            age_ms: 0,
            want: |_| Action::Replace {
                kind: WriteKind::Acquire,
                base_resource_version: "10".into(),
                write: acquire_write(7, false),
            },
        },
        Case {
            name: "free lease naming another preferred holder: defer",
            holder: None,
            preferred: Some("pref"),
            age_ms: 100,
            want: |t0| Action::Wait(Some(t0 + ms(300))),
        },
        Case {
            name: "free lease naming another preferred holder, defer over: acquire",
            holder: None,
            preferred: Some("pref"),
            age_ms: 300,
            want: |_| Action::Replace {
                kind: WriteKind::Acquire,
                base_resource_version: "10".into(),
                write: acquire_write(8, true),
            },
        },
        Case {
            name: "free lease naming me preferred: acquire at once",
            holder: None,
            preferred: Some(ME),
            age_ms: 0,
            want: |_| Action::Replace {
                kind: WriteKind::Acquire,
                base_resource_version: "10".into(),
                write: acquire_write(8, true),
            },
        },
        Case {
            name: "expired holder that was preferred: no defer needed",
            holder: Some("pref"),
            preferred: Some("pref"),
            age_ms: 3000,
            want: |_| Action::Replace {
                kind: WriteKind::Acquire,
                base_resource_version: "10".into(),
                write: acquire_write(8, true),
            },
        },
    ];
    for case in cases {
        let t0 = Instant::now();
        let mut m = Machine::new(cfg());
        let mut r = rec(10, case.holder, 7);
        r.preferred = case.preferred.map(str::to_owned);
        m.observe(present(r), t0);
        let got = m.decide(t0 + ms(case.age_ms));
        assert_eq!(got, (case.want)(t0), "{}", case.name);
    }
}

#[test]
fn expiry_counts_from_the_last_observed_change_not_from_renew_time() {
    let t0 = Instant::now();
    let mut m = Machine::new(cfg());
    m.observe(present(rec(10, Some("other"), 1)), t0);
    // The same record seen again (a relist) does not restart the clock.
    m.observe(present(rec(10, Some("other"), 1)), t0 + ms(2000));
    assert_eq!(m.decide(t0 + ms(2000)), Action::Wait(Some(t0 + ms(3000))));
    // A renewal (new resourceVersion) does.
    m.observe(present(rec(11, Some("other"), 1)), t0 + ms(2500));
    assert_eq!(m.decide(t0 + ms(3000)), Action::Wait(Some(t0 + ms(5500))));
}

/// The controller writes the Lease on its own (the fencing label, the
/// fenced-pods list): a new resourceVersion, the holder's part unchanged.
/// Only the holder's writes restart a follower's countdown; before, a
/// controller writing more often than the lease duration kept an expired
/// Lease from ever being taken (found by tests/model.rs).
#[test]
fn only_the_holders_writes_restart_the_countdown() {
    let t0 = Instant::now();
    let mut m = Machine::new(cfg());
    let held = rec(10, Some("other"), 1);
    m.observe(present(held.clone()), t0);
    let controller_write = |rv: u64| Record {
        resource_version: rv.to_string(),
        ..held.clone()
    };
    m.observe(present(controller_write(11)), t0 + ms(1000));
    m.observe(present(controller_write(12)), t0 + ms(2000));
    assert_eq!(m.decide(t0 + ms(2500)), Action::Wait(Some(t0 + ms(3000))));
    // Taken on the newest version, at the expiry counted from the renewal.
    assert_eq!(
        m.decide(t0 + ms(3000)),
        Action::Replace {
            kind: WriteKind::Acquire,
            base_resource_version: "12".into(),
            write: acquire_write(2, true),
        }
    );
    // A Lease without renewTime (an unknown writer): every change counts.
    let mut m = Machine::new(cfg());
    let bare = Record {
        renewed: None,
        ..held.clone()
    };
    m.observe(present(bare.clone()), t0);
    let later_version = Record {
        resource_version: "11".into(),
        ..bare
    };
    m.observe(present(later_version), t0 + ms(1000));
    assert_eq!(m.decide(t0 + ms(3000)), Action::Wait(Some(t0 + ms(4000))));
}

#[test]
fn late_older_events_are_ignored() {
    let t0 = Instant::now();
    let mut m = leading_machine(t0);
    // The watch delivers the pre-acquire record after our write's answer.
    assert_eq!(m.observe(present(rec(1, None, 4)), t0 + ms(10)), None);
    assert!(m.leading(t0 + ms(10)));
    assert_eq!(m.record().map(|r| r.resource_version.as_str()), Some("2"));
}

#[test]
fn leader_renews_every_retry_period_and_leads_until_send_plus_deadline() {
    let t0 = Instant::now();
    let mut m = leading_machine(t0);
    assert_eq!(m.decide(t0 + ms(100)), Action::Wait(Some(t0 + ms(500))));
    let renew = m.decide(t0 + ms(500));
    assert_eq!(
        renew,
        Action::Replace {
            kind: WriteKind::Renew,
            base_resource_version: "2".into(),
            write: acquire_write(5, false),
        }
    );
    // Renewal sent at 500 ms, answered at 700 ms: lead until 500 + 2000.
    let ev = m.write_ok(
        WriteKind::Renew,
        t0 + ms(500),
        rec(3, Some(ME), 5),
        t0 + ms(700),
    );
    assert_eq!(ev, None);
    assert_eq!(m.lead_deadline(), Some(t0 + ms(2500)));
    assert_eq!(m.token(), Some(5));
}

#[test]
fn failing_renewals_end_the_term_at_the_deadline_not_later() {
    let t0 = Instant::now();
    let mut m = leading_machine(t0);
    for step in 1..=8u64 {
        let now = t0 + ms(250 * step);
        if m.expire(now).is_some() {
            break;
        }
        m.write_failed(Failure::Transient, now);
    }
    assert!(!m.leading(t0 + ms(2000)));
    // Noticed late (paused process): reported at the deadline itself.
    let mut m = leading_machine(t0);
    assert_eq!(
        m.expire(t0 + ms(9000)),
        Some(LeadEvent::Ended {
            at: t0 + ms(2000),
            reason: EndReason::DeadlinePassed
        })
    );
    // The next step is to try again, as a follower that sees its own name.
    assert!(matches!(
        m.decide(t0 + ms(9000)),
        Action::Replace {
            kind: WriteKind::Acquire,
            ..
        }
    ));
}

#[test]
fn a_renewal_answered_after_the_deadline_does_not_extend_the_term() {
    let t0 = Instant::now();
    let mut m = leading_machine(t0);
    // Answered after the term's deadline (t0 + 2000), e.g. on waking from a
    // pause before the timer fired: the term ended at its deadline, and the
    // end is reported (the leadership log and is_leader depend on it).
    let ev = m.write_ok(
        WriteKind::Renew,
        t0 + ms(500),
        rec(3, Some(ME), 5),
        t0 + ms(2600),
    );
    assert_eq!(
        ev,
        Some(LeadEvent::Ended {
            at: t0 + ms(2000),
            reason: EndReason::DeadlinePassed
        })
    );
    assert!(!m.leading(t0 + ms(2600)));
    // The timer noticed first: nothing left to report.
    let mut m = leading_machine(t0);
    assert!(m.expire(t0 + ms(2000)).is_some());
    let ev = m.write_ok(
        WriteKind::Renew,
        t0 + ms(500),
        rec(3, Some(ME), 5),
        t0 + ms(2600),
    );
    assert_eq!(ev, None);
}

#[test]
fn conflict_means_read_never_overwrite() {
    let t0 = Instant::now();
    let mut m = Machine::new(cfg());
    m.observe(present(rec(10, None, 0)), t0);
    m.write_failed(Failure::Stale, t0);
    assert_eq!(m.decide(t0), Action::Read);
    // The read shows someone else won.
    m.observe(present(rec(11, Some("other"), 1)), t0 + ms(5));
    assert_eq!(m.decide(t0 + ms(5)), Action::Wait(Some(t0 + ms(3005))));
}

#[test]
fn transient_failures_back_off() {
    let t0 = Instant::now();
    let mut m = Machine::new(cfg());
    m.observe(present(rec(10, None, 0)), t0);
    m.write_failed(Failure::Transient, t0);
    assert_eq!(m.decide(t0), Action::Wait(Some(t0 + ms(250))));
}

#[test]
fn another_holder_in_the_record_ends_our_term_at_once() {
    let t0 = Instant::now();
    let mut m = leading_machine(t0);
    let ev = m.observe(present(rec(3, Some("intruder"), 6)), t0 + ms(100));
    assert_eq!(
        ev,
        Some(LeadEvent::Ended {
            at: t0 + ms(100),
            reason: EndReason::Superseded
        })
    );
}

#[test]
fn hand_off_to_a_preferred_holder_happens_once() {
    let t0 = Instant::now();
    let mut m = leading_machine(t0);
    let mut r = rec(3, Some(ME), 5);
    r.preferred = Some("pref".into());
    m.observe(present(r), t0 + ms(100));
    let action = m.decide(t0 + ms(100));
    assert!(
        matches!(
            action,
            Action::Replace {
                kind: WriteKind::Release,
                ..
            }
        ),
        "{action:?}"
    );
    // Releasing ends our term before the write is sent.
    assert!(matches!(
        m.begin(&action, t0 + ms(100)),
        Some(LeadEvent::Ended {
            reason: EndReason::Released,
            ..
        })
    ));
    let mut released = rec(4, None, 5);
    released.preferred = Some("pref".into());
    m.write_ok(
        WriteKind::Release,
        t0 + ms(100),
        released.clone(),
        t0 + ms(110),
    );
    assert!(!m.leading(t0 + ms(110)));
    // We defer to the preferred candidate ...
    assert_eq!(m.decide(t0 + ms(120)), Action::Wait(Some(t0 + ms(410))));
    // ... and if it never comes, take the Lease back and keep it: the
    // annotation we saw at the start of the term does not make us release.
    let action = m.decide(t0 + ms(410));
    assert!(matches!(
        action,
        Action::Replace {
            kind: WriteKind::Acquire,
            ..
        }
    ));
    let mut mine = rec(5, Some(ME), 6);
    mine.preferred = Some("pref".into());
    m.write_ok(WriteKind::Acquire, t0 + ms(410), mine, t0 + ms(420));
    assert!(matches!(m.decide(t0 + ms(430)), Action::Wait(_)));
}

#[test]
fn shutdown_release_only_when_the_record_names_us() {
    let t0 = Instant::now();
    let m = leading_machine(t0);
    assert!(matches!(
        m.release_action(),
        Some(Action::Replace {
            kind: WriteKind::Release,
            write: SpecWrite {
                holder: None,
                transitions: 5,
                ..
            },
            ..
        })
    ));
    let mut f = Machine::new(cfg());
    f.observe(present(rec(1, Some("other"), 1)), t0);
    assert_eq!(f.release_action(), None);
}

#[test]
fn missing_lease_rules() {
    let t0 = Instant::now();
    let creating = MachineConfig {
        can_create: true,
        ..cfg()
    };
    let missing = |continuous| Observation::Missing {
        continuous,
        resource_version: Some("50".into()),
    };

    // Without create permission: wait for the controller to create it.
    let mut m = Machine::new(cfg());
    m.observe(missing(false), t0);
    assert_eq!(m.decide(t0), Action::Wait(None));

    // Never seen: someone unknown may hold a claim; wait a lease duration.
    let mut m = Machine::new(creating.clone());
    m.observe(missing(false), t0);
    assert_eq!(m.decide(t0), Action::Wait(Some(t0 + ms(15_000))));
    assert!(matches!(
        m.decide(t0 + ms(15_000)),
        Action::Create(SpecWrite {
            transitions: 0,
            new_term: true,
            ..
        })
    ));

    // Deleted while free (continuous watch): create at once, keeping the
    // Lease's duration (the driver copies it from the last Lease seen).
    let mut m = Machine::new(creating.clone());
    m.observe(present(rec(10, None, 3)), t0);
    m.observe(missing(true), t0 + ms(10));
    assert!(matches!(
        m.decide(t0 + ms(10)),
        Action::Create(SpecWrite {
            lease_duration_seconds: None,
            ..
        })
    ));
    assert!(matches!(
        m.decide(t0 + ms(10)),
        Action::Create(SpecWrite { transitions: 4, .. })
    ));

    // Deleted while another held it: its claim still runs out first.
    let mut m = Machine::new(creating.clone());
    m.observe(present(rec(10, Some("other"), 3)), t0);
    m.observe(missing(true), t0 + ms(10));
    assert_eq!(m.decide(t0 + ms(10)), Action::Wait(Some(t0 + ms(3000))));
    // ... also when it is re-created free by someone else meanwhile.
    m.observe(
        present(Record {
            uid: "u2".into(),
            ..rec(60, None, 0)
        }),
        t0 + ms(20),
    );
    assert_eq!(m.decide(t0 + ms(20)), Action::Wait(Some(t0 + ms(3000))));

    // Deleted under the leader: it keeps its term and re-creates at once,
    // continuing the same term and fencing token.
    let mut m = Machine::new(creating);
    m.observe(present(rec(1, None, 4)), t0);
    m.write_ok(WriteKind::Acquire, t0, rec(2, Some(ME), 5), t0);
    m.observe(missing(true), t0 + ms(100));
    assert!(m.leading(t0 + ms(100)));
    assert_eq!(
        m.decide(t0 + ms(100)),
        Action::Create(SpecWrite {
            holder: Some(ME.into()),
            instance: Some(MY_POD.into()),
            transitions: 5,
            new_term: false,
            lease_duration_seconds: None
        })
    );
}

#[test]
fn deleted_lease_without_create_permission_keeps_the_term_until_its_deadline() {
    let t0 = Instant::now();
    let mut m = leading_machine(t0);
    m.observe(
        Observation::Missing {
            continuous: true,
            resource_version: Some("9".into()),
        },
        t0 + ms(100),
    );
    assert_eq!(m.decide(t0 + ms(100)), Action::Wait(Some(t0 + ms(2000))));
}

#[test]
fn shortened_lease_duration_applies_from_the_next_holder() {
    let t0 = Instant::now();
    let mut m = Machine::new(cfg());
    m.observe(present(rec(10, Some("other"), 1)), t0);
    let mut shorter = rec(11, Some("other"), 1);
    shorter.timings = timings(1000, 600, 100);
    m.observe(present(shorter), t0 + ms(100));
    // Still the old 3 s from the latest change, not 1 s.
    assert_eq!(m.decide(t0 + ms(100)), Action::Wait(Some(t0 + ms(3100))));
}

#[test]
fn lock_writes_its_own_lease_duration() {
    let t0 = Instant::now();
    let mut m = Machine::new(MachineConfig {
        fixed: Some(timings(2500, 1500, 300)),
        ..cfg()
    });
    m.observe(present(rec(10, None, 0)), t0);
    let Action::Replace { write, .. } = m.decide(t0) else {
        panic!("acquire expected");
    };
    assert_eq!(write.lease_duration_seconds, Some(3));
    m.write_ok(WriteKind::Acquire, t0, rec(11, Some(ME), 1), t0);
    // Our own renew deadline rules our term.
    assert_eq!(m.lead_deadline(), Some(t0 + ms(1500)));
}

#[test]
fn changed_timings_shorten_the_running_term() {
    let t0 = Instant::now();
    let mut m = leading_machine(t0);
    let mut r = rec(3, Some(ME), 5);
    r.timings = timings(2000, 1000, 200);
    m.observe(present(r), t0 + ms(50));
    assert_eq!(m.lead_deadline(), Some(t0 + ms(1000)));
    assert_eq!(
        m.decide(t0 + ms(200)),
        Action::Replace {
            kind: WriteKind::Renew,
            base_resource_version: "3".into(),
            write: acquire_write(5, false),
        }
    );
}

#[test]
fn a_term_superseded_after_a_pause_ended_at_its_deadline() {
    let t0 = Instant::now();
    let mut m = leading_machine(t0);
    // Paused for 5 s; the first thing seen afterwards is the new holder.
    let ev = m.observe(present(rec(9, Some("other"), 6)), t0 + ms(5000));
    assert_eq!(
        ev,
        Some(LeadEvent::Ended {
            at: t0 + ms(2000),
            reason: EndReason::Superseded
        })
    );
}

/// A record naming our identity, written by `instance` (`None`: no
/// instance annotation, as client-go or an older zen-lead writes it).
fn twin(rv: u64, instance: Option<&str>, transitions: i32) -> Record {
    Record {
        holder_instance: instance.map(str::to_owned),
        ..rec(rv, Some(ME), transitions)
    }
}

/// Table: a Lease that names our identity is ours only with our instance.
#[test]
fn identity_safety_decisions() {
    struct Case {
        name: &'static str,
        instance: Option<&'static str>,
        age_ms: u64,
        want: fn(Instant) -> Action,
    }
    let cases = [
        Case {
            name: "same identity, same instance (our agent container restarted): reclaim the term",
            instance: Some(MY_POD),
            age_ms: 0,
            want: |_| Action::Replace {
                kind: WriteKind::Acquire,
                base_resource_version: "10".into(),
                write: acquire_write(7, false),
            },
        },
        Case {
            name: "same identity, another pod: its claim is waited out like anyone's",
            instance: Some("pod-uid-twin"),
            age_ms: 1000,
            want: |t0| Action::Wait(Some(t0 + ms(3000))),
        },
        Case {
            name: "same identity, another pod, claim expired: a new term (token +1)",
            instance: Some("pod-uid-twin"),
            age_ms: 3000,
            want: |_| Action::Replace {
                kind: WriteKind::Acquire,
                base_resource_version: "10".into(),
                write: acquire_write(8, true),
            },
        },
        Case {
            name: "same identity, no instance recorded (client-go, older zen-lead): waited out",
            instance: None,
            age_ms: 2999,
            want: |t0| Action::Wait(Some(t0 + ms(3000))),
        },
    ];
    for case in cases {
        let t0 = Instant::now();
        let mut m = Machine::new(cfg());
        m.observe(present(twin(10, case.instance, 7)), t0);
        assert_eq!(
            m.decide(t0 + ms(case.age_ms)),
            (case.want)(t0),
            "{}",
            case.name
        );
        assert!(!m.leading(t0 + ms(case.age_ms)), "{}", case.name);
    }
}

#[test]
fn a_twin_taking_the_lease_ends_our_term() {
    let t0 = Instant::now();
    let mut m = leading_machine(t0);
    let ev = m.observe(present(twin(3, Some("pod-uid-twin"), 6)), t0 + ms(100));
    assert_eq!(
        ev,
        Some(LeadEvent::Ended {
            at: t0 + ms(100),
            reason: EndReason::Superseded
        })
    );
    // And its Lease is not ours to release on shutdown.
    assert_eq!(m.release_action(), None);
}

#[test]
fn a_successful_write_naming_a_twin_is_not_our_term() {
    // A write answered with a record that names our identity but another
    // instance (cannot come from our own write, but never trust it).
    let t0 = Instant::now();
    let mut m = Machine::new(cfg());
    m.observe(present(rec(1, None, 4)), t0);
    let ev = m.write_ok(WriteKind::Acquire, t0, twin(2, Some("pod-uid-twin"), 5), t0);
    assert_eq!(ev, None);
    assert!(!m.leading(t0));
}

/// Several candidates that share one identity (the same `zen-lead/identity`
/// on every replica) run against one compare-and-swap store, seeing each
/// other's writes late or not at all. At no instant may two of them lead.
#[test]
fn candidates_sharing_an_identity_never_lead_together() {
    #[derive(Clone)]
    struct Stored {
        rv: u64,
        holder: Option<String>,
        instance: Option<String>,
        transitions: i32,
    }
    let to_record = |s: &Stored| Record {
        uid: "u1".into(),
        resource_version: s.rv.to_string(),
        holder: s.holder.clone(),
        holder_instance: s.instance.clone(),
        transitions: s.transitions,
        preferred: None,
        paused: false,
        timings: timings(3000, 2000, 500),
        acquired: None,
        renewed: Some(std::time::UNIX_EPOCH + Duration::from_secs(s.rv)),
    };
    for seed in 0..20u64 {
        let mut store = Stored {
            rv: 1,
            holder: None,
            instance: None,
            transitions: 0,
        };
        let mut machines: Vec<Machine> = (0..3)
            .map(|i| {
                Machine::new(MachineConfig {
                    instance: format!("pod-{i}"),
                    ..cfg()
                })
            })
            .collect();
        let t0 = Instant::now();
        // A cheap deterministic shuffle: who acts, and who sees the store,
        // at each 50 ms step.
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut leaders_seen = std::collections::BTreeSet::new();
        for step in 0..600u64 {
            let now = t0 + ms(step * 50);
            let i = (next() % 3) as usize;
            let m = &mut machines[i];
            m.expire(now);
            if next() % 4 != 0 {
                // Not every candidate sees every change (a slow watch).
                m.observe(present(to_record(&store)), now);
            }
            match m.decide(now) {
                Action::Read => {
                    m.observe(present(to_record(&store)), now);
                }
                Action::Replace {
                    kind,
                    base_resource_version,
                    write,
                } => {
                    m.begin(
                        &Action::Replace {
                            kind,
                            base_resource_version: base_resource_version.clone(),
                            write: write.clone(),
                        },
                        now,
                    );
                    if base_resource_version == store.rv.to_string() {
                        store = Stored {
                            rv: store.rv + 1,
                            holder: write.holder.clone(),
                            instance: write.instance.clone(),
                            transitions: write.transitions,
                        };
                        m.write_ok(kind, now, to_record(&store), now);
                    } else {
                        m.write_failed(Failure::Stale, now);
                    }
                }
                Action::Create(_) | Action::Wait(_) => {}
            }
            // Candidates that are not picked for a while skip turns, like a
            // paused process: their deadlines must cover that.
            let leading: Vec<usize> = (0..3).filter(|j| machines[*j].leading(now)).collect();
            assert!(
                leading.len() <= 1,
                "seed {seed}, step {step}: candidates {leading:?} lead together"
            );
            leaders_seen.extend(leading);
        }
        assert!(!leaders_seen.is_empty(), "seed {seed}: nobody ever led");
    }
}

#[test]
fn a_renewal_may_take_the_rest_of_the_term_other_writes_may_not() {
    let t0 = Instant::now();
    let m = leading_machine(t0);
    // Term until t0 + 2000 ms; the short timeout is min(retry, renew / 3).
    assert_eq!(m.request_timeout(), ms(500));
    assert_eq!(m.write_timeout(WriteKind::Renew, t0 + ms(500)), ms(1500));
    assert_eq!(m.write_timeout(WriteKind::Renew, t0 + ms(1800)), ms(500));
    assert_eq!(m.write_timeout(WriteKind::Release, t0 + ms(500)), ms(500));
    let f = Machine::new(cfg());
    assert_eq!(f.write_timeout(WriteKind::Acquire, t0), f.request_timeout());
}

#[test]
fn standing_down_releases_and_leaves_the_lease_to_others_until_it_ends() {
    let t0 = Instant::now();
    let mut m = leading_machine(t0);
    let until = t0 + ms(1_000);
    m.stand_down(Some(until));
    let action = m.decide(t0 + ms(10));
    assert!(
        matches!(
            action,
            Action::Replace {
                kind: WriteKind::Release,
                ..
            }
        ),
        "{action:?}"
    );
    // The term ends before the release is sent.
    assert!(matches!(
        m.begin(&action, t0 + ms(10)),
        Some(LeadEvent::Ended {
            reason: EndReason::Released,
            ..
        })
    ));
    m.write_ok(
        WriteKind::Release,
        t0 + ms(10),
        rec(3, None, 5),
        t0 + ms(20),
    );
    assert!(!m.leading(t0 + ms(20)));
    // A free Lease is left alone while standing down ...
    assert_eq!(m.decide(t0 + ms(30)), Action::Wait(Some(until)));
    // ... another candidate takes it: we wait out its claim as usual.
    m.observe(present(rec(4, Some("other"), 6)), t0 + ms(40));
    assert_eq!(m.decide(t0 + ms(50)), Action::Wait(Some(until)));
    assert_eq!(m.decide(until), Action::Wait(Some(t0 + ms(40) + ms(3000))));
    // Had nobody come, we campaign again once the stand-down ends.
    let mut alone = leading_machine(t0);
    alone.stand_down(Some(until));
    let action = alone.decide(t0 + ms(10));
    alone.begin(&action, t0 + ms(10));
    alone.write_ok(
        WriteKind::Release,
        t0 + ms(10),
        rec(3, None, 5),
        t0 + ms(20),
    );
    assert!(matches!(
        alone.decide(until),
        Action::Replace {
            kind: WriteKind::Acquire,
            ..
        }
    ));
    // Clearing the stand-down early also lets us campaign at once.
    let mut cleared = Machine::new(cfg());
    cleared.stand_down(Some(until));
    cleared.observe(present(rec(1, None, 4)), t0);
    assert_eq!(cleared.decide(t0), Action::Wait(Some(until)));
    cleared.stand_down(None);
    assert!(matches!(
        cleared.decide(t0),
        Action::Replace {
            kind: WriteKind::Acquire,
            ..
        }
    ));
}

/// Table: a follower's decision on a paused record. Pause only takes
/// acquisitions away: a free or expired Lease is left alone, whoever it
/// names as preferred; only the holder's own instance may take its term back.
#[test]
fn a_paused_lease_is_never_acquired_by_anyone_but_its_holder() {
    struct Case {
        name: &'static str,
        holder: Option<&'static str>,
        preferred: Option<&'static str>,
        age_ms: u64,
        paused: bool,
        want: fn(Instant) -> Action,
    }
    let acquire = |_| Action::Replace {
        kind: WriteKind::Acquire,
        base_resource_version: "10".into(),
        write: acquire_write(8, true),
    };
    let cases = [
        Case {
            name: "paused, free: wait for a change of the Lease",
            holder: None,
            preferred: None,
            age_ms: 0,
            paused: true,
            want: |_| Action::Wait(None),
        },
        Case {
            name: "paused, free, naming me preferred: still wait",
            holder: None,
            preferred: Some(ME),
            age_ms: 5000,
            paused: true,
            want: |_| Action::Wait(None),
        },
        Case {
            name: "paused, held by another, not expired: wait (not for the expiry)",
            holder: Some("other"),
            preferred: None,
            age_ms: 1000,
            paused: true,
            want: |_| Action::Wait(None),
        },
        Case {
            name: "paused, held by another, long expired: still wait",
            holder: Some("other"),
            preferred: None,
            age_ms: 60_000,
            paused: true,
            want: |_| Action::Wait(None),
        },
        Case {
            name: "paused, naming this very instance (restarted agent): reclaim its own term",
            holder: Some(ME),
            preferred: None,
            age_ms: 0,
            paused: true,
            want: |_| Action::Replace {
                kind: WriteKind::Acquire,
                base_resource_version: "10".into(),
                write: acquire_write(7, false),
            },
        },
        Case {
            name: "not paused, free: acquire (the same record without the pause)",
            holder: None,
            preferred: None,
            age_ms: 0,
            paused: false,
            want: acquire,
        },
        Case {
            name: "not paused, expired: acquire",
            holder: Some("other"),
            preferred: None,
            age_ms: 3000,
            paused: false,
            want: acquire,
        },
    ];
    for case in cases {
        let t0 = Instant::now();
        let mut m = Machine::new(cfg());
        let mut r = rec(10, case.holder, 7);
        r.preferred = case.preferred.map(str::to_owned);
        r.paused = case.paused;
        m.observe(present(r), t0);
        let got = m.decide(t0 + ms(case.age_ms));
        assert_eq!(got, (case.want)(t0), "{}", case.name);
    }
}

#[test]
fn a_twin_of_the_holder_does_not_acquire_a_paused_lease() {
    let t0 = Instant::now();
    let mut m = Machine::new(cfg());
    let mut r = twin(10, Some("other-pod"), 3);
    r.paused = true;
    m.observe(present(r), t0);
    assert_eq!(m.decide(t0 + ms(60_000)), Action::Wait(None));
}

#[test]
fn resume_lets_a_follower_take_an_expired_lease_at_once() {
    let t0 = Instant::now();
    let mut m = Machine::new(cfg());
    let mut paused = rec(10, Some("other"), 7);
    paused.paused = true;
    m.observe(present(paused.clone()), t0);
    assert_eq!(m.decide(t0 + ms(10_000)), Action::Wait(None));
    // The controller removes the annotation: the holder's part (renewTime
    // included) is unchanged, so its claim still counts from t0 and has
    // long run out.
    let resumed = Record {
        resource_version: "11".into(),
        paused: false,
        ..paused
    };
    m.observe(present(resumed), t0 + ms(10_000));
    assert!(matches!(
        m.decide(t0 + ms(10_000)),
        Action::Replace {
            kind: WriteKind::Acquire,
            ..
        }
    ));
}

#[test]
fn a_paused_leader_renews_and_drops_hand_offs() {
    let t0 = Instant::now();
    let mut m = leading_machine(t0);
    let mut r = rec(3, Some(ME), 5);
    r.paused = true;
    r.preferred = Some("pref".into());
    m.observe(present(r), t0 + ms(100));
    // Not a release: the term runs on until the next renewal.
    assert_eq!(m.decide(t0 + ms(100)), Action::Wait(Some(t0 + ms(500))));
    assert!(matches!(
        m.decide(t0 + ms(500)),
        Action::Replace {
            kind: WriteKind::Renew,
            ..
        }
    ));
    let mut renewed = rec(4, Some(ME), 5);
    renewed.paused = true;
    renewed.preferred = Some("pref".into());
    assert_eq!(
        m.write_ok(WriteKind::Renew, t0 + ms(500), renewed, t0 + ms(510)),
        None
    );
    assert!(m.leading(t0 + ms(2400)));
    // Resumed with the hand-off still named: it was asked while paused and
    // is dropped, not carried out now.
    let mut resumed = rec(5, Some(ME), 5);
    resumed.preferred = Some("pref".into());
    m.observe(present(resumed), t0 + ms(600));
    assert!(matches!(m.decide(t0 + ms(600)), Action::Wait(_)));
    // A hand-off named after the resume is carried out.
    let mut asked = rec(6, Some(ME), 5);
    asked.preferred = Some("pref2".into());
    m.observe(present(asked), t0 + ms(700));
    assert!(matches!(
        m.decide(t0 + ms(700)),
        Action::Replace {
            kind: WriteKind::Release,
            ..
        }
    ));
}

#[test]
fn a_paused_leader_whose_app_fails_keeps_its_term() {
    // `process`: `run` asks for a release when its app fails. Paused, the
    // Lease stays: nobody else may take it until the resume.
    let t0 = Instant::now();
    let mut m = leading_machine(t0);
    let mut r = rec(3, Some(ME), 5);
    r.paused = true;
    m.observe(present(r), t0 + ms(100));
    let until = t0 + ms(5_000);
    m.stand_down(Some(until));
    assert_eq!(m.decide(t0 + ms(100)), Action::Wait(Some(t0 + ms(500))));
    assert!(matches!(
        m.decide(t0 + ms(500)),
        Action::Replace {
            kind: WriteKind::Renew,
            ..
        }
    ));
    // Resumed while the stand-down lasts: the release goes ahead.
    m.observe(present(rec(4, Some(ME), 5)), t0 + ms(600));
    assert!(matches!(
        m.decide(t0 + ms(600)),
        Action::Replace {
            kind: WriteKind::Release,
            ..
        }
    ));
}

#[test]
fn a_deleted_paused_lease_is_not_recreated_by_a_follower() {
    let t0 = Instant::now();
    let creating = MachineConfig {
        can_create: true,
        ..cfg()
    };
    let missing = Observation::Missing {
        continuous: true,
        resource_version: Some("50".into()),
    };
    let mut m = Machine::new(creating.clone());
    let mut r = rec(10, None, 3);
    r.paused = true;
    m.observe(present(r), t0);
    m.observe(missing.clone(), t0 + ms(10));
    assert_eq!(m.decide(t0 + ms(60_000)), Action::Wait(None));
    // Without the pause, the same deletion is re-created at once.
    let mut m = Machine::new(creating);
    m.observe(present(rec(10, None, 3)), t0);
    m.observe(missing, t0 + ms(10));
    assert!(matches!(m.decide(t0 + ms(10)), Action::Create(_)));
}

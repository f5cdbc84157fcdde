//! The election, model-checked (issue 34): every interleaving, within a
//! bound, of candidates running the real `election::machine` against a
//! linearizable API server, with late and dropped watches, slow and failed
//! requests, frozen pods, clock rates that differ, graceful releases, the
//! preferred-holder hand-off and two candidates of one identity. The model
//! is in tests/common/model/; docs/TESTING.md has the figures.
//!
//! `make test` runs the small bound; `make model` the deeper one
//! (`ZEN_LEAD_MODEL_DEPTH=1`, release build). No cluster is needed.

#[path = "common/model/mod.rs"]
mod model;

use std::collections::BTreeSet;
use std::time::Instant;

use model::drift::{self, Seen};
use model::props;
use model::trace::{initial_states, trace};
use model::{Act, Budget, Bug, Config, ElectionModel};
use stateright::{Checker, Expectation, HasDiscoveries, Model};

/// `ZEN_LEAD_MODEL_DEPTH`: 0 (default) the small bound, 1 the deep one.
fn depth() -> u8 {
    std::env::var("ZEN_LEAD_MODEL_DEPTH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A scenario never explores more states than this
/// (`ZEN_LEAD_MODEL_MAX_STATES`, default 8 million: memory); reaching it
/// fails the test rather than reporting a bound that was not explored.
fn max_states() -> usize {
    std::env::var("ZEN_LEAD_MODEL_MAX_STATES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8_000_000)
}

/// Freezes, dropped watches, failed requests, slow requests, controller
/// writes, preferred holders, shutdowns.
fn budget(b: [u8; 7]) -> Budget {
    Budget {
        freezes: b[0],
        drops: b[1],
        fails: b[2],
        slows: b[3],
        touches: b[4],
        prefers: b[5],
        shutdowns: b[6],
        pauses: 0,
    }
}

/// `b`, and the controller pausing the pool then resuming it.
fn paused(b: [u8; 7]) -> Budget {
    Budget {
        pauses: 2,
        ..budget(b)
    }
}

/// The bounds checked: each a set of candidates, a horizon and a budget of
/// faults and events. Faults combine within a scenario; the scenarios
/// together cover every part of the model.
fn scenarios() -> Vec<(&'static str, Config)> {
    let two = Config::small();
    let twins = Config {
        candidates: vec![("b", "pod-b1"), ("b", "pod-b2")],
        ..Config::small()
    };
    let three = Config {
        candidates: vec![("a", "pod-a"), ("b", "pod-b1"), ("b", "pod-b2")],
        ..Config::small()
    };
    let with = |cfg: &Config, horizon_ms: u64, budget: Budget| Config {
        horizon_ms,
        budget,
        ..cfg.clone()
    };
    if depth() == 0 {
        return vec![
            ("freeze", with(&two, 4000, budget([1, 0, 0, 0, 0, 0, 0]))),
            (
                "dropped watch",
                with(&two, 4000, budget([0, 1, 0, 0, 0, 0, 0])),
            ),
            (
                "failed request",
                with(&two, 4000, budget([0, 0, 1, 0, 0, 0, 0])),
            ),
            (
                "slow request",
                with(&two, 4000, budget([0, 0, 0, 1, 0, 0, 0])),
            ),
            (
                "controller write",
                with(&two, 4000, budget([0, 0, 0, 0, 1, 0, 0])),
            ),
            ("hand-off", with(&two, 2000, budget([0, 0, 0, 0, 0, 1, 0]))),
            ("shutdown", with(&two, 4000, budget([0, 0, 0, 0, 0, 0, 1]))),
            (
                "one identity, two pods, freeze",
                with(&twins, 4000, budget([1, 0, 0, 0, 0, 0, 0])),
            ),
            (
                "pause and resume, shutdown",
                with(&two, 3000, paused([0, 0, 0, 0, 0, 0, 1])),
            ),
        ];
    }
    vec![
        (
            "freeze, dropped watch",
            with(&two, 5000, budget([1, 1, 0, 0, 0, 0, 0])),
        ),
        (
            "failed and slow requests",
            with(&two, 4000, budget([0, 0, 1, 1, 0, 0, 0])),
        ),
        (
            "controller write, shutdown",
            with(&two, 3000, budget([0, 0, 0, 0, 1, 0, 1])),
        ),
        ("hand-off", with(&two, 2500, budget([0, 0, 0, 0, 0, 1, 0]))),
        (
            "one identity, two pods, freeze, dropped watch",
            with(&twins, 4500, budget([1, 1, 0, 0, 0, 0, 0])),
        ),
        (
            "three candidates, freeze",
            with(&three, 3500, budget([1, 0, 0, 0, 0, 0, 0])),
        ),
        (
            "pause and resume, hand-off (2.5 s)",
            with(&two, 2500, paused([0, 0, 0, 0, 0, 1, 0])),
        ),
    ]
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(2))
}

/// Runs the checker to the end (or to the first failure with `first`).
fn check(cfg: Config, first: bool) -> (impl Checker<ElectionModel>, f64) {
    let started = Instant::now();
    let mut builder = ElectionModel::new(cfg)
        .checker()
        .threads(threads())
        .target_state_count(max_states());
    if first {
        builder = builder.finish_when(HasDiscoveries::AnyFailures);
    }
    let checker = builder.spawn_bfs().join();
    (checker, started.elapsed().as_secs_f64())
}

/// Checks one scenario; returns the properties that failed.
fn check_scenario(name: &str, cfg: Config) -> Vec<String> {
    println!("scenario {name}: {cfg:?}");
    let (checker, secs) = check(cfg, false);
    let m = checker.model();
    println!(
        "  explored {} states ({} unique, {} starts: clock rates), depth {}, in {secs:.1} s",
        checker.state_count(),
        checker.unique_state_count(),
        initial_states(m),
        checker.max_depth(),
    );
    let mut failed = Vec::new();
    if checker.state_count() >= max_states() {
        failed.push(format!(
            "{name}: stopped at {} states, bound not explored",
            max_states()
        ));
    }
    for p in m.properties() {
        let found = checker.discovery(p.name);
        let holds = match p.expectation {
            Expectation::Sometimes => found.is_some(),
            _ => found.is_none(),
        };
        // Only the scenarios with a freeze can show the thaw window.
        let vacuous = p.name == props::THAW_WINDOW && m.cfg.budget.freezes == 0;
        let verdict = match (holds, vacuous) {
            (true, _) => "held  ",
            (false, true) => "n/a   ",
            (false, false) => "FAILED",
        };
        println!("  {verdict} {:?}: {}", p.expectation, p.name);
        if let Some(path) = found {
            println!("{}", trace(m, path));
        }
        if !holds && !vacuous {
            failed.push(format!("{name}: {}", p.name));
        }
    }
    failed
}

#[test]
fn the_election_keeps_its_properties() {
    let started = Instant::now();
    let mut failed = Vec::new();
    for (name, cfg) in scenarios() {
        failed.extend(check_scenario(name, cfg));
    }
    println!("all scenarios in {:.1} s", started.elapsed().as_secs_f64());
    assert!(failed.is_empty(), "properties that failed: {failed:#?}");
}

/// Runs the model with `bug` seeded and returns the counterexample of
/// `property`, printed.
fn finds(bug: Bug, property: &'static str, cfg: Config) {
    let (checker, secs) = check(cfg.with_bug(bug), true);
    let path = checker.discovery(property).unwrap_or_else(|| {
        panic!(
            "{bug:?}: no counterexample to {property:?} in {} states",
            checker.state_count()
        )
    });
    println!(
        "{bug:?}: counterexample to {property:?} after {} states, {secs:.1} s:",
        checker.state_count()
    );
    println!("{}", trace(checker.model(), path));
}

/// A smaller bound for the seeded bugs: each is found well inside it.
fn bug_config(b: [u8; 7]) -> Config {
    Config {
        budget: budget(b),
        ..Config::small()
    }
}

#[test]
fn seeded_renew_without_the_resource_version_is_found() {
    let cfg = Config {
        horizon_ms: 6000,
        ..bug_config([0, 0, 0, 1, 0, 0, 0])
    };
    finds(Bug::RenewWithoutVersion, props::ONE_LEADER, cfg);
}

#[test]
fn seeded_count_from_the_records_timestamp_is_found() {
    finds(
        Bug::CountFromTimestamp,
        props::ONE_LEADER,
        bug_config([0; 7]),
    );
}

#[test]
fn seeded_term_counted_from_the_answer_is_found() {
    finds(
        Bug::TermFromAnswer,
        props::ONE_LEADER,
        // A leader frozen between its renewal's arrival and the answer,
        // then frozen again for good; finer ticks, so the answer can come
        // late and still inside the renewal's timeout.
        Config {
            horizon_ms: 5000,
            quantum_ms: 250,
            net_delay_ms: 250,
            ..bug_config([2, 0, 0, 0, 0, 0, 0])
        },
    );
}

#[test]
fn seeded_release_without_stepping_down_is_found() {
    finds(
        Bug::ReleaseWithoutStepDown,
        props::ONE_LEADER,
        bug_config([0, 0, 0, 0, 0, 1, 0]),
    );
}

#[test]
fn seeded_shared_instance_is_found() {
    finds(
        Bug::SharedInstance,
        props::ONE_LEADER,
        bug_config([1, 0, 0, 0, 0, 0, 0]),
    );
}

#[test]
fn seeded_controller_writes_restarting_the_countdown_are_found() {
    finds(
        Bug::ControllerRestartsCountdown,
        props::LIVENESS,
        bug_config([1, 0, 0, 0, 1, 0, 0]),
    );
}

#[test]
fn seeded_clock_rates_beyond_the_bound_are_found() {
    finds(
        Bug::ClockRatesBeyondBound,
        props::ONE_LEADER,
        Config {
            horizon_ms: 5000,
            ..bug_config([1, 0, 0, 0, 0, 0, 0])
        },
    );
}

#[test]
fn seeded_candidates_that_ignore_the_pause_are_found() {
    finds(
        Bug::IgnorePause,
        props::PAUSE_KEPT,
        Config {
            budget: paused([0, 0, 0, 0, 0, 0, 1]),
            ..Config::small()
        },
    );
}

/// Random walks through the model: every machine variant the drift table
/// says the model drives does occur, and no other.
#[test]
fn the_model_drives_every_variant_of_the_machine() {
    let m = ElectionModel::new(Config {
        horizon_ms: 12_000,
        budget: paused([3, 3, 3, 3, 3, 3, 1]),
        ..Config::small()
    });
    let mut seen = Seen::default();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let inits = m.init_states();
    for walk in 0..400 {
        let mut w = inits[walk % inits.len()].clone();
        for _ in 0..300 {
            let mut acts: Vec<Act> = Vec::new();
            m.actions(&w, &mut acts);
            if acts.is_empty() {
                break;
            }
            let act = acts[(next() % acts.len() as u64) as usize].clone();
            m.apply_act(&mut w, &act, &mut seen);
        }
    }
    let driven: BTreeSet<&str> = drift::DRIVEN.iter().map(|(v, _)| *v).collect();
    let not_modelled: BTreeSet<&str> = drift::NOT_MODELLED.iter().map(|(v, _)| *v).collect();
    let missing: Vec<&&str> = driven.difference(&seen.0).collect();
    assert!(
        missing.is_empty(),
        "the model never drove {missing:?}: the drift table (tests/common/model/drift.rs) \
         is out of date"
    );
    let unlisted: Vec<&&str> = seen.0.iter().filter(|v| !driven.contains(**v)).collect();
    assert!(
        unlisted.is_empty(),
        "the model drove {unlisted:?}, which the drift table does not list as driven"
    );
    assert!(driven.is_disjoint(&not_modelled));
}

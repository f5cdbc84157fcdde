//! The webhook ↔ agent contract, checked end to end without a cluster: every
//! container the webhook writes into a pod (the golden cases'
//! `tests/golden/webhook/*/expected.yaml`) goes through the real command-line
//! parser of the binary that runs it. The agent's command, arguments and
//! environment (each variable must be one a flag reads; downward-API values
//! get sample values) must parse as `zen-lead-pod agent` and give a valid
//! agent configuration; `zen-lead run` and `zen-lead probe` in app containers
//! must parse as what they are. A renamed flag or env var, or a value the
//! agent would reject at start-up, fails here instead of in a pod.

mod common;

use std::ffi::OsString;
use std::path::Path;

use clap::{CommandFactory, Parser};
use serde_json::Value;
use zen_lead::cli::{Cli, Command, PodCli, PodCommand};
use zen_lead::contract::{
    AGENT_COMMAND, AGENT_CONTAINER, AGENT_PROBE_PORT, APP_HEALTH_PREFIX, BIN_PATH,
};

/// A value for an env var the kubelet fills from the pod (`valueFrom`).
fn sample(value_from: &Value) -> String {
    match value_from["fieldRef"]["fieldPath"].as_str() {
        Some("metadata.name") => "web-7d4b9c-abcde".into(),
        Some("metadata.namespace") => "team-a".into(),
        Some("metadata.uid") => "0b4f7a1e-3c2d-4e5f-8a9b-112233445566".into(),
        Some("status.podIP") => "198.18.0.7".into(),
        Some(path) if path.starts_with("metadata.annotations[") => "worker-0".into(),
        Some(path) if path.starts_with("metadata.labels[") => "label-value".into(),
        other => panic!("no sample for valueFrom {other:?}: {value_from}"),
    }
}

/// `--flag value` for each env var of `container`, through the flags of
/// `subcommand` that read them.
fn env_as_flags(subcommand: &clap::Command, container: &Value) -> Vec<OsString> {
    let mut flags = Vec::new();
    for env in container["env"].as_array().into_iter().flatten() {
        let name = env["name"].as_str().expect("env name");
        let value = match env.get("value") {
            Some(v) => v.as_str().unwrap_or_default().to_owned(),
            None => sample(&env["valueFrom"]),
        };
        let arg = subcommand
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == name))
            .unwrap_or_else(|| {
                panic!(
                    "`{}` reads no flag from {name}, which the webhook sets",
                    subcommand.get_name()
                )
            });
        let long = arg.get_long().expect("env-backed flags are long flags");
        flags.push(format!("--{long}").into());
        flags.push(value.into());
    }
    flags
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().expect("a string").to_owned())
        .collect()
}

/// The agent container of an injected pod.
fn check_agent(case: &str, agent: &Value) {
    let command = strings(&agent["command"]);
    let args = strings(&agent["args"]);
    let parsed = if command.is_empty() {
        // Injected by an older webhook: the image's entrypoint, `zen-lead`.
        let cli = Cli::command();
        let sub = cli.find_subcommand("agent").expect("agent");
        let argv = ["zen-lead".into()]
            .into_iter()
            .chain(args.iter().map(OsString::from))
            .chain(env_as_flags(sub, agent));
        match Cli::try_parse_from(argv) {
            Ok(Cli {
                command: Command::Agent(a),
                ..
            }) => a,
            other => panic!("{case}: the agent's args do not parse as `zen-lead agent`: {other:?}"),
        }
    } else {
        assert_eq!(command, [AGENT_COMMAND], "{case}: the agent's command");
        let cli = PodCli::command();
        let sub = cli.find_subcommand("agent").expect("agent");
        let argv = command
            .iter()
            .chain(&args)
            .map(OsString::from)
            .chain(env_as_flags(sub, agent));
        match PodCli::try_parse_from(argv) {
            Ok(PodCli {
                command: PodCommand::Agent(a),
                ..
            }) => a,
            other => {
                panic!("{case}: the agent's args do not parse as `zen-lead-pod agent`: {other:?}")
            }
        }
    };
    let config = parsed
        .config()
        .unwrap_or_else(|e| panic!("{case}: the agent would refuse to start: {e}"));
    if !command.is_empty() {
        check_agent_ports(case, agent, &config);
    }
}

/// The port an `httpGet` probe names, by number or by the container's port name.
fn probe_port(container: &Value, probe: &Value) -> Option<i64> {
    match &probe["httpGet"]["port"] {
        Value::String(name) => container["ports"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == *name)
            .and_then(|p| p["containerPort"].as_i64()),
        other => other.as_i64(),
    }
}

/// The kubelet probes the pod IP: the agent's probes target the port its
/// probe server listens on (`--probe-addr`, not loopback), and its API
/// (`--http-addr`) is on loopback, out of other pods' reach.
fn check_agent_ports(case: &str, agent: &Value, config: &zen_lead::agent::Config) {
    assert!(
        config.http_addr.ip().is_loopback(),
        "{case}: the agent's API is not on loopback"
    );
    assert!(
        !config.probe_addr.ip().is_loopback(),
        "{case}: the kubelet cannot reach loopback"
    );
    assert_eq!(
        i32::from(config.probe_addr.port()),
        AGENT_PROBE_PORT,
        "{case}"
    );
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let port = probe_port(agent, &agent[probe]);
        assert_eq!(
            port,
            Some(i64::from(AGENT_PROBE_PORT)),
            "{case}: the agent's {probe}"
        );
    }
}

/// An app container's command (or an exec probe) that the webhook wrapped.
fn check_wrapped(case: &str, what: &str, argv: Vec<String>) {
    if argv.first().map(String::as_str) != Some(BIN_PATH) {
        return;
    }
    let parsed = PodCli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("{case}: {what} {argv:?} does not parse: {e}"));
    match (argv.get(1).map(String::as_str), parsed.command) {
        (Some("run"), PodCommand::Run(run)) => {
            let dash = argv.iter().position(|a| a == "--").expect("--");
            assert_eq!(run.command, argv[dash + 1..], "{case}: {what}");
        }
        (Some("probe"), PodCommand::Probe(probe)) => {
            let dash = argv.iter().position(|a| a == "--").expect("--");
            assert_eq!(probe.command, argv[dash + 1..], "{case}: {what}");
        }
        (sub, other) => panic!("{case}: {what}: `{sub:?}` parsed as {other:?}"),
    }
}

fn check_case(dir: &Path) -> usize {
    let case = dir.file_name().unwrap_or_default().to_string_lossy();
    let text = std::fs::read_to_string(dir.join("expected.yaml")).expect("expected.yaml");
    let expected: Value = serde_saphyr::from_str(&text).expect("expected.yaml");
    let spec = &expected["pod"]["spec"];
    let mut agents = 0;
    for agent in spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["name"] == AGENT_CONTAINER)
    {
        check_agent(&case, agent);
        agents += 1;
    }
    for c in spec["containers"].as_array().into_iter().flatten() {
        let name = c["name"].as_str().unwrap_or("?");
        let mut argv = strings(&c["command"]);
        argv.extend(strings(&c["args"]));
        check_wrapped(&case, &format!("container {name}"), argv);
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            let exec = strings(&c[probe]["exec"]["command"]);
            check_wrapped(&case, &format!("{name}'s {probe}"), exec);
            // An app probe the agent answers goes to its probe port.
            let path = c[probe]["httpGet"]["path"].as_str().unwrap_or_default();
            if path.starts_with(APP_HEALTH_PREFIX) {
                let port = probe_port(c, &c[probe]);
                assert_eq!(
                    port,
                    Some(i64::from(AGENT_PROBE_PORT)),
                    "{case}: {name}'s {probe}"
                );
            }
        }
    }
    agents
}

#[test]
fn every_injected_container_parses_with_the_binary_that_runs_it() {
    let root = common::repo_root().join("tests/golden/webhook");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .expect("golden cases")
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.join("expected.yaml").is_file())
        .collect();
    dirs.sort();
    let agents: usize = dirs.iter().map(|d| check_case(d)).sum();
    // Every activation mode has cases; a golden set without agents would
    // make this test vacuous.
    assert!(agents >= 15, "only {agents} injected agents in {root:?}");
}

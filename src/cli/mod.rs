//! Command-line interface. Every flag has an environment twin
//! (`--log-level` = `ZEN_LEAD_LOG_LEVEL`) so the same binary is configured
//! by flags on a laptop and by env in a Pod spec.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

pub mod config;

use crate::api::Activation;
use crate::contract::{ProbeKind, agent_env};
use crate::telemetry::LogFormat;
use crate::webhook::TlsMode;

const ABOUT: &str = "High availability for Kubernetes workloads, configured by annotation";

const LONG_ABOUT: &str = "\
zen-lead keeps exactly one replica of a pool active and the others on standby.
Annotate a workload with `zen-lead/pool: NAME`, create a LeaderPolicy NAME in the
same namespace, and zen-lead does the rest: its webhook adds an election agent to
each pod, and its controller keeps the pool's Lease and status current.

One binary, several roles:
  controller  admission webhook + controllers (the zen-lead Deployment)
  agent       a pod's candidacy in its pool (injected as a sidecar)
  lock        run a command while holding a Lease (scripts, CI, Jobs)
  run         run an app container's command while its pod leads (process pools)
  probe       an app container's exec probe in a process pool
  handoff     move a pool's leadership to another pod (switchover)
  status      show who leads each pool
  crd         print the LeaderPolicy CustomResourceDefinition
  certs       generate a development CA and serving certificate
  completion  print a shell completion script (bash, zsh, fish)
  version     print version and git commit

Examples:
  zen-lead crd | kubectl apply --server-side -f -
  zen-lead certs --out certs --dns localhost --ip 127.0.0.1
  zen-lead --log-format json controller";

/// Version with the git commit, as shown by `--version` and `zen-lead version`.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("ZEN_LEAD_GIT_COMMIT"),
    ")"
);

/// `zen-lead`: the whole command line.
#[derive(Debug, Parser)]
#[command(
    name = "zen-lead",
    version = env!("CARGO_PKG_VERSION"),
    long_version = LONG_VERSION,
    about = ABOUT,
    long_about = LONG_ABOUT,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand takes.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct GlobalArgs {
    /// Log line format.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_enum,
        env = "ZEN_LEAD_LOG_FORMAT",
        default_value_t = LogFormat::Plain
    )]
    pub log_format: LogFormat,

    /// Log filter: a level (error, warn, info, debug, trace) or directives
    /// such as `info,zen_lead=debug,kube=warn`.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "ZEN_LEAD_LOG_LEVEL",
        default_value = "info"
    )]
    pub log_level: String,
}

impl Cli {
    /// Parses the process's arguments. `zen-lead run -- CMD`, exactly as
    /// the webhook writes it into every app container of a `process` pool,
    /// is parsed without building the whole command tree: `run` stays
    /// resident beside the app for the pod's lifetime, and the code pages
    /// the full parser touches are most of its memory. Same flags, same
    /// environment, same result (a test compares the two); anything else,
    /// errors included, goes through the full parser.
    pub fn parse_process_args() -> Self {
        let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
        Self::fast_run(&argv).unwrap_or_else(|| Self::parse_from(argv))
    }

    fn fast_run(argv: &[std::ffi::OsString]) -> Option<Self> {
        let (global, args) = fast_run(argv)?;
        Some(Self {
            global,
            command: Command::Run(args),
        })
    }
}

/// `run -- CMD` right after the binary's name: parsed by [`RunOnly`].
fn fast_run(argv: &[std::ffi::OsString]) -> Option<(GlobalArgs, RunArgs)> {
    if argv.get(1).is_none_or(|a| a != "run") || argv.get(2).is_none_or(|a| a != "--") {
        return None;
    }
    let rest = argv[..1].iter().chain(&argv[2..]);
    let only = RunOnly::try_parse_from(rest).ok()?;
    Some((only.global, only.args))
}

/// `zen-lead-pod`: the binary of a pool pod's own processes. The webhook
/// starts the agent from it, and the agent shares it with the app
/// containers (`zen-lead run`, `zen-lead probe`). It is `zen-lead` without
/// the controller, the webhook and the operator commands, so the code a
/// pod keeps resident is about half as large. The subcommands and flags are
/// `zen-lead`'s own.
#[derive(Debug, Parser)]
#[command(
    name = "zen-lead",
    bin_name = "zen-lead-pod",
    version = env!("CARGO_PKG_VERSION"),
    long_version = LONG_VERSION,
    about = "zen-lead's per-pod binary: the election agent and `zen-lead run` (see `zen-lead --help`)",
    propagate_version = true,
    max_term_width = 100
)]
pub struct PodCli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: PodCommand,
}

/// What a pool pod runs (see [`Command`] for each).
// Parsed once per process, as `Command`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum PodCommand {
    /// Run a pod's election agent (injected into pool pods by the webhook).
    #[command(long_about = AGENT_ABOUT)]
    Agent(AgentArgs),

    /// Run an app container's command only while its pod leads.
    #[command(long_about = RUN_ABOUT)]
    Run(RunArgs),

    /// An app container's exec probe in a `process` pool.
    #[command(long_about = PROBE_ABOUT)]
    Probe(ProbeArgs),

    /// Print the version and git commit.
    Version,
}

impl PodCli {
    /// As [`Cli::parse_process_args`].
    pub fn parse_process_args() -> Self {
        let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
        match fast_run(&argv) {
            Some((global, args)) => Self {
                global,
                command: PodCommand::Run(args),
            },
            None => Self::parse_from(argv),
        }
    }
}

/// `zen-lead run`'s flags alone (see [`Cli::parse_process_args`]).
#[derive(Debug, Parser)]
#[command(name = "zen-lead run")]
struct RunOnly {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(flatten)]
    args: RunArgs,
}

/// The subcommands.
// Parsed once per process; boxing the larger flag sets would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the admission webhook and the controllers (the zen-lead Deployment).
    #[command(long_about = CONTROLLER_ABOUT)]
    Controller(ControllerArgs),

    /// Run a pod's election agent (injected into pool pods by the webhook).
    #[command(long_about = AGENT_ABOUT)]
    Agent(AgentArgs),

    /// Run a command while holding a Lease: a distributed lock.
    #[command(long_about = LOCK_ABOUT)]
    Lock(LockArgs),

    /// Run an app container's command only while its pod leads (`process`
    /// activation; written into the container by the webhook).
    #[command(long_about = RUN_ABOUT)]
    Run(RunArgs),

    /// An app container's exec probe in a `process` pool: passes while the
    /// pod does not lead, else runs the original probe command.
    #[command(long_about = PROBE_ABOUT)]
    Probe(ProbeArgs),

    /// Move a pool's leadership to another pod and wait until it is active there.
    #[command(long_about = HANDOFF_ABOUT)]
    Handoff(HandoffArgs),

    /// Show the pools of a namespace, or one pool in detail.
    #[command(long_about = STATUS_ABOUT)]
    Status(StatusArgs),

    /// Pause a pool for maintenance: no fail-over, hand-off or scale-down.
    #[command(long_about = PAUSE_ABOUT)]
    Pause(PauseArgs),

    /// Resume a paused pool: fail-over and hand-offs run again.
    #[command(long_about = RESUME_ABOUT)]
    Resume(PauseArgs),

    /// Print the LeaderPolicy CustomResourceDefinition as YAML.
    #[command(long_about = CRD_ABOUT)]
    Crd,

    /// Generate a development CA and a serving certificate signed by it.
    #[command(long_about = CERTS_ABOUT)]
    Certs(CertsArgs),

    /// Print a shell completion script (bash, zsh or fish).
    #[command(long_about = COMPLETION_ABOUT)]
    Completion(CompletionArgs),

    /// Print the version and git commit.
    Version,

    /// Internal: the supervisor `zen-lead lock` runs CMD under, so CMD is
    /// stopped on time even if the lock process itself is paused or killed.
    #[command(hide = true)]
    LockGuard(LockGuardArgs),
}

impl Command {
    /// Whether the command runs on a single-threaded runtime: the per-pod
    /// processes (agent, lock, run, probe), whose work is I/O for one pod.
    pub fn single_threaded(&self) -> bool {
        matches!(
            self,
            Command::Agent(_)
                | Command::Lock(_)
                | Command::Run(_)
                | Command::Probe(_)
                | Command::Handoff(_)
                | Command::Status(_)
                | Command::Pause(_)
                | Command::Resume(_)
        )
    }
}

const CONTROLLER_ABOUT: &str = "\
Run the mutating admission webhook (on every replica) and the controllers (on
the replica that holds the controller's own Lease). The controllers keep each
LeaderPolicy's Lease, status, pod roles and scaleDown replica counts current.

Every replica serves the webhook and the admin server (--admin-addr: /livez,
/readyz, /metrics). A standby replica takes over the controllers within
--controller-lease-duration when the active one stops.

Uses the in-cluster configuration, or KUBECONFIG / ~/.kube/config outside a cluster.

Examples:
  zen-lead controller --tls-cert-file certs/tls.crt --tls-key-file certs/tls.key
  ZEN_LEAD_TLS_MODE=self-managed zen-lead controller --namespace zen-lead";

const AGENT_ABOUT: &str = "\
Run one pod's candidacy in its pool's Lease election. The webhook injects this
as a native sidecar and fills every flag from the downward API; you rarely run
it by hand.

Example:
  zen-lead agent --pool my-pool --pod-name \"$POD_NAME\" \\
    --pod-namespace \"$POD_NAMESPACE\" --pod-uid \"$POD_UID\"";

const LOCK_ABOUT: &str = "\
Wait until this process holds the Lease NAME, run CMD while renewing it, release
it when CMD exits, and exit with CMD's status. If the Lease is lost while CMD
runs, CMD is stopped (SIGTERM, then SIGKILL after --grace-period) and the exit
status is non-zero: two CMDs never run under the same lock.

Examples:
  zen-lead lock nightly-report -- ./send-report.sh
  zen-lead lock db-migrate --namespace shop --timeout 5m -- migrate up";

const RUN_ABOUT: &str = "\
Run CMD while this pod leads its pool, and only then (`activation: process`).
The webhook rewrites each app container's command to
  /zen-lead/zen-lead run -- <original command...>
(its args follow unchanged), so this is the container's PID 1. It follows the
pod's agent (--agent-addr, /v1/leader/watch) and:

  - starts CMD, in its own process group, when the pod leads; CMD's
    environment adds ZEN_LEAD_FENCING_TOKEN, ZEN_LEAD_POOL and ZEN_LEAD_IDENTITY;
  - stops CMD (SIGTERM to its group, SIGKILL after the agent's stop grace) when
    the term ends: its deadline passes without a renewal (a local timer, so a
    paused agent cannot keep CMD running), the agent says the pod no longer
    leads or shows a new term, or the agent's stream breaks;
  - starts CMD again when the pod leads again (the container keeps running);
  - when CMD exits on its own: status 0 exits 0; any other status asks the
    agent to release the pool (POST /v1/release) so another replica takes
    over, then exits with CMD's status (128+N for signal N);
  - on SIGTERM, SIGINT or SIGHUP: passes it to CMD and exits with CMD's
    status, or exits 0 at once when CMD is not running;
  - reaps orphaned processes (it is PID 1).

Example (what the webhook writes):
  /zen-lead/zen-lead run -- /app/server --port 8080";

const PROBE_ABOUT: &str = "\
An exec probe of an app container in a `process` pool. The webhook rewrites
  exec: [<original command...>]
to
  /zen-lead/zen-lead probe --kind liveness --budget 30s -- <original command...>

Exit status: 0 without running CMD when the pod does not lead or its agent
does not answer within a second (the app is held stopped by `zen-lead run`,
so there is nothing to probe), and for a liveness probe within --budget of
the term's start (the app is still starting). Otherwise this process becomes
CMD, whose status is the probe's result; 127 if CMD is not found, 126 if it
cannot be run.

Example (what the webhook writes):
  /zen-lead/zen-lead probe --kind readiness --budget 10s -- /app/check --ready";

const CRD_ABOUT: &str = "\
Print the LeaderPolicy CustomResourceDefinition, generated from the Rust types.
The copy in charts/zen-lead/crds/ must equal this output (`make crd` rewrites it).

Example:
  zen-lead crd | kubectl apply --server-side -f -";

const CERTS_ABOUT: &str = "\
Generate a development CA (ca.crt, ca.key) and a serving certificate signed by
it (tls.crt, tls.key) in --out. Use them to run the webhook outside the cluster:
the API server trusts ca.crt through the webhook configuration's caBundle.
Existing files are kept unless --force is given. Keys are written mode 0600.

Example:
  zen-lead certs --out certs --dns localhost --ip 127.0.0.1";

const COMPLETION_ABOUT: &str = "\
Print the completion script of SHELL for zen-lead's subcommands and flags.
Install it once per shell; regenerate it after upgrading zen-lead.

Examples:
  source <(zen-lead completion bash)                   # bash, this session only
  zen-lead completion bash > ~/.local/share/bash-completion/completions/zen-lead
  zen-lead completion zsh > \"${fpath[1]}/_zen-lead\"    # then restart zsh
  zen-lead completion fish > ~/.config/fish/completions/zen-lead.fish";

/// Flags of `zen-lead completion`.
#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell to print the completion script for.
    #[arg(value_enum, env = "ZEN_LEAD_COMPLETION_SHELL")]
    pub shell: CompletionShell,
}

/// The shells `zen-lead completion` writes scripts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

/// The completion script of `shell` for the `zen-lead` command line.
pub fn completion_script(shell: CompletionShell) -> Vec<u8> {
    let generator = match shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(generator, &mut shown_command(), "zen-lead", &mut script);
    script
}

/// `zen-lead`'s command tree without its hidden subcommands (`lock-guard`),
/// which clap_complete's generators would offer like any other.
fn shown_command() -> clap::Command {
    use clap::CommandFactory;
    let full = Cli::command();
    let shown = clap::Command::new("zen-lead")
        .version(env!("CARGO_PKG_VERSION"))
        .about(ABOUT)
        .propagate_version(true)
        .subcommand_required(true);
    full.get_arguments()
        .fold(shown, |cmd, arg| cmd.arg(arg.clone()))
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}

/// Flags of `zen-lead controller`.
#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Address the HTTPS admission webhook listens on.
    #[arg(long, env = "ZEN_LEAD_WEBHOOK_ADDR", default_value = "0.0.0.0:9443")]
    pub webhook_addr: SocketAddr,

    /// Address of the plain-HTTP admin server: /metrics, /livez, /readyz.
    #[arg(long, env = "ZEN_LEAD_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,

    /// Where the webhook's certificate comes from: `files` (for example a
    /// cert-manager Secret mounted into the pod, reloaded on rotation) or
    /// `self-managed` (zen-lead makes its own CA and keeps the webhook
    /// configuration's caBundle current).
    #[arg(long, value_enum, env = "ZEN_LEAD_TLS_MODE", default_value_t = TlsMode::Files)]
    pub tls_mode: TlsMode,

    /// Serving certificate (PEM) for `--tls-mode files`.
    #[arg(
        long,
        env = "ZEN_LEAD_TLS_CERT_FILE",
        default_value = "/etc/zen-lead/tls/tls.crt"
    )]
    pub tls_cert_file: PathBuf,

    /// Private key (PEM) for `--tls-mode files`.
    #[arg(
        long,
        env = "ZEN_LEAD_TLS_KEY_FILE",
        default_value = "/etc/zen-lead/tls/tls.key"
    )]
    pub tls_key_file: PathBuf,

    /// Namespace zen-lead runs in: holds the controller's own Lease and, in
    /// self-managed TLS mode, the certificate Secret.
    #[arg(long, env = "ZEN_LEAD_NAMESPACE", default_value = "zen-lead")]
    pub namespace: String,

    /// Image of the agent sidecar the webhook injects. It must carry
    /// /usr/local/bin/zen-lead-pod (the agent container's command), as the
    /// zen-lead image does.
    #[arg(
        long,
        env = "ZEN_LEAD_AGENT_IMAGE",
        default_value = concat!("ghcr.io/kube-zen/zen-lead:", env!("CARGO_PKG_VERSION"))
    )]
    pub agent_image: String,

    /// Evict pool pods that run without the agent (admitted while the
    /// webhook was down, which only pods whose pool is named on their
    /// workload, not on the pod, can be) so they come back through the
    /// webhook. On by default: such a pod is an unprotected active replica.
    /// At most one eviction per workload every 30 s, and never a bare pod.
    #[arg(long, env = "ZEN_LEAD_EVICT_UNINJECTED", default_value_t = true,
          num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub evict_uninjected: bool,

    /// Create a LeaderPolicy with the defaults when pods name a pool that has
    /// none (marked zen-lead.io/created-by; its spec is never rewritten).
    /// false: such pods wait NotReady, and an Event on their workload names
    /// the policy to create.
    #[arg(
        long,
        env = "ZEN_LEAD_CREATE_MISSING_POLICIES",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub create_missing_policies: bool,

    /// Only manage LeaderPolicies and pool pods in this namespace. Empty:
    /// every namespace (the chart's ClusterRole).
    #[arg(long, env = "ZEN_LEAD_WATCH_NAMESPACE", default_value = "")]
    pub watch_namespace: String,

    /// Name of the controller's own Lease (in --namespace): the replica
    /// holding it runs the controllers; the others only serve the webhook.
    /// Default: `zen-lead-controller`, or `zen-lead-controller-<namespace>`
    /// with --watch-namespace, so controllers watching different scopes
    /// (a demo in one namespace, a development controller in another) do
    /// not wait for each other.
    #[arg(long, env = "ZEN_LEAD_CONTROLLER_LEASE_NAME", default_value = "")]
    pub controller_lease_name: String,

    /// Lease duration of the controller's own Lease: how long a standby
    /// replica waits before taking over from a crashed one. Renew deadline
    /// and retry period are 2/3 and 2/15 of it.
    #[arg(long, env = "ZEN_LEAD_CONTROLLER_LEASE_DURATION", default_value = "15s",
          value_parser = parse_duration)]
    pub controller_lease_duration: Duration,

    /// How long a replica that has just taken the controller Lease waits
    /// for the controllers' watches to list. Past it, it releases the Lease
    /// and exits non-zero, naming the watches that did not list (usually
    /// missing RBAC), so it restarts and a standby can lead. The webhook's
    /// readiness does not depend on it.
    #[arg(long, env = "ZEN_LEAD_CONTROLLER_SYNC_TIMEOUT", default_value = "2m",
          value_parser = parse_duration)]
    pub controller_sync_timeout: Duration,

    /// Identity in the controller's own Lease. Empty: $POD_NAME (downward
    /// API) or the host name, plus the process id.
    #[arg(long, env = "ZEN_LEAD_CONTROLLER_IDENTITY", default_value = "")]
    pub controller_identity: String,

    /// Pools reconciled in parallel.
    #[arg(long, env = "ZEN_LEAD_WORKERS", default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: u16,

    /// Also watch the metadata of pods WITHOUT the zen-lead/pool label, to
    /// find pods that carry the zen-lead/pool annotation but were admitted
    /// while the webhook was down. Costs one metadata watch over all pods
    /// of the watched namespaces.
    #[arg(long, env = "ZEN_LEAD_DETECT_UNINJECTED", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub detect_uninjected: bool,

    /// Server-side fencing for every `api` and `process` pool whose
    /// LeaderPolicy leaves spec.serverSideFencing unset: the controller lists
    /// the pool's pods on its Lease, and the fencing ValidatingAdmissionPolicy
    /// (installed by the chart) refuses their writes unless they lead. A pool
    /// is fenced only while that policy and its binding exist.
    #[arg(long, env = "ZEN_LEAD_SERVER_SIDE_FENCING", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub server_side_fencing: bool,

    /// Name of the fencing ValidatingAdmissionPolicy and of its binding (the
    /// chart's `<release>-fencing`), checked before a pool is called fenced.
    #[arg(
        long,
        env = "ZEN_LEAD_FENCING_POLICY_NAME",
        default_value = "zen-lead-fencing"
    )]
    pub fencing_policy_name: String,

    /// How often the controller sets the fencing binding's namespaceSelector
    /// to the namespaces that have fenced pools (writes in other namespaces
    /// then skip the policy). A pool's own pass adds its namespace at once;
    /// this sweep also drops namespaces whose pools are gone.
    #[arg(long, env = "ZEN_LEAD_FENCING_SCOPE_INTERVAL", default_value = "30s",
          value_parser = parse_duration)]
    pub fencing_scope_interval: Duration,

    /// How long a namespace a pool pass added stays in the binding before a
    /// fenced Lease there shows in the controller's cache.
    #[arg(long, env = "ZEN_LEAD_FENCING_SCOPE_GRACE", default_value = "2m",
          value_parser = parse_duration)]
    pub fencing_scope_grace: Duration,

    /// imagePullPolicy of the injected agent container. Empty: the
    /// cluster's default for the image's tag.
    #[arg(long, env = "ZEN_LEAD_AGENT_IMAGE_PULL_POLICY", default_value = "",
          value_parser = ["", "Always", "IfNotPresent", "Never"])]
    pub agent_image_pull_policy: String,

    /// CPU request of the injected agent container.
    #[arg(long, env = "ZEN_LEAD_AGENT_CPU_REQUEST", default_value = "10m")]
    pub agent_cpu_request: String,

    /// Memory request of the injected agent container.
    #[arg(long, env = "ZEN_LEAD_AGENT_MEMORY_REQUEST", default_value = "16Mi")]
    pub agent_memory_request: String,

    /// Memory limit of the injected agent container.
    #[arg(long, env = "ZEN_LEAD_AGENT_MEMORY_LIMIT", default_value = "64Mi")]
    pub agent_memory_limit: String,

    /// What `activation: auto` (the LeaderPolicy default) means for pods
    /// admitted by this webhook. `auto`: `api` for pods of Deployments,
    /// StatefulSets and DaemonSets, `start` for everything else. `api`,
    /// `start` or `process`: that mode for every pool that does not choose
    /// one itself.
    #[arg(long, env = "ZEN_LEAD_DEFAULT_ACTIVATION", value_enum, default_value_t = Activation::Auto)]
    pub default_activation: Activation,

    /// Largest admission request body accepted; larger ones get HTTP 413.
    #[arg(long, env = "ZEN_LEAD_MAX_BODY_BYTES", default_value_t = 3 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=64 * 1024 * 1024))]
    pub max_body_bytes: u64,

    /// How often --tls-cert-file/--tls-key-file are checked for rotation.
    #[arg(long, env = "ZEN_LEAD_TLS_RELOAD_INTERVAL", default_value = "3s", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,

    /// Self-managed TLS: the MutatingWebhookConfiguration whose caBundle
    /// zen-lead keeps current.
    #[arg(long, env = "ZEN_LEAD_WEBHOOK_CONFIG_NAME", default_value = "zen-lead")]
    pub webhook_config_name: String,

    /// Self-managed TLS: the Service in front of the webhook; the serving
    /// certificate is issued for SERVICE.NAMESPACE.svc.
    #[arg(
        long,
        env = "ZEN_LEAD_WEBHOOK_SERVICE",
        default_value = "zen-lead-webhook"
    )]
    pub webhook_service: String,

    /// Self-managed TLS: the Secret (in --namespace) holding the CA and
    /// serving certificate, shared by all replicas.
    #[arg(
        long,
        env = "ZEN_LEAD_TLS_SECRET",
        default_value = "zen-lead-webhook-tls"
    )]
    pub tls_secret: String,
}

/// Flags of `zen-lead agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Pool (LeaderPolicy name) this pod is a candidate in.
    #[arg(long, env = agent_env::POOL)]
    pub pool: String,

    /// This pod's name (downward API `metadata.name`).
    #[arg(long, env = agent_env::POD_NAME)]
    pub pod_name: String,

    /// This pod's namespace (downward API `metadata.namespace`).
    #[arg(long, env = agent_env::POD_NAMESPACE)]
    pub pod_namespace: String,

    /// This pod's UID (downward API `metadata.uid`).
    #[arg(long, env = agent_env::POD_UID)]
    pub pod_uid: String,

    /// Candidate identity for `identityStrategy: custom` (the pod's
    /// `zen-lead/identity` annotation). Empty: derived from the pod name and UID.
    #[arg(long, env = agent_env::IDENTITY, default_value = "")]
    pub identity: String,

    /// Address of the agent's local HTTP API (/v1/leader, /v1/leader/watch,
    /// /v1/release, /v1/app/hold, and every probe path). Loopback: only the
    /// pod's own containers need it. Not 8080/8081, which many apps in the
    /// same pod already use.
    #[arg(
        long,
        env = "ZEN_LEAD_AGENT_HTTP_ADDR",
        default_value = "127.0.0.1:9466"
    )]
    pub http_addr: SocketAddr,

    /// Address of the agent's probe server on the pod IP: /livez, /readyz,
    /// /startz, /app-health/..., /metrics and /leadz only (what the
    /// kubelet, Prometheus and `zen-lead handoff` call). Port 0: any free
    /// port (tests running several agents on one host).
    #[arg(
        long,
        env = "ZEN_LEAD_AGENT_PROBE_ADDR",
        default_value = "0.0.0.0:9468"
    )]
    pub probe_addr: SocketAddr,

    /// On SIGTERM, how long to try releasing the Lease before exiting anyway.
    #[arg(
        long,
        env = "ZEN_LEAD_RELEASE_TIMEOUT",
        default_value = "2s",
        value_parser = parse_duration
    )]
    pub release_timeout: Duration,

    /// How the candidate is named in the Lease. `pod`: `<pod-name>_<first 8
    /// characters of the UID>`. `custom`: the value of --identity (the pod's
    /// zen-lead/identity annotation). `auto`: custom when --identity is set.
    #[arg(
        long,
        value_enum,
        env = agent_env::IDENTITY_STRATEGY,
        default_value_t = AgentIdentityStrategy::Auto
    )]
    pub identity_strategy: AgentIdentityStrategy,

    /// Create the Lease when it does not exist (standalone use and tests). In
    /// a cluster the controller creates it, and candidates may not.
    #[arg(long, env = "ZEN_LEAD_CREATE_LEASE")]
    pub create_lease: bool,

    /// When the Lease is free and names another preferred holder
    /// (zen-lead.io/preferred-holder), wait this long before competing for it.
    #[arg(
        long,
        env = "ZEN_LEAD_PREFERRED_DEFER",
        default_value = "300ms",
        value_parser = parse_duration
    )]
    pub preferred_defer: Duration,

    /// `process` activation: the pod's shared volume, into which the agent
    /// copies its own (static) binary for `zen-lead run` in the app
    /// containers before /startz succeeds.
    #[arg(long, env = "ZEN_LEAD_BIN_DIR", value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,

    /// `process` activation: JSON list of the app probes the agent answers on
    /// /app-health/<container>/<kind> (the webhook writes it from the
    /// containers' original probes).
    #[arg(long, env = "ZEN_LEAD_APP_PROBES", default_value = "")]
    pub app_probes: String,

    /// `process` activation, a CronJob-created Job's pod: the Job's scheduled
    /// time (its batch.kubernetes.io/cronjob-scheduled-timestamp) and name,
    /// recorded on the Lease with each term so a pool with `scheduledRuns:
    /// once` runs each scheduled time once.
    #[arg(long, env = "ZEN_LEAD_SCHEDULED_TIME", default_value = "")]
    pub scheduled_time: String,

    /// See --scheduled-time.
    #[arg(long, env = "ZEN_LEAD_JOB_NAME", default_value = "")]
    pub job_name: String,

    /// Append one JSON line per change of this agent's leadership to FILE,
    /// with CLOCK_MONOTONIC timestamps (for tests and audits).
    #[arg(long, env = "ZEN_LEAD_LEADERSHIP_LOG", value_name = "FILE")]
    pub leadership_log: Option<PathBuf>,
    #[command(flatten)]
    pub gate: GateArgs,
}

/// `zen-lead agent --activation`: the LeaderPolicy's activations but `auto`,
/// which the webhook resolves before it injects the agent.
fn agent_activation() -> impl clap::builder::TypedValueParser<Value = Activation> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new([
        PossibleValue::new("start").help(
            "Cold standby: /startz succeeds only while this pod leads, so the kubelet starts \
             the app containers of the leader only",
        ),
        PossibleValue::new("api").help(
            "Hot standby: every replica runs; the agent serves the Kubernetes API to the app \
             on --gate-addr and passes writes only while this pod leads. /startz succeeds \
             once the gate serves",
        ),
        PossibleValue::new("process").help(
            "Cold standby with Ready followers: every app container starts under `zen-lead \
             run`, which runs the app's process only while this pod leads; the agent shares \
             its binary (--bin-dir) and answers the app's probes. /startz succeeds once the \
             binary is shared",
        ),
    ])
    .try_map(|value| <Activation as clap::ValueEnum>::from_str(&value, false))
}

/// The gate's flags (part of `zen-lead agent`).
#[derive(Debug, Clone, clap::Args)]
pub struct GateArgs {
    /// How followers are kept inactive: `start` (the app starts only in the
    /// leading pod), `api` (every app runs; its Kubernetes API writes pass
    /// only while the pod leads) or `process` (every app container starts,
    /// but its program runs under `zen-lead run` only while the pod leads).
    #[arg(
        long,
        env = "ZEN_LEAD_ACTIVATION",
        default_value = "start",
        value_parser = agent_activation()
    )]
    pub activation: Activation,

    /// `api` activation: where the gate serves HTTPS (HTTP/2 and HTTP/1.1)
    /// to the app containers. Loopback: only containers of this pod reach it.
    #[arg(long, env = "ZEN_LEAD_GATE_ADDR", default_value = "127.0.0.1:9467")]
    pub gate_addr: SocketAddr,

    /// `api` activation: directory the gate fills with `token`, `namespace`
    /// and `ca.crt` (trusting the gate) for the app containers, which see it
    /// as their service-account mount.
    #[arg(
        long,
        env = "ZEN_LEAD_GATE_SA_DIR",
        default_value = "/var/run/zen-lead/serviceaccount"
    )]
    pub gate_sa_dir: PathBuf,

    /// `api` activation: the pod's real service-account mount: where the
    /// token copied for the app comes from (re-read every 2 s, so rotations
    /// reach the copy), and the CA that verifies the API server.
    #[arg(
        long,
        env = "ZEN_LEAD_GATE_SOURCE_SA_DIR",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount"
    )]
    pub gate_source_sa_dir: PathBuf,

    /// `api` activation: the API server to forward to (https://HOST:PORT).
    /// Default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT of
    /// the agent's environment, else the current kubeconfig's cluster.
    #[arg(long, env = "ZEN_LEAD_GATE_UPSTREAM", value_name = "URL")]
    pub gate_upstream: Option<String>,

    /// `api` activation: PEM CA bundle that verifies the API server. Default:
    /// ca.crt of --gate-source-sa-dir, else the kubeconfig's CA.
    #[arg(long, env = "ZEN_LEAD_GATE_UPSTREAM_CA", value_name = "FILE")]
    pub gate_upstream_ca: Option<PathBuf>,

    /// `api` activation: a directory only the agent mounts (e.g. an
    /// emptyDir) where the gate keeps its CA key, so a restarted agent
    /// container is still trusted by app containers that loaded ca.crt
    /// before. Unset: the CA lives in memory and a restarted agent makes a
    /// new one (running apps then distrust the gate until they restart).
    #[arg(long, env = "ZEN_LEAD_GATE_STATE_DIR", value_name = "DIR")]
    pub gate_state_dir: Option<PathBuf>,

    /// `api` activation: how long a standby's write waits for this pod to
    /// lead. It is forwarded the moment the pod leads (inside the new term);
    /// if the wait ends first it is refused with 503 and Retry-After: 1.
    /// Spares clients whose retries back off (kube-rs) most of a hand-over's
    /// delay. `0s` refuses at once. At most 64 writes wait at a time; more
    /// are refused at once.
    #[arg(long, env = "ZEN_LEAD_GATE_HOLD", default_value = "2s",
          value_parser = parse_duration)]
    pub gate_hold: Duration,

    /// `api` activation: write classes that pass in every role, comma
    /// separated: `events` (core and events.k8s.io Events), `leases`
    /// (coordination.k8s.io Leases, for the app's own leader election),
    /// `exec` (pods exec, attach, portforward). '' exempts nothing.
    #[arg(long, env = "ZEN_LEAD_GATE_EXEMPT", default_value = "events")]
    pub gate_exempt: String,
}

/// `zen-lead agent --identity-strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AgentIdentityStrategy {
    /// `custom` when --identity is non-empty, else `pod`.
    Auto,
    /// Pod name plus the first 8 characters of the pod UID.
    Pod,
    /// The value of --identity.
    Custom,
}

const HANDOFF_ABOUT: &str = "\
Move a pool's leadership on purpose (a switchover): before maintenance of the
leader's node, to test a failover, or to put the leader where you want it. The
current holder is asked to release the pool's Lease (the Lease annotation
zen-lead.io/preferred-holder); the other candidates defer to the chosen pod,
which acquires. The command waits until the new leader is active (api
activation: its agent passes writes; start: its app runs) and prints how long
that took. It refuses, naming the reason, when the chosen pod is not a working
candidate.

Without --to, the Ready candidate other than the leader with the highest
zen-lead/priority is chosen (on a tie, the lowest-named).

Also a kubectl plugin: install the binary (or a link to it) as
`kubectl-zen_lead` on PATH and run `kubectl zen-lead handoff POOL`.

Examples:
  zen-lead handoff my-controller-pool -n team-a
  kubectl zen-lead handoff my-controller-pool --to my-controller-7d4f9-x2k8p";

const STATUS_ABOUT: &str = "\
Show who leads. Without POOL: every pool of the namespace, a line each (phase,
leader, candidates, fencing token). With POOL: its leader, fencing token, each
pod and whether it is a working candidate, and its last leader changes.

Examples:
  zen-lead status -n team-a
  kubectl zen-lead status my-controller-pool";

const PAUSE_ABOUT: &str = "\
Pause POOL for maintenance (sets its LeaderPolicy's spec.paused): no fail-over,
no hand-off (the controller's or `zen-lead handoff`), no scale-down change and no
deletion of a deposed pod. The leader keeps leading as long as it renews. If it
stops (its pod dies, it releases), the pool has no leader and waits until it is
resumed; its Paused condition and an Event say so.

Returns once the controller has marked the pool's Lease, which the agents obey.

Examples:
  zen-lead pause my-db -n team-a
  kubectl zen-lead pause my-db";

const RESUME_ABOUT: &str = "\
Resume a paused POOL (clears its LeaderPolicy's spec.paused): fail-over,
hand-offs and scale-down run again. A pool that lost its leader while paused
elects one at once. Returns once the controller has lifted the pause on the
pool's Lease.

Examples:
  zen-lead resume my-db -n team-a
  kubectl zen-lead resume my-db";

/// Flags of `zen-lead pause` and `zen-lead resume`.
#[derive(Debug, Args)]
pub struct PauseArgs {
    /// The pool (its LeaderPolicy's name).
    #[arg(env = "ZEN_LEAD_POOL")]
    pub pool: String,

    /// Namespace of the pool. Default: the kubeconfig context's namespace.
    #[arg(long, short = 'n', env = "ZEN_LEAD_POOL_NAMESPACE")]
    pub namespace: Option<String>,

    /// Give up (exit non-zero) if the controller has not carried the change
    /// to the pool's Lease within this long.
    #[arg(long, env = "ZEN_LEAD_PAUSE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
}

impl PauseArgs {
    /// The request: `paused` true for `pause`, false for `resume`.
    pub fn config(&self, paused: bool) -> crate::handoff::pause::PauseConfig {
        crate::handoff::pause::PauseConfig {
            namespace: self.namespace.clone(),
            pool: self.pool.clone(),
            paused,
            timeout: self.timeout,
        }
    }
}

/// Flags of `zen-lead handoff`.
#[derive(Debug, Args)]
pub struct HandoffArgs {
    /// The pool (its LeaderPolicy's name).
    #[arg(env = "ZEN_LEAD_POOL")]
    pub pool: String,

    /// The pod to hand leadership to. Default: the Ready candidate other
    /// than the leader with the highest zen-lead/priority (on a tie, the
    /// lowest-named).
    #[arg(long, env = "ZEN_LEAD_HANDOFF_TO")]
    pub to: Option<String>,

    /// Namespace of the pool. Default: the kubeconfig context's namespace.
    #[arg(long, short = 'n', env = "ZEN_LEAD_POOL_NAMESPACE")]
    pub namespace: Option<String>,

    /// Give up (exit non-zero) if the new leader is not active within this long.
    #[arg(long, env = "ZEN_LEAD_HANDOFF_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Flags of `zen-lead status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The pool to show in detail. Default: every pool of the namespace.
    #[arg(env = "ZEN_LEAD_POOL")]
    pub pool: Option<String>,

    /// Namespace of the pools. Default: the kubeconfig context's namespace.
    #[arg(long, short = 'n', env = "ZEN_LEAD_POOL_NAMESPACE")]
    pub namespace: Option<String>,
}

impl From<&HandoffArgs> for crate::handoff::HandoffConfig {
    fn from(args: &HandoffArgs) -> Self {
        let HandoffArgs {
            pool,
            to,
            namespace,
            timeout,
        } = args;
        Self {
            namespace: namespace.clone(),
            pool: pool.clone(),
            to: to.clone(),
            timeout: *timeout,
        }
    }
}

impl From<&StatusArgs> for crate::handoff::StatusConfig {
    fn from(args: &StatusArgs) -> Self {
        let StatusArgs { pool, namespace } = args;
        Self {
            namespace: namespace.clone(),
            pool: pool.clone(),
        }
    }
}

/// Flags of `zen-lead lock`.
#[derive(Debug, Args)]
pub struct LockArgs {
    /// Name of the Lease that is the lock (created if missing).
    #[arg(env = "ZEN_LEAD_LOCK_NAME")]
    pub name: String,

    /// Namespace of the Lease. Default: the kubeconfig context's namespace,
    /// or the pod's own namespace inside a cluster.
    #[arg(long, short = 'n', env = "ZEN_LEAD_LOCK_NAMESPACE")]
    pub namespace: Option<String>,

    /// Holder identity written in the Lease. Empty: `<hostname>-<pid>`.
    #[arg(long, env = "ZEN_LEAD_LOCK_IDENTITY", default_value = "")]
    pub identity: String,

    /// Give up (exit non-zero, CMD not run) if the lock is not acquired
    /// within this long. `0s` waits forever.
    #[arg(long, env = "ZEN_LEAD_LOCK_TIMEOUT", default_value = "0s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// How long the claim stays valid after the last renewal.
    #[arg(long, env = "ZEN_LEAD_LOCK_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// How long to keep trying to renew before giving the lock up (and
    /// stopping CMD). Must be shorter than --lease-duration.
    #[arg(long, env = "ZEN_LEAD_LOCK_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub renew_deadline: Duration,

    /// Pause between attempts; times 1.2 it must be shorter than --renew-deadline.
    #[arg(long, env = "ZEN_LEAD_LOCK_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub retry_period: Duration,

    /// After the lock is lost: time between SIGTERM and SIGKILL to CMD.
    /// --renew-deadline plus this must stay below --lease-duration, so CMD is
    /// gone before anyone else can acquire the lock.
    #[arg(long, env = "ZEN_LEAD_LOCK_GRACE_PERIOD", default_value = "4s", value_parser = parse_duration)]
    pub grace_period: Duration,

    /// The command to run under the lock, after `--`.
    #[arg(last = true, required = true, num_args = 1.., value_name = "CMD")]
    pub command: Vec<String>,
}

/// Flags of `zen-lead run`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct RunArgs {
    /// Address of this pod's zen-lead agent (its local HTTP API).
    #[arg(long, env = "ZEN_LEAD_AGENT_ADDR", default_value = DEFAULT_AGENT_ADDR)]
    pub agent_addr: SocketAddr,

    /// Longest pause between attempts to reach the agent (the first retry is
    /// after 100ms, doubling up to this).
    #[arg(long, env = "ZEN_LEAD_RUN_RECONNECT_MAX", default_value = "1s", value_parser = parse_duration)]
    pub reconnect_max: Duration,

    /// When CMD fails: how long to wait for the agent to accept the release
    /// request before exiting anyway.
    #[arg(long, env = "ZEN_LEAD_RUN_RELEASE_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub release_timeout: Duration,

    /// The app's command and arguments, after `--`.
    #[arg(last = true, required = true, num_args = 1.., value_name = "CMD")]
    pub command: Vec<String>,
}

/// Flags of `zen-lead probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The probe this command is (only liveness uses --budget).
    #[arg(long, value_enum, env = "ZEN_LEAD_PROBE_KIND")]
    pub kind: ProbeKind,

    /// Liveness: pass without running CMD until the term is this old, so a
    /// freshly started app is not killed while it starts. `0s`: no grace.
    #[arg(long, env = "ZEN_LEAD_PROBE_BUDGET", default_value = "0s", value_parser = parse_duration)]
    pub budget: Duration,

    /// Address of this pod's zen-lead agent (its local HTTP API).
    #[arg(long, env = "ZEN_LEAD_AGENT_ADDR", default_value = DEFAULT_AGENT_ADDR)]
    pub agent_addr: SocketAddr,

    /// How long to wait for the agent's answer; no answer counts as not leading.
    #[arg(long, env = "ZEN_LEAD_PROBE_AGENT_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub agent_timeout: Duration,

    /// The original probe command, after `--`.
    #[arg(last = true, required = true, num_args = 1.., value_name = "CMD")]
    pub command: Vec<String>,
}

/// Where `run` and `probe` find the agent of their pod.
pub const DEFAULT_AGENT_ADDR: &str = "127.0.0.1:9466";

/// Flags of the internal `zen-lead lock-guard`.
#[derive(Debug, Args)]
pub struct LockGuardArgs {
    /// Unix socket of the `zen-lead lock` process that started this guard.
    #[arg(long, env = "ZEN_LEAD_LOCK_GUARD_SOCKET")]
    pub socket: PathBuf,

    /// Time between SIGTERM and SIGKILL when CMD must stop.
    #[arg(long, env = "ZEN_LEAD_LOCK_GUARD_GRACE_PERIOD", value_parser = parse_duration)]
    pub grace_period: Duration,

    /// The command to run.
    #[arg(last = true, required = true, num_args = 1.., value_name = "CMD")]
    pub command: Vec<String>,
}

/// Flags of `zen-lead certs`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Directory to write ca.crt, ca.key, tls.crt and tls.key into (created if missing).
    #[arg(long, env = "ZEN_LEAD_CERTS_OUT", default_value = "certs")]
    pub out: PathBuf,

    /// DNS name the serving certificate is valid for; repeat or separate with commas.
    #[arg(
        long = "dns",
        env = "ZEN_LEAD_CERTS_DNS",
        value_delimiter = ',',
        default_value = "localhost"
    )]
    pub dns: Vec<String>,

    /// IP address the serving certificate is valid for; repeat or separate with commas.
    #[arg(
        long = "ip",
        env = "ZEN_LEAD_CERTS_IP",
        value_delimiter = ',',
        default_value = "127.0.0.1"
    )]
    pub ip: Vec<IpAddr>,

    /// Validity of both certificates, in days.
    #[arg(
        long,
        env = "ZEN_LEAD_CERTS_DAYS",
        default_value_t = 365,
        value_parser = clap::value_parser!(u32).range(1..=3650)
    )]
    pub days: u32,

    /// Overwrite existing files in --out.
    #[arg(long, env = "ZEN_LEAD_CERTS_FORCE")]
    pub force: bool,
}

/// Parses durations such as `500ms`, `10s`, `2m`, `1h` or `1m30s`.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    const HINT: &str = "use a number with a unit, such as 500ms, 10s, 2m, 1h or 1m30s";
    let text = input.trim();
    if text.is_empty() {
        return Err(format!("empty duration; {HINT}"));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("invalid duration {input:?}; {HINT}"));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {input:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number.saturating_mul(60)),
            "h" => Duration::from_secs(number.saturating_mul(3600)),
            "" => return Err(format!("invalid duration {input:?}: missing unit; {HINT}")),
            unit => {
                return Err(format!(
                    "invalid duration {input:?}: unknown unit {unit:?}; {HINT}"
                ));
            }
        };
        total = total.saturating_add(part);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every flag must be settable from the environment with a `ZEN_LEAD_`
    /// variable: the webhook and the chart configure pods by env.
    #[test]
    fn every_flag_has_an_env_twin() {
        fn check(cmd: &clap::Command, path: &str) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") || arg.is_last_set() {
                    continue;
                }
                let env = arg
                    .get_env()
                    .unwrap_or_else(|| panic!("{path} --{id} has no env twin"));
                assert!(
                    env.to_string_lossy().starts_with("ZEN_LEAD_"),
                    "{path} --{id}: env {env:?} lacks the ZEN_LEAD_ prefix"
                );
            }
            for sub in cmd.get_subcommands() {
                check(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        check(&Cli::command(), "zen-lead");
    }

    #[test]
    fn help_teaches_with_examples() {
        let mut cmd = Cli::command();
        let help = cmd.render_long_help().to_string();
        assert!(help.contains("Examples:"), "{help}");
        for sub in [
            "controller",
            "agent",
            "lock",
            "run",
            "probe",
            "crd",
            "certs",
            "completion",
        ] {
            let mut sub_cmd = Cli::command()
                .find_subcommand(sub)
                .cloned()
                .unwrap_or_else(|| panic!("subcommand {sub}"));
            let help = sub_cmd.render_long_help().to_string();
            assert!(
                help.contains("Example"),
                "{sub} --help has no example:\n{help}"
            );
        }
    }

    /// The agent takes the LeaderPolicy's activation type, but not `auto`:
    /// the webhook resolves that before it injects the agent.
    #[test]
    fn the_agent_takes_every_activation_but_auto() {
        let parse = |extra: &[&str]| {
            let argv = [
                "zen-lead",
                "agent",
                "--pool",
                "web",
                "--pod-name",
                "web-0",
                "--pod-namespace",
                "shop",
                "--pod-uid",
                "u",
            ];
            let cli = Cli::try_parse_from(argv.iter().chain(extra))?;
            let Command::Agent(args) = cli.command else {
                panic!("agent expected");
            };
            Ok::<_, clap::Error>(args.gate.activation)
        };
        assert_eq!(parse(&[]).expect("default"), Activation::Start);
        for (flag, want) in [
            ("start", Activation::Start),
            ("api", Activation::Api),
            ("process", Activation::Process),
        ] {
            assert_eq!(parse(&["--activation", flag]).expect(flag), want);
        }
        let err = parse(&["--activation", "auto"]).unwrap_err().to_string();
        assert!(
            err.contains("[possible values: start, api, process]"),
            "{err}"
        );
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "zen-lead",
            "crd",
            "--log-format",
            "json",
            "--log-level",
            "debug",
        ])
        .expect("parse");
        assert_eq!(cli.global.log_format, LogFormat::Json);
        assert_eq!(cli.global.log_level, "debug");
        assert!(matches!(cli.command, Command::Crd));
    }

    #[test]
    fn certs_defaults_and_lists() {
        let cli = Cli::try_parse_from([
            "zen-lead",
            "certs",
            "--dns",
            "a.example,b.example",
            "--dns",
            "c.example",
            "--ip",
            "::1",
        ])
        .expect("parse");
        let Command::Certs(args) = cli.command else {
            panic!("certs expected");
        };
        assert_eq!(args.dns, ["a.example", "b.example", "c.example"]);
        assert_eq!(args.ip, ["::1".parse::<IpAddr>().expect("ip")]);
        assert_eq!(args.out, PathBuf::from("certs"));
        assert_eq!(args.days, 365);
        assert!(!args.force);
    }

    #[test]
    fn lock_takes_the_command_after_double_dash() {
        let cli = Cli::try_parse_from([
            "zen-lead",
            "lock",
            "nightly",
            "--timeout",
            "5m",
            "--",
            "sh",
            "-c",
            "echo --not-ours",
        ])
        .expect("parse");
        let Command::Lock(args) = cli.command else {
            panic!("lock expected");
        };
        assert_eq!(args.name, "nightly");
        assert_eq!(args.timeout, Duration::from_secs(300));
        assert_eq!(args.lease_duration, Duration::from_secs(15));
        assert_eq!(args.command, ["sh", "-c", "echo --not-ours"]);
        assert!(Cli::try_parse_from(["zen-lead", "lock", "nightly"]).is_err());
    }

    #[test]
    fn the_webhooks_run_form_parses_as_the_full_parser_does() {
        let os = |v: &[&str]| v.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        for argv in [
            &["zen-lead", "run", "--", "/app/server", "--port", "80"][..],
            // Flags after `--` belong to the app, not to zen-lead.
            &[
                "zen-lead",
                "run",
                "--",
                "/bin/app",
                "--log-level",
                "trace",
                "--",
            ],
            &["zen-lead", "run", "--", "x"],
        ] {
            let fast = Cli::fast_run(&os(argv)).expect("the webhook's form takes the fast path");
            let full = Cli::try_parse_from(argv).expect("full parse");
            let (Command::Run(a), Command::Run(b)) = (&fast.command, &full.command) else {
                panic!("run expected");
            };
            assert_eq!(a, b, "{argv:?}");
            assert_eq!(fast.global, full.global, "{argv:?}");
        }
        // Anything else goes through the full parser (its errors included).
        for argv in [
            &["zen-lead", "run", "--agent-addr", "127.0.0.1:1", "--", "x"][..],
            &["zen-lead", "--log-level", "debug", "run", "--", "x"],
            &["zen-lead", "run"],
            &["zen-lead", "run", "--"],
            &["zen-lead", "agent"],
        ] {
            assert!(Cli::fast_run(&os(argv)).is_none(), "{argv:?}");
        }
    }

    #[test]
    fn run_and_probe_take_the_command_after_double_dash() {
        let cli = Cli::try_parse_from(["zen-lead", "run", "--", "/app/server", "--port", "80"])
            .expect("parse run");
        let Command::Run(args) = cli.command else {
            panic!("run expected");
        };
        assert_eq!(args.command, ["/app/server", "--port", "80"]);
        assert_eq!(args.agent_addr.to_string(), DEFAULT_AGENT_ADDR);
        assert_eq!(args.reconnect_max, Duration::from_secs(1));
        assert!(Cli::try_parse_from(["zen-lead", "run"]).is_err());

        let cli = Cli::try_parse_from([
            "zen-lead",
            "probe",
            "--kind",
            "liveness",
            "--budget",
            "30s",
            "--agent-addr",
            "127.0.0.1:1234",
            "--",
            "cat",
            "/tmp/healthy",
        ])
        .expect("parse probe");
        let Command::Probe(args) = cli.command else {
            panic!("probe expected");
        };
        assert_eq!(args.kind, ProbeKind::Liveness);
        assert_eq!(args.budget, Duration::from_secs(30));
        assert_eq!(args.agent_addr.port(), 1234);
        assert_eq!(args.command, ["cat", "/tmp/healthy"]);
        assert!(Cli::try_parse_from(["zen-lead", "probe", "--", "true"]).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "10", "s", "10x", "1.5s", "-1s"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("duration"), "{bad:?}: {err}");
        }
    }
}

//! Flags → the plain configuration structs the domain modules take. This
//! is the only place that reads the binary's flags: each conversion
//! destructures its flag struct completely, so a flag nobody uses is a
//! compile error, and the errors name the flag (and its environment
//! variable) to fix.

use std::time::Duration;

use super::{
    AgentArgs, AgentIdentityStrategy, ControllerArgs, GateArgs, LockArgs, LockGuardArgs, ProbeArgs,
    RunArgs,
};
use crate::agent::gate::{ExemptSet, GateConfig, GateError};
use crate::agent::{AgentError, PodRef, ProcessConfig, pod_identity};
use crate::api::{Activation, validate_dns_label, validate_dns_subdomain, validate_pool_name};
use crate::controller::{self, ControllerError, runner};
use crate::election::{TimingNames, Timings, process_identity};
use crate::lock::{self, LockError, guard};
use crate::run::{self, probe};
use crate::webhook::self_managed::{SelfManagedError, Settings as SelfManaged};
use crate::webhook::{self, InjectConfig, TlsMode, TlsSource, WebhookError, is_quantity};

impl ControllerArgs {
    /// The controller's settings: the webhook's, its own Lease's and the
    /// controllers'.
    pub fn config(&self) -> Result<controller::Config, ControllerError> {
        let ControllerArgs {
            webhook_addr: _,
            admin_addr,
            tls_mode: _,
            tls_cert_file: _,
            tls_key_file: _,
            namespace,
            agent_image,
            evict_uninjected,
            create_missing_policies,
            watch_namespace,
            controller_lease_name,
            controller_lease_duration,
            controller_sync_timeout,
            controller_identity,
            workers,
            detect_uninjected,
            // Read by Self::fencing.
            server_side_fencing: _,
            fencing_policy_name: _,
            fencing_scope_interval: _,
            fencing_scope_grace: _,
            agent_image_pull_policy: _,
            agent_cpu_request: _,
            agent_memory_request: _,
            agent_memory_limit: _,
            default_activation: _,
            max_body_bytes: _,
            tls_reload_interval: _,
            webhook_config_name: _,
            webhook_service: _,
            tls_secret: _,
        } = self;
        // The fields skipped above are the webhook's: read in `webhook()`.
        let webhook = self.webhook()?;
        validate_dns_label(namespace).map_err(|reason| ControllerError::InvalidNamespace {
            value: namespace.clone(),
            reason,
        })?;
        let image = agent_image.trim();
        if image.is_empty() || image.chars().any(char::is_whitespace) {
            return Err(ControllerError::InvalidAgentImage {
                value: agent_image.clone(),
            });
        }
        let watch = watch_namespace.trim();
        if !watch.is_empty() {
            validate_dns_label(watch).map_err(|reason| ControllerError::InvalidWatchNamespace {
                value: watch_namespace.clone(),
                reason,
            })?;
        }
        let lease_name =
            controller_lease(controller_lease_name, watch, *controller_lease_duration)?;
        let identity = match controller_identity.trim() {
            "" => process_identity(std::env::var("POD_NAME").ok(), "zen-lead", '_'),
            given => given.to_owned(),
        };
        let watch_namespace = (!watch.is_empty()).then(|| watch.to_owned());
        let controllers = runner::Settings {
            fencing: self.fencing(watch_namespace.clone()),
            watch_namespace,
            namespace: namespace.clone(),
            lease_name,
            lease_timings: crate::election::record::proportional(*controller_lease_duration),
            identity,
            workers: *workers,
            evict_uninjected: *evict_uninjected,
            create_missing_policies: *create_missing_policies,
            detect_uninjected: *detect_uninjected,
            resync: Duration::from_secs(300),
            sync_timeout: sync_timeout(*controller_sync_timeout)?,
        };
        Ok(controller::Config {
            webhook,
            admin_addr: *admin_addr,
            namespace: namespace.clone(),
            controllers,
        })
    }

    /// Server-side fencing: the default, the policy's name and how the
    /// binding's namespace scope is kept.
    fn fencing(&self, watch_namespace: Option<String>) -> controller::FencingSettings {
        let ControllerArgs {
            server_side_fencing,
            fencing_policy_name,
            fencing_scope_interval,
            fencing_scope_grace,
            ..
        } = self;
        controller::FencingSettings {
            default_on: *server_side_fencing,
            policy_name: fencing_policy_name.trim().to_owned(),
            scope_interval: (*fencing_scope_interval).max(Duration::from_secs(1)),
            scope_grace: *fencing_scope_grace,
            watch_namespace,
        }
    }

    /// The webhook's settings: its address, certificate source and what it
    /// injects.
    pub fn webhook(&self) -> Result<webhook::Config, WebhookError> {
        let ControllerArgs {
            webhook_addr,
            admin_addr,
            tls_mode,
            tls_cert_file,
            tls_key_file,
            agent_image,
            agent_image_pull_policy,
            agent_cpu_request,
            agent_memory_request,
            agent_memory_limit,
            default_activation,
            max_body_bytes,
            tls_reload_interval,
            ..
        } = self;
        if webhook_addr == admin_addr {
            return Err(WebhookError::AddrClash {
                addr: *webhook_addr,
            });
        }
        let tls = match tls_mode {
            TlsMode::SelfManaged => TlsSource::SelfManaged(self.self_managed()?),
            TlsMode::Files => {
                for (flag, path) in [
                    ("--tls-cert-file", tls_cert_file),
                    ("--tls-key-file", tls_key_file),
                ] {
                    if path.as_os_str().is_empty() {
                        return Err(WebhookError::MissingFile { flag });
                    }
                }
                if tls_cert_file == tls_key_file {
                    return Err(WebhookError::SameCertAndKeyFile {
                        path: tls_cert_file.clone(),
                    });
                }
                TlsSource::Files {
                    cert: tls_cert_file.clone(),
                    key: tls_key_file.clone(),
                    reload_interval: (*tls_reload_interval).max(Duration::from_millis(100)),
                }
            }
        };
        for (flag, value) in [
            ("--agent-cpu-request", agent_cpu_request),
            ("--agent-memory-request", agent_memory_request),
            ("--agent-memory-limit", agent_memory_limit),
        ] {
            if !is_quantity(value) {
                return Err(WebhookError::InvalidQuantity {
                    flag,
                    value: value.clone(),
                });
            }
        }
        let mut inject = InjectConfig::with_image(agent_image.trim());
        inject.image_pull_policy =
            (!agent_image_pull_policy.is_empty()).then(|| agent_image_pull_policy.clone());
        inject.cpu_request = agent_cpu_request.clone();
        inject.memory_request = agent_memory_request.clone();
        inject.memory_limit = agent_memory_limit.clone();
        inject.default_activation = *default_activation;
        Ok(webhook::Config {
            addr: *webhook_addr,
            tls,
            // The flag's range keeps this far below usize::MAX.
            max_body_bytes: usize::try_from(*max_body_bytes).unwrap_or(usize::MAX),
            inject,
        })
    }

    /// `--tls-mode self-managed`: the names of the configuration, Service
    /// and Secret zen-lead keeps.
    fn self_managed(&self) -> Result<SelfManaged, SelfManagedError> {
        let ControllerArgs {
            webhook_config_name,
            webhook_service,
            tls_secret,
            ..
        } = self;
        for (flag, value) in [
            ("--webhook-service", webhook_service),
            ("--tls-secret", tls_secret),
        ] {
            validate_dns_label(value).map_err(|reason| SelfManagedError::InvalidName {
                flag,
                value: value.clone(),
                reason,
            })?;
        }
        validate_dns_subdomain(webhook_config_name).map_err(|reason| {
            SelfManagedError::InvalidName {
                flag: "--webhook-config-name",
                value: webhook_config_name.clone(),
                reason,
            }
        })?;
        Ok(SelfManaged {
            webhook_config: webhook_config_name.clone(),
            service: webhook_service.clone(),
            secret: tls_secret.clone(),
        })
    }
}

impl AgentArgs {
    /// The agent's settings, with the gate's in `api` activation and the
    /// shared binary's in `process` activation.
    pub fn config(&self) -> Result<crate::agent::Config, AgentError> {
        let AgentArgs {
            pool,
            pod_name,
            pod_namespace,
            pod_uid,
            identity,
            http_addr,
            probe_addr,
            release_timeout,
            identity_strategy,
            create_lease,
            preferred_defer,
            bin_dir,
            app_probes,
            scheduled_time,
            job_name,
            leadership_log,
            gate,
        } = self;
        validate_pool_name(pool).map_err(|reason| AgentError::InvalidPool {
            value: pool.clone(),
            reason,
        })?;
        let pod = pod_ref(pod_name, pod_namespace, pod_uid)?;
        let identity = agent_identity(*identity_strategy, identity, &pod)?;
        let process = match gate.activation {
            Activation::Process => Some(ProcessConfig {
                bin_dir: bin_dir.clone().ok_or(AgentError::MissingBinDir)?,
                probes: if app_probes.trim().is_empty() {
                    Vec::new()
                } else {
                    serde_json::from_str(app_probes).map_err(AgentError::InvalidAppProbes)?
                },
                scheduled_run: match (scheduled_time.trim(), job_name.trim()) {
                    ("", _) | (_, "") => None,
                    (time, job) => Some((time.to_owned(), job.to_owned())),
                },
            }),
            // `auto` never reaches the agent (its flag refuses it); like
            // the webhook's record of it, it means `start`.
            Activation::Auto | Activation::Start | Activation::Api => None,
        };
        let gate = match gate.activation {
            Activation::Auto | Activation::Start | Activation::Process => None,
            Activation::Api => Some(gate.config(pool, &identity, &pod.namespace)?),
        };
        Ok(crate::agent::Config {
            pool: pool.clone(),
            pod,
            identity,
            http_addr: *http_addr,
            probe_addr: *probe_addr,
            release_timeout: *release_timeout,
            create_lease: *create_lease,
            preferred_defer: *preferred_defer,
            leadership_log: leadership_log.clone(),
            gate,
            process,
        })
    }
}

/// The controller's own Lease name: `given`, or by default one scoped to the
/// watched namespace, so controllers of different scopes do not wait for
/// each other. Its duration must leave room for a renewal.
fn controller_lease(
    given: &str,
    watch: &str,
    duration: Duration,
) -> Result<String, ControllerError> {
    let name = match given.trim() {
        "" => crate::api::keys::controller_lease_name(Some(watch)),
        given => given.to_owned(),
    };
    validate_dns_subdomain(&name).map_err(|reason| ControllerError::InvalidLeaseName {
        value: given.to_owned(),
        reason,
    })?;
    if duration < Duration::from_secs(2) {
        return Err(ControllerError::LeaseTooShort { value: duration });
    }
    Ok(name)
}

/// `--controller-sync-timeout`: zero would have every new leader give up
/// before its first list could answer.
fn sync_timeout(value: Duration) -> Result<Duration, ControllerError> {
    if value < Duration::from_secs(1) {
        return Err(ControllerError::SyncTimeoutTooShort { value });
    }
    Ok(value)
}

/// The pod the agent runs in, from the downward API.
fn pod_ref(name: &str, namespace: &str, uid: &str) -> Result<PodRef, AgentError> {
    use crate::contract::agent_env;
    for (flag, env, value) in [
        ("--pod-name", agent_env::POD_NAME, name),
        ("--pod-namespace", agent_env::POD_NAMESPACE, namespace),
        ("--pod-uid", agent_env::POD_UID, uid),
    ] {
        if value.trim().is_empty() {
            return Err(AgentError::MissingPodField { flag, env });
        }
    }
    Ok(PodRef {
        name: name.trim().to_owned(),
        namespace: namespace.trim().to_owned(),
        uid: uid.trim().to_owned(),
    })
}

/// The identity the candidate writes into the Lease.
fn agent_identity(
    strategy: AgentIdentityStrategy,
    custom: &str,
    pod: &PodRef,
) -> Result<String, AgentError> {
    let custom = custom.trim();
    if custom.len() > 255 {
        return Err(AgentError::IdentityTooLong { len: custom.len() });
    }
    match strategy {
        AgentIdentityStrategy::Pod => Ok(pod_identity(pod)),
        AgentIdentityStrategy::Custom if custom.is_empty() => {
            Err(AgentError::MissingCustomIdentity)
        }
        AgentIdentityStrategy::Custom => Ok(custom.to_owned()),
        AgentIdentityStrategy::Auto if custom.is_empty() => Ok(pod_identity(pod)),
        AgentIdentityStrategy::Auto => Ok(custom.to_owned()),
    }
}

impl GateArgs {
    /// The gate's settings (`api` activation).
    pub fn config(
        &self,
        pool: &str,
        identity: &str,
        namespace: &str,
    ) -> Result<GateConfig, GateError> {
        let GateArgs {
            activation: _,
            gate_addr,
            gate_sa_dir,
            gate_source_sa_dir,
            gate_upstream,
            gate_upstream_ca,
            gate_state_dir,
            gate_hold,
            gate_exempt,
        } = self;
        Ok(GateConfig {
            addr: *gate_addr,
            sa_dir: gate_sa_dir.clone(),
            source_sa_dir: gate_source_sa_dir.clone(),
            upstream: gate_upstream.clone().filter(|u| !u.trim().is_empty()),
            upstream_ca: gate_upstream_ca.clone(),
            state_dir: gate_state_dir.clone(),
            exempt: ExemptSet::parse(gate_exempt)?,
            hold: *gate_hold,
            pool: pool.to_owned(),
            identity: identity.to_owned(),
            namespace: namespace.to_owned(),
        })
    }
}

impl LockArgs {
    /// The validated request `zen-lead lock` runs.
    pub fn request(&self) -> Result<lock::Request, LockError> {
        let args = self;
        validate_dns_subdomain(&args.name).map_err(|reason| LockError::InvalidName {
            value: args.name.clone(),
            reason,
        })?;
        if let Some(ns) = &args.namespace {
            validate_dns_label(ns).map_err(|reason| LockError::InvalidNamespace {
                value: ns.clone(),
                reason,
            })?;
        }
        let timings = Timings::new(
            args.lease_duration,
            args.renew_deadline,
            args.retry_period,
            TimingNames::LOCK_FLAGS,
        )?;
        if args
            .command
            .first()
            .is_none_or(|program| program.is_empty())
        {
            return Err(LockError::NoCommand);
        }
        if args.grace_period + args.renew_deadline >= args.lease_duration {
            return Err(LockError::GraceTooLong {
                grace: args.grace_period,
                renew: args.renew_deadline,
                lease: args.lease_duration,
            });
        }
        let identity = args.identity.trim();
        Ok(lock::Request {
            name: args.name.clone(),
            namespace: args.namespace.clone(),
            identity: match identity {
                "" => process_identity(None, "localhost", '-'),
                given => given.to_owned(),
            },
            timeout: (!args.timeout.is_zero()).then_some(args.timeout),
            timings,
            grace_period: args.grace_period,
            command: args.command.clone(),
        })
    }
}

impl LockGuardArgs {
    pub fn config(&self) -> guard::Config {
        guard::Config {
            socket: self.socket.clone(),
            grace_period: self.grace_period,
            command: self.command.clone(),
        }
    }
}

impl RunArgs {
    pub fn config(&self) -> run::Config {
        run::Config {
            agent_addr: self.agent_addr,
            reconnect_max: self.reconnect_max,
            release_timeout: self.release_timeout,
            command: self.command.clone(),
        }
    }
}

impl ProbeArgs {
    pub fn config(&self) -> probe::Config {
        probe::Config {
            kind: self.kind,
            budget: self.budget,
            agent_addr: self.agent_addr,
            agent_timeout: self.agent_timeout,
            command: self.command.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sync_timeout_is_at_least_a_second() {
        let ms = Duration::from_millis;
        for (value, ok) in [
            (ms(0), false),
            (ms(999), false),
            (ms(1000), true),
            (ms(120_000), true),
        ] {
            assert_eq!(sync_timeout(value).is_ok(), ok, "{value:?}");
        }
        let err = sync_timeout(ms(0)).expect_err("too short").to_string();
        assert!(err.contains("--controller-sync-timeout"), "{err}");
    }
}

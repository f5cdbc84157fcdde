//! Deployments and StatefulSets as the controller's cache reads them: only
//! metadata, `spec.replicas` and the pod template's metadata. Every workload
//! in scope is cached, pool member or not, so the cache must not grow with
//! other tenants' pod templates. The shadow types below name only those
//! fields; serde skips every other field of the API server's JSON without
//! allocating it, so a 1 MiB pod spec never becomes a Rust value.

use std::borrow::Cow;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::Resource;
use kube::api::ObjectMeta;
use serde::{Deserialize, Deserializer};

/// The annotation `kubectl apply` (client-side) writes: a copy of the whole
/// object, pod template included.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A workload `K` read without its pod spec, volume claim templates or
/// status (see the module's documentation). The controller writes
/// workloads only with merge patches, never from these copies.
#[derive(Clone, Debug)]
pub struct Slim<K>(pub K);

#[derive(Deserialize)]
struct Shadow {
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<ShadowSpec>,
}

#[derive(Deserialize)]
struct ShadowSpec {
    #[serde(default)]
    replicas: Option<i32>,
    #[serde(default)]
    template: Option<ShadowTemplate>,
}

#[derive(Deserialize)]
struct ShadowTemplate {
    #[serde(default)]
    metadata: Option<ObjectMeta>,
}

/// Builds a workload from what the shadow kept.
pub trait FromShadow: Sized {
    fn from_shadow(meta: ObjectMeta, replicas: Option<i32>, template: PodTemplateSpec) -> Self;
}

impl FromShadow for Deployment {
    fn from_shadow(metadata: ObjectMeta, replicas: Option<i32>, template: PodTemplateSpec) -> Self {
        Deployment {
            metadata,
            spec: Some(DeploymentSpec {
                replicas,
                template,
                ..DeploymentSpec::default()
            }),
            status: None,
        }
    }
}

impl FromShadow for StatefulSet {
    fn from_shadow(metadata: ObjectMeta, replicas: Option<i32>, template: PodTemplateSpec) -> Self {
        StatefulSet {
            metadata,
            spec: Some(StatefulSetSpec {
                replicas,
                template,
                ..StatefulSetSpec::default()
            }),
            status: None,
        }
    }
}

fn trim_meta(mut meta: ObjectMeta) -> ObjectMeta {
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
    meta
}

impl<'de, K: FromShadow> Deserialize<'de> for Slim<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let shadow = Shadow::deserialize(deserializer)?;
        let (replicas, template) = match shadow.spec {
            Some(spec) => (spec.replicas, spec.template.and_then(|t| t.metadata)),
            None => (None, None),
        };
        let template = PodTemplateSpec {
            metadata: template.map(trim_meta),
            spec: None,
        };
        Ok(Slim(K::from_shadow(
            trim_meta(shadow.metadata),
            replicas,
            template,
        )))
    }
}

impl<K> Resource for Slim<K>
where
    K: Resource<DynamicType = ()>,
{
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        self.0.meta()
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        self.0.meta_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_workload_keeps_what_decisions_read_and_nothing_of_its_pod_spec() {
        let big = "x".repeat(64 * 1024);
        let json = serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "uid": "u1", "annotations": {
                LAST_APPLIED: big.clone(),
                "zen-lead.io/original-replicas": "3"},
                "managedFields": [{"manager": "kubectl"}]},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}, "annotations": {"zen-lead/pool": "p"}},
                    "spec": {"containers": [{"name": "app", "image": "app",
                        "env": [{"name": "BIG", "value": big}]}]}}},
            "status": {"replicas": 1}
        });
        let Slim(d): Slim<Deployment> = serde_json::from_value(json).expect("deployment");
        let kept = serde_json::to_vec(&d).expect("json").len();
        assert!(kept < 1024, "{kept} bytes kept: {d:?}");
        let spec = d.spec.as_ref().expect("spec");
        assert_eq!(spec.replicas, Some(1));
        let template = spec.template.metadata.as_ref().expect("template metadata");
        assert_eq!(
            template
                .annotations
                .as_ref()
                .and_then(|a| a.get("zen-lead/pool")),
            Some(&"p".to_owned())
        );
        let annotations = d.metadata.annotations.as_ref().expect("annotations");
        assert_eq!(
            annotations.get("zen-lead.io/original-replicas"),
            Some(&"3".to_owned())
        );
        assert!(!annotations.contains_key(LAST_APPLIED));
        assert!(d.metadata.managed_fields.is_none());
        assert!(d.status.is_none() && spec.template.spec.is_none());

        let Slim(s): Slim<StatefulSet> = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db"},
            "spec": {"replicas": 2, "serviceName": "db", "selector": {},
                "template": {"metadata": {"annotations": {"zen-lead/pool": "p"}},
                    "spec": {"containers": [{"name": "db", "image": "db"}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}}]}
        }))
        .expect("statefulset");
        let spec = s.spec.as_ref().expect("spec");
        assert_eq!(spec.replicas, Some(2));
        assert!(spec.template.spec.is_none() && spec.volume_claim_templates.is_none());
        assert!(spec.template.metadata.is_some());
        // The API path is the workload's own.
        assert_eq!(Slim::<StatefulSet>::plural(&()), "statefulsets");
        assert_eq!(Slim::<Deployment>::group(&()), "apps");
    }
}

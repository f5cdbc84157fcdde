//! The release image (`make image`, `make push`), as users get it:
//! - the chart's default image is what `make image` builds (repository and
//!   tag), and the tag is the crate's version;
//! - `make image` is reproducible: built again, and under another name, the
//!   image has the same manifest digest (and the same name gives the same
//!   archive, byte for byte);
//! - `make push` puts it in the local cluster's registry, and the real node's
//!   kubelet pulls it from there (IfNotPresent, as on any cluster) and runs
//!   `zen-lead version` as the non-root user.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{
    client, eventually, from_json, repo_root, run_ok, scratch_dir, sha256_of, with_namespace,
};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

/// The value of `key:` on the first line of `text` that sets it, unquoted.
fn yaml_value(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .unwrap_or_else(|| panic!("no {key}: in {text}"))
}

/// `make`, in the environment a shell would give it. `cargo test` runs a
/// test with variables of its own set (`CARGO_PKG_NAME`, `OUT_DIR`, ...,
/// and build.rs's `rustc-env` `ZEN_LEAD_GIT_COMMIT`), and build scripts of
/// the release build ask to rerun when some of them change (ring's watches
/// `CARGO_PKG_NAME`, ours `ZEN_LEAD_GIT_COMMIT`): with them, `make image`
/// here and from a shell would each rebuild the release binaries, minutes
/// every time.
fn make(args: &[&str]) -> String {
    let mut cmd = Command::new("make");
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if (key.starts_with("CARGO") && key != "CARGO_HOME")
            || key == "OUT_DIR"
            || key == "ZEN_LEAD_GIT_COMMIT"
        {
            cmd.env_remove(key.as_ref());
        }
    }
    let out = run_ok(
        cmd.args(["--no-print-directory"])
            .args(args)
            .current_dir(repo_root()),
        &format!("make {}", args.join(" ")),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn manifest_digest(archive: &Path) -> String {
    let out = run_ok(
        Command::new(repo_root().join("tools/oci/bin/zl-image"))
            .arg("digest")
            .arg(archive),
        "zl-image digest",
    );
    let digest = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(digest.starts_with("sha256:"), "not a digest: {digest}");
    digest
}

#[test]
fn the_charts_default_image_is_what_make_image_builds() {
    let chart = common::read_repo_file("charts/zen-lead/Chart.yaml");
    let app_version = yaml_value(&chart, "appVersion");
    assert_eq!(
        app_version,
        env!("CARGO_PKG_VERSION"),
        "Chart.yaml appVersion and Cargo.toml's version differ"
    );
    let values = common::read_repo_file("charts/zen-lead/values.yaml");
    let image = values
        .split("\nimage:\n")
        .nth(1)
        .expect("values.yaml has an image: block");
    let repository = yaml_value(image, "repository");
    assert_eq!(
        yaml_value(image, "tag"),
        "",
        "values.yaml image.tag must stay empty (the chart's appVersion)"
    );
    // Example manifests that pull zen-lead from the local registry name the
    // tag cluster-up pushes.
    let pushed = common::local_registry_image();
    let repository_prefix = format!("{}/zen-lead:", common::LOCAL_REGISTRY);
    let out = Command::new("grep")
        .args(["-rhoE", "--include=*.yaml"])
        .args([&format!("{repository_prefix}[^ \"]*"), "examples"])
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("grep: {e}"));
    // grep: 0 found some, 1 found none, 2 failed.
    assert!(
        out.status.code().is_some_and(|c| c < 2),
        "grep examples failed"
    );
    let named = String::from_utf8_lossy(&out.stdout);
    assert!(
        named.lines().all(|l| l == pushed),
        "examples name a zen-lead tag cluster-up does not push (want {pushed}):\n{named}"
    );
    // What `make image` would run, with its defaults expanded.
    let plan = make(&["-n", "image"]);
    assert!(
        plan.contains(&format!("\"{repository}:{app_version}\"")),
        "make image does not build the chart's default image {repository}:{app_version}:\n{plan}"
    );
}

#[tokio::test]
async fn make_image_is_reproducible_and_the_real_node_pulls_what_make_push_pushed() {
    let work = scratch_dir("release-image");
    let archive = |name: &str| work.join(name).to_string_lossy().into_owned();
    let (first, again, renamed) = (archive("a.tar"), archive("a-again.tar"), archive("b.tar"));
    let name = format!("IMAGE=example.com/zen-lead:{}", env!("CARGO_PKG_VERSION"));
    make(&["image", &name, &format!("IMAGE_ARCHIVE={first}")]);
    make(&["image", &name, &format!("IMAGE_ARCHIVE={again}")]);
    make(&[
        "image",
        "IMAGE=example.org/other/zen-lead:renamed",
        &format!("IMAGE_ARCHIVE={renamed}"),
    ]);
    let digest = manifest_digest(Path::new(&first));
    assert_eq!(
        sha256_of(Path::new(&first)),
        sha256_of(Path::new(&again)),
        "two builds of the same image differ"
    );
    assert_eq!(
        manifest_digest(Path::new(&renamed)),
        digest,
        "the name changed the image's manifest"
    );

    let repo = format!("zl-release-{}", std::process::id());
    let image = format!("{}/{repo}:test", common::LOCAL_REGISTRY);
    let pushed = make(&[
        "push",
        &format!("IMAGE={image}"),
        &format!("IMAGE_ARCHIVE={first}"),
        "PUSH_FLAGS=--insecure",
    ]);
    assert!(
        pushed.contains(&format!("pushed {image}@{digest}")),
        "make push did not report {image}@{digest}:\n{pushed}"
    );
    // The registry serves the manifest under the tag, with the same digest.
    let head = run_ok(
        Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-D", "-", "-H"])
            .arg("Accept: application/vnd.oci.image.manifest.v1+json")
            .arg(format!(
                "http://{}/v2/{repo}/manifests/test",
                common::LOCAL_REGISTRY
            )),
        "curl the registry",
    );
    let headers = String::from_utf8_lossy(&head.stdout).to_lowercase();
    assert!(
        headers.contains(&format!("docker-content-digest: {digest}")),
        "the registry's manifest is not {digest}:\n{headers}"
    );

    let client = client().await;
    with_namespace(&client, "release-image", |client, ns| async move {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        // The entrypoint is zen-lead, so `args: [version]` runs `zen-lead
        // version`; runAsNonRoot makes the kubelet check the image's user.
        let pod: Pod = from_json(json!({
            "metadata": {"name": "version"},
            "spec": {
                "restartPolicy": "Never",
                "nodeSelector": {"zen-lead.io/node": "real"},
                "tolerations": [{"key": "zen-lead.io/real-node", "operator": "Exists", "effect": "NoSchedule"}],
                "securityContext": {"runAsNonRoot": true},
                "containers": [{"name": "zl", "image": image, "imagePullPolicy": "IfNotPresent", "args": ["version"]}]
            }
        }));
        pods.create(&PostParams::default(), &pod)
            .await
            .unwrap_or_else(|e| panic!("create pod: {e}"));
        let done = eventually("the pod to finish", Duration::from_secs(120), || async {
            let p = pods.get("version").await.map_err(|e| e.to_string())?;
            match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
                Some("Succeeded" | "Failed") => Ok(p),
                other => Err(format!("phase {other:?}")),
            }
        })
        .await;
        let status = done.status.unwrap_or_default();
        let cache = work.join("kubectl-cache");
        let logs = common::kubectl(&["logs", "-n", &ns, "version"], &cache);
        let logs = String::from_utf8_lossy(&logs.stdout);
        assert_eq!(
            status.phase.as_deref(),
            Some("Succeeded"),
            "zen-lead version failed in the pulled image: {logs}"
        );
        assert!(logs.contains(env!("CARGO_PKG_VERSION")), "unexpected output: {logs}");
        // The kubelet pulled it (nothing on the node had this name before)
        // and runs the image make image built: a pulled image is recorded by
        // a registry digest. (containerd files every name of one image
        // together and reports the first, so which repository it names
        // depends on what else the node has pulled.)
        let events = common::kubectl(
            &["get", "events", "-n", &ns, "--field-selector", "involvedObject.name=version",
              "-o", "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}"],
            &cache,
        );
        let events = String::from_utf8_lossy(&events.stdout);
        assert!(
            events.contains(&format!("Pulled: Successfully pulled image \"{image}\"")),
            "no pull of {image} from the registry among the pod's events:\n{events}"
        );
        let image_id = status
            .container_statuses
            .unwrap_or_default()
            .first()
            .map(|c| c.image_id.clone())
            .unwrap_or_default();
        assert!(
            image_id.starts_with(&format!("{}/", common::LOCAL_REGISTRY))
                && image_id.ends_with(&format!("@{digest}")),
            "the kubelet runs {image_id}, not the pushed image {digest}"
        );
    })
    .await;
}

//! The service-account directory the app containers see instead of the real
//! one: the pod's own token (copied, kept current), the namespace, and a
//! `ca.crt` that trusts the gate's per-pod certificate.
//!
//! Files are replaced atomically (temporary file + rename in the same
//! directory), so a reader sees the old or the new content, never half of
//! it, and world-readable, because the app may run as another uid than the
//! agent. The token is the pod's own: the app could read it from the real
//! mount anyway, so copying it grants nothing new.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info, warn};

pub const TOKEN: &str = "token";
pub const NAMESPACE: &str = "namespace";
pub const CA: &str = "ca.crt";

/// How often the source token is compared with the copy. The kubelet
/// rotates projected tokens at 80% of their lifetime (an hour or more), and
/// clients re-read the file every minute or so; a few seconds of lag is
/// invisible to them and costs one small read.
pub const TOKEN_POLL: Duration = Duration::from_secs(2);

/// Errors of the service-account directory.
#[derive(Debug, thiserror::Error)]
pub enum SaDirError {
    #[error(
        "could not write {} for the app containers: {source}; --gate-sa-dir \
         (ZEN_LEAD_GATE_SA_DIR) must be a writable directory (the webhook mounts an emptyDir there)",
        path.display()
    )]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Writes `contents` to `dir/name` atomically with mode 0644.
pub fn write_atomic(dir: &Path, name: &str, contents: &[u8]) -> Result<(), SaDirError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o644);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(contents)?;
        // The umask may have narrowed the mode given at creation.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        }
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        SaDirError::Write {
            path: path.clone(),
            source,
        }
    })
}

/// The directory's fixed content and where the token comes from.
#[derive(Debug, Clone)]
pub struct SaDir {
    pub target: PathBuf,
    pub source: PathBuf,
    /// Used when the source has no `namespace` file.
    pub namespace: String,
    pub ca_pem: String,
}

impl SaDir {
    /// Writes `ca.crt`, `namespace` and (if the source has one) `token`.
    /// Returns the token written, to compare against later.
    pub fn write_all(&self) -> Result<Option<Vec<u8>>, SaDirError> {
        std::fs::create_dir_all(&self.target).map_err(|source| SaDirError::Write {
            path: self.target.clone(),
            source,
        })?;
        write_atomic(&self.target, CA, self.ca_pem.as_bytes())?;
        let namespace = std::fs::read(self.source.join(NAMESPACE))
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| self.namespace.clone().into_bytes());
        write_atomic(&self.target, NAMESPACE, &namespace)?;
        let token = self.sync_token(None)?;
        if token.is_none() {
            warn!(
                source = %self.source.display(),
                "no service-account token to copy for the app containers; their requests go \
                 through the gate without credentials (automountServiceAccountToken: false?)"
            );
        }
        Ok(token)
    }

    /// Copies the source token when it differs from `last`; removes the
    /// copy when the source has none. Returns the token now in place.
    pub fn sync_token(&self, last: Option<&[u8]>) -> Result<Option<Vec<u8>>, SaDirError> {
        match std::fs::read(self.source.join(TOKEN)) {
            Ok(token) if !token.is_empty() => {
                if last != Some(token.as_slice()) {
                    write_atomic(&self.target, TOKEN, &token)?;
                    if last.is_some() {
                        info!("service-account token rotated; copy for the app updated");
                    }
                }
                Ok(Some(token))
            }
            Ok(_) => Ok(last.map(<[u8]>::to_vec)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                if last.is_some() {
                    let _ = std::fs::remove_file(self.target.join(TOKEN));
                }
                Ok(None)
            }
            // A read racing the kubelet's own atomic swap: keep the copy
            // and try again next round.
            Err(err) => {
                debug!(error = %err, "reading the source token failed; keeping the copy");
                Ok(last.map(<[u8]>::to_vec))
            }
        }
    }

    /// Keeps the token copy current until `stop` turns true.
    pub async fn keep_token_fresh(
        self,
        mut last: Option<Vec<u8>>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(TOKEN_POLL) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            match self.sync_token(last.as_deref()) {
                Ok(token) => last = token,
                Err(err) => warn!("{err}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(tag: &str) -> (PathBuf, PathBuf) {
        let base = std::env::temp_dir().join(format!("zl-sa-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let source = base.join("source");
        std::fs::create_dir_all(&source).expect("source");
        (source, base.join("target"))
    }

    #[test]
    fn writes_copies_and_rotates_world_readable() {
        use std::os::unix::fs::PermissionsExt;
        let (source, target) = dirs("rotate");
        std::fs::write(source.join(TOKEN), "t1").expect("token");
        std::fs::write(source.join(NAMESPACE), "shop").expect("ns");
        let dir = SaDir {
            target: target.clone(),
            source: source.clone(),
            namespace: "fallback".into(),
            ca_pem: "CA".into(),
        };
        let token = dir.write_all().expect("write");
        assert_eq!(token.as_deref(), Some(&b"t1"[..]));
        for (name, want) in [(TOKEN, "t1"), (NAMESPACE, "shop"), (CA, "CA")] {
            let path = target.join(name);
            assert_eq!(std::fs::read_to_string(&path).expect("read"), want);
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o644, "{name}");
        }
        std::fs::write(source.join(TOKEN), "t2").expect("rotate");
        let token = dir.sync_token(token.as_deref()).expect("sync");
        assert_eq!(token.as_deref(), Some(&b"t2"[..]));
        assert_eq!(
            std::fs::read_to_string(target.join(TOKEN)).expect("read"),
            "t2"
        );
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(&target)
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        std::fs::remove_file(source.join(TOKEN)).expect("rm");
        assert_eq!(dir.sync_token(token.as_deref()).expect("sync"), None);
        assert!(!target.join(TOKEN).exists());
        let _ = std::fs::remove_dir_all(source.parent().expect("base"));
    }

    #[test]
    fn without_a_source_the_namespace_comes_from_the_pod() {
        let (source, target) = dirs("nosrc");
        std::fs::remove_dir_all(&source).expect("rm");
        let dir = SaDir {
            target: target.clone(),
            source,
            namespace: "shop".into(),
            ca_pem: "CA".into(),
        };
        assert_eq!(dir.write_all().expect("write"), None);
        assert_eq!(
            std::fs::read_to_string(target.join(NAMESPACE)).expect("read"),
            "shop"
        );
        assert!(!target.join(TOKEN).exists());
        let _ = std::fs::remove_dir_all(target.parent().expect("base"));
    }

    #[test]
    fn an_unwritable_target_names_the_flag() {
        let err = write_atomic(Path::new("/proc/zl-none"), TOKEN, b"x").unwrap_err();
        assert!(err.to_string().contains("--gate-sa-dir"), "{err}");
    }
}

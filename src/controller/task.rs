//! The controller's long-running tasks, and what their ending means. Each of
//! them runs until it is stopped, so one that ends by itself (in a build
//! whose panics unwind: tests, `make run`) is a failure of this replica, to
//! be reported as one so the process exits non-zero and the kubelet restarts
//! it. Release builds abort on a panic (`panic = "abort"`), which ends the
//! process the same way.

use tokio::task::{JoinError, JoinHandle};

/// How a task that should have run on ended.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TaskError {
    #[error("the {task} task panicked: {message}")]
    Panicked { task: &'static str, message: String },

    #[error("the {task} task was cancelled")]
    Cancelled { task: &'static str },

    #[error("the {task} task ended by itself")]
    Ended { task: &'static str },
}

/// What a failed join says: a panic (with its message) or a cancellation.
pub fn join_error(task: &'static str, err: JoinError) -> TaskError {
    match err.try_into_panic() {
        Ok(payload) => TaskError::Panicked {
            task,
            message: payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_owned()),
        },
        Err(_) => TaskError::Cancelled { task },
    }
}

/// The result of a joined task that returns a result of its own: a panic or
/// a cancellation is an error too, never a clean exit.
pub fn joined<T, E: From<TaskError>>(
    task: &'static str,
    result: Result<Result<T, E>, JoinError>,
) -> Result<T, E> {
    result.map_err(|err| E::from(join_error(task, err)))?
}

/// Tasks aborted when this is dropped, watched for the first that fails.
#[derive(Default)]
pub struct Tasks(Vec<(&'static str, bool, JoinHandle<()>)>);

impl Tasks {
    /// Adds a task; `forever`: it ending at all is a failure (otherwise
    /// only a panic is, e.g. a task that finishes once caches are synced).
    pub fn push(&mut self, name: &'static str, forever: bool, handle: JoinHandle<()>) {
        self.0.push((name, forever, handle));
    }

    /// Waits for the first task to fail; pending while none does.
    pub async fn failed(&mut self) -> TaskError {
        loop {
            if self.0.is_empty() {
                return std::future::pending().await;
            }
            let (result, i, _) =
                futures::future::select_all(self.0.iter_mut().map(|(_, _, h)| h)).await;
            // Finished: never polled again.
            let (task, forever, _) = self.0.swap_remove(i);
            match result {
                Err(err) => return join_error(task, err),
                Ok(()) if forever => return TaskError::Ended { task },
                Ok(()) => {}
            }
        }
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for (_, _, t) in &self.0 {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn join_err(task: JoinHandle<()>) -> JoinError {
        match task.await {
            Err(err) => err,
            Ok(()) => panic!("the task was meant to fail"),
        }
    }

    #[tokio::test]
    async fn a_panic_is_an_error_naming_the_task_and_its_message() {
        let err = join_err(tokio::spawn(async { panic!("boom") })).await;
        assert_eq!(
            join_error("worker", err),
            TaskError::Panicked {
                task: "worker",
                message: "boom".to_owned()
            }
        );
        let n = 3;
        let err = join_err(tokio::spawn(async move { panic!("boom {n}") })).await;
        assert_eq!(
            join_error("worker", err).to_string(),
            "the worker task panicked: boom 3"
        );
        let pending = tokio::spawn(std::future::pending::<()>());
        pending.abort();
        assert_eq!(
            join_error("watch", join_err(pending).await),
            TaskError::Cancelled { task: "watch" }
        );
    }

    #[tokio::test]
    async fn a_joined_task_that_panicked_is_not_a_clean_exit() {
        async fn boom() -> Result<(), TaskError> {
            panic!("boom")
        }
        let task = tokio::spawn(boom());
        assert_eq!(
            joined("controller election", task.await),
            Err(TaskError::Panicked {
                task: "controller election",
                message: "boom".to_owned()
            })
        );
        // Its own result passes through.
        let ok = tokio::spawn(async { Ok::<u8, TaskError>(7) });
        assert_eq!(joined("x", ok.await), Ok(7));
        let own = tokio::spawn(async { Err::<u8, _>(TaskError::Ended { task: "inner" }) });
        assert_eq!(
            joined("x", own.await),
            Err(TaskError::Ended { task: "inner" })
        );
    }

    #[tokio::test]
    async fn the_first_failed_task_is_reported_and_the_rest_aborted() {
        let mut tasks = Tasks::default();
        // Done once, as the cache-sync marker is: not a failure.
        tasks.push("sync", false, tokio::spawn(async {}));
        let (alive, gone) = tokio::sync::oneshot::channel::<()>();
        tasks.push(
            "watch",
            false,
            tokio::spawn(async move {
                let _alive = alive;
                std::future::pending::<()>().await;
            }),
        );
        tasks.push(
            "worker",
            true,
            tokio::spawn(async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                panic!("boom");
            }),
        );
        let failed = tokio::time::timeout(Duration::from_secs(5), tasks.failed())
            .await
            .expect("a failure is reported");
        assert_eq!(
            failed,
            TaskError::Panicked {
                task: "worker",
                message: "boom".to_owned()
            }
        );
        drop(tasks);
        assert!(gone.await.is_err(), "dropping aborts the others");

        // A task meant to run forever that returns is a failure too.
        let mut tasks = Tasks::default();
        tasks.push("worker", true, tokio::spawn(async {}));
        assert_eq!(tasks.failed().await, TaskError::Ended { task: "worker" });
    }
}

//! The authorization table: the least role each Admin operation needs. Every operation
//! checks it first (`ops/`), so the gRPC service, the HTTP
//! API and the REPL cannot disagree, and a refused call changes nothing.

use herd::domain::Role;
use herd::error::Error;

use super::Caller;

/// Every Admin operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    ListWorkers,
    GetWorker,
    Summary,
    ListTasks,
    GetTask,
    TaskLogs,
    /// The dashboard's event stream and history.
    Watch,
    ShowScheduler,
    SubmitTask,
    CancelTask,
    Drain,
    Undrain,
    ListAudit,
    SwitchScheduler,
    AddWorker,
    ForgetWorker,
    IssueWorkerSecret,
    CreateToken,
    ListTokens,
    RevokeToken,
}

impl Op {
    /// The least role that may do it. Operators run work (submit, cancel, see tasks,
    /// drain); admins change the cluster itself (policy, workers, tokens).
    pub const fn minimum(self) -> Role {
        use Op::*;
        match self {
            ListWorkers | GetWorker | Summary | ListTasks | GetTask | TaskLogs | Watch
            | ShowScheduler => Role::Viewer,
            SubmitTask | CancelTask | Drain | Undrain | ListAudit => Role::Operator,
            SwitchScheduler | AddWorker | ForgetWorker | IssueWorkerSecret | CreateToken
            | ListTokens | RevokeToken => Role::Admin,
        }
    }

    /// As the audit log and refusals name it (the REPL's words).
    pub const fn name(self) -> &'static str {
        use Op::*;
        match self {
            ListWorkers => "workers",
            GetWorker => "worker",
            Summary => "status",
            ListTasks => "tasks",
            GetTask => "task status",
            TaskLogs => "task logs",
            Watch => "events",
            ShowScheduler => "scheduler",
            SubmitTask => "task submit",
            CancelTask => "task cancel",
            Drain => "drain",
            Undrain => "undrain",
            ListAudit => "audit",
            SwitchScheduler => "scheduler switch",
            AddWorker => "worker add",
            ForgetWorker => "worker forget",
            IssueWorkerSecret => "worker secret",
            CreateToken => "token create",
            ListTokens => "token list",
            RevokeToken => "token revoke",
        }
    }
}

impl Caller {
    /// Refuses `op` unless this caller's role is at least [`Op::minimum`].
    pub fn may(&self, op: Op) -> Result<(), Error> {
        let needs = op.minimum();
        if self.role >= needs {
            return Ok(());
        }
        tracing::warn!(who = %self.name, role = %self.role, peer = %self.peer, op = op.name(),
                       "refused an operation the caller's role does not allow");
        Err(Error::PermissionDenied(format!(
            "token '{}' has the role {}; '{}' needs {needs} or above",
            self.name,
            self.role,
            op.name()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(role: Role) -> Caller {
        Caller {
            name: "t".into(),
            role,
            peer: "here".into(),
        }
    }

    #[test]
    fn viewers_read_operators_run_work_admins_change_the_cluster() {
        let (viewer, operator, admin) = (
            caller(Role::Viewer),
            caller(Role::Operator),
            caller(Role::Admin),
        );
        for op in [Op::ListTasks, Op::TaskLogs, Op::ListWorkers, Op::Summary] {
            assert!(viewer.may(op).is_ok(), "{op:?}");
        }
        for op in [Op::SubmitTask, Op::CancelTask, Op::Drain] {
            assert!(viewer.may(op).is_err(), "{op:?}");
            assert!(operator.may(op).is_ok(), "{op:?}");
        }
        for op in [
            Op::CreateToken,
            Op::RevokeToken,
            Op::SwitchScheduler,
            Op::ForgetWorker,
        ] {
            assert!(operator.may(op).is_err(), "{op:?}");
            assert!(admin.may(op).is_ok(), "{op:?}");
        }
        let err = viewer.may(Op::SubmitTask).unwrap_err().to_string();
        assert!(err.contains("viewer") && err.contains("operator"), "{err}");
    }
}

//! The Admin gRPC service (what the REPL, herdctl and scripts call): thin adapters from the
//! proto to the operations in `ops/`, each handed the caller the
//! gate resolved; errors mapped to statuses once (herd::Error).

use std::pin::Pin;

use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use herd::pb;

use super::caller;
use crate::app::App;

type Reply<T> = Result<Response<T>, Status>;

/// The Admin service: every call goes to the operation of the same name.
#[derive(Clone)]
pub struct AdminService(pub App);

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> Reply<pb::ListWorkersResponse> {
        let who = caller(&request)?;
        Ok(Response::new(
            self.0.list_workers(&who, request.into_inner())?,
        ))
    }

    async fn get_worker(&self, request: Request<pb::GetWorkerRequest>) -> Reply<pb::WorkerInfo> {
        let who = caller(&request)?;
        Ok(Response::new(
            self.0.get_worker(&who, &request.into_inner().worker)?,
        ))
    }

    async fn submit_task(&self, request: Request<pb::SubmitTaskRequest>) -> Reply<pb::TaskInfo> {
        let who = caller(&request)?;
        Ok(Response::new(
            self.0.submit(&who, request.into_inner().spec).await?,
        ))
    }

    async fn submit_tasks(
        &self,
        request: Request<pb::SubmitTasksRequest>,
    ) -> Reply<pb::SubmitTasksResponse> {
        let who = caller(&request)?;
        Ok(Response::new(
            self.0.submit_batch(&who, request.into_inner()).await?,
        ))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Reply<pb::ListTasksResponse> {
        let who = caller(&request)?;
        Ok(Response::new(
            self.0.list_tasks(&who, request.into_inner()).await?,
        ))
    }

    async fn get_task(&self, request: Request<pb::GetTaskRequest>) -> Reply<pb::TaskInfo> {
        let who = caller(&request)?;
        Ok(Response::new(
            self.0.get_task(&who, &request.into_inner().task_id).await?,
        ))
    }

    async fn cancel_task(&self, request: Request<pb::CancelTaskRequest>) -> Reply<pb::TaskInfo> {
        let who = caller(&request)?;
        Ok(Response::new(
            self.0.cancel(&who, &request.into_inner().task_id).await?,
        ))
    }

    type TaskLogsStream =
        Pin<Box<dyn Stream<Item = Result<pb::TaskLogsChunk, Status>> + Send + 'static>>;

    async fn task_logs(
        &self,
        request: Request<pb::TaskLogsRequest>,
    ) -> Reply<Self::TaskLogsStream> {
        let who = caller(&request)?;
        let chunks = self.0.logs(&who, request.into_inner()).await?;
        let stream =
            tokio_stream::StreamExt::map(ReceiverStream::new(chunks), |c| c.map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn scheduler(
        &self,
        request: Request<pb::SchedulerRequest>,
    ) -> Reply<pb::SchedulerResponse> {
        let who = caller(&request)?;
        Ok(Response::new(
            self.0.scheduler(&who, &request.into_inner().name).await?,
        ))
    }

    async fn drain(&self, request: Request<pb::DrainRequest>) -> Reply<pb::WorkerInfo> {
        let who = caller(&request)?;
        let pb::DrainRequest { worker, drain } = request.into_inner();
        Ok(Response::new(self.0.drain(&who, &worker, drain).await?))
    }

    async fn forget_worker(
        &self,
        request: Request<pb::ForgetWorkerRequest>,
    ) -> Reply<pb::WorkerInfo> {
        let who = caller(&request)?;
        Ok(Response::new(
            self.0.forget(&who, &request.into_inner().worker).await?,
        ))
    }

    async fn add_worker(&self, request: Request<pb::AddWorkerRequest>) -> Reply<pb::WorkerInfo> {
        let who = caller(&request)?;
        Ok(Response::new(
            self.0.add_worker(&who, request.into_inner()).await?,
        ))
    }

    async fn summary(&self, request: Request<pb::SummaryRequest>) -> Reply<pb::ClusterSummary> {
        let who = caller(&request)?;
        Ok(Response::new(self.0.summary(&who).await?))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Reply<pb::CreateTokenResponse> {
        let who = caller(&request)?;
        Ok(Response::new(
            self.0.create_token(&who, request.into_inner()).await?,
        ))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Reply<pb::ListTokensResponse> {
        let who = caller(&request)?;
        Ok(Response::new(
            self.0.list_tokens(&who, request.into_inner())?,
        ))
    }

    async fn revoke_token(&self, request: Request<pb::RevokeTokenRequest>) -> Reply<pb::TokenInfo> {
        let who = caller(&request)?;
        Ok(Response::new(
            self.0.revoke_token(&who, request.into_inner()).await?,
        ))
    }

    async fn issue_worker_secret(
        &self,
        request: Request<pb::IssueWorkerSecretRequest>,
    ) -> Reply<pb::IssueWorkerSecretResponse> {
        let who = caller(&request)?;
        Ok(Response::new(
            self.0
                .issue_worker_secret(&who, request.into_inner())
                .await?,
        ))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Reply<pb::ListAuditResponse> {
        let who = caller(&request)?;
        Ok(Response::new(
            self.0.list_audit(&who, request.into_inner()).await?,
        ))
    }
}

//! The Admin gRPC service (what the REPL, herdctl and scripts call): thin adapters from the
//! proto to the operations in `ops.rs`, errors mapped to statuses once (herd::Error).

use std::pin::Pin;

use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use herd::pb;

use crate::service::Master;

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::admin_server::Admin for Master {
    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> Reply<pb::ListWorkersResponse> {
        Ok(Response::new(Master::list_workers(
            self,
            request.into_inner(),
        )?))
    }

    async fn get_worker(&self, request: Request<pb::GetWorkerRequest>) -> Reply<pb::WorkerInfo> {
        Ok(Response::new(Master::get_worker(
            self,
            &request.into_inner().worker,
        )?))
    }

    async fn submit_task(&self, request: Request<pb::SubmitTaskRequest>) -> Reply<pb::TaskInfo> {
        Ok(Response::new(self.submit(request.into_inner().spec).await?))
    }

    async fn submit_tasks(
        &self,
        request: Request<pb::SubmitTasksRequest>,
    ) -> Reply<pb::SubmitTasksResponse> {
        Ok(Response::new(
            self.submit_batch(request.into_inner()).await?,
        ))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Reply<pb::ListTasksResponse> {
        Ok(Response::new(
            Master::list_tasks(self, request.into_inner()).await?,
        ))
    }

    async fn get_task(&self, request: Request<pb::GetTaskRequest>) -> Reply<pb::TaskInfo> {
        Ok(Response::new(
            Master::get_task(self, &request.into_inner().task_id).await?,
        ))
    }

    async fn cancel_task(&self, request: Request<pb::CancelTaskRequest>) -> Reply<pb::TaskInfo> {
        Ok(Response::new(
            self.cancel(&request.into_inner().task_id).await?,
        ))
    }

    type TaskLogsStream =
        Pin<Box<dyn Stream<Item = Result<pb::TaskLogsChunk, Status>> + Send + 'static>>;

    async fn task_logs(
        &self,
        request: Request<pb::TaskLogsRequest>,
    ) -> Reply<Self::TaskLogsStream> {
        let chunks = self.logs(request.into_inner()).await?;
        let stream =
            tokio_stream::StreamExt::map(ReceiverStream::new(chunks), |c| c.map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn scheduler(
        &self,
        request: Request<pb::SchedulerRequest>,
    ) -> Reply<pb::SchedulerResponse> {
        Ok(Response::new(
            Master::scheduler(self, &request.into_inner().name).await?,
        ))
    }

    async fn drain(&self, request: Request<pb::DrainRequest>) -> Reply<pb::WorkerInfo> {
        let pb::DrainRequest { worker, drain } = request.into_inner();
        Ok(Response::new(Master::drain(self, &worker, drain).await?))
    }

    async fn forget_worker(
        &self,
        request: Request<pb::ForgetWorkerRequest>,
    ) -> Reply<pb::WorkerInfo> {
        Ok(Response::new(
            self.forget(&request.into_inner().worker).await?,
        ))
    }

    async fn add_worker(&self, request: Request<pb::AddWorkerRequest>) -> Reply<pb::WorkerInfo> {
        Ok(Response::new(
            Master::add_worker(self, request.into_inner()).await?,
        ))
    }

    async fn summary(&self, _request: Request<pb::SummaryRequest>) -> Reply<pb::ClusterSummary> {
        Ok(Response::new(Master::summary(self)))
    }
}

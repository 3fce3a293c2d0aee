//! The admin gRPC service (`flopmeter.v1.Admin`): what `flopmeter models`, `runs`,
//! `model set`, `report` and `ledger verify` talk to.
//!
//! Reads go straight to the store. Writes (the registry) go through the ledger writer, so
//! that the ledger keeps a single writer. `VerifyLedger` needs the admin credential, runs
//! one at a time, and does its bulk off the writer: it cuts the ledger at every agent's
//! high-water mark on the writer, recomputes from the raw batches below the cut on a
//! blocking thread while ingest goes on (rollups wait), and finishes on the writer with what
//! arrived meanwhile. Six callers in a loop once held ingest for seconds (issue 12); now a
//! second caller is told to wait and ingest never waits for the scan.

pub mod convert;
pub(crate) mod credentials;
pub(crate) mod text;

use std::sync::Arc;

use flopmeter_core::stage::StagePolicy;
use flopmeter_proto::v1 as pb;
use flopmeter_proto::v1::admin_server::Admin;
use tonic::{Request, Response, Status};

use crate::ledger::{LedgerStore, summary};
use crate::writer::{Job, WriterHandle};
use crate::{now_unix_ms, report};
use credentials::AdminCredentials;

/// The admin service.
#[derive(Debug, Clone)]
pub struct AdminService {
    store: Arc<dyn LedgerStore>,
    writer: WriterHandle,
    policy: StagePolicy,
    credentials: AdminCredentials,
    /// One verification at a time (held by its scan until the scan ends, even if the
    /// caller went away).
    verifying: Arc<tokio::sync::Mutex<()>>,
    /// Test-only: holds each verification's scan (`crate::failpoint`).
    verify_hold: Option<crate::failpoint::Hold>,
}

impl AdminService {
    /// Creates the service; write RPCs need one of `credentials`, when it has any.
    pub fn new(
        store: Arc<dyn LedgerStore>,
        writer: WriterHandle,
        policy: StagePolicy,
        credentials: AdminCredentials,
    ) -> AdminService {
        AdminService {
            store,
            writer,
            policy,
            credentials,
            verifying: Arc::default(),
            verify_hold: None,
        }
    }

    /// Arms the test-only hold of the verification scan.
    pub fn with_verify_hold(mut self, hold: Option<crate::failpoint::Hold>) -> AdminService {
        self.verify_hold = hold;
        self
    }
}

fn not_found(model: &str) -> Status {
    Status::not_found(format!("the ledger knows no model {model:?}"))
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_models(
        &self,
        req: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let cluster = req.into_inner().cluster;
        let models = summary::model_summaries_on(
            self.store.as_ref(),
            &self.policy,
            Some(cluster.as_str()).filter(|c| !c.is_empty()),
        )?;
        Ok(Response::new(pb::ListModelsResponse {
            models: models.iter().map(convert::model_to_pb).collect(),
        }))
    }

    async fn get_model(
        &self,
        req: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::GetModelResponse>, Status> {
        let model = req.into_inner().model;
        let s = summary::model_summary(self.store.as_ref(), &model, &self.policy)?
            .ok_or_else(|| not_found(&model))?;
        Ok(Response::new(pb::GetModelResponse {
            summary: Some(convert::model_to_pb(&s)),
        }))
    }

    async fn list_runs(
        &self,
        req: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let r = req.into_inner();
        let model = Some(r.model.as_str()).filter(|m| !m.is_empty());
        let cluster = Some(r.cluster.as_str()).filter(|c| !c.is_empty());
        if model.is_none() && cluster.is_none() {
            return Err(Status::invalid_argument(
                "ListRunsRequest needs a model or a cluster",
            ));
        }
        let runs = summary::run_summaries_on(self.store.as_ref(), model, cluster, &self.policy)?;
        Ok(Response::new(pb::ListRunsResponse {
            runs: runs.iter().map(convert::run_to_pb).collect(),
        }))
    }

    async fn set_model(
        &self,
        req: Request<pb::SetModelRequest>,
    ) -> Result<Response<pb::SetModelResponse>, Status> {
        let r = req.get_ref();
        let actor = self.credentials.actor(req.metadata(), &r.by, "admin")?;
        let wire = req
            .into_inner()
            .entry
            .ok_or_else(|| Status::invalid_argument("SetModelRequest.entry is required"))?;
        let mut entry = convert::entry_from_pb(&wire)?;
        if entry.model.is_empty() {
            return Err(Status::invalid_argument("the model name must be non-empty"));
        }
        text::check_name("model", &entry.model)?;
        text::check_name(
            "base_model",
            entry.declared.base_model.as_deref().unwrap_or_default(),
        )?;
        text::check_text(
            "base_flop_source",
            entry.base_flop_source.as_deref().unwrap_or_default(),
        )?;
        entry.updated_unix_ms = now_unix_ms();
        entry.updated_by = Some(actor);
        let saved = self
            .writer
            .call(|reply| Job::SetModel(entry, reply))
            .await??;
        tracing::info!(model = %saved.model, "model registry entry set");
        Ok(Response::new(pb::SetModelResponse {
            entry: Some(convert::entry_to_pb(&saved)),
        }))
    }

    async fn report(
        &self,
        req: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        let model = req.into_inner().model;
        let r = report::build(self.store.as_ref(), &model, &self.policy, now_unix_ms())?
            .ok_or_else(|| not_found(&model))?;
        let json = serde_json::to_string(&r)
            .map_err(|e| Status::internal(format!("cannot encode the report: {e}")))?;
        Ok(Response::new(pb::ReportResponse { json }))
    }

    async fn verify_ledger(
        &self,
        req: Request<pb::VerifyLedgerRequest>,
    ) -> Result<Response<pb::VerifyLedgerResponse>, Status> {
        // Reads everything the ledger holds: as costly as any write, so as guarded.
        self.credentials.authorize(req.metadata())?;
        let one = self.verifying.clone().try_lock_owned().map_err(|_| {
            Status::resource_exhausted(
                "a ledger verification is already running; try again when it has finished",
            )
        })?;
        let _rollups = self.writer.pause_rollups();
        let cut = self.writer.call(Job::VerifyCut).await??;
        let store = self.store.clone();
        // The scan keeps the lock even if this caller goes away meanwhile.
        let hold = self.verify_hold.clone();
        let (scan, one) = tokio::task::spawn_blocking(move || {
            if let Some(h) = hold {
                h.wait();
            }
            (store.verify_scan(cut), one)
        })
        .await
        .map_err(|e| Status::internal(format!("the verification failed: {e}")))?;
        let scan = Box::new(scan?);
        let r = self
            .writer
            .call(|reply| Job::VerifyFinish(scan, reply))
            .await??;
        drop(one);
        Ok(Response::new(pb::VerifyLedgerResponse {
            ok: r.ok(),
            summary: r.summary(),
            mismatches: r.mismatches,
        }))
    }

    async fn list_rejections(
        &self,
        req: Request<pb::ListRejectionsRequest>,
    ) -> Result<Response<pb::ListRejectionsResponse>, Status> {
        let r = req.into_inner();
        let limit = if r.limit == 0 { 100 } else { r.limit as usize };
        let agent = (!r.agent_id.is_empty()).then_some(r.agent_id.as_str());
        let rejections = self
            .store
            .rejections(agent, limit)?
            .into_iter()
            .map(|e| pb::RejectedRecord {
                agent_id: e.agent_id,
                node: e.node,
                seq: e.seq,
                reason: e.reason,
                detail: e.detail,
                received_unix_ms: e.received_unix_ms,
            })
            .collect();
        Ok(Response::new(pb::ListRejectionsResponse { rejections }))
    }
}

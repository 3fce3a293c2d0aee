//! The `Compliance` gRPC service (`proto/flopmeter/v1/compliance.proto`): alerts, ack,
//! dismiss, audit verify and export. Ack and dismiss need an admin credential, checked exactly
//! as `Admin.SetModel` checks it ([`AdminCredentials`]), and are audited under its actor.
//! On a replica that does not lead the compliance engine (several collectors on one
//! PostgreSQL) they answer UNAVAILABLE, naming the leader: the CLI retries over a new
//! connection, which behind a Service may reach the leader.

use std::sync::Arc;

use flopmeter_core::audit::LinkError;
use flopmeter_proto::v1 as pb;
use flopmeter_proto::v1::compliance_server::Compliance as ComplianceRpc;
use tonic::{Request, Response, Status};

use super::engine::{AlertView, Engine, EngineError};
use super::store::ComplianceStoreError;
use crate::admin::credentials::AdminCredentials;

/// The service.
#[derive(Debug, Clone)]
pub struct ComplianceService {
    engine: Arc<Engine>,
    credentials: AdminCredentials,
}

impl ComplianceService {
    /// Creates the service; Acknowledge and Dismiss need one of `credentials`, when it has
    /// any, and are audited under the actor it names.
    pub fn new(engine: Arc<Engine>, credentials: AdminCredentials) -> ComplianceService {
        ComplianceService {
            engine,
            credentials,
        }
    }

    fn view(&self, model: &str, threshold: &str) -> Result<pb::AlertSummary, Status> {
        self.engine
            .alert_views()
            .map_err(internal)?
            .into_iter()
            .find(|v| v.model == model && v.threshold == threshold)
            .map(|v| summary_to_pb(&v))
            .ok_or_else(|| Status::not_found("alert vanished"))
    }
}

fn internal(e: EngineError) -> Status {
    match e {
        EngineError::NoAlert { .. } => Status::not_found(e.to_string()),
        EngineError::Refused(_) => Status::failed_precondition(e.to_string()),
        // Leadership moved between the check and the commit: the same answer.
        EngineError::NotLeader { .. }
        | EngineError::Store(ComplianceStoreError::NotLeader { .. }) => {
            Status::unavailable(e.to_string())
        }
        other => Status::internal(other.to_string()),
    }
}

/// An alert view on the wire.
pub fn summary_to_pb(v: &AlertView) -> pb::AlertSummary {
    pb::AlertSummary {
        model: v.model.clone(),
        threshold: v.threshold.clone(),
        status: v.status.clone(),
        clock_start: v.clock_start.clone().unwrap_or_default(),
        reason: v.reason.clone().unwrap_or_default(),
        deadline: v.deadline.clone().unwrap_or_default(),
        time_left: v.time_left.clone().unwrap_or_default(),
        overdue: v.overdue,
        acknowledged: v.acknowledged.clone().unwrap_or_default(),
        dismissed: v.dismissed.clone().unwrap_or_default(),
        delivery: v
            .delivery
            .iter()
            .map(|d| pb::DeliveryStatus {
                sink: d.sink.clone(),
                delivered: d.delivered,
                pending: d.pending,
                last_error: d.last_error.clone().unwrap_or_default(),
            })
            .collect(),
        summary: v
            .content
            .as_ref()
            .map(|c| c.summary.clone())
            .unwrap_or_default(),
        content_json: v
            .content
            .as_ref()
            .and_then(|c| serde_json::to_string(c).ok())
            .unwrap_or_default(),
    }
}

/// Describes a broken link for people.
pub fn describe_link(e: &LinkError) -> String {
    e.to_string()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(internal)
}

#[tonic::async_trait]
impl ComplianceRpc for ComplianceService {
    async fn list_alerts(
        &self,
        _req: Request<pb::ListAlertsRequest>,
    ) -> Result<Response<pb::ListAlertsResponse>, Status> {
        let e = self.engine.clone();
        let views = blocking(move || e.alert_views()).await?;
        Ok(Response::new(pb::ListAlertsResponse {
            alerts: views.iter().map(summary_to_pb).collect(),
            now_unix_ms: self.engine.now(),
        }))
    }

    async fn acknowledge(
        &self,
        req: Request<pb::AcknowledgeRequest>,
    ) -> Result<Response<pb::AlertActionResponse>, Status> {
        // No fallback actor: an acknowledgement nobody is named for is refused.
        let by = self
            .credentials
            .actor(req.metadata(), &req.get_ref().by, "")?;
        crate::admin::text::check_text("reference", &req.get_ref().reference)?;
        let r = req.into_inner();
        let e = self.engine.clone();
        let (m, t) = (r.model.clone(), r.threshold.clone());
        blocking(move || e.acknowledge(&r.model, &r.threshold, &by, &r.reference)).await?;
        Ok(Response::new(pb::AlertActionResponse {
            alert: Some(self.view(&m, &t)?),
        }))
    }

    async fn dismiss(
        &self,
        req: Request<pb::DismissRequest>,
    ) -> Result<Response<pb::AlertActionResponse>, Status> {
        let by = self
            .credentials
            .actor(req.metadata(), &req.get_ref().by, "")?;
        crate::admin::text::check_text("reason", &req.get_ref().reason)?;
        let r = req.into_inner();
        let e = self.engine.clone();
        let (m, t) = (r.model.clone(), r.threshold.clone());
        blocking(move || e.dismiss(&r.model, &r.threshold, &by, &r.reason)).await?;
        Ok(Response::new(pb::AlertActionResponse {
            alert: Some(self.view(&m, &t)?),
        }))
    }

    async fn verify_audit(
        &self,
        _req: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyAuditResponse>, Status> {
        let e = self.engine.clone();
        let s = blocking(move || e.verify_chain()).await?;
        Ok(Response::new(pb::VerifyAuditResponse {
            ok: s.ok(),
            // The real counts, broken or not.
            entries: s.entries,
            verified: s.verified(),
            head_entries: s.head_entries,
            broken_index: s.broken.as_ref().map_or(0, |b| b.index as u64),
            broken_reason: s
                .broken
                .as_ref()
                .map(|b| describe_link(&b.reason))
                .unwrap_or_default(),
        }))
    }

    async fn export_audit(
        &self,
        req: Request<pb::ExportAuditRequest>,
    ) -> Result<Response<pb::ExportAuditResponse>, Status> {
        let since = req.into_inner().since_unix_ms;
        let e = self.engine.clone();
        let entries = blocking(move || Ok(e.store().audit_entries()?)).await?;
        let lines = entries
            .iter()
            .filter(|e| e.time_ms >= since)
            .filter_map(|e| serde_json::to_string(e).ok())
            .collect();
        Ok(Response::new(pb::ExportAuditResponse { lines }))
    }
}

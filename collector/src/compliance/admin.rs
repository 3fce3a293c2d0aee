//! The `Compliance` gRPC service (`proto/flopmeter/v1/compliance.proto`): alerts, ack,
//! dismiss, audit verify and export. Ack and dismiss need the admin token, checked exactly as
//! `Admin.SetModel` checks it.

use std::sync::Arc;

use flopmeter_core::audit::LinkError;
use flopmeter_proto::v1 as pb;
use flopmeter_proto::v1::compliance_server::Compliance as ComplianceRpc;
use tonic::{Request, Response, Status};

use super::engine::{AlertView, Engine, EngineError};
use crate::ingest::auth;

/// The service.
#[derive(Debug, Clone)]
pub struct ComplianceService {
    engine: Arc<Engine>,
    admin_token: Option<String>,
}

impl ComplianceService {
    /// Creates the service; `admin_token`, when set, is required by Acknowledge and Dismiss.
    pub fn new(engine: Arc<Engine>, admin_token: Option<String>) -> ComplianceService {
        ComplianceService {
            engine,
            admin_token,
        }
    }

    fn authorize_write<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let Some(expected) = &self.admin_token else {
            return Ok(());
        };
        match auth::bearer(req.metadata()) {
            Some(t) if auth::same_token(t, expected) => Ok(()),
            Some(_) => Err(Status::unauthenticated("wrong admin token")),
            None => Err(Status::unauthenticated(
                "this collector requires an admin token (--admin-token / FLOPMETER_ADMIN_TOKEN)",
            )),
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
        self.authorize_write(&req)?;
        let r = req.into_inner();
        let e = self.engine.clone();
        let (m, t) = (r.model.clone(), r.threshold.clone());
        blocking(move || e.acknowledge(&r.model, &r.threshold, &r.by, &r.reference)).await?;
        Ok(Response::new(pb::AlertActionResponse {
            alert: Some(self.view(&m, &t)?),
        }))
    }

    async fn dismiss(
        &self,
        req: Request<pb::DismissRequest>,
    ) -> Result<Response<pb::AlertActionResponse>, Status> {
        self.authorize_write(&req)?;
        let r = req.into_inner();
        let e = self.engine.clone();
        let (m, t) = (r.model.clone(), r.threshold.clone());
        blocking(move || e.dismiss(&r.model, &r.threshold, &r.by, &r.reason)).await?;
        Ok(Response::new(pb::AlertActionResponse {
            alert: Some(self.view(&m, &t)?),
        }))
    }

    async fn verify_audit(
        &self,
        _req: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyAuditResponse>, Status> {
        let e = self.engine.clone();
        let r = blocking(move || Ok(e.store().verify_audit()?)).await?;
        Ok(Response::new(match r {
            Ok(n) => pb::VerifyAuditResponse {
                ok: true,
                entries: n,
                ..Default::default()
            },
            Err(b) => pb::VerifyAuditResponse {
                ok: false,
                entries: 0,
                broken_index: b.index as u64,
                broken_reason: describe_link(&b.reason),
            },
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

//! The read side on a known ledger: /metrics names and labels, /healthz, /readyz, the
//! /api/v1 JSON, the admin gRPC API, and the report in text, JSON and CSV.

use crate::support;

use flopmeter_collector::Collector;
use flopmeter_collector::config::CollectorConfig;
use flopmeter_collector::ledger::sled_store::SledStore;
use flopmeter_collector::ledger::{LedgerStore, ModelEntry, Role};
use flopmeter_collector::report::{self, Format, Report};
use flopmeter_core::stage::StagePolicy;
use flopmeter_proto::v1 as pb;
use flopmeter_proto::v1::Method;
use support::{incoming, rec_at};

const END: i64 = 1_780_000_000_000;
const DAY: i64 = 86_400_000;

/// acme: run r1 (pretrain) = 97% gpm-tensor + 3% util-mfu = 1.0e16 FLOP central; run r2
/// (eval, excluded) 1.0e15; unattributed work on acme's node n1 the same day (1.0e15) and on
/// an unrelated node n9 (not shown in acme's report).
fn build(dir: &std::path::Path) {
    let s = SledStore::open(dir).unwrap();
    let mut gpm = rec_at(1, "acme", "r1", "", 9_700_000_000_000_000, END);
    gpm.declaration = Some(pb::WorkloadDeclaration {
        precision: pb::Precision::Bf16 as i32,
        params: "1e3".into(),
        tokens: "1e12".into(),
        ..Default::default()
    });
    let mut mfu = rec_at(2, "acme", "r1", "pretrain", 300_000_000_000_000, END + DAY);
    mfu.method = Method::UtilMfu as i32;
    let eval = rec_at(3, "acme", "r2", "eval", 1_000_000_000_000_000, END);
    let idle = rec_at(4, "", "", "", 1_000_000_000_000_000, END);
    s.apply_batch(&incoming("a1", "n1", vec![gpm, mfu, eval, idle]))
        .unwrap();
    let other = rec_at(1, "", "", "", 5_000_000_000_000_000, END);
    s.apply_batch(&incoming("a9", "n9", vec![other])).unwrap();
    s.set_model_entry(&ModelEntry {
        model: "acme".into(),
        declared: flopmeter_core::declaration::Declaration {
            base_model: Some("llama".into()),
            planned_flop: Some(2 * 10u128.pow(25)),
            ..Default::default()
        },
        base_flop: Some(38 * 10u128.pow(23)),
        base_flop_source: Some("model card".into()),
        role: Some(Role::Modifier),
        ..ModelEntry::default()
    })
    .unwrap();
    s.flush().unwrap();
}

#[test]
fn report_text_json_csv() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let s = SledStore::open(dir.path()).unwrap();
    let r = report::build(&s, "acme", &StagePolicy::default(), END + 2 * DAY)
        .unwrap()
        .unwrap();
    assert!(
        report::build(&s, "nope", &StagePolicy::default(), END)
            .unwrap()
            .is_none()
    );

    let text = report::render(&r, Format::Text);
    for line in [
        "flopmeter report: model acme",
        "role: modifier",
        "declared plan: 2.0e25 FLOP",
        "Computation:       1.0e16 [5.0e15 – 2.0e16] FLOP (central [low – high])",
        "  method mix:      97% gpm-tensor, 3% util-mfu",
        "  excluded:        1.0e15 [5.0e14 – 2.0e15] FLOP by stage policy",
        // Plain numbers: days and MWh are never in scientific notation.
        "Training time:     1.0 wall-clock days",
        "Hardware:          0.00023 h100-sxm GPU-days",
        "Energy:            0.0000039 MWh (GPU energy measured by NVML; excluded stages 0.0000019 MWh)",
        "Base model:        llama with 3.8e24 FLOP (source: model card)",
        "  pretrain               yes",
        "  eval                   excluded",
        "Unattributed compute on the same hardware in the same period (1 node(s)",
        "  1.0e15 [5.0e14 – 2.0e15] FLOP, 0.00012 h100-sxm GPU-days",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(text.contains("  r1 ") && text.contains("  r2 "), "{text}");

    // Exact figures survive JSON exactly: every u128 is a decimal string, which JavaScript
    // and jq read without rounding it to a double (floats such as GPU-days stay numbers).
    let json: serde_json::Value = serde_json::from_str(&report::render(&r, Format::Json)).unwrap();
    assert_eq!(
        json["computation"]["counted"]["central"],
        r.computation.counted.central.to_string()
    );
    assert_eq!(
        json["computation"]["method_mix"][0]["central_flop"],
        "9700000000000000"
    );
    assert_eq!(
        json["energy"]["counted_mj"],
        r.energy.counted_mj.to_string()
    );
    assert_eq!(json["unattributed"]["flop"]["high"], "2000000000000000");
    assert_eq!(json["entry"]["planned_flop"], "20000000000000000000000000");
    assert!(json["training_time"]["wall_clock_days"].is_f64());
    assert!(json["quality"]["records"].is_u64());
    assert_eq!(r.schema, "flopmeter.report.v1");
    assert_eq!(r.computation.counted.central, 10_000_000_000_000_000);
    assert_eq!(r.computation.excluded.central, 1_000_000_000_000_000);
    assert_eq!(r.computation.measured.central, 11_000_000_000_000_000);
    assert_eq!(r.runs.len(), 2);
    // The run's declaration is recorded and cross-checked: 6·N·D = 6e15 vs 1.0e16 measured.
    let d = r.runs[0].declaration.as_ref().unwrap();
    assert_eq!(
        (d.params, d.precision.map(|p| p.as_str())),
        (Some(1000), Some("bf16"))
    );
    assert_eq!(r.runs[0].six_n_d, Some(6_000_000_000_000_000));
    assert!(
        text.contains("declared 6·N·D = 6.0e15 FLOP; measured / declared = 1.67"),
        "{text}"
    );
    assert_eq!(r.unattributed.nodes, ["n1"]);
    assert_eq!(r.unattributed.flop.central, 1_000_000_000_000_000);
    assert_eq!(r.energy.counted_mj, 14_000_000);
    assert!(
        (r.base_model
            .as_ref()
            .unwrap()
            .modification_share_high
            .unwrap()
            - 2e16 / 3.8e24)
            .abs()
            < 1e-12
    );

    let csv = report::render(&r, Format::Csv);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "section,name,counts,flop_low,flop_central,flop_high,gpu_days,energy_mwh,first_event,last_event,records"
    );
    assert!(
        lines[1]
            .starts_with("total,acme,yes,5000000000000000,10000000000000000,20000000000000000,"),
        "{csv}"
    );
    assert!(csv.contains("\nexcluded,acme,no,500000000000000,1000000000000000,2000000000000000,"));
    // The method mix is of the central estimate only: no low or high figure in its rows.
    assert!(
        csv.contains("\nmethod,gpm-tensor,yes,,9700000000000000,,,,,,\n"),
        "{csv}"
    );
    assert!(csv.contains("\nstage,eval,no,"));
    assert!(csv.contains("\nrun,r1,yes,"));
    assert!(csv.contains("\nunattributed,same nodes and period,no,"));
    assert!(!csv.contains(",-0,"), "{csv}");

    // A registered model without measured work: empty sums are 0, never -0 or 0.0e0.
    let beta = ModelEntry {
        model: "beta".into(),
        declared: flopmeter_core::declaration::Declaration {
            planned_flop: Some(10u128.pow(25) + 1),
            ..Default::default()
        },
        ..ModelEntry::default()
    };
    drop(s);
    {
        let s = SledStore::open(dir.path()).unwrap();
        s.set_model_entry(&beta).unwrap();
        s.flush().unwrap();
    }
    let s = SledStore::open(dir.path()).unwrap();
    let r = report::build(&s, "beta", &StagePolicy::default(), END)
        .unwrap()
        .unwrap();
    let csv = report::render(&r, Format::Csv);
    assert!(
        csv.contains("\nunattributed,same nodes and period,no,0,0,0,0,0,,,0\n"),
        "{csv}"
    );
    assert!(csv.contains("\ntotal,beta,yes,0,0,0,0,0,,,\n"), "{csv}");
    let text = report::render(&r, Format::Text);
    for line in [
        // One FLOP above 10^25 must not read as 10^25.
        "declared plan: >1.0e25 FLOP",
        "Computation:       0 [0 – 0] FLOP",
        "Training time:     0 wall-clock days",
        "Energy:            0 MWh",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(!text.contains("0.0e0"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let mut cfg = CollectorConfig::for_data_dir(dir.path());
    cfg.admin_token = Some("adm1n".into());
    let c = Collector::start(cfg).await.unwrap();
    let get = |path: &str| support::http_get(c.http_addr(), path);

    assert_eq!(get("/healthz").unwrap(), "ok\n");
    assert_eq!(get("/readyz").unwrap(), "ready\n");

    let metrics = get("/metrics").unwrap();
    for needle in [
        "flopmeter_model_flop{bound=\"central\",model=\"acme\"} 10000000000000000",
        "flopmeter_model_flop{bound=\"high\",model=\"acme\"} 20000000000000000",
        "flopmeter_model_excluded_flop{bound=\"central\",model=\"acme\"} 1000000000000000",
        // Runs get series of their own once they report to this collector process; runs
        // written before it started are summed per stage under `_other`.
        "flopmeter_run_flop{bound=\"low\",model=\"_other\",run=\"_other\",stage=\"eval\"} 500000000000000",
        "flopmeter_model_gpu_seconds{gpu_type=\"h100-sxm\",model=\"acme\"} 30",
        "flopmeter_model_energy_joules{model=\"acme\"} 21000",
        "flopmeter_unattributed_flop{bound=\"central\",gpu_type=\"h100-sxm\"} 6000000000000000",
        "flopmeter_ingest_rejected_records_total{reason=\"flop-above-peak\"} 0",
        "flopmeter_ingest_refused_total{reason=\"unknown-agent\"} 0",
        "flopmeter_agents_connected 0",
        "# TYPE flopmeter_model_flop gauge",
        "# TYPE flopmeter_ingest_records_total counter",
        "# TYPE flopmeter_ingest_ack_latency_seconds histogram",
        "flopmeter_ledger_size_bytes ",
        "process_resident_memory_bytes ",
    ] {
        assert!(metrics.contains(needle), "missing {needle:?} in\n{metrics}");
    }
    assert!(!metrics.contains("pid="), "no PIDs in labels");

    let models: serde_json::Value = serde_json::from_str(&get("/api/v1/models").unwrap()).unwrap();
    assert_eq!(models[0]["model"], "acme");
    // u128 figures are decimal strings, as in the gRPC admin API.
    assert_eq!(models[0]["counted"]["central"], "10000000000000000");
    assert_eq!(models[0]["gpu_ms"], "30000");
    assert_eq!(
        models[0]["entry"]["planned_flop"],
        "20000000000000000000000000"
    );
    assert_eq!(models[0]["runs"], 2);
    assert_eq!(models[0]["entry"]["role"], "modifier");
    let m: serde_json::Value = serde_json::from_str(&get("/api/v1/models/acme").unwrap()).unwrap();
    assert_eq!(m["summary"]["agents"], 1);
    assert_eq!(m["aggregate"]["stages"]["eval"]["records"], 1);
    let runs: serde_json::Value =
        serde_json::from_str(&get("/api/v1/runs?model=acme").unwrap()).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 2);
    assert_eq!(runs[1]["run"], "r2");
    assert_eq!(runs[1]["excluded"]["central"], "1000000000000000");
    let err = get("/api/v1/runs").unwrap_err().to_string();
    assert!(err.contains("400") && err.contains("model="), "{err}");
    assert!(
        get("/api/v1/models/nope")
            .unwrap_err()
            .to_string()
            .contains("404")
    );
    let rep: serde_json::Value =
        serde_json::from_str(&get("/api/v1/models/acme/report").unwrap()).unwrap();
    assert_eq!(rep["schema"], "flopmeter.report.v1");
    assert_eq!(rep["computation"]["excluded"]["low"], "500000000000000");
    assert_eq!(
        m["aggregate"]["stages"]["eval"]["flop"]["central"],
        "1000000000000000"
    );

    // Admin gRPC.
    let mut admin = pb::admin_client::AdminClient::connect(format!("http://{}", c.grpc_addr()))
        .await
        .unwrap();
    let list = admin
        .list_models(pb::ListModelsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.models.len(), 1);
    assert_eq!(
        list.models[0].counted.as_ref().unwrap().central,
        "10000000000000000"
    );
    let runs = admin
        .list_runs(pb::ListRunsRequest {
            model: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(runs.runs.len(), 2);
    let entry = pb::ModelEntry {
        model: "beta".into(),
        role: pb::ModelRole::Provider as i32,
        planned_params: "70000000000".into(),
        planned_tokens: "15000000000000".into(),
        ..Default::default()
    };
    let denied = admin
        .set_model(pb::SetModelRequest {
            entry: Some(entry.clone()),
            by: "dana".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::Unauthenticated);
    let with_token = |by: &str| {
        let mut req = tonic::Request::new(pb::SetModelRequest {
            entry: Some(entry.clone()),
            by: by.into(),
        });
        req.metadata_mut()
            .insert("authorization", "Bearer adm1n".parse().unwrap());
        req
    };
    // The shared token names nobody, so the request must.
    let nameless = admin.set_model(with_token("")).await.unwrap_err();
    assert_eq!(nameless.code(), tonic::Code::InvalidArgument);
    let saved = admin
        .set_model(with_token("dana"))
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert!(saved.updated_unix_ms > 0);
    assert_eq!(saved.updated_by, "dana");
    let got = admin
        .get_model(pb::GetModelRequest {
            model: "beta".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        got.summary.unwrap().entry.unwrap().planned_params,
        "70000000000"
    );
    assert_eq!(
        admin
            .get_model(pb::GetModelRequest {
                model: "nope".into()
            })
            .await
            .unwrap_err()
            .code(),
        tonic::Code::NotFound
    );
    // Verification reads the whole ledger: it needs the admin credential.
    assert_eq!(
        admin
            .verify_ledger(pb::VerifyLedgerRequest {})
            .await
            .unwrap_err()
            .code(),
        tonic::Code::Unauthenticated
    );
    let mut req = tonic::Request::new(pb::VerifyLedgerRequest {});
    req.metadata_mut()
        .insert("authorization", "Bearer adm1n".parse().unwrap());
    let v = admin.verify_ledger(req).await.unwrap().into_inner();
    assert!(v.ok, "{:?}", v.mismatches);
    let rep = admin
        .report(pb::ReportRequest {
            model: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let r: Report = serde_json::from_str(&rep.json).unwrap();
    assert_eq!(r.computation.method_mix_text, "97% gpm-tensor, 3% util-mfu");

    c.shutdown().await.unwrap();
    // The ledger is closed and can be opened offline.
    assert!(
        SledStore::open(dir.path())
            .unwrap()
            .model_entry("beta")
            .unwrap()
            .is_some()
    );
}

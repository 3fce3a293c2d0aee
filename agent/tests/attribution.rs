//! Attribution against fixture proc trees: environment, cgroup v1/v2 with the systemd and
//! cgroupfs drivers, Slurm, precedence, and PID reuse.

use std::path::Path;

use flopmeter_agent::attribution::kubernetes::{PodMeta, PodStore};
use std::time::Duration;

use flopmeter_agent::attribution::slurm_comments::{SlurmComments, SlurmCommentsConfig};
use flopmeter_agent::attribution::{Attributor, Declared, Source};
use flopmeter_agent::simulated::fake_stat;
use flopmeter_core::units::Precision;

const UID: &str = "6f1c2d3e-4b5a-4978-8a9b-acbdcedfe0f1";
const CID: &str = "3c4f1a2b5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708";

/// Writes `<root>/<pid>/{stat,environ,cgroup}`.
fn proc_entry(root: &Path, pid: u32, start: u64, env: &[(&str, &str)], cgroup: &str) {
    let dir = root.join(pid.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("stat"), fake_stat(pid, start)).unwrap();
    let mut environ = Vec::new();
    for (k, v) in env {
        environ.extend_from_slice(format!("{k}={v}").as_bytes());
        environ.push(0);
    }
    std::fs::write(dir.join("environ"), environ).unwrap();
    std::fs::write(dir.join("cgroup"), cgroup).unwrap();
}

fn pod_store(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> PodStore {
    let meta = kube::api::ObjectMeta {
        uid: Some(UID.into()),
        name: Some("trainer-0".into()),
        namespace: Some("ml".into()),
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        annotations: Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    };
    let store = PodStore::new();
    let (uid, pod) = PodMeta::from_meta(&meta).unwrap();
    store.upsert(uid, pod);
    store
}

#[test]
fn process_environment_gives_model_run_stage_and_declarations() {
    let root = tempfile::tempdir().unwrap();
    proc_entry(
        root.path(),
        100,
        5000,
        &[
            ("PATH", "/usr/bin"),
            ("FLOPMETER_MODEL", "demo-7b"),
            ("FLOPMETER_RUN", "run-42"),
            ("FLOPMETER_STAGE", "sft"),
            ("FLOPMETER_PRECISION", "fp8"),
            ("FLOPMETER_PLANNED_FLOP", "3e24"),
            ("FLOPMETER_PARAMS", "7e9"),
            ("FLOPMETER_TOKENS", "2e12"),
            ("FLOPMETER_BASE_MODEL", "base-7b"),
        ],
        "0::/user.slice/session-1.scope\n",
    );
    let mut a = Attributor::new(root.path(), None);
    let got = a.attribute(100);
    assert_eq!(got.identity.source, Source::ProcessEnv);
    assert_eq!(got.identity.model, "demo-7b");
    assert_eq!(got.identity.run, "run-42");
    assert_eq!(got.identity.stage, "finetune");
    assert_eq!(got.declaration.precision, Some(Precision::Fp8));
    assert_eq!(got.declaration.planned_flop, Some(3 * 10u128.pow(24)));
    assert_eq!(got.declaration.params, Some(7_000_000_000));
    assert_eq!(got.declaration.tokens, Some(2_000_000_000_000));
    assert_eq!(got.declaration.base_model.as_deref(), Some("base-7b"));
}

#[test]
fn kubernetes_pod_labels_for_every_cgroup_layout() {
    let u = UID.replace('-', "_");
    let layouts = [
        // cgroup v1, cgroupfs driver.
        format!(
            "12:memory:/kubepods/burstable/pod{UID}/{CID}\n11:cpu,cpuacct:/kubepods/burstable/pod{UID}/{CID}\n"
        ),
        // cgroup v1, systemd driver.
        format!(
            "12:memory:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{CID}.scope\n"
        ),
        // cgroup v2, systemd driver.
        format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/cri-containerd-{CID}.scope\n"
        ),
        // cgroup v2, cgroupfs driver, guaranteed QoS.
        format!("0::/kubepods/pod{UID}/{CID}\n"),
    ];
    let store = pod_store(
        &[
            ("flopmeter.io/model", "llama-70b"),
            ("flopmeter.io/run", "label-run"),
            ("app", "trainer"),
        ],
        &[
            // An annotation wins over a label of the same key.
            ("flopmeter.io/run", "2026-05-pretrain"),
            ("flopmeter.io/planned-flop", "8e24"),
        ],
    );
    for (i, cgroup) in layouts.iter().enumerate() {
        let root = tempfile::tempdir().unwrap();
        proc_entry(root.path(), 200, 7, &[("HOME", "/root")], cgroup);
        let mut a = Attributor::new(root.path(), Some(store.clone()));
        let got = a.attribute(200);
        assert_eq!(
            got.identity.source,
            Source::Kubernetes,
            "layout {i}: {cgroup}"
        );
        assert_eq!(got.identity.model, "llama-70b");
        assert_eq!(got.identity.run, "2026-05-pretrain");
        assert_eq!(got.identity.namespace, "ml");
        assert_eq!(got.identity.job, "trainer-0");
        assert_eq!(got.declaration.planned_flop, Some(8 * 10u128.pow(24)));
    }
}

#[test]
fn slurm_job_comment_from_the_prolog_record_name_user_and_cluster() {
    let root = tempfile::tempdir().unwrap();
    // What a real task carries: no SLURM_JOB_COMMENT (Slurm gives it to the Prolog only).
    let job = |id: &str, name: &str, extra: &[(&'static str, &'static str)]| {
        let mut env = vec![
            ("SLURM_JOB_ID", id.to_string()),
            ("SLURM_JOB_NAME", name.to_string()),
            ("SLURM_JOB_USER", "alice".to_string()),
            ("SLURM_CLUSTER_NAME", "gpu-a".to_string()),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        env
    };
    let entry = |pid: u32, env: Vec<(&str, String)>| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        proc_entry(root.path(), pid, 1, &env, "0::/\n");
        std::fs::write(root.path().join(pid.to_string()).join("comm"), "python3\n").unwrap();
    };
    entry(
        300,
        job("991", "pretrain", &[("SLURM_JOB_ACCOUNT", "lab-a")]),
    );
    entry(301, job("992", "flopmeter:named-1b", &[]));
    entry(302, job("993", "train", &[("SLURM_JOB_ACCOUNT", "lab-b")]));
    entry(303, job("994", "sft", &[("FLOPMETER_MODEL", "env-13b")]));
    // The Prolog's records (deploy/slurm/flopmeter-prolog): one file per job id.
    let prolog = tempfile::tempdir().unwrap();
    std::fs::write(
        prolog.path().join("991"),
        "flopmeter.model=slurm-13b flopmeter.stage=rl\n",
    )
    .unwrap();
    std::fs::write(prolog.path().join("993"), "").unwrap();
    std::fs::write(prolog.path().join("994"), "flopmeter.stage=sft").unwrap();
    let mut a = Attributor::new(root.path(), None).with_slurm_comments(SlurmComments::new(
        SlurmCommentsConfig {
            dir: Some(prolog.path().to_path_buf()),
            squeue: None,
            timeout: Duration::from_secs(1),
        },
    ));
    let c = a.attribute(300);
    assert_eq!(c.identity.source, Source::Slurm);
    assert_eq!(
        (
            c.identity.model.as_str(),
            c.identity.run.as_str(),
            c.identity.stage.as_str()
        ),
        ("slurm-13b", "slurm-991", "rl")
    );
    assert_eq!(
        (
            c.identity.namespace.as_str(),
            c.identity.job.as_str(),
            c.identity.user.as_str(),
            c.identity.cluster.as_str()
        ),
        ("lab-a", "991", "alice", "gpu-a")
    );
    assert_eq!(
        c.identity.process, "",
        "attributed work does not carry its command"
    );
    let n = a.attribute(301);
    assert_eq!(
        (n.identity.source, n.identity.model.as_str()),
        (Source::Slurm, "named-1b")
    );
    // A Slurm job without a model is unattributed, but still traceable to its job.
    let u = a.attribute(302);
    assert_eq!(u.identity.source, Source::Unattributed);
    assert_eq!(
        (
            u.identity.namespace.as_str(),
            u.identity.job.as_str(),
            u.identity.user.as_str(),
            u.identity.cluster.as_str(),
            u.identity.process.as_str()
        ),
        ("lab-b", "993", "alice", "gpu-a", "python3")
    );
    // FLOPMETER_MODEL exported in the batch script, the stage in the comment: both.
    let e = a.attribute(303);
    assert_eq!(
        (
            e.identity.source,
            e.identity.model.as_str(),
            e.identity.stage.as_str(),
            e.identity.run.as_str()
        ),
        (Source::ProcessEnv, "env-13b", "finetune", "slurm-994")
    );
}

#[test]
fn slurm_without_squeue_or_prolog_falls_back_to_the_job_name() {
    let root = tempfile::tempdir().unwrap();
    proc_entry(
        root.path(),
        310,
        1,
        &[("SLURM_JOB_ID", "5"), ("SLURM_JOB_NAME", "flopmeter:m")],
        "0::/\n",
    );
    proc_entry(root.path(), 311, 1, &[("SLURM_JOB_ID", "6")], "0::/\n");
    let mut a = Attributor::new(root.path(), None).with_slurm_comments(SlurmComments::new(
        SlurmCommentsConfig {
            dir: Some(root.path().join("no-prolog")),
            squeue: Some(root.path().join("no-such-squeue")),
            timeout: Duration::from_secs(1),
        },
    ));
    let started = std::time::Instant::now();
    assert_eq!(a.attribute(310).identity.model, "m");
    let u = a.attribute(311);
    assert_eq!(
        (u.identity.source, u.identity.job.as_str()),
        (Source::Unattributed, "6")
    );
    a.end_tick();
    assert_eq!(a.attribute(311).identity.job, "6");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a missing squeue never holds the sampler up"
    );
}

#[test]
fn precedence_environment_then_pod_then_slurm_and_fill_from_the_same_model() {
    let root = tempfile::tempdir().unwrap();
    let cgroup = format!("0::/kubepods/burstable/pod{UID}/{CID}\n");
    // Env names a model; the pod names another. Env wins, and the pod's run is not mixed in.
    proc_entry(
        root.path(),
        400,
        1,
        &[("FLOPMETER_MODEL", "env-model")],
        &cgroup,
    );
    // Env names only a run, no model: the pod wins, with its own run. A source above the
    // winner never contributes (it did not say which model its fields belong to).
    proc_entry(
        root.path(),
        401,
        1,
        &[("FLOPMETER_RUN", "env-run")],
        &cgroup,
    );
    // Env model under Slurm: the job id becomes the run.
    proc_entry(
        root.path(),
        402,
        1,
        &[("FLOPMETER_MODEL", "m"), ("SLURM_JOB_ID", "55")],
        "0::/\n",
    );
    let store = pod_store(
        &[
            ("flopmeter.io/model", "pod-model"),
            ("flopmeter.io/run", "pod-run"),
        ],
        &[],
    );
    let mut a = Attributor::new(root.path(), Some(store));
    let e = a.attribute(400);
    assert_eq!(
        (e.identity.source, e.identity.model.as_str()),
        (Source::ProcessEnv, "env-model")
    );
    assert_eq!(
        e.identity.run, "",
        "a different model's run is not borrowed"
    );
    assert_eq!(e.identity.namespace, "ml", "but the pod is still named");
    let p = a.attribute(401);
    assert_eq!(
        (p.identity.source, p.identity.model.as_str()),
        (Source::Kubernetes, "pod-model")
    );
    assert_eq!(p.identity.run, "pod-run");
    let s = a.attribute(402);
    assert_eq!(
        (s.identity.source, s.identity.run.as_str()),
        (Source::ProcessEnv, "slurm-55")
    );
}

#[test]
fn pid_reuse_never_inherits_the_old_identity() {
    let root = tempfile::tempdir().unwrap();
    proc_entry(
        root.path(),
        500,
        1000,
        &[("FLOPMETER_MODEL", "old-model")],
        "0::/\n",
    );
    let mut a = Attributor::new(root.path(), None);
    assert_eq!(a.attribute(500).identity.model, "old-model");
    // Cached: changing the environ file of the *same* process changes nothing (environ is
    // read once per process).
    proc_entry(
        root.path(),
        500,
        1000,
        &[("FLOPMETER_MODEL", "changed")],
        "0::/\n",
    );
    assert_eq!(a.attribute(500).identity.model, "old-model");
    // The process exits and a new one gets PID 500 (new start time).
    proc_entry(
        root.path(),
        500,
        2000,
        &[("FLOPMETER_MODEL", "new-model")],
        "0::/\n",
    );
    assert_eq!(a.attribute(500).identity.model, "new-model");
    // A new process with no labels at all: unattributed, not the previous identity.
    proc_entry(root.path(), 500, 3000, &[("HOME", "/")], "0::/\n");
    assert_eq!(a.attribute(500).identity.source, Source::Unattributed);
    // Gone entirely: unattributed.
    std::fs::remove_dir_all(root.path().join("500")).unwrap();
    assert_eq!(a.attribute(500).identity.source, Source::Unattributed);
}

#[test]
fn pod_metadata_arriving_after_the_process_is_picked_up() {
    let root = tempfile::tempdir().unwrap();
    proc_entry(
        root.path(),
        600,
        1,
        &[],
        &format!("0::/kubepods/besteffort/pod{UID}/{CID}\n"),
    );
    let store = PodStore::new();
    let mut a = Attributor::new(root.path(), Some(store.clone()));
    assert_eq!(a.attribute(600).identity.source, Source::Unattributed);
    let mut declared = Declared::default();
    declared.set("model", "late-model");
    store.upsert(
        UID.into(),
        PodMeta {
            name: "p".into(),
            namespace: "ns".into(),
            declared,
        },
    );
    assert_eq!(a.attribute(600).identity.model, "late-model");
    store.remove(UID);
    assert_eq!(a.attribute(600).identity.source, Source::Unattributed);
}

#[test]
fn unreadable_or_odd_proc_entries_are_unattributed() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("700");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("stat"), "700 (x) S").unwrap();
    let mut a = Attributor::new(root.path(), None);
    assert_eq!(a.attribute(700).identity.source, Source::Unattributed);
    // A stat but no environ (permission-like failure).
    std::fs::write(dir.join("stat"), fake_stat(700, 9)).unwrap();
    assert_eq!(a.attribute(700).identity.source, Source::Unattributed);
}

//! Kubernetes pod UID and container id from the text of `/proc/<pid>/cgroup`.
//!
//! Why parse paths rather than ask the kubelet: the cgroup path is the one fact every
//! container runtime writes for every process, readable with hostPID alone, without the
//! kubelet's pod-resources socket or its API. The kubelet names the pod's cgroup after the
//! pod UID; only the spelling varies:
//!
//! | driver   | cgroup | example path                                                                            |
//! |----------|--------|-----------------------------------------------------------------------------------------|
//! | cgroupfs | v1, v2 | `/kubepods/burstable/pod<uid>/<container-id>`, `/kubepods/pod<uid>/<container-id>`      |
//! | systemd  | v1, v2 | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope` |
//!
//! cgroup v1 lists one line per hierarchy (`12:memory:/kubepods/...`), v2 a single
//! `0::/...` line. Under a cgroup namespace the path may start with `/../..`; the parser
//! looks at path components, so that prefix does not matter.

/// What a process's cgroup says about its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    /// The pod UID, in its canonical dashed form.
    pub uid: String,
    /// The container id (64 hex digits), when the path names one.
    pub container_id: Option<String>,
}

/// Finds the pod UID (and container id) in the content of `/proc/<pid>/cgroup`.
/// `None` when the process is not in a Kubernetes pod.
pub fn parse_pod(cgroup_file: &str) -> Option<PodRef> {
    cgroup_file.lines().find_map(|line| {
        // hierarchy-id:controllers:path; the path itself may contain ':'.
        let path = line.splitn(3, ':').nth(2)?;
        parse_path(path)
    })
}

fn parse_path(path: &str) -> Option<PodRef> {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let (pos, uid) = components
        .iter()
        .enumerate()
        .find_map(|(i, c)| pod_uid_of(c).map(|u| (i, u)))?;
    let container_id = components[pos + 1..]
        .iter()
        .find_map(|c| container_id_of(c));
    Some(PodRef { uid, container_id })
}

/// `pod<uid>` (cgroupfs) or `kubepods[-<qos>]-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid_of(component: &str) -> Option<String> {
    let raw = if let Some(slice) = component.strip_suffix(".slice") {
        if !slice.starts_with("kubepods") {
            return None;
        }
        let at = slice.rfind("-pod")?;
        &slice[at + 4..]
    } else {
        component.strip_prefix("pod")?
    };
    let uid = raw.replace('_', "-").to_ascii_lowercase();
    is_uid(&uid).then_some(uid)
}

/// A canonical UUID: 8-4-4-4-12 hex digits.
fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `<id>` (cgroupfs) or `<runtime>-<id>.scope` (systemd: `cri-containerd-`, `crio-`,
/// `docker-`, `containerd-`, ...), where `<id>` is 64 hex digits.
fn container_id_of(component: &str) -> Option<String> {
    let c = component.strip_suffix(".scope").unwrap_or(component);
    let id = c.rsplit('-').next()?;
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f1e2d3c-4b5a-6978-8a9b-acbdcedfe0f1";
    const CID: &str = "3c4f1a2b5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708";

    #[test]
    fn cgroup_v1_cgroupfs() {
        let f = format!(
            "12:pids:/kubepods/burstable/pod{UID}/{CID}\n\
             11:memory:/kubepods/burstable/pod{UID}/{CID}\n\
             1:name=systemd:/kubepods/burstable/pod{UID}/{CID}\n"
        );
        let p = parse_pod(&f).unwrap();
        assert_eq!(p.uid, UID);
        assert_eq!(p.container_id.as_deref(), Some(CID));
    }

    #[test]
    fn cgroup_v1_cgroupfs_guaranteed_qos_has_no_class() {
        let f = format!("4:cpu,cpuacct:/kubepods/pod{UID}/{CID}\n");
        assert_eq!(parse_pod(&f).unwrap().uid, UID);
    }

    #[test]
    fn cgroup_v2_systemd_containerd() {
        let u = UID.replace('-', "_");
        let f = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{CID}.scope\n"
        );
        let p = parse_pod(&f).unwrap();
        assert_eq!(p.uid, UID);
        assert_eq!(p.container_id.as_deref(), Some(CID));
    }

    #[test]
    fn cgroup_v2_systemd_guaranteed_crio() {
        let u = UID.replace('-', "_");
        let f = format!("0::/kubepods.slice/kubepods-pod{u}.slice/crio-{CID}.scope\n");
        let p = parse_pod(&f).unwrap();
        assert_eq!(p.uid, UID);
        assert_eq!(p.container_id.as_deref(), Some(CID));
    }

    #[test]
    fn cgroup_v1_systemd_docker() {
        let u = UID.replace('-', "_");
        let f = format!(
            "10:devices:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/docker-{CID}.scope\n"
        );
        assert_eq!(parse_pod(&f).unwrap().uid, UID);
    }

    #[test]
    fn cgroup_v2_cgroupfs_and_namespaced_prefix() {
        let f = format!("0::/../../kubepods/besteffort/pod{UID}/{CID}\n");
        assert_eq!(parse_pod(&f).unwrap().uid, UID);
    }

    #[test]
    fn not_a_pod() {
        for f in [
            "0::/user.slice/user-1000.slice/session-2.scope\n",
            "0::/system.slice/docker-abc.scope\n",
            "0::/slurm/uid_1000/job_42/step_0/task_0\n",
            "12:memory:/\n",
            "0::/kubepods.slice/kubepods-podnot-a-uid.slice/x.scope\n",
            "",
        ] {
            assert_eq!(parse_pod(f), None, "{f}");
        }
    }
}

//! Pod metadata for the pods on this node, from a watch through the API server.
//!
//! Why a metadata-only watch filtered by node: the agent needs labels, annotations, name and
//! namespace of the pods whose processes use its GPUs, nothing else. Listing full pod specs
//! of a busy node is what makes other exporters' memory grow into the hundreds of MiB; a
//! `PartialObjectMetadata` watch with `fieldSelector=spec.nodeName=<node>` keeps a few hundred
//! bytes per local pod, and a watch (not a poll) sees a new pod before its first GPU kernel.
//!
//! Labels and annotations `flopmeter.io/<key>` carry the same keys as the `FLOPMETER_*`
//! variables (`model`, `run`, `stage`, `precision`, `planned-flop`, `params`, `tokens`,
//! `base-model`, `planned-end`). An annotation wins over a label of the same key: label
//! values are limited to 63 characters of a restricted alphabet, annotations are free text.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

use super::labels::Declared;

/// The label and annotation prefix.
pub const PREFIX: &str = "flopmeter.io/";

/// What the agent keeps of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMeta {
    /// Pod name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Its `flopmeter.io/*` labels and annotations.
    pub declared: Declared,
}

impl PodMeta {
    /// Extracts what the agent needs from a pod's metadata. `None` without a UID.
    pub fn from_meta(meta: &kube::api::ObjectMeta) -> Option<(String, PodMeta)> {
        let uid = meta.uid.clone()?;
        let mut declared = Declared::default();
        let mut apply = |map: &Option<BTreeMap<String, String>>| {
            for (k, v) in map.iter().flatten() {
                if let Some(key) = k.strip_prefix(PREFIX) {
                    declared.set(key, v);
                }
            }
        };
        // Labels first, annotations second: a later `set` overwrites an earlier one.
        apply(&meta.labels);
        apply(&meta.annotations);
        Some((
            uid,
            PodMeta {
                name: meta.name.clone().unwrap_or_default(),
                namespace: meta.namespace.clone().unwrap_or_default(),
                declared,
            },
        ))
    }
}

/// The pods of this node by UID, shared between the watch task (writer) and the sampler
/// thread (reader). Cloning shares the store.
#[derive(Debug, Clone, Default)]
pub struct PodStore {
    pods: Arc<RwLock<HashMap<String, Arc<PodMeta>>>>,
    generation: Arc<AtomicU64>,
    synced: Arc<AtomicBool>,
}

impl PodStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The pod with this UID, if known.
    pub fn get(&self, uid: &str) -> Option<Arc<PodMeta>> {
        self.pods
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(uid)
            .cloned()
    }

    /// Changes whenever the store changes, so cached resolutions know when to look again.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether the initial list has completed at least once.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Number of pods known.
    pub fn len(&self) -> usize {
        self.pods.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when no pod is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Inserts or replaces a pod.
    pub fn upsert(&self, uid: String, pod: PodMeta) {
        let mut pods = self.pods.write().unwrap_or_else(|e| e.into_inner());
        if pods.get(&uid).map(|p| p.as_ref()) != Some(&pod) {
            pods.insert(uid, Arc::new(pod));
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Removes a pod.
    pub fn remove(&self, uid: &str) {
        if self
            .pods
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid)
            .is_some()
        {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Replaces the whole content (after a relist).
    pub fn replace_all(&self, all: HashMap<String, Arc<PodMeta>>) {
        *self.pods.write().unwrap_or_else(|e| e.into_inner()) = all;
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.synced.store(true, Ordering::Release);
    }
}

/// Watches the pods of `node` and keeps `store` current until the task is dropped or
/// aborted. Errors (API server down, RBAC) are logged and retried with kube's default
/// backoff; the store keeps its last content meanwhile, so attribution degrades to stale,
/// not to nothing.
pub async fn watch_pods(client: kube::Client, node: String, store: PodStore) {
    let api: Api<PartialObjectMeta<Pod>> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut relist: Option<HashMap<String, Arc<PodMeta>>> = None;
    let mut last_error: Option<String> = None;
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => relist = Some(HashMap::new()),
            Ok(Event::InitApply(p)) => {
                if let (Some(buf), Some((uid, meta))) =
                    (relist.as_mut(), PodMeta::from_meta(&p.metadata))
                {
                    buf.insert(uid, Arc::new(meta));
                }
            }
            Ok(Event::InitDone) => {
                let all = relist.take().unwrap_or_default();
                tracing::info!(node = %node, pods = all.len(), "pod list synced");
                store.replace_all(all);
                last_error = None;
            }
            Ok(Event::Apply(p)) => {
                if let Some((uid, meta)) = PodMeta::from_meta(&p.metadata) {
                    store.upsert(uid, meta);
                }
            }
            Ok(Event::Delete(p)) => {
                if let Some(uid) = p.metadata.uid.as_deref() {
                    store.remove(uid);
                }
            }
            Err(e) => {
                // Log each distinct failure once, not once per backoff step.
                let msg = e.to_string();
                if last_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(error = %msg, "pod watch failed; retrying");
                    last_error = Some(msg);
                }
            }
        }
    }
}

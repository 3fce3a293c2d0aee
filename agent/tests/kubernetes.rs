//! The pod watch against a local fake API server: an HTTP server in the test serving the pod
//! list and a watch stream of JSON events, with a real kube `Client` pointed at it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{RawQuery, State};
use axum::response::IntoResponse;
use flopmeter_agent::attribution::kubernetes::{PodStore, watch_pods};
use flopmeter_agent::attribution::{Attributor, Source};
use flopmeter_agent::simulated::fake_stat;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::support::proc::eventually_async as eventually;

const NODE: &str = "gpu-node-7";
const UID_A: &str = "aaaaaaaa-1111-4111-8111-aaaaaaaaaaaa";
const UID_B: &str = "bbbbbbbb-2222-4222-8222-bbbbbbbbbbbb";

#[derive(Clone, Default)]
struct Fake {
    /// Query strings of every request, for assertions.
    seen: Arc<Mutex<Vec<HashMap<String, String>>>>,
    /// Where the test pushes watch events; taken by the first watch request.
    events: Arc<Mutex<Option<mpsc::UnboundedReceiver<Value>>>>,
}

fn pod(uid: &str, name: &str, rv: u32, labels: Value, annotations: Value) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": {
            "name": name,
            "namespace": "training",
            "uid": uid,
            "resourceVersion": rv.to_string(),
            "labels": labels,
            "annotations": annotations,
        }
    })
}

/// `a=b&c=d%3De` → map (just enough of URL decoding for the watcher's parameters).
fn parse_query(q: &str) -> HashMap<String, String> {
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'%' if i + 2 < b.len() => {
                    let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 3;
                }
                b'+' => {
                    out.push(b' ');
                    i += 1;
                }
                c => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        String::from_utf8(out).unwrap()
    }
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn json_response(v: &Value) -> axum::response::Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

async fn pods(State(f): State<Fake>, RawQuery(q): RawQuery) -> axum::response::Response {
    let q = parse_query(q.as_deref().unwrap_or(""));
    f.seen.lock().unwrap().push(q.clone());
    let watching = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    if !watching {
        let list = json!({
            "apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadataList",
            "metadata": { "resourceVersion": "10" },
            "items": [pod(UID_A, "trainer-a", 10, json!({"flopmeter.io/model": "model-a"}), json!({}))],
        });
        return json_response(&list);
    }
    let rx = f.events.lock().unwrap().take();
    let Some(rx) = rx else {
        // A later re-watch (after the first stream ends): keep it open and silent.
        let body = axum::body::Body::from_stream(futures_util::stream::pending::<
            Result<axum::body::Bytes, std::convert::Infallible>,
        >());
        return body.into_response();
    };
    let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
    let stream = futures_util::StreamExt::map(stream, |v: Value| {
        Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(format!("{v}\n")))
    });
    axum::body::Body::from_stream(stream).into_response()
}

#[tokio::test]
async fn watch_keeps_the_pod_store_current_and_attribution_follows() {
    let (tx, rx) = mpsc::unbounded_channel();
    let fake = Fake {
        events: Arc::new(Mutex::new(Some(rx))),
        ..Fake::default()
    };
    let app = axum::Router::new()
        .route("/api/v1/pods", axum::routing::get(pods))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let store = PodStore::new();
    let watch = tokio::spawn(watch_pods(client, NODE.into(), store.clone()));

    // The initial list.
    eventually("initial list synced", || store.is_synced()).await;
    assert_eq!(
        store.get(UID_A).unwrap().declared.model.as_deref(),
        Some("model-a")
    );
    let first = fake.seen.lock().unwrap()[0].clone();
    assert_eq!(
        first.get("fieldSelector").map(String::as_str),
        Some("spec.nodeName=gpu-node-7"),
        "only this node's pods are listed: {first:?}"
    );

    // A process of pod A, in a fixture proc tree, resolves through the store.
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("4242");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("stat"), fake_stat(4242, 99)).unwrap();
    std::fs::write(dir.join("environ"), b"HOME=/root\0").unwrap();
    std::fs::write(
        dir.join("cgroup"),
        format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{}.scope\n",
            UID_A.replace('-', "_"),
            "c".repeat(64)
        ),
    )
    .unwrap();
    let mut attributor = Attributor::new(root.path(), Some(store.clone()));
    let a = attributor.attribute(4242);
    assert_eq!(a.identity.source, Source::Kubernetes);
    assert_eq!(a.identity.model, "model-a");
    assert_eq!(a.identity.namespace, "training");
    assert_eq!(a.identity.job, "trainer-a");

    // The watch is open (a second request, with watch=true).
    eventually("watch request made", || {
        fake.seen
            .lock()
            .unwrap()
            .iter()
            .any(|q| q.get("watch").is_some())
    })
    .await;

    // Relabel pod A (annotation wins over label), add pod B, delete pod A.
    tx.send(json!({"type": "MODIFIED", "object": pod(
        UID_A, "trainer-a", 11,
        json!({"flopmeter.io/model": "model-a", "flopmeter.io/stage": "eval"}),
        json!({"flopmeter.io/model": "model-a2", "flopmeter.io/planned-flop": "1e24"}),
    )}))
    .unwrap();
    eventually("pod A relabelled", || {
        store
            .get(UID_A)
            .is_some_and(|p| p.declared.model.as_deref() == Some("model-a2"))
    })
    .await;
    let a2 = attributor.attribute(4242);
    assert_eq!(
        a2.identity.model, "model-a2",
        "cached resolution follows the store"
    );
    assert_eq!(a2.identity.stage, "eval");
    assert_eq!(a2.declaration.planned_flop, Some(10u128.pow(24)));

    tx.send(json!({"type": "ADDED", "object": pod(
        UID_B, "trainer-b", 12, json!({"flopmeter.io/model": "model-b"}), json!({}),
    )}))
    .unwrap();
    tx.send(
        json!({"type": "DELETED", "object": pod(UID_A, "trainer-a", 13, json!({}), json!({}))}),
    )
    .unwrap();
    eventually("pod B added and pod A deleted", || {
        store.get(UID_B).is_some() && store.get(UID_A).is_none()
    })
    .await;
    assert_eq!(
        attributor.attribute(4242).identity.source,
        Source::Unattributed,
        "a deleted pod's process keeps no stale identity"
    );
    assert_eq!(store.len(), 1);
    watch.abort();
}

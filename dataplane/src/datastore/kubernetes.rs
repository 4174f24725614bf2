//! The Kubernetes datastore (Calico's KDD mode): Calico's CRDs, Nodes and this node's Pods, read
//! from the API server with list + watch, as calico-node reads them.
//!
//! A session with the API server goes: list every kind of [`convert::RESOURCES`] (page by page),
//! remembering each list's resourceVersion; send the snapshot; watch each kind from its
//! resourceVersion, so that nothing between the list and the watch is lost; after each burst of
//! changes (quiet for [`QUIET`], or [`MAX_DELAY`] after its first change) rebuild the model from
//! the objects in memory and send it if it changed.
//!
//! A watch that ends (the server's timeout) or breaks is opened again from the last
//! resourceVersion it delivered (bookmarks included). A watch told that its resourceVersion is
//! gone (`ERROR` with code 410) lists its kind again and watches from the new list. When the API
//! server cannot be reached the session ends: nothing is sent, so the last good snapshot stays
//! programmed, and a new session (a full list, so a full resync) is tried after a backoff that
//! doubles up to [`BACKOFF_CAP`]. Every change of the connection's state is logged: connected,
//! lost, still unreachable, reconnected.

pub mod convert;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use futures::{stream::SelectAll, StreamExt as _};
use kube::{
    api::{ApiResource, DynamicObject, ListParams, WatchEvent, WatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    Api, Client, Config,
};
use serde_json::Value as Json;
use tokio::sync::watch;
use tracing::{debug, error, info_span, warn, Instrument as _};

use self::convert::{Cache, Resource, PODS, RESOURCES};
pub use super::watching::{WatchThread, BACKOFF_CAP, BACKOFF_START, MAX_DELAY, QUIET};
use super::{
    watching::{log_problems, publish, sleep_until, Link, Retry},
    Connection, Snapshot,
};

/// How to reach the API server, and which node's pods to read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// A kubeconfig file; `None`: `KUBECONFIG`, `~/.kube/config`, or the pod's service account.
    pub kubeconfig: Option<PathBuf>,
    /// Read only the pods scheduled on this node (`spec.nodeName`); `None`: every pod.
    pub node: Option<String>,
}

/// A request (one page of a list, opening a watch) that takes longer than this counts as a
/// failure: an unreachable server does not always refuse, it may just never answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The server ends each watch after this many seconds and the agent opens it again from its
/// resourceVersion; a server that stops answering is noticed within [`READ_TIMEOUT`].
const WATCH_TIMEOUT_SECS: u32 = 60;
/// Longest silence on a connection: a watch carries at least the server's end of the watch (and
/// bookmarks) within this.
const READ_TIMEOUT: Duration = Duration::from_secs(90);
/// When two watches of a kind in a row end cleanly sooner than this after they were opened, the
/// next is opened only after [`BACKOFF_START`].
const WATCH_MIN_LIFE: Duration = Duration::from_secs(1);
/// Objects per page of a list: a whole cluster's pods in one response is too much for the
/// API server and for us.
const PAGE: u32 = 500;

/// Reads the cluster from the API server and sends a snapshot on every change.
///
/// Returns when every receiver is gone, or at once (after logging why) when no configuration to
/// reach the API server can be found.
pub async fn watch(config: KubernetesConfig, snapshots: watch::Sender<Option<Snapshot>>, connection: Connection) {
    let span = info_span!("kubernetes", node = config.node.as_deref().unwrap_or("(all)"));
    run(config, snapshots, connection).instrument(span).await
}

async fn run(config: KubernetesConfig, snapshots: watch::Sender<Option<Snapshot>>, connection: Connection) {
    let client = match client(&config).await {
        Ok(client) => client,
        Err(error) => {
            error!("the kubernetes datastore cannot start: {error:#}");
            return;
        }
    };
    let mut link = Link::new("the Kubernetes API", connection);
    let hint = "check --kubeconfig (KUBECONFIG) or the pod's service account and its RBAC rules";
    let mut retry = Retry::default();
    loop {
        let ended = tokio::select! {
            ended = session(&client, &config, &snapshots, &mut link) => ended,
            _ = snapshots.closed() => return,
        };
        let Err(error) = ended else { return };
        if !retry.after(&mut link, &error, hint, snapshots.closed()).await {
            return;
        }
    }
}

/// Checks the settings without contacting the API server: a kubeconfig or a service account can
/// be found and read. Errors name the file and the setting to fix.
pub async fn check(config: &KubernetesConfig) -> anyhow::Result<()> {
    client(config).await.map(|_| ())
}

/// The client from `--kubeconfig` (KUBECONFIG), else the usual places: `~/.kube/config`, the
/// pod's service account. Errors say which file and what to set.
async fn client(config: &KubernetesConfig) -> anyhow::Result<Client> {
    let mut settings = match &config.kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).with_context(|| {
                format!("cannot read the kubeconfig {} given by --kubeconfig (KUBECONFIG)", path.display())
            })?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default()).await.with_context(|| {
                format!("cannot use the kubeconfig {} given by --kubeconfig (KUBECONFIG)", path.display())
            })?
        }
        None => Config::infer().await.context(
            "no way to reach the Kubernetes API: not in a pod with a service account, and no \
             kubeconfig; give one with --kubeconfig (KUBECONFIG)",
        )?,
    };
    settings.read_timeout = Some(READ_TIMEOUT);
    Client::try_from(settings).context("cannot build a Kubernetes client from the configuration")
}

/// The API for a kind, cluster-wide (pods of every namespace).
fn api(client: &Client, resource: &Resource) -> Api<DynamicObject> {
    let api_resource = ApiResource {
        group: resource.group.to_owned(),
        version: resource.version.to_owned(),
        api_version: resource.api_version(),
        kind: resource.kind.to_owned(),
        plural: resource.plural.to_owned(),
    };
    Api::all_with(client.clone(), &api_resource)
}

/// The field selector for a kind: this node's pods only.
fn field_selector(resource: &Resource, config: &KubernetesConfig) -> Option<String> {
    match (&config.node, *resource == PODS) {
        (Some(node), true) => Some(format!("spec.nodeName={node}")),
        _ => None,
    }
}

/// Lists every object of a kind, page by page; returns them and the list's resourceVersion.
async fn list(client: &Client, resource: &Resource, config: &KubernetesConfig) -> anyhow::Result<(Vec<Json>, String)> {
    let api = api(client, resource);
    let mut params = ListParams::default().limit(PAGE);
    if let Some(selector) = field_selector(resource, config) {
        params = params.fields(&selector);
    }
    let mut objects = Vec::new();
    loop {
        let page = tokio::time::timeout(REQUEST_TIMEOUT, api.list(&params))
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {REQUEST_TIMEOUT:?}"))
            .and_then(|listed| listed.map_err(anyhow::Error::from))
            .with_context(|| format!("listing {}", resource.plural))?;
        for item in page.items {
            objects.push(serde_json::to_value(&item).context("an object that is not JSON")?);
        }
        match page.metadata.continue_.filter(|token| !token.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => {
                let version = page.metadata.resource_version.unwrap_or_default();
                return Ok((objects, version));
            }
        }
    }
}

/// One watch's events, tagged with its kind's index in [`RESOURCES`] and the number of the
/// watch (a kind's watch is opened again and again); `None` marks its end.
type Tagged = (usize, u64, Option<Result<WatchEvent<DynamicObject>, kube::Error>>);

/// Opens the watch of `RESOURCES[index]` from `version`, numbered `number`.
async fn open_watch(
    client: &Client,
    index: usize,
    number: u64,
    config: &KubernetesConfig,
    version: &str,
) -> anyhow::Result<futures::stream::BoxStream<'static, Tagged>> {
    let resource = &RESOURCES[index];
    let api = api(client, resource);
    let mut params = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
    if let Some(selector) = field_selector(resource, config) {
        params = params.fields(&selector);
    }
    let stream = tokio::time::timeout(REQUEST_TIMEOUT, api.watch(&params, version))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {REQUEST_TIMEOUT:?}"))
        .and_then(|opened| opened.map_err(anyhow::Error::from))
        .with_context(|| format!("watching {} from resourceVersion {version}", resource.plural))?;
    debug!(resource = resource.plural, version, "watching");
    Ok(stream
        .map(move |event| (index, number, Some(event)))
        .chain(futures::stream::once(async move { (index, number, None) }))
        .boxed())
}

/// One connection: list everything, watch, and list a kind again when its watch is told its
/// resourceVersion is gone. `Ok` when nobody listens any more; an error when the API server
/// cannot be reached.
async fn session(
    client: &Client,
    config: &KubernetesConfig,
    snapshots: &watch::Sender<Option<Snapshot>>,
    link: &mut Link,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut cache = Cache::new();
    let mut versions = Vec::new();
    for resource in &RESOURCES {
        let (objects, version) = list(client, resource, config).await?;
        cache.replace(resource, &objects);
        versions.push(version);
    }
    link.read(cache.len(), started.elapsed());
    let mut last = cache.snapshot();
    log_problems(&last, "the Kubernetes API");
    // Sent even when equal to what the agent has: after a reconnect the agent resyncs the
    // dataplane from the fresh read.
    if snapshots.send(Some(last.clone())).is_err() {
        return Ok(());
    }
    let mut current = vec![CurrentWatch::new(0, false); RESOURCES.len()];
    let mut watches = SelectAll::new();
    for (index, version) in versions.iter().enumerate() {
        watches.push(open_watch(client, index, 0, config, version).await?);
    }
    // The first and the latest change of the burst not yet sent.
    let mut pending: Option<(Instant, Instant)> = None;
    loop {
        let deadline = pending.map(|(first, latest)| (latest + QUIET).min(first + MAX_DELAY));
        let next = tokio::select! {
            next = watches.next() => next,
            _ = sleep_until(deadline), if deadline.is_some() => {
                let first = pending.take().map(|(first, _)| first);
                if !publish(cache.snapshot(), snapshots, &mut last, first, "the Kubernetes API") {
                    return Ok(());
                }
                continue;
            }
        };
        let Some((index, number, event)) = next else {
            bail!("every watch ended");
        };
        if number != current[index].number {
            // An older watch of the kind, replaced after a 410.
            continue;
        }
        let resource = &RESOURCES[index];
        let changed = match event {
            Some(Ok(event)) => match apply(&mut cache, resource, event, &mut versions[index]) {
                Applied::Changed => true,
                Applied::Unchanged => false,
                Applied::Gone(reason) => {
                    warn!(resource = resource.plural, "{reason}; listing {} again", resource.plural);
                    let (objects, version) = list(client, resource, config).await?;
                    cache.replace(resource, &objects);
                    versions[index] = version;
                    let number = current[index].number + 1;
                    watches.push(open_watch(client, index, number, config, &versions[index]).await?);
                    current[index] = CurrentWatch::new(number, false);
                    true
                }
            },
            Some(Err(error)) => {
                // The stream broke (a reset connection, a truncated body): its end follows.
                debug!(resource = resource.plural, "the watch broke: {error}");
                current[index].broke = true;
                false
            }
            None => {
                debug!(resource = resource.plural, version = %versions[index], "the watch ended; resuming");
                // A server that ends every watch at once must not make this a busy loop (a
                // broken connection is opened again at once: if the server is gone, that fails).
                let watch = &current[index];
                let short = watch.opened.elapsed() < WATCH_MIN_LIFE && !watch.broke;
                if short && watch.after_short {
                    tokio::time::sleep(BACKOFF_START).await;
                }
                let number = watch.number + 1;
                watches.push(open_watch(client, index, number, config, &versions[index]).await?);
                current[index] = CurrentWatch::new(number, short);
                false
            }
        };
        if changed {
            let now = Instant::now();
            pending = Some((pending.map_or(now, |(first, _)| first), now));
        }
    }
}

/// A kind's current watch.
#[derive(Clone, Copy, Debug)]
struct CurrentWatch {
    /// Its number: events and the end of an older watch of the kind are ignored.
    number: u64,
    /// When it was opened.
    opened: Instant,
    /// The watch before it ended cleanly soon after it was opened.
    after_short: bool,
    /// It has reported an error (its end follows).
    broke: bool,
}

impl CurrentWatch {
    fn new(number: u64, after_short: bool) -> Self {
        CurrentWatch { number, opened: Instant::now(), after_short, broke: false }
    }
}

/// What one watch event did.
#[derive(Debug, PartialEq, Eq)]
enum Applied {
    /// An object was added, changed or deleted.
    Changed,
    /// Nothing changed (a bookmark).
    Unchanged,
    /// The watch's resourceVersion is gone (410): the kind must be listed again.
    Gone(String),
}

/// Applies one watch event to the cache and moves `version` on.
fn apply(cache: &mut Cache, resource: &Resource, event: WatchEvent<DynamicObject>, version: &mut String) -> Applied {
    let mut remember = |object: &DynamicObject| {
        if let Some(seen) = &object.metadata.resource_version {
            version.clone_from(seen);
        }
        serde_json::to_value(object).ok()
    };
    match event {
        WatchEvent::Added(object) | WatchEvent::Modified(object) => {
            if let Some(json) = remember(&object) {
                cache.put(resource, &json);
            }
            Applied::Changed
        }
        WatchEvent::Deleted(object) => {
            if let Some(json) = remember(&object) {
                cache.delete(resource, &json);
            }
            Applied::Changed
        }
        WatchEvent::Bookmark(bookmark) => {
            version.clone_from(&bookmark.metadata.resource_version);
            Applied::Unchanged
        }
        WatchEvent::Error(status) if status.code == 410 => {
            version.clear();
            Applied::Gone(format!(
                "the API server no longer has the {} watch's resourceVersion ({})",
                resource.plural, status.message
            ))
        }
        WatchEvent::Error(status) => {
            // Any other error ends the watch; it resumes from the last resourceVersion.
            warn!(resource = resource.plural, code = status.code, "the watch reported: {}", status.message);
            Applied::Unchanged
        }
    }
}

/// Reads the whole cluster once (every kind listed, no watch), for one-shot commands.
pub fn read_once(config: &KubernetesConfig) -> anyhow::Result<Snapshot> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(async {
        let client = client(config).await?;
        let mut cache = Cache::new();
        for resource in &RESOURCES {
            let (objects, _) = list(&client, resource, config).await.with_context(|| {
                "reading the cluster from the Kubernetes API: check --kubeconfig (KUBECONFIG) and \
                 that the account may list it"
            })?;
            cache.replace(resource, &objects);
        }
        Ok(cache.snapshot())
    })
}

/// [`watch`] on a thread of its own, for callers that have no runtime (tests, one-shot
/// commands).
pub fn watch_thread(config: KubernetesConfig) -> anyhow::Result<WatchThread> {
    WatchThread::spawn("kubernetes", move |snapshots, connection| watch(config, snapshots, connection))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{
        apps::v1::DaemonSet,
        core::v1::{Node, Pod, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    };
    use kube::core::Status;

    use super::*;
    use crate::datastore::kubernetes::convert::NODES;

    /// The kinds as k8s-openapi describes the core ones, to check [`convert::NODES`] and
    /// [`convert::PODS`] against.
    fn core_kinds() -> [ApiResource; 2] {
        [ApiResource::erase::<Node>(&()), ApiResource::erase::<Pod>(&())]
    }

    #[test]
    fn the_core_kinds_are_k8s_openapis() {
        let [node, pod] = core_kinds();
        for (ours, theirs) in [(NODES, node), (PODS, pod)] {
            assert_eq!(
                (ours.group, ours.version, ours.kind, ours.plural),
                (&*theirs.group, &*theirs.version, &*theirs.kind, &*theirs.plural)
            );
            assert_eq!(ours.api_version(), theirs.api_version);
        }
    }

    #[test]
    fn only_this_nodes_pods_are_read() {
        let config = KubernetesConfig { node: Some("node-1".into()), ..Default::default() };
        assert_eq!(field_selector(&PODS, &config).as_deref(), Some("spec.nodeName=node-1"));
        assert_eq!(field_selector(&NODES, &config), None);
        assert_eq!(field_selector(&PODS, &KubernetesConfig::default()), None);
    }

    fn dynamic(json: Json) -> DynamicObject {
        serde_json::from_value(json).expect("a test object")
    }

    #[test]
    fn watch_events_move_the_resource_version_and_410_asks_for_a_list() {
        let mut cache = Cache::new();
        let mut version = "10".to_owned();
        let pool = dynamic(serde_json::json!({
            "apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool",
            "metadata": {"name": "p", "resourceVersion": "11"},
            "spec": {"cidr": "10.244.0.0/16", "vxlanMode": "Always"}
        }));
        let pools = &convert::IP_POOLS;
        assert_eq!(apply(&mut cache, pools, WatchEvent::Added(pool.clone()), &mut version), Applied::Changed);
        assert_eq!((version.as_str(), cache.snapshot().model.pools.len()), ("11", 1));
        let bookmark = serde_json::from_value(serde_json::json!({
            "apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool",
            "metadata": {"resourceVersion": "15"}
        }))
        .expect("bookmark");
        assert_eq!(apply(&mut cache, pools, WatchEvent::Bookmark(bookmark), &mut version), Applied::Unchanged);
        assert_eq!(version, "15");
        let mut deleted = pool;
        deleted.metadata.resource_version = Some("16".into());
        assert_eq!(apply(&mut cache, pools, WatchEvent::Deleted(deleted), &mut version), Applied::Changed);
        assert_eq!((version.as_str(), cache.snapshot().model.pools.len()), ("16", 0));
        let gone: Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "message": "too old resource version: 16 (40)", "reason": "Expired", "code": 410
        }))
        .expect("status");
        let Applied::Gone(reason) = apply(&mut cache, pools, WatchEvent::Error(Box::new(gone)), &mut version) else {
            panic!("410 must ask for a list");
        };
        assert!(reason.contains("too old resource version"), "{reason}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_unreadable_kubeconfig_ends_the_watch_and_names_the_file() {
        let config =
            KubernetesConfig { kubeconfig: Some(PathBuf::from("/nonexistent/kubeconfig")), ..Default::default() };
        let Err(error) = client(&config).await else { panic!("no such file, but a client") };
        let text = format!("{error:#}");
        assert!(text.contains("/nonexistent/kubeconfig") && text.contains("KUBECONFIG"), "{text}");
        let (sender, receiver) = watch::channel(None);
        tokio::time::timeout(Duration::from_secs(5), super::watch(config, sender, Connection::default()))
            .await
            .expect("returns at once");
        assert!(receiver.borrow().is_none());
    }

    /// Every manifest in deploy/, read as the Kubernetes objects they are.
    fn manifests() -> Vec<(&'static str, serde_yaml::Value)> {
        let files = [
            ("deploy/daemonset.yaml", include_str!("../../../deploy/daemonset.yaml")),
            ("deploy/rbac.yaml", include_str!("../../../deploy/rbac.yaml")),
            ("deploy/daemonset-etcd.yaml", include_str!("../../../deploy/daemonset-etcd.yaml")),
        ];
        let mut documents = Vec::new();
        for (file, text) in files {
            for document in serde_yaml::Deserializer::from_str(text) {
                let value = <serde_yaml::Value as serde::Deserialize>::deserialize(document)
                    .unwrap_or_else(|e| panic!("{file} is not YAML: {e}"));
                if !value.is_null() {
                    documents.push((file, value));
                }
            }
        }
        documents
    }

    /// A manifest's object as its k8s-openapi type.
    fn typed<T: serde::de::DeserializeOwned>(file: &str, kind: &str, json: Json) -> T {
        serde_json::from_value(json).unwrap_or_else(|e| panic!("{file}: {kind} does not parse: {e}"))
    }

    #[test]
    fn the_manifests_are_kubernetes_objects_and_rbac_grants_only_what_the_agent_reads() {
        let mut kinds = Vec::new();
        let mut role = None;
        for (file, document) in manifests() {
            let kind = document["kind"].as_str().unwrap_or_else(|| panic!("{file}: a document without kind"));
            let json = serde_json::to_value(&document).expect("YAML as JSON");
            match kind {
                "DaemonSet" => {
                    let daemonset: DaemonSet = typed(file, kind, json);
                    let spec = daemonset.spec.expect("a DaemonSet spec");
                    let pod = spec.template.spec.expect("a pod spec");
                    assert_eq!(pod.service_account_name.as_deref(), Some("dataplane"), "{file}");
                }
                "ServiceAccount" => {
                    typed::<ServiceAccount>(file, kind, json);
                }
                "ClusterRole" => role = Some(typed::<ClusterRole>(file, kind, json)),
                "ClusterRoleBinding" => {
                    let binding: ClusterRoleBinding = typed(file, kind, json);
                    assert_eq!(binding.role_ref.kind, "ClusterRole");
                    assert_eq!(binding.role_ref.name, "dataplane");
                    let subjects = binding.subjects.unwrap_or_default();
                    assert!(subjects.iter().any(|s| s.kind == "ServiceAccount" && s.name == "dataplane"));
                }
                other => panic!("{file}: unexpected kind {other}"),
            }
            kinds.push(kind.to_owned());
        }
        for wanted in ["DaemonSet", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"] {
            assert!(kinds.iter().any(|k| k == wanted), "no {wanted} in deploy/: {kinds:?}");
        }
        let role = role.expect("a ClusterRole");
        // Every (group, resource) the rules grant, with the verbs.
        let mut granted = Vec::new();
        for rule in role.rules.unwrap_or_default() {
            let mut verbs = rule.verbs.clone();
            verbs.sort();
            assert_eq!(verbs, ["get", "list", "watch"], "the agent only reads: {rule:?}");
            assert!(rule.non_resource_urls.is_none() && rule.resource_names.is_none(), "{rule:?}");
            for group in rule.api_groups.unwrap_or_default() {
                for resource in rule.resources.clone().unwrap_or_default() {
                    granted.push((group.clone(), resource));
                }
            }
        }
        granted.sort();
        let mut read: Vec<(String, String)> =
            RESOURCES.iter().map(|r| (r.group.to_owned(), r.plural.to_owned())).collect();
        read.sort();
        assert_eq!(granted, read, "deploy/rbac.yaml must grant exactly what the agent reads");
    }
}

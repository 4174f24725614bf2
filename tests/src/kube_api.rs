//! A small Kubernetes API server for the Kubernetes datastore's tests: list and watch, nothing
//! else.
//!
//! There is no real API server on the test machines (it needs etcd, certificates, a control
//! plane), so this one answers the two requests the agent makes, as the real one does: a list
//! (`GET /api/v1/pods?fieldSelector=...`) is a JSON `<Kind>List` with the store's
//! `resourceVersion`; a watch (`...&watch=true&resourceVersion=N`) is a chunked stream of
//! `ADDED`/`MODIFIED`/`DELETED`/`BOOKMARK` events after N, or one `ERROR` event with code 410
//! when N is older than the last compaction. The objects it serves are whatever the test puts in
//! (written like `kubectl get -o json` prints them). Plain HTTP on a kubeconfig of its own.
//!
//! Tests can break every open watch mid-stream ([`KubeApi::break_watches`]), hold events back
//! ([`KubeApi::hold_watches`]), compact the history ([`KubeApi::compact`]), stop the server and
//! start it again on the same address ([`KubeApi::stop`], [`KubeApi::start`]), and read the
//! requests it answered ([`KubeApi::requests`]).

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Condvar, Mutex, MutexGuard,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

/// A kind the server serves: its URL path and the apiVersion and kind of its objects.
#[derive(Clone, Debug)]
struct Kind {
    /// `/api/v1/pods`, `/apis/crd.projectcalico.org/v1/ippools`.
    path: String,
    api_version: String,
    kind: String,
}

/// The kinds the agent reads.
fn kinds() -> Vec<Kind> {
    let core = |plural: &str, kind: &str| Kind {
        path: format!("/api/v1/{plural}"),
        api_version: "v1".into(),
        kind: kind.into(),
    };
    let calico = |plural: &str, kind: &str| Kind {
        path: format!("/apis/crd.projectcalico.org/v1/{plural}"),
        api_version: "crd.projectcalico.org/v1".into(),
        kind: kind.into(),
    };
    vec![
        core("nodes", "Node"),
        core("pods", "Pod"),
        calico("ippools", "IPPool"),
        calico("blockaffinities", "BlockAffinity"),
        calico("ipamblocks", "IPAMBlock"),
    ]
}

/// One event of a kind's history.
#[derive(Clone, Debug)]
struct Event {
    revision: u64,
    /// ADDED, MODIFIED, DELETED or BOOKMARK.
    event_type: &'static str,
    object: Value,
}

/// The objects of one kind and their recent history.
#[derive(Debug, Default)]
struct Store {
    objects: BTreeMap<String, Value>,
    events: Vec<Event>,
}

#[derive(Debug)]
struct State {
    revision: u64,
    /// Watches from before this revision get 410 Gone.
    compacted: u64,
    stores: BTreeMap<String, Store>,
    /// Open connections, to cut them when the server stops.
    connections: Vec<(u64, TcpStream)>,
    /// Open watch connections.
    watches: Vec<(u64, TcpStream)>,
    next_connection: u64,
    /// While true, watches send nothing (a slow watch falling behind).
    held: bool,
    requests: Vec<String>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The server; stopped when dropped.
pub struct KubeApi {
    shared: Arc<Shared>,
    addr: SocketAddr,
    netns: Option<PathBuf>,
    running: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    dir: PathBuf,
}

impl KubeApi {
    /// Starts a server on 127.0.0.1 (a free port) for test `name`.
    pub fn start_local(name: &str) -> anyhow::Result<KubeApi> {
        Self::start_at(name, "127.0.0.1:0".parse()?, None)
    }

    /// Starts a server on `addr` inside the network namespace `netns` (a path such as
    /// `/run/netns/dpl-xxxx-fabric`): the listening socket is made on a thread that entered it.
    pub fn start_at(name: &str, addr: SocketAddr, netns: Option<PathBuf>) -> anyhow::Result<KubeApi> {
        let dir = std::env::temp_dir().join(format!("dataplane-kube-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir)?;
        let mut stores = BTreeMap::new();
        for kind in kinds() {
            stores.insert(kind.path.clone(), Store::default());
        }
        let state = State {
            revision: 100,
            compacted: 0,
            stores,
            connections: Vec::new(),
            watches: Vec::new(),
            next_connection: 0,
            held: false,
            requests: Vec::new(),
        };
        let mut server = KubeApi {
            shared: Arc::new(Shared { state: Mutex::new(state), changed: Condvar::new() }),
            addr,
            netns,
            running: None,
            dir,
        };
        server.start()?;
        Ok(server)
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig that reaches this server and returns its path.
    pub fn kubeconfig(&self) -> anyhow::Result<PathBuf> {
        let path = self.dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n\
             users:\n- name: dataplane\n  user:\n    token: test-token\ncontexts:\n- name: test\n  \
             context:\n    cluster: test\n    user: dataplane\ncurrent-context: test\n",
            self.url()
        );
        fs::write(&path, text)?;
        Ok(path)
    }

    /// Starts serving (again, on the same address after [`KubeApi::stop`]).
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.running.is_some() {
            return Ok(());
        }
        let (bound, ready) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, addr, netns, stop_flag) = (self.shared.clone(), self.addr, self.netns.clone(), stop.clone());
        let thread = thread::Builder::new().name("kube-api".into()).spawn(move || {
            let listener = match listen(addr, netns.as_deref()) {
                Ok(listener) => listener,
                Err(error) => {
                    let _ = bound.send(Err(error));
                    return;
                }
            };
            let _ = bound.send(listener.local_addr().map_err(anyhow::Error::from));
            accept_loop(&listener, &shared, &stop_flag);
        })?;
        let local = ready.recv_timeout(Duration::from_secs(10))??;
        self.addr = local;
        self.running = Some((stop, thread));
        Ok(())
    }

    /// Stops serving: closes the listening socket and every open connection.
    pub fn stop(&mut self) {
        if let Some((stop, thread)) = self.running.take() {
            stop.store(true, Ordering::SeqCst);
            let _ = thread.join();
        }
        let mut state = self.shared.lock();
        let state = &mut *state;
        for (_, stream) in state.connections.drain(..).chain(state.watches.drain(..)) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        self.shared.changed.notify_all();
    }

    /// Creates or replaces an object (`metadata.name`, and `metadata.namespace` for pods) of
    /// the kind at `path` (e.g. `/api/v1/pods`); returns the new resourceVersion.
    pub fn apply(&self, path: &str, mut object: Value) -> u64 {
        let mut state = self.shared.lock();
        state.revision += 1;
        let revision = state.revision;
        object["metadata"]["resourceVersion"] = json!(revision.to_string());
        let key = key_of(&object);
        let store = state.stores.get_mut(path).unwrap_or_else(|| panic!("no kind at {path}"));
        let event_type = if store.objects.insert(key, object.clone()).is_some() { "MODIFIED" } else { "ADDED" };
        store.events.push(Event { revision, event_type, object });
        self.shared.changed.notify_all();
        revision
    }

    /// Deletes an object by `namespace/name` (or `name`); returns the new resourceVersion.
    pub fn delete(&self, path: &str, key: &str) -> u64 {
        let mut state = self.shared.lock();
        state.revision += 1;
        let revision = state.revision;
        let store = state.stores.get_mut(path).unwrap_or_else(|| panic!("no kind at {path}"));
        if let Some(mut object) = store.objects.remove(key) {
            object["metadata"]["resourceVersion"] = json!(revision.to_string());
            store.events.push(Event { revision, event_type: "DELETED", object });
        }
        self.shared.changed.notify_all();
        revision
    }

    /// Sends a BOOKMARK with the current resourceVersion on every kind's watches.
    pub fn bookmark(&self) {
        let mut state = self.shared.lock();
        let revision = state.revision;
        for store in state.stores.values_mut() {
            let object = json!({"metadata": {"resourceVersion": revision.to_string()}});
            store.events.push(Event { revision, event_type: "BOOKMARK", object });
        }
        self.shared.changed.notify_all();
    }

    /// Holds events back from open and new watches (true), or lets them through (false).
    pub fn hold_watches(&self, held: bool) {
        self.shared.lock().held = held;
        self.shared.changed.notify_all();
    }

    /// Forgets the history: a watch from any resourceVersion before now gets 410 Gone, as from
    /// an API server whose etcd compacted.
    pub fn compact(&self) {
        let mut state = self.shared.lock();
        state.revision += 1;
        state.compacted = state.revision;
        for store in state.stores.values_mut() {
            store.events.clear();
        }
    }

    /// Cuts every open watch mid-stream (no final chunk), as a dropped connection does.
    pub fn break_watches(&self) {
        let mut state = self.shared.lock();
        for (_, stream) in state.watches.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        self.shared.changed.notify_all();
    }

    /// How many watches are open now.
    pub fn open_watches(&self) -> usize {
        self.shared.lock().watches.len()
    }

    /// The request lines answered so far (`GET /api/v1/pods?... `).
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Binds `addr`, inside `netns` when given (this thread enters it first).
fn listen(addr: SocketAddr, netns: Option<&Path>) -> anyhow::Result<TcpListener> {
    if let Some(netns) = netns {
        let handle = fs::File::open(netns)?;
        // SAFETY: setns with an open namespace file; it changes only this thread's namespace.
        if unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            anyhow::bail!("setns({}): {}", netns.display(), std::io::Error::last_os_error());
        }
    }
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let shared = shared.clone();
                let registered = stream.try_clone().ok().map(|clone| {
                    let mut state = shared.lock();
                    state.next_connection += 1;
                    let id = state.next_connection;
                    state.connections.push((id, clone));
                    id
                });
                thread::spawn(move || {
                    serve(stream, &shared);
                    if let Some(id) = registered {
                        shared.lock().connections.retain(|(other, _)| *other != id);
                    }
                });
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(5)),
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// The request's path and query parameters.
struct Request {
    line: String,
    path: String,
    query: BTreeMap<String, String>,
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
    }
    let target = line.split_whitespace().nth(1)?.to_owned();
    let (path, query_text) = target.split_once('?').unwrap_or((&target, ""));
    let query = query_text
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect();
    Some(Request { line: line.trim_end().to_owned(), path: path.to_owned(), query })
}

/// `%3D` -> `=`, `+` -> space: enough for field selectors.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => out.push(byte),
                    Err(_) => out.extend_from_slice(&bytes[i..i + 3]),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `object` passes the request's field selector (only `spec.nodeName=X` is known).
fn selected(query: &BTreeMap<String, String>, object: &Value) -> bool {
    let Some(selector) = query.get("fieldSelector").filter(|s| !s.is_empty()) else {
        return true;
    };
    selector.split(',').all(|term| match term.split_once('=') {
        Some(("spec.nodeName", node)) => {
            object.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("") == node.trim_start_matches('=')
        }
        _ => false,
    })
}

fn key_of(object: &Value) -> String {
    let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    match object.pointer("/metadata/namespace").and_then(Value::as_str) {
        Some(namespace) => format!("{namespace}/{name}"),
        None => name.to_owned(),
    }
}

fn serve(mut stream: TcpStream, shared: &Arc<Shared>) {
    let Some(request) = read_request(&stream) else {
        return;
    };
    shared.lock().requests.push(request.line.clone());
    let Some(kind) = kinds().into_iter().find(|kind| kind.path == request.path) else {
        let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": format!("the server could not find the requested resource {}", request.path),
            "reason": "NotFound", "code": 404});
        respond(&mut stream, "404 Not Found", &body);
        return;
    };
    if request.query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        watch(stream, shared, &kind, &request);
    } else {
        let state = shared.lock();
        let store = &state.stores[&kind.path];
        let items: Vec<Value> = store
            .objects
            .values()
            .filter(|object| selected(&request.query, object))
            .map(|object| list_item(&kind, object))
            .collect();
        let body = json!({
            "kind": format!("{}List", kind.kind),
            "apiVersion": kind.api_version,
            "metadata": {"resourceVersion": state.revision.to_string()},
            "items": items,
        });
        drop(state);
        respond(&mut stream, "200 OK", &body);
    }
}

/// Items of a core list leave out kind and apiVersion, as the real server's do.
fn list_item(kind: &Kind, object: &Value) -> Value {
    let mut item = object.clone();
    if kind.api_version == "v1" {
        if let Some(map) = item.as_object_mut() {
            map.remove("kind");
            map.remove("apiVersion");
        }
    } else {
        item["kind"] = json!(kind.kind);
        item["apiVersion"] = json!(kind.api_version);
    }
    item
}

fn respond(stream: &mut TcpStream, status: &str, body: &Value) {
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body.as_bytes()));
    let _ = stream.flush();
}

fn chunk(stream: &mut TcpStream, event: &Value) -> std::io::Result<()> {
    let mut line = event.to_string();
    line.push('\n');
    write!(stream, "{:x}\r\n{line}\r\n", line.len())?;
    stream.flush()
}

/// A watch: every event after the requested resourceVersion, then new ones as they come, until
/// the request's timeout (a clean end), the connection is cut, or the server stops.
fn watch(mut stream: TcpStream, shared: &Arc<Shared>, kind: &Kind, request: &Request) {
    let from: u64 = request.query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let timeout = request.query.get("timeoutSeconds").and_then(|v| v.parse().ok()).unwrap_or(290);
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let id = {
        let mut state = shared.lock();
        state.next_connection += 1;
        let id = state.next_connection;
        if let Ok(clone) = stream.try_clone() {
            state.watches.push((id, clone));
        }
        id
    };
    let mut sent = from;
    let mut state = shared.lock();
    if from < state.compacted {
        let message = format!("too old resource version: {from} ({})", state.compacted);
        drop(state);
        let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": "Expired", "code": 410}});
        let _ = chunk(&mut stream, &gone).and_then(|()| stream.write_all(b"0\r\n\r\n"));
        shared.lock().watches.retain(|(other, _)| *other != id);
        return;
    }
    loop {
        if !state.watches.iter().any(|(other, _)| *other == id) {
            // Cut by break_watches or stop.
            return;
        }
        let events: Vec<Event> = if state.held {
            Vec::new()
        } else {
            state.stores[&kind.path].events.iter().filter(|e| e.revision > sent).cloned().collect()
        };
        if !events.is_empty() {
            drop(state);
            for event in events {
                sent = sent.max(event.revision);
                if event.event_type != "BOOKMARK" && !selected(&request.query, &event.object) {
                    continue;
                }
                let mut object = event.object;
                object["kind"] = json!(kind.kind);
                object["apiVersion"] = json!(kind.api_version);
                if chunk(&mut stream, &json!({"type": event.event_type, "object": object})).is_err() {
                    shared.lock().watches.retain(|(other, _)| *other != id);
                    return;
                }
            }
            state = shared.lock();
            continue;
        }
        let now = Instant::now();
        if now >= deadline {
            state.watches.retain(|(other, _)| *other != id);
            drop(state);
            let _ = stream.write_all(b"0\r\n\r\n");
            return;
        }
        let wait = (deadline - now).min(Duration::from_millis(200));
        state = shared.changed.wait_timeout(state, wait).map(|(guard, _)| guard).unwrap_or_else(|p| p.into_inner().0);
    }
}

//! etcd values into the model, through the file datastore's per-resource code.
//!
//! Each key is converted once, when it is read or changes, into an [`Entry`]; the [`Cache`]
//! keeps them by key and builds a whole [`Snapshot`] from them on demand, so a change to one key
//! costs one conversion and one pass over the cached entries.
//!
//! The v3 resources (`IPPool`, `Node`, `WorkloadEndpoint`) are stored by Calico as the JSON of
//! the resource, which [`ModelBuilder`] reads as it reads the same resource from a YAML file.
//! The IPAM keys hold only a spec (`{"state":"confirmed","deleted":false}` for an affinity, the
//! allocation block for an assignment): they are wrapped into a `BlockAffinity` or an
//! `IPAMBlock` with the key's node and block, so that the same code decides what routes.
//! Problems name the key (as their `name`) and the field inside the value.

use std::collections::{BTreeMap, HashSet};

use ipnet::Ipv4Net;
use serde_json::{Map, Value as Json};

use super::keys::{self, Key, Parsed};
use crate::{
    datastore::{resources::ModelBuilder, Delta, Snapshot},
    model::{AffinityState, Block, IpPool, Model, Node, Problem, Workload},
};

/// What one key contributes to the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// An IP pool (boxed, as the node and the workload: two of every three keys are blocks, and
    /// every cached key is as large as the largest variant).
    Pool(Box<IpPool>),
    /// A node.
    Node(Box<Node>),
    /// A workload endpoint.
    Workload(Box<Workload>),
    /// A block from a host affinity key.
    Affinity(Block),
    /// A block from an allocation block's `affinity`; used where no affinity key names the same
    /// block and node, as the file datastore does with `IPAMBlock`s.
    Allocation(Block),
    /// Nothing: a broken value, or one that routes nowhere (an allocation block without a host).
    Nothing,
}

/// One key, converted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// What it adds to the model.
    pub item: Item,
    /// What was wrong with it.
    pub problems: Vec<Problem>,
}

/// Converts the value of `key`, whose name parsed as `parsed`.
pub fn convert(parsed: &Parsed, key: &str, value: &[u8]) -> Option<Entry> {
    match parsed {
        Parsed::Ignored => None,
        Parsed::Malformed { kind, message } => Some(Entry {
            item: Item::Nothing,
            problems: vec![Problem::new(
                *kind,
                key,
                "key",
                format!("the key's name does not parse ({message}); the key is skipped"),
            )],
        }),
        Parsed::Known(known) => Some(typed_ipam(known, value).unwrap_or_else(|| match resource(known, key, value) {
            Ok(resource) => build(known, key, &resource),
            Err(problem) => Entry { item: Item::Nothing, problems: vec![problem] },
        })),
    }
}

/// A field that was written, even as `null` (serde's `Option` reads null as absent).
fn written<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Json>, D::Error> {
    <Json as serde::Deserialize>::deserialize(deserializer).map(Some)
}

/// The fields of an IPAM value the dataplane reads; serde skips the rest (an allocation block's
/// allocations and attributes) without building them.
#[derive(serde::Deserialize)]
struct IpamValue {
    #[serde(default, deserialize_with = "written")]
    state: Option<Json>,
    #[serde(default, deserialize_with = "written")]
    deleted: Option<Json>,
    #[serde(default, deserialize_with = "written")]
    cidr: Option<Json>,
    #[serde(default, deserialize_with = "written")]
    affinity: Option<Json>,
}

/// The IPAM keys, two of every three keys of a cluster, decoded straight into a block when their
/// values are well formed: the same block the general path below makes, without a resource
/// built and read as YAML. `None` for anything else (a value that is not JSON, a field of the
/// wrong type or value), which the general path reports, naming the field.
fn typed_ipam(known: &Key, value: &[u8]) -> Option<Entry> {
    // serde would also read a list as the struct's fields in order: only objects are values.
    let trimmed = value.trim_ascii();
    if !trimmed.is_empty() && !trimmed.starts_with(b"{") {
        return None;
    }
    let bare = |item| Some(Entry { item, problems: Vec::new() });
    let deleted = |field: &Option<Json>| match field {
        None => Some(false),
        Some(Json::Bool(deleted)) => Some(*deleted),
        Some(_) => None,
    };
    match known {
        Key::Affinity { node, cidr } => {
            // Old Calico versions wrote affinity keys with an empty value: confirmed.
            let fields: IpamValue = if trimmed.is_empty() {
                IpamValue { state: None, deleted: None, cidr: None, affinity: None }
            } else {
                serde_json::from_slice(value).ok()?
            };
            let state = match &fields.state {
                None => AffinityState::Confirmed,
                Some(Json::String(text)) if !text.trim().is_empty() => text.parse().ok()?,
                Some(_) => return None,
            };
            let block = Block { cidr: cidr.trunc(), node: node.clone(), state, deleted: deleted(&fields.deleted)? };
            bare(Item::Affinity(block))
        }
        Key::Allocation { cidr } => {
            let fields: IpamValue = serde_json::from_slice(value).ok()?;
            match &fields.cidr {
                None => {}
                Some(Json::String(text)) if text.trim().parse::<Ipv4Net>().ok()?.trunc() == cidr.trunc() => {}
                Some(_) => return None,
            }
            let node = match &fields.affinity {
                None => return bare(Item::Nothing),
                Some(Json::String(text)) if text.trim().is_empty() => return bare(Item::Nothing),
                Some(Json::String(text)) => match text.trim().strip_prefix("host:") {
                    None => return bare(Item::Nothing),
                    Some("") => return None,
                    Some(node) => node.to_owned(),
                },
                Some(_) => return None,
            };
            let block =
                Block { cidr: cidr.trunc(), node, state: AffinityState::Confirmed, deleted: deleted(&fields.deleted)? };
            bare(Item::Allocation(block))
        }
        Key::Pool { .. } | Key::Node { .. } | Key::Workload { .. } => None,
    }
}

/// The value as a Calico resource with `apiVersion`, `kind`, `metadata` and `spec`.
fn resource(known: &Key, key: &str, value: &[u8]) -> Result<Json, Problem> {
    let kind = known.kind();
    let problem = |field: &str, message: String| Problem::new(kind, key, field, message);
    // Old Calico versions wrote affinity keys with an empty value: the affinity is confirmed.
    let empty_affinity = matches!(known, Key::Affinity { .. }) && value.trim_ascii().is_empty();
    let parsed: Json = if empty_affinity {
        Json::Object(Map::new())
    } else {
        serde_json::from_slice(value).map_err(|error| {
            problem("value", format!("not JSON ({error}); the key is skipped: write the resource as JSON"))
        })?
    };
    let Json::Object(mut object) = parsed else {
        return Err(problem(
            "value",
            format!("expected a JSON object, found {}; the key is skipped", json_type(&parsed)),
        ));
    };
    match known {
        Key::Pool { name } | Key::Node { name } => {
            check_identity(&mut object, kind, key, name, None)?;
            Ok(Json::Object(object))
        }
        Key::Workload { namespace, name } => {
            check_identity(&mut object, kind, key, name, Some(namespace))?;
            Ok(Json::Object(object))
        }
        Key::Affinity { node, cidr } => {
            // The value is the affinity's spec; the key names the node and the block.
            let mut spec = Map::new();
            spec.insert("cidr".into(), Json::from(cidr.to_string()));
            spec.insert("node".into(), Json::from(node.as_str()));
            for field in ["state", "deleted"] {
                if let Some(value) = object.remove(field) {
                    spec.insert(field.into(), value);
                }
            }
            Ok(wrap("BlockAffinity", key, spec))
        }
        Key::Allocation { cidr } => {
            match object.get("cidr") {
                None | Some(Json::Null) => {
                    object.insert("cidr".into(), Json::from(cidr.to_string()));
                }
                Some(Json::String(text)) => {
                    if let Ok(written) = text.trim().parse::<Ipv4Net>() {
                        if written.trunc() != *cidr {
                            return Err(problem(
                                "cidr",
                                format!(
                                    "the value says {text} but the key says {cidr}; the block is \
                                     skipped: the key must be the block's cidr"
                                ),
                            ));
                        }
                    }
                }
                // Anything else is reported by the shared code, naming the field.
                Some(_) => {}
            }
            Ok(wrap("IPAMBlock", key, object))
        }
    }
}

/// Fills in `kind`, `apiVersion`, `metadata.name` (and `metadata.namespace`) from the key where
/// the value leaves them out; a value that names another resource than its key is refused, as
/// the key is what Calico looks up.
fn check_identity(
    object: &mut Map<String, Json>,
    kind: &'static str,
    key: &str,
    name: &str,
    namespace: Option<&str>,
) -> Result<(), Problem> {
    let problem = |field: &str, message: String| Problem::new(kind, key, field, message);
    match object.get("kind") {
        None | Some(Json::Null) => {
            object.insert("kind".into(), Json::from(kind));
        }
        Some(Json::String(written)) if written == kind => {}
        Some(other) => {
            return Err(problem("kind", format!("the key holds {kind}s but the value is {other}; the key is skipped")))
        }
    }
    if matches!(object.get("apiVersion"), None | Some(Json::Null)) {
        object.insert("apiVersion".into(), Json::from("projectcalico.org/v3"));
    }
    if matches!(object.get("metadata"), None | Some(Json::Null)) {
        object.insert("metadata".into(), Json::Object(Map::new()));
    }
    let metadata = match object.get_mut("metadata") {
        Some(Json::Object(metadata)) => metadata,
        other => {
            let found = other.map_or("nothing", |other| json_type(other));
            return Err(problem("metadata", format!("expected an object, found {found}; the key is skipped")));
        }
    };
    let mut fields = vec![("name", name)];
    if let Some(namespace) = namespace {
        fields.push(("namespace", namespace));
    }
    for (field, from_key) in fields {
        match metadata.get(field) {
            None | Some(Json::Null) => {
                metadata.insert(field.into(), Json::from(from_key));
            }
            Some(Json::String(written)) if written == from_key => {}
            Some(other) => {
                return Err(problem(
                    &format!("metadata.{field}"),
                    format!(
                        "the value says {other} but the key says {from_key:?}; the key is \
                         skipped: the key must name the resource"
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// A spec wrapped into a resource of `kind`, named by its key (IPAM objects have no name of their
/// own that the model keeps).
fn wrap(kind: &str, key: &str, spec: Map<String, Json>) -> Json {
    let mut metadata = Map::new();
    metadata.insert("name".into(), Json::from(key));
    let mut resource = Map::new();
    resource.insert("apiVersion".into(), Json::from("projectcalico.org/v3"));
    resource.insert("kind".into(), Json::from(kind));
    resource.insert("metadata".into(), Json::Object(metadata));
    resource.insert("spec".into(), Json::Object(spec));
    Json::Object(resource)
}

/// Runs one resource through the file datastore's code.
fn build(known: &Key, key: &str, resource: &Json) -> Entry {
    let yaml = match serde_yaml::to_value(resource) {
        Ok(yaml) => yaml,
        Err(error) => {
            return Entry {
                item: Item::Nothing,
                problems: vec![Problem::new(known.kind(), key, "value", error.to_string())],
            }
        }
    };
    let mut builder = ModelBuilder::new();
    builder.add(&yaml, key);
    let (mut model, problems) = builder.finish();
    let ipam = matches!(known, Key::Affinity { .. } | Key::Allocation { .. });
    let problems = problems
        .into_iter()
        .map(|mut problem| {
            problem.name = key.to_owned();
            // The value of an IPAM key is the spec itself: name the field as it is written there.
            if ipam {
                if let Some(field) = problem.field.strip_prefix("spec.") {
                    problem.field = field.to_owned();
                }
            }
            problem
        })
        .collect();
    let item = match known {
        Key::Pool { .. } => model.pools.pop().map(|pool| Item::Pool(Box::new(pool))),
        Key::Node { .. } => model.nodes.pop().map(|node| Item::Node(Box::new(node))),
        Key::Workload { .. } => model.workloads.pop().map(|workload| Item::Workload(Box::new(workload))),
        Key::Affinity { .. } => model.blocks.pop().map(Item::Affinity),
        Key::Allocation { .. } => model.blocks.pop().map(Item::Allocation),
    };
    Entry { item: item.unwrap_or(Item::Nothing), problems }
}

/// A JSON value's type, for messages.
fn json_type(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

/// The keys read so far, converted, by key.
#[derive(Clone, Debug)]
pub struct Cache {
    prefix: String,
    entries: BTreeMap<String, Entry>,
    /// The changes since the last [`Cache::take_deltas`], when the watcher sends deltas.
    deltas: Option<Vec<Delta>>,
    /// Whether [`Cache::take_replace`] gave the blocks away: the IPAM keys (two of every three
    /// keys) are then no longer kept, and a change of one is sent as a delta of what the key
    /// names, without comparing with its old value.
    blocks_given: bool,
    /// The blocks of a whole read that will be given away ([`Cache::giving_blocks`]), kept as
    /// blocks rather than as keys: a cached key costs its name and an entry besides its block,
    /// which at 100k blocks doubled the read's peak memory for keys dropped right after it.
    read_blocks: Option<ReadBlocks>,
}

/// The IPAM keys of a whole read, as what they name.
#[derive(Clone, Debug, Default)]
struct ReadBlocks {
    affinities: Vec<Block>,
    allocations: Vec<Block>,
    /// The keys' problems, with the key (problems are reported in key order).
    problems: Vec<(String, Problem)>,
    /// IPAM keys read.
    keys: usize,
}

/// What a resource is known by in the model, so that a key whose value changes its meaning
/// removes what the old value added.
#[derive(PartialEq, Eq)]
enum Identity {
    Pool(String),
    Node(String),
    Workload(String),
    Affinity(Ipv4Net, String),
    Allocation(Ipv4Net),
}

fn identity(item: &Item) -> Option<Identity> {
    match item {
        Item::Pool(pool) => Some(Identity::Pool(pool.name.clone())),
        Item::Node(node) => Some(Identity::Node(node.name.clone())),
        Item::Workload(workload) => Some(Identity::Workload(workload.full_name())),
        Item::Affinity(block) => Some(Identity::Affinity(block.cidr, block.node.clone())),
        Item::Allocation(block) => Some(Identity::Allocation(block.cidr)),
        Item::Nothing => None,
    }
}

/// The deltas that turn what `old` added to the model into what `new` adds.
fn deltas_between(old: Option<&Item>, new: Option<&Item>, out: &mut Vec<Delta>) {
    let new_identity = new.and_then(identity);
    if let Some(old_identity) = old.and_then(identity) {
        if new_identity.as_ref() != Some(&old_identity) {
            out.push(match old_identity {
                Identity::Pool(name) => Delta::RemovePool(name),
                Identity::Node(name) => Delta::RemoveNode(name),
                Identity::Workload(name) => Delta::RemoveWorkload(name),
                Identity::Affinity(cidr, node) => Delta::RemoveAffinity { cidr, node },
                Identity::Allocation(cidr) => Delta::RemoveAllocation(cidr),
            });
        }
    }
    match new {
        Some(Item::Pool(pool)) => out.push(Delta::UpsertPool((**pool).clone())),
        Some(Item::Node(node)) => out.push(Delta::UpsertNode((**node).clone())),
        Some(Item::Workload(workload)) => out.push(Delta::UpsertWorkload((**workload).clone())),
        Some(Item::Affinity(block)) => out.push(Delta::UpsertAffinity(block.clone())),
        Some(Item::Allocation(block)) => out.push(Delta::UpsertAllocation(block.clone())),
        Some(Item::Nothing) | None => {}
    }
}

impl Cache {
    /// An empty cache for keys under `prefix` (normalized, see [`keys::normalize_prefix`]).
    pub fn new(prefix: &str) -> Self {
        Cache {
            prefix: prefix.to_owned(),
            entries: BTreeMap::new(),
            deltas: None,
            blocks_given: false,
            read_blocks: None,
        }
    }

    /// An empty cache for a whole read that [`Cache::take_replace`] will give away: the IPAM
    /// keys are kept only as the blocks they name, never as keys.
    pub fn giving_blocks(prefix: &str) -> Self {
        Cache { read_blocks: Some(ReadBlocks::default()), ..Cache::new(prefix) }
    }

    /// From now on, every change is also kept as a [`Delta`] until [`Cache::take_deltas`].
    pub fn record_deltas(&mut self) {
        self.deltas.get_or_insert_with(Vec::new);
    }

    /// The deltas recorded since the last call.
    pub fn take_deltas(&mut self) -> Vec<Delta> {
        self.deltas.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// The whole cluster as one [`Delta::Replace`], with the allocation blocks apart, and the
    /// problems of every key. The blocks are given away, not copied: the agent's planner keeps
    /// the only copy of a cluster's blocks. From then on a put or delete of an IPAM key is
    /// sent as the upsert or removal of what its key names (an unchanged value re-plans one
    /// prefix, which writes nothing), and [`Cache::snapshot`] no longer holds the blocks.
    pub fn take_replace(&mut self) -> (Delta, Vec<Problem>) {
        let read = self.read_blocks.take().unwrap_or_default();
        let mut model = Model { blocks: read.affinities, ..Model::default() };
        let mut allocations = read.allocations;
        let mut problems: Vec<(String, Problem)> = read.problems;
        let prefix = &self.prefix;
        self.entries.retain(|key, entry| {
            problems.extend(entry.problems.iter().map(|problem| (key.clone(), problem.clone())));
            match std::mem::replace(&mut entry.item, Item::Nothing) {
                Item::Affinity(block) => model.blocks.push(block),
                Item::Allocation(block) => allocations.push(block),
                item => {
                    match &item {
                        Item::Pool(pool) => model.pools.push((**pool).clone()),
                        Item::Node(node) => model.nodes.push((**node).clone()),
                        Item::Workload(workload) => model.workloads.push((**workload).clone()),
                        _ => {}
                    }
                    entry.item = item;
                    // An IPAM key that names nothing (a broken value) goes too.
                    return !matches!(
                        keys::parse(prefix, key),
                        Parsed::Known(Key::Affinity { .. } | Key::Allocation { .. })
                    );
                }
            }
            false
        });
        self.blocks_given = true;
        // Stable: a key's own problems keep their order.
        problems.sort_by(|a, b| a.0.cmp(&b.0));
        (Delta::Replace { model, allocations }, problems.into_iter().map(|(_, problem)| problem).collect())
    }

    /// Every cached key's resource in key order: the model without the allocation blocks, the
    /// allocation blocks apart, and every key's problems.
    fn collect(&self) -> (Model, Vec<Block>, Vec<Problem>) {
        let mut model = Model::default();
        let mut allocations = Vec::new();
        let mut problems = Vec::new();
        for entry in self.entries.values() {
            problems.extend(entry.problems.iter().cloned());
            match &entry.item {
                Item::Pool(pool) => model.pools.push((**pool).clone()),
                Item::Node(node) => model.nodes.push((**node).clone()),
                Item::Workload(workload) => model.workloads.push((**workload).clone()),
                Item::Affinity(block) => model.blocks.push(block.clone()),
                Item::Allocation(block) => allocations.push(block.clone()),
                Item::Nothing => {}
            }
        }
        (model, allocations, problems)
    }

    /// How many keys the dataplane reads from.
    pub fn len(&self) -> usize {
        self.entries.len() + self.read_blocks.as_ref().map_or(0, |read| read.keys)
    }

    /// A key was written. Returns whether it changed what one of the dataplane's keys means
    /// (and so whether the snapshot may have changed): a new pod's address in an allocation
    /// block does not.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> bool {
        let Ok(key) = std::str::from_utf8(key) else {
            // Calico's keys are text; a binary key is nobody's resource.
            return false;
        };
        let parsed = keys::parse(&self.prefix, key);
        let Some(entry) = convert(&parsed, key, value) else {
            return false;
        };
        if let (Some(read), Parsed::Known(Key::Affinity { .. } | Key::Allocation { .. })) =
            (&mut self.read_blocks, &parsed)
        {
            read.keys += 1;
            read.problems.extend(entry.problems.into_iter().map(|problem| (key.to_owned(), problem)));
            match entry.item {
                Item::Affinity(block) => read.affinities.push(block),
                Item::Allocation(block) => read.allocations.push(block),
                _ => {}
            }
            return true;
        }
        if let Some(named) = self.given_block(&parsed) {
            for problem in &entry.problems {
                tracing::warn!("etcd: skipped: {problem}");
            }
            if let Some(deltas) = &mut self.deltas {
                deltas_between(Some(&named), Some(&entry.item), deltas);
            }
            return true;
        }
        if self.entries.get(key) == Some(&entry) {
            return false;
        }
        if let Some(deltas) = &mut self.deltas {
            let old = self.entries.get(key);
            for problem in entry.problems.iter().filter(|p| !old.is_some_and(|old| old.problems.contains(p))) {
                tracing::warn!("etcd: skipped: {problem}");
            }
            deltas_between(old.map(|old| &old.item), Some(&entry.item), deltas);
        }
        self.entries.insert(key.to_owned(), entry);
        true
    }

    /// A key was deleted. Returns whether it was one of the dataplane's keys.
    pub fn delete(&mut self, key: &[u8]) -> bool {
        let Ok(text) = std::str::from_utf8(key) else {
            return false;
        };
        if let Some(named) = self.given_block(&keys::parse(&self.prefix, text)) {
            if let Some(deltas) = &mut self.deltas {
                deltas_between(Some(&named), None, deltas);
            }
            return true;
        }
        let Some(old) = self.entries.remove(text) else {
            return false;
        };
        if let Some(deltas) = &mut self.deltas {
            deltas_between(Some(&old.item), None, deltas);
        }
        true
    }

    /// What an IPAM key names, once the blocks were given away (see [`Cache::take_replace`]): the
    /// item whose identity a change of the key replaces or removes. None for any other key.
    fn given_block(&self, parsed: &Parsed) -> Option<Item> {
        if !self.blocks_given {
            return None;
        }
        match parsed {
            // Only the identity counts (the block and, for an affinity, the node).
            Parsed::Known(Key::Affinity { node, cidr }) => Some(Item::Affinity(Block {
                cidr: cidr.trunc(),
                node: node.clone(),
                state: AffinityState::Confirmed,
                deleted: false,
            })),
            Parsed::Known(Key::Allocation { cidr }) => Some(Item::Allocation(Block {
                cidr: cidr.trunc(),
                node: String::new(),
                state: AffinityState::Confirmed,
                deleted: false,
            })),
            _ => None,
        }
    }

    /// The whole cluster as the cached keys describe it, in key order.
    pub fn snapshot(&self) -> Snapshot {
        let (mut model, allocations, problems) = self.collect();
        // As ModelBuilder::finish: an affinity key for the same block and node wins, because only
        // it carries the claim's state (pending, pendingDeletion). An allocation block whose
        // affinity names another node than an affinity key is kept, so that the plan reports the
        // block claimed by two nodes.
        let affinities: HashSet<(Ipv4Net, &str)> = model.blocks.iter().map(|b| (b.cidr, b.node.as_str())).collect();
        let extra: Vec<Block> =
            allocations.into_iter().filter(|b| !affinities.contains(&(b.cidr, b.node.as_str()))).collect();
        model.blocks.extend(extra);
        Snapshot { model, problems }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        fixtures::{self, ip, net},
        model::{AffinityState, MacAddr},
    };

    const PREFIX: &str = "/calico";
    const POOLS: &str = "/calico/resources/v3/projectcalico.org/ippools/";
    const NODES: &str = "/calico/resources/v3/projectcalico.org/nodes/";
    const WEPS: &str = "/calico/resources/v3/projectcalico.org/workloadendpoints/";
    const HOST: &str = "/calico/ipam/v2/host/";
    const ASSIGNMENT: &str = "/calico/ipam/v2/assignment/ipv4/block/";

    fn cache(pairs: &[(String, &str)]) -> Cache {
        let mut cache = Cache::new(PREFIX);
        for (key, value) in pairs {
            cache.put(key.as_bytes(), value.as_bytes());
        }
        cache
    }

    /// Values as calicoctl and calico-node write them, with the fields this dataplane ignores.
    fn cluster() -> Vec<(String, &'static str)> {
        vec![
            (
                format!("{POOLS}default-ipv4-ippool"),
                r#"{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"default-ipv4-ippool","uid":"1b5b6c1e-8f3a-4c1e-9c5e-1d2f3a4b5c6d","creationTimestamp":"2024-01-01T00:00:00Z"},"spec":{"cidr":"10.244.0.0/16","vxlanMode":"Always","ipipMode":"Never","natOutgoing":true,"blockSize":26,"nodeSelector":"all()","allowedUses":["Workload","Tunnel"]}}"#,
            ),
            (
                format!("{NODES}node-1"),
                r#"{"kind":"Node","apiVersion":"projectcalico.org/v3","metadata":{"name":"node-1","labels":{"kubernetes.io/hostname":"node-1"}},"spec":{"bgp":{"ipv4Address":"10.100.0.11/24"},"ipv4VXLANTunnelAddr":"10.244.1.0","vxlanTunnelMACAddr":"66:d0:00:00:00:01","orchRefs":[{"nodeName":"node-1","orchestrator":"k8s"}]},"status":{}}"#,
            ),
            (
                format!("{WEPS}default/node--1-k8s-web--1-eth0"),
                r#"{"kind":"WorkloadEndpoint","apiVersion":"projectcalico.org/v3","metadata":{"name":"node--1-k8s-web--1-eth0","namespace":"default","labels":{"app":"web"}},"spec":{"orchestrator":"k8s","node":"node-1","pod":"web-1","endpoint":"eth0","ipNetworks":["10.244.1.2/32"],"profiles":["kns.default"],"interfaceName":"cali0761ccbeace","mac":"0a:58:0a:f4:01:02"}}"#,
            ),
            (format!("{HOST}node-1/ipv4/block/10.244.1.0-26"), r#"{"state":"confirmed","deleted":false}"#),
            (
                format!("{ASSIGNMENT}10.244.1.0-26"),
                r#"{"cidr":"10.244.1.0/26","affinity":"host:node-1","strictAffinity":false,"allocations":[0,1,null],"unallocated":[2],"attributes":[{"handle_id":"vxlan-tunnel-addr-node-1","secondary":null},{"handle_id":"k8s-pod-network.abc","secondary":null}],"deleted":false}"#,
            ),
            // Only an allocation block for node-2's block: it routes from its affinity.
            (
                format!("{ASSIGNMENT}10.244.2.0-26"),
                r#"{"cidr":"10.244.2.0/26","affinity":"host:node-2","allocations":[],"unallocated":[],"attributes":[]}"#,
            ),
            // Not the dataplane's keys.
            (format!("{PREFIX}/ipam/v2/handle/k8s-pod-network.abc"), r#"{"block":{}}"#),
            (format!("{PREFIX}/resources/v3/projectcalico.org/profiles/kns.default"), "{}"),
        ]
    }

    /// The general path alone, for comparing with the typed one.
    fn general(known: &Key, key: &str, value: &[u8]) -> Entry {
        match resource(known, key, value) {
            Ok(resource) => build(known, key, &resource),
            Err(problem) => Entry { item: Item::Nothing, problems: vec![problem] },
        }
    }

    #[test]
    fn the_typed_ipam_path_makes_what_the_general_path_makes_or_leaves_the_value_to_it() {
        let affinity = Key::Affinity { node: "node-1".into(), cidr: net("10.244.1.0/26") };
        let allocation = Key::Allocation { cidr: net("10.244.1.0/26") };
        let values: &[&str] = &[
            "",
            "{}",
            r#"{"state":"confirmed","deleted":false}"#,
            r#"{"state":"pending","deleted":false}"#,
            r#"{"state":"pendingDeletion"}"#,
            r#"{"state":"confirmed","deleted":true}"#,
            r#"{"state":"claimed"}"#,
            r#"{"state":null}"#,
            r#"{"state":7}"#,
            r#"{"deleted":"false"}"#,
            r#"{"deleted":null}"#,
            r#"{"cidr":"10.244.1.0/26","affinity":"host:node-2","allocations":[0,null],"deleted":false}"#,
            r#"{"cidr":"10.244.1.0/26","affinity":"host:"}"#,
            r#"{"cidr":"10.244.9.0/26","affinity":"host:node-2"}"#,
            r#"{"cidr":"nonsense","affinity":"host:node-2"}"#,
            r#"{"affinity":"virtual:x"}"#,
            r#"{"affinity":7}"#,
            r#"{"affinity":null}"#,
            r#"{"affinity":"host:node-3","deleted":true}"#,
            "[1, 2]",
            "not json",
        ];
        let mut typed = 0;
        for known in [&affinity, &allocation] {
            let key = "/calico/ipam/key";
            for value in values {
                if let Some(entry) = typed_ipam(known, value.as_bytes()) {
                    typed += 1;
                    assert_eq!(entry, general(known, key, value.as_bytes()), "{known:?} {value}");
                }
            }
        }
        assert!(typed >= 10, "the common shapes take the typed path ({typed})");
        assert!(
            typed_ipam(&affinity, br#"{"state":"claimed"}"#).is_none(),
            "a bad state is the general path's to report"
        );
    }

    #[test]
    fn calicos_values_become_the_model() {
        let snapshot = cache(&cluster()).snapshot();
        assert_eq!(snapshot.problems, vec![]);
        let model = snapshot.model;
        assert_eq!(
            model.pools,
            vec![IpPool { nat_outgoing: true, ..fixtures::pool("default-ipv4-ippool", "10.244.0.0/16", 26) }]
        );
        assert_eq!(
            model.nodes,
            vec![Node {
                name: "node-1".into(),
                addr: Some(net("10.100.0.11/24")),
                vxlan_tunnel_addr: Some(ip("10.244.1.0")),
                vxlan_tunnel_mac: Some(MacAddr([0x66, 0xd0, 0, 0, 0, 1])),
                ipip_tunnel_addr: None,
            }]
        );
        assert_eq!(model.workloads.len(), 1);
        assert_eq!(model.workloads[0].full_name(), "default/node--1-k8s-web--1-eth0");
        assert_eq!(model.workloads[0].addrs, vec![net("10.244.1.2/32")]);
        assert_eq!(model.workloads[0].interface, "cali0761ccbeace");
        let blocks: Vec<(Ipv4Net, &str, AffinityState, bool)> =
            model.blocks.iter().map(|b| (b.cidr, b.node.as_str(), b.state, b.deleted)).collect();
        assert_eq!(
            blocks,
            [
                (net("10.244.1.0/26"), "node-1", AffinityState::Confirmed, false),
                (net("10.244.2.0/26"), "node-2", AffinityState::Confirmed, false),
            ]
        );
    }

    #[test]
    fn affinity_state_and_deleted_decide_routing() {
        let snapshot = cache(&[
            (format!("{HOST}n1/ipv4/block/10.244.1.0-26"), r#"{"state":"pending","deleted":false}"#),
            (format!("{HOST}n2/ipv4/block/10.244.2.0-26"), r#"{"state":"confirmed","deleted":true}"#),
            (format!("{HOST}n3/ipv4/block/10.244.3.0-26"), r#"{"state":"pendingDeletion"}"#),
            // Old Calico: an empty value.
            (format!("{HOST}n4/ipv4/block/10.244.4.0-26"), ""),
            // The affinity key wins over the allocation block for the same node...
            (format!("{ASSIGNMENT}10.244.1.0-26"), r#"{"affinity":"host:n1"}"#),
        ])
        .snapshot();
        assert_eq!(snapshot.problems, vec![]);
        let routes: Vec<(&str, bool)> = snapshot.model.blocks.iter().map(|b| (b.node.as_str(), b.routes())).collect();
        assert_eq!(routes, [("n1", false), ("n2", false), ("n3", false), ("n4", true)]);
    }

    #[test]
    fn a_block_claimed_by_two_nodes_reaches_the_plan() {
        let snapshot = cache(&[
            (format!("{HOST}n1/ipv4/block/10.244.1.0-26"), r#"{"state":"confirmed"}"#),
            (format!("{ASSIGNMENT}10.244.1.0-26"), r#"{"cidr":"10.244.1.0/26","affinity":"host:n2"}"#),
        ])
        .snapshot();
        let owners: Vec<&str> = snapshot.model.blocks.iter().map(|b| b.node.as_str()).collect();
        assert_eq!(owners, ["n1", "n2"]);
    }

    #[test]
    fn broken_values_name_the_key_and_field_and_the_rest_is_applied() {
        let mut pairs = cluster();
        let broken = [
            (format!("{POOLS}not-json"), "{\"kind\": \"IPPool\", "),
            (format!("{POOLS}bad-cidr"), r#"{"spec":{"cidr":"10.300.0.0/16"}}"#),
            (format!("{POOLS}a-list"), "[1, 2]"),
            (format!("{NODES}node-2"), r#"{"spec":{"vxlanTunnelMACAddr":"66:d0"}}"#),
            (format!("{NODES}node-3"), r#"{"metadata":{"name":"node-4"},"spec":{}}"#),
            (format!("{NODES}node-5"), r#"{"kind":"IPPool","spec":{}}"#),
            (format!("{WEPS}default/w"), r#"{"spec":{"node":"node-1","ipNetworks":["10.244.1.x/32"]}}"#),
            (format!("{HOST}node-1/ipv4/block/10.244.9.0-26"), r#"{"state":"claimed"}"#),
            (format!("{HOST}node-1/ipv4/block/10.244.8.0-26"), r#"{"deleted":"maybe"}"#),
            (format!("{HOST}node-1/ipv4/block/10.244.7.0-xx"), r#"{"state":"confirmed"}"#),
            (format!("{ASSIGNMENT}10.244.3.0-26"), r#"{"cidr":"10.244.4.0/26","affinity":"host:n"}"#),
            (format!("{ASSIGNMENT}10.244.5.0-26"), r#"{"affinity":"host:"}"#),
        ];
        pairs.extend(broken.iter().cloned());
        let snapshot = cache(&pairs).snapshot();
        let good = cache(&cluster()).snapshot();
        assert_eq!(snapshot.model, good.model, "the broken keys add nothing, the rest stays");
        let seen: Vec<(&str, &str, &str)> =
            snapshot.problems.iter().map(|p| (p.kind.as_str(), p.name.as_str(), p.field.as_str())).collect();
        let expected = [
            ("IPAMBlock", "/calico/ipam/v2/assignment/ipv4/block/10.244.3.0-26", "cidr"),
            ("IPAMBlock", "/calico/ipam/v2/assignment/ipv4/block/10.244.5.0-26", "affinity"),
            ("BlockAffinity", "/calico/ipam/v2/host/node-1/ipv4/block/10.244.7.0-xx", "key"),
            ("BlockAffinity", "/calico/ipam/v2/host/node-1/ipv4/block/10.244.8.0-26", "deleted"),
            ("BlockAffinity", "/calico/ipam/v2/host/node-1/ipv4/block/10.244.9.0-26", "state"),
            ("IPPool", "/calico/resources/v3/projectcalico.org/ippools/a-list", "value"),
            ("IPPool", "/calico/resources/v3/projectcalico.org/ippools/bad-cidr", "spec.cidr"),
            ("IPPool", "/calico/resources/v3/projectcalico.org/ippools/not-json", "value"),
            ("Node", "/calico/resources/v3/projectcalico.org/nodes/node-2", "spec.vxlanTunnelMACAddr"),
            ("Node", "/calico/resources/v3/projectcalico.org/nodes/node-3", "metadata.name"),
            ("Node", "/calico/resources/v3/projectcalico.org/nodes/node-5", "kind"),
            (
                "WorkloadEndpoint",
                "/calico/resources/v3/projectcalico.org/workloadendpoints/default/w",
                "spec.ipNetworks",
            ),
        ];
        assert_eq!(seen, expected);
        let not_json = &snapshot.problems[7];
        assert!(not_json.message.starts_with("not JSON"), "{not_json}");
        assert!(not_json.message.contains("line 1"), "serde_json names the place: {not_json}");
    }

    #[test]
    fn names_come_from_the_key_when_the_value_leaves_them_out() {
        let snapshot = cache(&[
            (format!("{POOLS}p"), r#"{"spec":{"cidr":"10.244.0.0/16"}}"#),
            (format!("{WEPS}shop/w"), r#"{"metadata":null,"spec":{"node":"n"}}"#),
        ])
        .snapshot();
        assert_eq!(snapshot.problems, vec![]);
        assert_eq!(snapshot.model.pools[0].name, "p");
        assert_eq!(snapshot.model.workloads[0].full_name(), "shop/w");
    }

    #[test]
    fn put_and_delete_follow_the_keys() {
        let mut cache = cache(&cluster());
        assert_eq!(cache.len(), 6, "ignored keys are not kept");
        let key = format!("{HOST}node-2/ipv4/block/10.244.2.0-26");
        assert!(cache.put(key.as_bytes(), br#"{"state":"pending","deleted":false}"#));
        let pending = cache.snapshot();
        let node_2: Vec<bool> =
            pending.model.blocks.iter().filter(|b| b.node == "node-2").map(|b| b.routes()).collect();
        assert_eq!(node_2, [false], "the pending affinity key overrides the allocation block");
        assert!(cache.delete(key.as_bytes()));
        assert!(!cache.delete(key.as_bytes()));
        assert_eq!(cache.snapshot(), cache_of_cluster_snapshot());
        assert!(!cache.put(b"/calico/felix/v2/status", b"{}"));
        assert!(!cache.put(b"\xff\xfe", b"{}"));
    }

    /// A read that keeps the IPAM keys only as blocks gives away the same replace, with the same
    /// problems in key order, as one that caches every key.
    #[test]
    fn a_read_giving_its_blocks_replaces_as_a_cache_of_every_key() {
        let mut pairs = cluster();
        pairs.push((format!("{HOST}node-2/ipv4/block/10.244.9.0-26"), r#"{"state":7}"#));
        pairs.push((format!("{ASSIGNMENT}10.244.8.0-26"), r#"{"cidr":"10.244.8.0/26","affinity":"host:node-2"}"#));
        // In key order, as etcd serves a read.
        pairs.sort();
        let mut keyed = cache(&pairs);
        let mut giving = Cache::giving_blocks(PREFIX);
        for (key, value) in &pairs {
            giving.put(key.as_bytes(), value.as_bytes());
        }
        assert_eq!(giving.len(), keyed.len());
        let (keyed_replace, keyed_problems) = keyed.take_replace();
        let (giving_replace, giving_problems) = giving.take_replace();
        assert!(!keyed_problems.is_empty(), "the broken affinity is reported");
        assert_eq!(giving_problems, keyed_problems);
        assert_eq!(giving_replace, keyed_replace);
        assert_eq!(giving.len(), keyed.len(), "neither keeps an IPAM key");
    }

    /// The deltas of a cache, applied to a planner after its whole read (which took the blocks
    /// away from it), give the planner the model that a cache keeping every key holds, change
    /// after change.
    #[test]
    fn deltas_follow_the_keys_as_the_snapshot_does() {
        use crate::incremental::{Changes, Planner};
        let mut whole = cache(&cluster());
        let mut cache = whole.clone();
        cache.record_deltas();
        let mut planner = Planner::new("node-1");
        let (replace, _) = cache.take_replace();
        assert!(cache.len() < whole.len(), "the blocks went to the replace");
        planner.apply(replace, &mut Changes::default());
        let same = |whole: &Cache, planner: &Planner| {
            let mut expected = whole.snapshot().model;
            expected.workloads.retain(|w| w.node == "node-1");
            assert_eq!(planner.model().sorted(), expected.sorted());
        };
        same(&whole, &planner);
        let affinity = format!("{HOST}node-2/ipv4/block/10.244.2.0-26");
        let allocation = format!("{ASSIGNMENT}10.244.7.0-26");
        let steps: [(&str, Option<&[u8]>); 9] = [
            (&affinity, Some(br#"{"state":"pending","deleted":false}"#)),
            (&allocation, Some(br#"{"cidr":"10.244.7.0/26","affinity":"host:node-2"}"#)),
            // The same value again: nothing changes.
            (&allocation, Some(br#"{"cidr":"10.244.7.0/26","affinity":"host:node-2"}"#)),
            (&allocation, Some(br#"{"cidr":"10.244.7.0/26","affinity":"host:node-1"}"#)),
            // A broken value takes the block away.
            (&affinity, Some(br#"{"state":7}"#)),
            (&affinity, Some(br#"{"state":"confirmed"}"#)),
            (&affinity, None),
            (&allocation, Some(br#"{"cidr":"10.244.7.0/26"}"#)),
            (&allocation, None),
        ];
        for (key, value) in steps {
            match value {
                Some(value) => {
                    whole.put(key.as_bytes(), value);
                    cache.put(key.as_bytes(), value)
                }
                None => {
                    whole.delete(key.as_bytes());
                    cache.delete(key.as_bytes())
                }
            };
            for delta in cache.take_deltas() {
                planner.apply(delta, &mut Changes::default());
            }
            same(&whole, &planner);
        }
    }

    fn cache_of_cluster_snapshot() -> Snapshot {
        cache(&cluster()).snapshot()
    }

    #[test]
    fn hostile_values_do_not_panic() {
        let values: [&[u8]; 9] = [
            b"",
            b"null",
            b"\xff\xfe",
            b"[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]",
            br#"{"metadata":[1]}"#,
            br#"{"metadata":{"name":7}}"#,
            br#"{"spec":"x"}"#,
            br#"{"cidr":7,"affinity":["host:n"]}"#,
            br#"{"state":{"a":1},"deleted":[]}"#,
        ];
        let keys = [
            format!("{POOLS}p"),
            format!("{NODES}n"),
            format!("{WEPS}ns/w"),
            format!("{HOST}n/ipv4/block/10.244.1.0-26"),
            format!("{ASSIGNMENT}10.244.1.0-26"),
        ];
        for key in &keys {
            for value in values {
                let mut cache = Cache::new(PREFIX);
                cache.put(key.as_bytes(), value);
                let _ = cache.snapshot();
            }
        }
    }
}

//! The file datastore: a multi-document YAML of Calico resources.
//!
//! The file holds resources in the shapes users write and that `kubectl get -o yaml` and
//! `calicoctl get -o yaml` print: `IPPool`, `BlockAffinity`, `IPAMBlock`, `Node` (Calico's, or a
//! Kubernetes Node with Calico's annotations), `WorkloadEndpoint`, and lists of them (`List`,
//! `IPPoolList`, ...). Fields this dataplane does not use (creationTimestamp, uid, nodeSelector,
//! ...) are ignored.
//!
//! Each document is read into a [`serde_yaml::Value`] and its fields are picked out by hand, so
//! that every complaint names the resource's kind, its name and the field. A resource with a
//! missing or invalid field is reported as a [`Problem`] and skipped while the rest is applied;
//! only text that is not YAML at all makes the whole file unusable ([`FileError`]).

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr},
    path::Path,
    str::FromStr,
};

use anyhow::Context as _;
use ipnet::{IpNet, Ipv4Net};
use serde::Deserialize as _;
use serde_yaml::{Mapping, Value};

use crate::model::{AffinityState, Block, EncapMode, IpPool, MacAddr, Model, Node, Problem, Workload};

/// Calico's default `blockSize` for IPv4 pools.
const DEFAULT_BLOCK_SIZE: u8 = 26;

/// The file as a whole is unusable (not YAML): the agent keeps its last good state.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The text is not a YAML stream. serde_yaml's message already names the line and column.
    #[error("not YAML: {message}")]
    NotYaml {
        /// The line (1-based) where the YAML parser gave up, where known.
        line: Option<usize>,
        /// The column (1-based) where the YAML parser gave up, where known.
        column: Option<usize>,
        /// What the YAML parser says is wrong.
        message: String,
    },
}

impl From<serde_yaml::Error> for FileError {
    fn from(error: serde_yaml::Error) -> Self {
        let location = error.location();
        FileError::NotYaml {
            line: location.as_ref().map(|l| l.line()),
            column: location.as_ref().map(|l| l.column()),
            message: error.to_string(),
        }
    }
}

/// Reads a multi-document YAML stream of Calico resources into a model.
///
/// Resources that cannot be used are returned as problems beside the model; only a stream that is
/// not YAML at all is an error.
pub fn parse(text: &str) -> Result<(Model, Vec<Problem>), FileError> {
    // Read every document before applying any: a syntax error anywhere means the file is probably
    // being edited, and half of it must not replace the last good state.
    let mut documents = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        documents.push(Value::deserialize(document)?);
    }
    let mut builder = ModelBuilder::new();
    for (index, document) in documents.iter().enumerate() {
        builder.add(document, &format!("document {}", index + 1));
    }
    Ok(builder.finish())
}

/// Reads the file at `path` and parses it with [`parse`]; errors name the path.
pub fn load(path: &Path) -> Result<(Model, Vec<Problem>), anyhow::Error> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read the datastore file {}", path.display()))?;
    let parsed = parse(&text).with_context(|| format!("cannot use the datastore file {}", path.display()))?;
    Ok(parsed)
}

/// Turns Calico resources, one at a time, into a [`Model`] and a list of [`Problem`]s.
///
/// [`parse`] feeds it the documents of a file; other datastores that receive the same resource
/// shapes (etcd stores v3 resources as JSON, which is YAML too) can feed it theirs.
#[derive(Debug, Default)]
pub struct ModelBuilder {
    model: Model,
    problems: Vec<Problem>,
    /// Blocks read from `IPAMBlock`s. They are merged in [`ModelBuilder::finish`], where a
    /// `BlockAffinity` for the same block and node wins wherever it came in the stream: only the
    /// affinity carries the claim's state (pending, pendingDeletion).
    ipam_blocks: Vec<Block>,
    /// Names of the pools read so far, to refuse a second pool of the same name.
    pool_names: HashSet<String>,
    /// Index into `model.nodes` by name, to merge a Calico Node with the Kubernetes Node.
    node_index: HashMap<String, usize>,
    /// `namespace/name` of the workloads read so far, to refuse duplicates.
    workload_names: HashSet<String>,
}

impl ModelBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one resource (or a list of them). `position` names it in problems when it has no
    /// name, e.g. `document 3`.
    pub fn add(&mut self, resource: &Value, position: &str) {
        let map = match resource {
            // An empty document (`---` alone, or a trailing `---`).
            Value::Null => return,
            Value::Mapping(map) => map,
            other => {
                self.problems.push(Problem::new(
                    "resource",
                    position,
                    "kind",
                    format!(
                        "this document is {}, not a resource: expected a mapping with apiVersion, \
                         kind, metadata and spec; it is skipped",
                        type_name(other)
                    ),
                ));
                return;
            }
        };
        let kind = match map.get("kind") {
            Some(Value::String(kind)) => kind.as_str(),
            // `kubectl get -o yaml` output cut short before its trailing `kind: List`.
            None if matches!(map.get("items"), Some(Value::Sequence(_))) => "List",
            None | Some(Value::Null) => {
                self.problems.push(Problem::new(
                    "resource",
                    resource_name(resource, "", position),
                    "kind",
                    format!("missing: set kind to one of {KNOWN_KINDS}; the resource is skipped"),
                ));
                return;
            }
            Some(other) => {
                self.problems.push(Problem::new(
                    "resource",
                    resource_name(resource, "", position),
                    "kind",
                    format!("expected a string, found {}; the resource is skipped", type_name(other)),
                ));
                return;
            }
        };
        if kind == "List" || kind.ends_with("List") {
            self.add_list(kind, map, resource, position);
            return;
        }
        let ctx = Ctx { kind, name: resource_name(resource, kind, position) };
        let result = match kind {
            "IPPool" => parse_pool(&ctx, resource).map(|pool| self.add_pool(&ctx, pool)),
            "BlockAffinity" => parse_block_affinity(&ctx, resource).map(|block| {
                if let Some(block) = block {
                    self.model.blocks.push(block);
                }
            }),
            "IPAMBlock" => parse_ipam_block(&ctx, resource).map(|block| {
                if let Some(block) = block {
                    self.ipam_blocks.push(block);
                }
            }),
            "Node" => parse_node(&ctx, resource).map(|node| self.add_node(&ctx, node)),
            "WorkloadEndpoint" => parse_workload(&ctx, resource).map(|workload| self.add_workload(&ctx, workload)),
            _ => Err(ctx.problem(
                "kind",
                format!(
                    "kind {kind:?} is not read by this dataplane and is skipped \
                     (it reads {KNOWN_KINDS})"
                ),
            )),
        };
        if let Err(problem) = result {
            self.problems.push(problem);
        }
    }

    /// The model and the problems met on the way.
    pub fn finish(mut self) -> (Model, Vec<Problem>) {
        let affinities: HashSet<(Ipv4Net, String)> =
            self.model.blocks.iter().map(|b| (b.cidr, b.node.clone())).collect();
        let mut seen = HashSet::new();
        for block in self.ipam_blocks {
            let key = (block.cidr, block.node.clone());
            if affinities.contains(&key) || !seen.insert(key) {
                continue;
            }
            self.model.blocks.push(block);
        }
        (self.model, self.problems)
    }

    /// Adds every item of a `List` (kubectl) or `<Kind>List` (calicoctl, the API).
    fn add_list(&mut self, kind: &str, map: &Mapping, resource: &Value, position: &str) {
        let items = match map.get("items") {
            None | Some(Value::Null) => return,
            Some(Value::Sequence(items)) => items,
            Some(other) => {
                self.problems.push(Problem::new(
                    kind,
                    resource_name(resource, kind, position),
                    "items",
                    format!("expected a list of resources, found {}; the list is skipped", type_name(other)),
                ));
                return;
            }
        };
        // Items of a typed list fetched from the API (`IPPoolList`) may leave out their own kind
        // and apiVersion: they are the list's.
        let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
        for (index, item) in items.iter().enumerate() {
            let item_position = format!("{position}, items[{index}]");
            match (item, item_kind) {
                (Value::Mapping(item_map), Some(item_kind)) if !item_map.contains_key("kind") => {
                    let mut filled = item_map.clone();
                    filled.insert(Value::from("kind"), Value::from(item_kind));
                    if let (false, Some(api_version)) = (filled.contains_key("apiVersion"), map.get("apiVersion")) {
                        filled.insert(Value::from("apiVersion"), api_version.clone());
                    }
                    self.add(&Value::Mapping(filled), &item_position);
                }
                _ => self.add(item, &item_position),
            }
        }
    }

    fn add_pool(&mut self, ctx: &Ctx, pool: IpPool) {
        if !self.pool_names.insert(pool.name.clone()) {
            self.problems.push(ctx.problem(
                "metadata.name",
                format!(
                    "an IPPool named {:?} was already read; this one is skipped: give each pool \
                     its own name",
                    pool.name
                ),
            ));
            return;
        }
        self.model.pools.push(pool);
    }

    /// A Node may come twice, as Calico's Node and as the Kubernetes Node with Calico's
    /// annotations: the two are merged, the first value of each field winning.
    fn add_node(&mut self, ctx: &Ctx, node: Node) {
        let Some(&index) = self.node_index.get(&node.name) else {
            self.node_index.insert(node.name.clone(), self.model.nodes.len());
            self.model.nodes.push(node);
            return;
        };
        let Some(existing) = self.model.nodes.get_mut(index) else {
            return;
        };
        let mut conflicts = Vec::new();
        merge_field(&mut existing.addr, node.addr, "spec.bgp.ipv4Address", &mut conflicts);
        merge_field(
            &mut existing.vxlan_tunnel_addr,
            node.vxlan_tunnel_addr,
            "spec.ipv4VXLANTunnelAddr",
            &mut conflicts,
        );
        merge_field(&mut existing.vxlan_tunnel_mac, node.vxlan_tunnel_mac, "spec.vxlanTunnelMACAddr", &mut conflicts);
        merge_field(
            &mut existing.ipip_tunnel_addr,
            node.ipip_tunnel_addr,
            "spec.bgp.ipv4IPIPTunnelAddr",
            &mut conflicts,
        );
        for (field, kept, ignored) in conflicts {
            self.problems.push(ctx.problem(
                field,
                format!(
                    "the node is described twice with different values ({kept} and {ignored}); \
                     keeping the first, {kept}: make the two agree"
                ),
            ));
        }
    }

    fn add_workload(&mut self, ctx: &Ctx, workload: Workload) {
        if !self.workload_names.insert(workload.full_name()) {
            self.problems.push(ctx.problem(
                "metadata.name",
                "a WorkloadEndpoint with this namespace and name was already read; \
                 this one is skipped",
            ));
            return;
        }
        self.model.workloads.push(workload);
    }
}

/// The kinds [`ModelBuilder::add`] reads, for messages.
const KNOWN_KINDS: &str = "IPPool, BlockAffinity, IPAMBlock, Node, WorkloadEndpoint and lists of them";

/// Fills `existing` from `new` where it is empty; records a conflict where both are set and differ.
fn merge_field<T: PartialEq + std::fmt::Display>(
    existing: &mut Option<T>,
    new: Option<T>,
    field: &'static str,
    conflicts: &mut Vec<(&'static str, String, String)>,
) {
    match (existing.as_ref(), new) {
        (None, new) => *existing = new,
        (Some(old), Some(new)) if *old != new => conflicts.push((field, old.to_string(), new.to_string())),
        _ => {}
    }
}

/// The resource being read, to name it in problems.
struct Ctx<'a> {
    kind: &'a str,
    name: String,
}

impl Ctx<'_> {
    fn problem(&self, field: &str, message: impl Into<String>) -> Problem {
        Problem::new(self.kind, self.name.clone(), field, message)
    }
}

/// The name problems give a resource: `metadata.name` (`namespace/name` for a
/// WorkloadEndpoint), or its position in the stream if it has none.
fn resource_name(resource: &Value, kind: &str, position: &str) -> String {
    // An empty name names nothing: the position is what finds the resource in the file.
    let name = match lookup(resource, "metadata.name") {
        Some(Value::String(name)) if !name.trim().is_empty() => name,
        _ => return position.to_owned(),
    };
    if kind == "WorkloadEndpoint" {
        let namespace = match lookup(resource, "metadata.namespace") {
            Some(Value::String(namespace)) if !namespace.is_empty() => namespace.as_str(),
            _ => "default",
        };
        return format!("{namespace}/{name}");
    }
    name.clone()
}

/// The value at a dotted path (`spec.bgp.ipv4Address`); a null counts as absent.
fn lookup<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    let mut current = value;
    for key in path.split('.') {
        current = current.as_mapping()?.get(key)?;
    }
    if current.is_null() {
        None
    } else {
        Some(current)
    }
}

/// A YAML value's type, for messages.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// An optional string field; an empty string counts as absent, as it does in Calico.
fn optional_str<'v>(ctx: &Ctx, resource: &'v Value, path: &str) -> Result<Option<&'v str>, Problem> {
    match lookup(resource, path) {
        None => Ok(None),
        Some(Value::String(text)) if text.trim().is_empty() => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.trim())),
        Some(other) => Err(ctx.problem(path, format!("expected a string, found {}", type_name(other)))),
    }
}

/// A required string field; `fix` says what to set when it is missing.
fn required_str<'v>(ctx: &Ctx, resource: &'v Value, path: &str, fix: &str) -> Result<&'v str, Problem> {
    optional_str(ctx, resource, path)?.ok_or_else(|| ctx.problem(path, format!("missing: {fix}")))
}

/// An optional boolean: `true`/`false`, or the same as a string (the v1 CRDs store
/// `BlockAffinity` `spec.deleted` as a string).
fn optional_bool(ctx: &Ctx, resource: &Value, path: &str) -> Result<Option<bool>, Problem> {
    match lookup(resource, path) {
        None => Ok(None),
        Some(Value::Bool(value)) => Ok(Some(*value)),
        Some(Value::String(text)) if text.trim().eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Value::String(text)) if text.trim().eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(Value::String(text)) => Err(ctx.problem(path, format!("{text:?} is not a boolean: set true or false"))),
        Some(other) => Err(ctx.problem(path, format!("expected true or false, found {}", type_name(other)))),
    }
}

/// A CIDR such as `10.244.0.0/16` (IPv4 or IPv6).
fn parse_cidr(ctx: &Ctx, field: &str, text: &str) -> Result<IpNet, Problem> {
    IpNet::from_str(text).map_err(|_| {
        ctx.problem(field, format!("{text:?} is not a CIDR: write an address and a prefix length, e.g. 10.244.0.0/16"))
    })
}

/// A single IPv4 address, bare (`10.244.1.0`, as Calico writes tunnel addresses) or with a
/// prefix length, which is dropped.
fn parse_ipv4_addr(ctx: &Ctx, field: &str, text: &str) -> Result<Ipv4Addr, Problem> {
    let address = text.split('/').next().unwrap_or(text);
    match IpAddr::from_str(address) {
        Ok(IpAddr::V4(address)) => Ok(address),
        Ok(IpAddr::V6(_)) => Err(ctx.problem(field, format!("{text:?} is IPv6: write the IPv4 address"))),
        Err(_) => Err(ctx.problem(field, format!("{text:?} is not an IPv4 address (e.g. 10.244.1.0)"))),
    }
}

/// A node's address with its subnet's prefix length (`10.0.0.1/24`); a bare address is a /32.
fn parse_node_addr(ctx: &Ctx, field: &str, text: &str) -> Result<Ipv4Net, Problem> {
    let wrong = || ctx.problem(field, format!("{text:?} is not an IPv4 address with its subnet, e.g. 10.0.0.1/24"));
    if text.contains('/') {
        match IpNet::from_str(text) {
            Ok(IpNet::V4(net)) => Ok(net),
            Ok(IpNet::V6(_)) => Err(ctx.problem(field, format!("{text:?} is IPv6: IPv6 is not supported yet"))),
            Err(_) => Err(wrong()),
        }
    } else {
        match IpAddr::from_str(text) {
            Ok(IpAddr::V4(address)) => Ok(Ipv4Net::from(address)),
            Ok(IpAddr::V6(_)) => Err(ctx.problem(field, format!("{text:?} is IPv6: IPv6 is not supported yet"))),
            Err(_) => Err(wrong()),
        }
    }
}

fn parse_mac(ctx: &Ctx, field: &str, text: &str) -> Result<MacAddr, Problem> {
    MacAddr::from_str(text).map_err(|error| ctx.problem(field, error.to_string()))
}

fn parse_encap_mode(ctx: &Ctx, resource: &Value, field: &str) -> Result<EncapMode, Problem> {
    match optional_str(ctx, resource, field)? {
        None => Ok(EncapMode::Never),
        Some(text) => EncapMode::from_str(text).map_err(|error| ctx.problem(field, error.to_string())),
    }
}

/// An `IPPool`.
fn parse_pool(ctx: &Ctx, resource: &Value) -> Result<IpPool, Problem> {
    let name = required_str(ctx, resource, "metadata.name", "give the pool a name")?;
    let text = required_str(ctx, resource, "spec.cidr", "set the pool's IPv4 range, e.g. 10.244.0.0/16")?;
    // A pool written with host bits (10.244.1.5/16) means its network, as in Calico.
    let cidr = match parse_cidr(ctx, "spec.cidr", text)? {
        IpNet::V4(cidr) => cidr.trunc(),
        IpNet::V6(_) => {
            return Err(ctx.problem(
                "spec.cidr",
                format!("{text} is an IPv6 pool: IPv6 is not supported yet, the pool is skipped"),
            ))
        }
    };
    let block_size = match lookup(resource, "spec.blockSize") {
        None => DEFAULT_BLOCK_SIZE,
        Some(Value::Number(number)) => match number.as_u64().and_then(|n| u8::try_from(n).ok()) {
            Some(size) => size,
            None => {
                return Err(
                    ctx.problem("spec.blockSize", format!("{number} is not a prefix length: use 26, Calico's default"))
                )
            }
        },
        Some(other) => {
            return Err(
                ctx.problem("spec.blockSize", format!("expected a number such as 26, found {}", type_name(other)))
            )
        }
    };
    if block_size < cidr.prefix_len() || block_size > 32 {
        return Err(ctx.problem(
            "spec.blockSize",
            format!(
                "{block_size} does not fit the pool {cidr}: blocks are carved from the pool, so blockSize \
                 must be between {} and 32",
                cidr.prefix_len()
            ),
        ));
    }
    Ok(IpPool {
        name: name.to_owned(),
        cidr,
        block_size,
        vxlan_mode: parse_encap_mode(ctx, resource, "spec.vxlanMode")?,
        ipip_mode: parse_encap_mode(ctx, resource, "spec.ipipMode")?,
        nat_outgoing: optional_bool(ctx, resource, "spec.natOutgoing")?.unwrap_or(false),
        disabled: optional_bool(ctx, resource, "spec.disabled")?.unwrap_or(false),
    })
}

/// A block's CIDR; `None` for an IPv6 block, skipped without a problem because its pool has
/// already been reported as unsupported.
fn parse_block_cidr(ctx: &Ctx, resource: &Value) -> Result<Option<Ipv4Net>, Problem> {
    let text = required_str(ctx, resource, "spec.cidr", "set the block's range, e.g. 10.244.1.0/26")?;
    match parse_cidr(ctx, "spec.cidr", text)? {
        IpNet::V4(cidr) => Ok(Some(cidr.trunc())),
        IpNet::V6(_) => Ok(None),
    }
}

/// A `BlockAffinity`. A missing `spec.state` means confirmed: someone who writes an affinity by
/// hand means it.
fn parse_block_affinity(ctx: &Ctx, resource: &Value) -> Result<Option<Block>, Problem> {
    let Some(cidr) = parse_block_cidr(ctx, resource)? else {
        return Ok(None);
    };
    let node = required_str(ctx, resource, "spec.node", "set the name of the node the block is affine to")?;
    let state = match optional_str(ctx, resource, "spec.state")? {
        None => AffinityState::Confirmed,
        Some(text) => AffinityState::from_str(text).map_err(|error| ctx.problem("spec.state", error.to_string()))?,
    };
    let deleted = optional_bool(ctx, resource, "spec.deleted")?.unwrap_or(false);
    Ok(Some(Block { cidr, node: node.to_owned(), state, deleted }))
}

/// An `IPAMBlock`: a confirmed affinity of the node in `spec.affinity` (`host:<node>`). Blocks
/// with no affinity, or one that is not a host's, route nowhere and are skipped.
fn parse_ipam_block(ctx: &Ctx, resource: &Value) -> Result<Option<Block>, Problem> {
    let Some(cidr) = parse_block_cidr(ctx, resource)? else {
        return Ok(None);
    };
    let Some(affinity) = optional_str(ctx, resource, "spec.affinity")? else {
        return Ok(None);
    };
    let Some(node) = affinity.strip_prefix("host:") else {
        return Ok(None);
    };
    if node.is_empty() {
        return Err(ctx.problem("spec.affinity", "\"host:\" names no node: write host:<node name>"));
    }
    let deleted = optional_bool(ctx, resource, "spec.deleted")?.unwrap_or(false);
    Ok(Some(Block { cidr, node: node.to_owned(), state: AffinityState::Confirmed, deleted }))
}

/// A `Node`: Calico's (`projectcalico.org/v3`), or a Kubernetes Node (`apiVersion: v1`) whose
/// annotations Calico fills in.
fn parse_node(ctx: &Ctx, resource: &Value) -> Result<Node, Problem> {
    let name = required_str(ctx, resource, "metadata.name", "give the node its hostname")?.to_owned();
    if optional_str(ctx, resource, "apiVersion")? == Some("v1") {
        return parse_kubernetes_node(ctx, resource, name);
    }
    let mut addr = None;
    if let Some(text) = optional_str(ctx, resource, "spec.bgp.ipv4Address")? {
        addr = Some(parse_node_addr(ctx, "spec.bgp.ipv4Address", text)?);
    } else if let Some(Value::Sequence(addresses)) = lookup(resource, "spec.addresses") {
        // Newer Calico also lists the node's addresses; CalicoNodeIP is the one it routes to
        // when BGP is off and spec.bgp is absent.
        for entry in addresses {
            let is_node_ip = matches!(lookup(entry, "type"), Some(Value::String(t)) if t == "CalicoNodeIP");
            if let (true, Some(Value::String(text))) = (is_node_ip, lookup(entry, "address")) {
                if let Ok(found) = parse_node_addr(ctx, "spec.addresses", text.trim()) {
                    addr = Some(found);
                    break;
                }
            }
        }
    }
    let ipip_tunnel_addr = match optional_str(ctx, resource, "spec.bgp.ipv4IPIPTunnelAddr")? {
        Some(text) => Some(parse_ipv4_addr(ctx, "spec.bgp.ipv4IPIPTunnelAddr", text)?),
        None => None,
    };
    let vxlan_tunnel_addr = match optional_str(ctx, resource, "spec.ipv4VXLANTunnelAddr")? {
        Some(text) => Some(parse_ipv4_addr(ctx, "spec.ipv4VXLANTunnelAddr", text)?),
        None => None,
    };
    let vxlan_tunnel_mac = match optional_str(ctx, resource, "spec.vxlanTunnelMACAddr")? {
        Some(text) => Some(parse_mac(ctx, "spec.vxlanTunnelMACAddr", text)?),
        None => None,
    };
    Ok(Node { name, addr, vxlan_tunnel_addr, vxlan_tunnel_mac, ipip_tunnel_addr })
}

/// A Kubernetes Node: Calico keeps its node settings in annotations.
fn parse_kubernetes_node(ctx: &Ctx, resource: &Value, name: String) -> Result<Node, Problem> {
    let annotations = match lookup(resource, "metadata.annotations") {
        None => None,
        Some(Value::Mapping(annotations)) => Some(annotations),
        Some(other) => {
            return Err(ctx.problem("metadata.annotations", format!("expected a mapping, found {}", type_name(other))))
        }
    };
    // Returns the annotation's value and the field name to put in problems.
    let annotation = |key: &str| -> Result<Option<(String, String)>, Problem> {
        let field = format!("metadata.annotations[{key:?}]");
        match annotations.and_then(|a| a.get(key)) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) if text.trim().is_empty() => Ok(None),
            Some(Value::String(text)) => Ok(Some((text.trim().to_owned(), field))),
            Some(other) => Err(ctx.problem(&field, format!("expected a string, found {}", type_name(other)))),
        }
    };
    let addr = match annotation("projectcalico.org/IPv4Address")? {
        Some((text, field)) => Some(parse_node_addr(ctx, &field, &text)?),
        None => None,
    };
    let vxlan_tunnel_addr = match annotation("projectcalico.org/IPv4VXLANTunnelAddr")? {
        Some((text, field)) => Some(parse_ipv4_addr(ctx, &field, &text)?),
        None => None,
    };
    let vxlan_tunnel_mac = match annotation("projectcalico.org/VXLANTunnelMACAddr")? {
        Some((text, field)) => Some(parse_mac(ctx, &field, &text)?),
        None => None,
    };
    let ipip_tunnel_addr = match annotation("projectcalico.org/IPv4IPIPTunnelAddr")? {
        Some((text, field)) => Some(parse_ipv4_addr(ctx, &field, &text)?),
        None => None,
    };
    Ok(Node { name, addr, vxlan_tunnel_addr, vxlan_tunnel_mac, ipip_tunnel_addr })
}

/// A `WorkloadEndpoint`. A missing address or interface is left for the plan to report, and
/// only for workloads on its own node, where they matter.
fn parse_workload(ctx: &Ctx, resource: &Value) -> Result<Workload, Problem> {
    let namespace = optional_str(ctx, resource, "metadata.namespace")?.unwrap_or("default");
    let name = required_str(ctx, resource, "metadata.name", "give the endpoint a name")?;
    let node = required_str(ctx, resource, "spec.node", "set the name of the node the pod runs on")?;
    let mut addrs = Vec::new();
    match lookup(resource, "spec.ipNetworks") {
        None => {}
        Some(Value::Sequence(networks)) => {
            for network in networks {
                let Value::String(text) = network else {
                    return Err(ctx.problem(
                        "spec.ipNetworks",
                        format!("expected addresses such as 10.244.1.2/32, found {}", type_name(network)),
                    ));
                };
                let text = text.trim();
                let parsed = if text.contains('/') {
                    IpNet::from_str(text).ok()
                } else {
                    IpAddr::from_str(text).ok().map(IpNet::from)
                };
                match parsed {
                    Some(IpNet::V4(net)) => addrs.push(net),
                    // Dual-stack pods: the IPv6 address is not routed by this dataplane yet.
                    Some(IpNet::V6(_)) => {}
                    None => {
                        return Err(ctx.problem(
                            "spec.ipNetworks",
                            format!(
                                "{text:?} is not an address: write the pod's address as a /32, \
                                 e.g. 10.244.1.2/32"
                            ),
                        ))
                    }
                }
            }
        }
        Some(other) => {
            return Err(ctx.problem(
                "spec.ipNetworks",
                format!("expected a list such as [10.244.1.2/32], found {}", type_name(other)),
            ))
        }
    }
    let interface = optional_str(ctx, resource, "spec.interfaceName")?.unwrap_or("").to_owned();
    let mac = match optional_str(ctx, resource, "spec.mac")? {
        Some(text) => Some(parse_mac(ctx, "spec.mac", text)?),
        None => None,
    };
    Ok(Workload {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        node: node.to_owned(),
        addrs,
        interface,
        mac,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Ipv4Net {
        text.parse().expect("test CIDR")
    }

    fn mac(text: &str) -> MacAddr {
        text.parse().expect("test MAC")
    }

    fn parse_ok(text: &str) -> (Model, Vec<Problem>) {
        parse(text).expect("test input is YAML")
    }

    /// Parses `text`, expects exactly one problem and returns it.
    fn one_problem(text: &str) -> (Model, Problem) {
        let (model, mut problems) = parse_ok(text);
        assert_eq!(problems.len(), 1, "expected one problem, got {problems:#?}");
        let problem = problems.pop().expect("one problem");
        (model, problem)
    }

    /// `kubectl get ippool default-ipv4-ippool -o yaml`, from seeds/002.
    const SEED_IPPOOL: &str = r#"
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  creationTimestamp: "2022-07-09T17:44:37Z"
  name: default-ipv4-ippool
  resourceVersion: "7202"
  uid: 49ecd163-1a83-4566-872a-fb0390102724
spec:
  allowedUses:
  - Workload
  - Tunnel
  blockSize: 26
  cidr: 10.48.0.0/24
  ipipMode: Never
  natOutgoing: true
  nodeSelector: all()
  vxlanMode: Never
"#;

    /// `kubectl get blockaffinities -o yaml`, from seeds/003 (cut short before `kind: List`).
    const SEED_BLOCK_AFFINITIES: &str = r#"
apiVersion: v1
items:
- apiVersion: crd.projectcalico.org/v1
  kind: BlockAffinity
  metadata:
    name: ipam-block-affinity-192-168-0-64-26
    namespace: ""
  spec:
    cidr: 192.168.0.64/26
    deleted: false
    node: calico-ipam-control-plane
    state: confirmed
- apiVersion: crd.projectcalico.org/v1
  kind: BlockAffinity
  metadata:
    name: ipam-block-affinity-192-168-1-64-26
  spec:
    cidr: 192.168.1.64/26
    deleted: false
    node: calico-ipam-worker
    state: confirmed
"#;

    #[test]
    fn seed_ippool() {
        let (model, problems) = parse_ok(SEED_IPPOOL);
        assert_eq!(problems, vec![]);
        assert_eq!(
            model.pools,
            vec![IpPool {
                name: "default-ipv4-ippool".into(),
                cidr: net("10.48.0.0/24"),
                block_size: 26,
                vxlan_mode: EncapMode::Never,
                ipip_mode: EncapMode::Never,
                nat_outgoing: true,
                disabled: false,
            }]
        );
    }

    #[test]
    fn seed_block_affinity_list() {
        let (model, problems) = parse_ok(SEED_BLOCK_AFFINITIES);
        assert_eq!(problems, vec![]);
        assert_eq!(
            model.blocks,
            vec![
                Block {
                    cidr: net("192.168.0.64/26"),
                    node: "calico-ipam-control-plane".into(),
                    state: AffinityState::Confirmed,
                    deleted: false,
                },
                Block {
                    cidr: net("192.168.1.64/26"),
                    node: "calico-ipam-worker".into(),
                    state: AffinityState::Confirmed,
                    deleted: false,
                },
            ]
        );
    }

    #[test]
    fn pool_defaults_and_modes_in_any_case() {
        let (model, problems) = parse_ok(
            r#"
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: p}
spec:
  cidr: 10.244.0.0/16
---
apiVersion: crd.projectcalico.org/v1
kind: IPPool
metadata: {name: q}
spec:
  cidr: 10.245.0.0/16
  blockSize: 28
  vxlanMode: crosssubnet
  ipipMode: NEVER
  disabled: true
"#,
        );
        assert_eq!(problems, vec![]);
        assert_eq!(model.pools.len(), 2);
        let p = &model.pools[0];
        assert_eq!((p.block_size, p.vxlan_mode, p.ipip_mode), (26, EncapMode::Never, EncapMode::Never));
        assert!(!p.nat_outgoing && !p.disabled);
        let q = &model.pools[1];
        assert_eq!((q.block_size, q.vxlan_mode, q.ipip_mode), (28, EncapMode::CrossSubnet, EncapMode::Never));
        assert!(q.disabled);
    }

    /// `calicoctl get ippools -o yaml` prints an IPPoolList.
    #[test]
    fn calicoctl_ippool_list() {
        let (model, problems) = parse_ok(
            r#"
apiVersion: projectcalico.org/v3
items:
- apiVersion: projectcalico.org/v3
  kind: IPPool
  metadata:
    creationTimestamp: "2024-01-01T00:00:00Z"
    name: default-ipv4-ippool
    resourceVersion: "812"
    uid: 0d6b0f8c-8f63-4a3e-9d63-3bd1b0d3d0a1
  spec:
    allowedUses:
    - Workload
    - Tunnel
    blockSize: 26
    cidr: 10.244.0.0/16
    ipipMode: Never
    natOutgoing: true
    nodeSelector: all()
    vxlanMode: Always
- metadata:
    name: no-kind-item
  spec:
    cidr: 10.250.0.0/16
kind: IPPoolList
metadata:
  resourceVersion: "900"
"#,
        );
        assert_eq!(problems, vec![]);
        let names: Vec<&str> = model.pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["default-ipv4-ippool", "no-kind-item"]);
        assert_eq!(model.pools[0].vxlan_mode, EncapMode::Always);
    }

    /// `kubectl get nodes,ipamblocks -o yaml` prints one List of mixed kinds.
    #[test]
    fn kubectl_list_of_kubernetes_nodes_and_ipam_blocks() {
        let (model, problems) = parse_ok(
            r#"
apiVersion: v1
kind: List
metadata:
  resourceVersion: ""
items:
- apiVersion: v1
  kind: Node
  metadata:
    annotations:
      node.alpha.kubernetes.io/ttl: "0"
      projectcalico.org/IPv4Address: 10.100.0.11/24
      projectcalico.org/IPv4VXLANTunnelAddr: 10.244.1.0
      projectcalico.org/VXLANTunnelMACAddr: 66:d0:00:00:00:01
      projectcalico.org/IPv4IPIPTunnelAddr: 10.244.1.1
    labels:
      kubernetes.io/hostname: node-1
    name: node-1
  spec:
    podCIDR: 10.244.1.0/24
  status:
    addresses:
    - address: 10.100.0.11
      type: InternalIP
- apiVersion: crd.projectcalico.org/v1
  kind: IPAMBlock
  metadata:
    name: 10-244-1-0-26
  spec:
    affinity: host:node-1
    allocations: [0, null, 1]
    attributes:
    - handle_id: vxlan-tunnel-addr-node-1
    cidr: 10.244.1.0/26
    deleted: false
    strictAffinity: false
    unallocated: [2, 3]
- apiVersion: crd.projectcalico.org/v1
  kind: IPAMBlock
  metadata:
    name: 10-244-9-0-26
  spec:
    affinity: virtual:something
    cidr: 10.244.9.0/26
- apiVersion: crd.projectcalico.org/v1
  kind: IPAMBlock
  metadata:
    name: 10-244-8-0-26
  spec:
    cidr: 10.244.8.0/26
"#,
        );
        assert_eq!(problems, vec![]);
        assert_eq!(
            model.nodes,
            vec![Node {
                name: "node-1".into(),
                addr: Some(net("10.100.0.11/24")),
                vxlan_tunnel_addr: Some(Ipv4Addr::new(10, 244, 1, 0)),
                vxlan_tunnel_mac: Some(mac("66:d0:00:00:00:01")),
                ipip_tunnel_addr: Some(Ipv4Addr::new(10, 244, 1, 1)),
            }]
        );
        // Only the block with a host affinity routes somewhere.
        assert_eq!(
            model.blocks,
            vec![Block {
                cidr: net("10.244.1.0/26"),
                node: "node-1".into(),
                state: AffinityState::Confirmed,
                deleted: false,
            }]
        );
    }

    #[test]
    fn calico_node_and_kubernetes_node_merge() {
        let (model, problems) = parse_ok(
            r#"
apiVersion: projectcalico.org/v3
kind: Node
metadata:
  name: node-2
  labels: {kubernetes.io/hostname: node-2}
spec:
  addresses:
  - address: 10.100.0.12/24
    type: CalicoNodeIP
  bgp:
    ipv4Address: 10.100.0.12/24
  ipv4VXLANTunnelAddr: 10.244.2.0
  orchRefs:
  - nodeName: node-2
    orchestrator: k8s
  vxlanTunnelMACAddr: 66:d0:00:00:00:02
---
apiVersion: v1
kind: Node
metadata:
  name: node-2
  annotations:
    projectcalico.org/IPv4Address: 10.100.0.12/24
    projectcalico.org/IPv4IPIPTunnelAddr: 10.244.2.1
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: bare}
spec:
  bgp: {ipv4Address: 10.100.1.5}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: no-bgp}
spec:
  addresses:
  - {address: "fd00::5", type: InternalIP}
  - {address: 10.100.1.6/24, type: CalicoNodeIP}
"#,
        );
        assert_eq!(problems, vec![]);
        assert_eq!(model.nodes.len(), 3);
        let node2 = model.node("node-2").expect("node-2");
        assert_eq!(node2.addr, Some(net("10.100.0.12/24")));
        assert_eq!(node2.vxlan_tunnel_addr, Some(Ipv4Addr::new(10, 244, 2, 0)));
        assert_eq!(node2.vxlan_tunnel_mac, Some(mac("66:d0:00:00:00:02")));
        assert_eq!(node2.ipip_tunnel_addr, Some(Ipv4Addr::new(10, 244, 2, 1)));
        // A bare address is a /32.
        assert_eq!(model.node("bare").and_then(|n| n.addr), Some(net("10.100.1.5/32")));
        assert_eq!(model.node("no-bgp").and_then(|n| n.addr), Some(net("10.100.1.6/24")));
    }

    #[test]
    fn conflicting_node_descriptions_keep_the_first() {
        let (model, problem) = one_problem(
            r#"
kind: Node
metadata: {name: n}
spec: {bgp: {ipv4Address: 10.0.0.1/24}}
---
apiVersion: v1
kind: Node
metadata:
  name: n
  annotations: {projectcalico.org/IPv4Address: 10.0.0.2/24}
"#,
        );
        assert_eq!(model.node("n").and_then(|n| n.addr), Some(net("10.0.0.1/24")));
        assert_eq!((problem.kind.as_str(), problem.name.as_str()), ("Node", "n"));
        assert_eq!(problem.field, "spec.bgp.ipv4Address");
    }

    #[test]
    fn workload_endpoint_as_calicoctl_prints_it() {
        let (model, problems) = parse_ok(
            r#"
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata:
  creationTimestamp: "2024-01-01T00:00:00Z"
  labels:
    projectcalico.org/namespace: shop
    projectcalico.org/orchestrator: k8s
    projectcalico.org/serviceaccount: default
  name: node--1-k8s-web--1-eth0
  namespace: shop
  resourceVersion: "1234"
  uid: 7a0c0f1e-0b8e-4b43-9d7c-1df0c1b0a0e2
spec:
  containerID: 3f1a
  endpoint: eth0
  interfaceName: cali0761ccbeace
  ipNetworks:
  - fd00:10:244::2/128
  - 10.244.1.2/32
  mac: 0a:58:0a:f4:01:02
  node: node-1
  orchestrator: k8s
  pod: web-1
  profiles:
  - kns.shop
  - ksa.shop.default
  serviceAccountName: default
  workload: ""
---
kind: WorkloadEndpoint
metadata: {name: bare}
spec: {node: node-1, interfaceName: calib}
"#,
        );
        assert_eq!(problems, vec![]);
        assert_eq!(
            model.workloads[0],
            Workload {
                namespace: "shop".into(),
                name: "node--1-k8s-web--1-eth0".into(),
                node: "node-1".into(),
                addrs: vec![net("10.244.1.2/32")],
                interface: "cali0761ccbeace".into(),
                mac: Some(mac("0a:58:0a:f4:01:02")),
            }
        );
        // Namespace defaults to "default"; no address is the plan's business.
        assert_eq!(model.workloads[1].full_name(), "default/bare");
        assert_eq!(model.workloads[1].addrs, vec![]);
        assert_eq!(model.workloads[1].mac, None);
    }

    #[test]
    fn bad_pool_cidr() {
        let (model, problem) = one_problem("kind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.244.0.0/33}\n");
        assert!(model.pools.is_empty());
        assert_eq!(
            (problem.kind.as_str(), problem.name.as_str(), problem.field.as_str()),
            ("IPPool", "p", "spec.cidr")
        );
        assert!(problem.message.contains("not a CIDR"), "{problem}");
    }

    #[test]
    fn missing_pool_cidr() {
        let (_, problem) = one_problem("kind: IPPool\nmetadata: {name: p}\nspec: {}\n");
        assert_eq!(problem.field, "spec.cidr");
        assert!(problem.message.starts_with("missing"), "{problem}");
    }

    #[test]
    fn ipv6_pool_is_skipped() {
        let (model, problem) = one_problem("kind: IPPool\nmetadata: {name: v6}\nspec: {cidr: 'fd00:10:244::/64'}\n");
        assert!(model.pools.is_empty());
        assert_eq!((problem.name.as_str(), problem.field.as_str()), ("v6", "spec.cidr"));
        assert!(problem.message.contains("IPv6 is not supported yet"), "{problem}");
    }

    #[test]
    fn bad_block_size() {
        for (size, expected) in [("33", "between 16 and 32"), ("8", "between 16 and 32"), ("big", "expected a number")]
        {
            let text =
                format!("kind: IPPool\nmetadata: {{name: p}}\nspec: {{cidr: 10.244.0.0/16, blockSize: {size}}}\n");
            let (model, problem) = one_problem(&text);
            assert!(model.pools.is_empty());
            assert_eq!(problem.field, "spec.blockSize");
            assert!(problem.message.contains(expected), "{size}: {problem}");
        }
        // The default 26 does not fit a /28 pool either.
        let (_, problem) = one_problem("kind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.244.0.0/28}\n");
        assert_eq!(problem.field, "spec.blockSize");
    }

    #[test]
    fn bad_encap_mode_and_bool() {
        let (_, problem) =
            one_problem("kind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.244.0.0/16, vxlanMode: Sometimes}\n");
        assert_eq!(problem.field, "spec.vxlanMode");
        let (_, problem) =
            one_problem("kind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.244.0.0/16, natOutgoing: 1}\n");
        assert_eq!(problem.field, "spec.natOutgoing");
    }

    #[test]
    fn bad_mac() {
        let (model, problem) = one_problem(
            "kind: Node\nmetadata: {name: n}\nspec: {bgp: {ipv4Address: 10.0.0.1/24}, vxlanTunnelMACAddr: '66:d0:00'}\n",
        );
        assert!(model.nodes.is_empty());
        assert_eq!(
            (problem.kind.as_str(), problem.name.as_str(), problem.field.as_str()),
            ("Node", "n", "spec.vxlanTunnelMACAddr")
        );
        let (model, problem) =
            one_problem("kind: WorkloadEndpoint\nmetadata: {name: w, namespace: ns}\nspec: {node: n, mac: nonsense}\n");
        assert!(model.workloads.is_empty());
        assert_eq!((problem.name.as_str(), problem.field.as_str()), ("ns/w", "spec.mac"));
        let (_, problem) = one_problem(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: k\n  annotations: {projectcalico.org/VXLANTunnelMACAddr: xx}\n",
        );
        assert_eq!(problem.field, r#"metadata.annotations["projectcalico.org/VXLANTunnelMACAddr"]"#);
    }

    #[test]
    fn bad_node_and_workload_addresses() {
        let (_, problem) = one_problem("kind: Node\nmetadata: {name: n}\nspec: {bgp: {ipv4Address: 10.0.0.300/24}}\n");
        assert_eq!(problem.field, "spec.bgp.ipv4Address");
        let (_, problem) = one_problem("kind: Node\nmetadata: {name: n}\nspec: {ipv4VXLANTunnelAddr: vtep}\n");
        assert_eq!(problem.field, "spec.ipv4VXLANTunnelAddr");
        let (_, problem) =
            one_problem("kind: WorkloadEndpoint\nmetadata: {name: w}\nspec: {node: n, ipNetworks: [10.244.1.x/32]}\n");
        assert_eq!((problem.name.as_str(), problem.field.as_str()), ("default/w", "spec.ipNetworks"));
        let (_, problem) =
            one_problem("kind: WorkloadEndpoint\nmetadata: {name: w}\nspec: {node: n, ipNetworks: 10.244.1.2/32}\n");
        assert_eq!(problem.field, "spec.ipNetworks");
    }

    #[test]
    fn unknown_kind_is_skipped() {
        let (model, problem) = one_problem(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: deny-all}\nspec: {}\n---\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.244.0.0/16}\n",
        );
        assert_eq!(model.pools.len(), 1);
        assert_eq!(
            (problem.kind.as_str(), problem.name.as_str(), problem.field.as_str()),
            ("GlobalNetworkPolicy", "deny-all", "kind")
        );
        assert!(problem.message.contains("skipped"), "{problem}");
    }

    #[test]
    fn documents_without_kind_or_not_mappings() {
        let (model, problems) = parse_ok("metadata: {name: x}\n---\n- a\n- b\n---\nplain words\n");
        assert_eq!(model, Model::default());
        let positions: Vec<(&str, &str)> = problems.iter().map(|p| (p.name.as_str(), p.field.as_str())).collect();
        assert_eq!(positions, [("x", "kind"), ("document 2", "kind"), ("document 3", "kind")]);
    }

    #[test]
    fn missing_block_affinity_node() {
        let (model, problem) = one_problem(
            "apiVersion: crd.projectcalico.org/v1\nkind: BlockAffinity\nmetadata: {name: a}\nspec: {cidr: 10.244.1.0/26, state: confirmed}\n",
        );
        assert!(model.blocks.is_empty());
        assert_eq!(
            (problem.kind.as_str(), problem.name.as_str(), problem.field.as_str()),
            ("BlockAffinity", "a", "spec.node")
        );
        let (_, problem) = one_problem("kind: WorkloadEndpoint\nmetadata: {name: w}\nspec: {interfaceName: calia}\n");
        assert_eq!(problem.field, "spec.node");
    }

    #[test]
    fn deleted_as_string_or_bool() {
        let (model, problems) = parse_ok(
            r#"
kind: BlockAffinity
metadata: {name: a}
spec: {cidr: 10.244.1.0/26, node: n1, state: confirmed, deleted: "false"}
---
kind: BlockAffinity
metadata: {name: b}
spec: {cidr: 10.244.2.0/26, node: n2, state: confirmed, deleted: "true"}
---
kind: BlockAffinity
metadata: {name: c}
spec: {cidr: 10.244.3.0/26, node: n3, state: pendingDeletion, deleted: true}
---
kind: BlockAffinity
metadata: {name: d}
spec: {cidr: 10.244.4.0/26, node: n4}
---
kind: BlockAffinity
metadata: {name: e}
spec: {cidr: 10.244.5.0/26, node: n5, deleted: "maybe"}
---
kind: BlockAffinity
metadata: {name: f}
spec: {cidr: 10.244.6.0/26, node: n6, state: claimed}
"#,
        );
        let seen: Vec<(&str, AffinityState, bool)> =
            model.blocks.iter().map(|b| (b.node.as_str(), b.state, b.deleted)).collect();
        assert_eq!(
            seen,
            [
                ("n1", AffinityState::Confirmed, false),
                ("n2", AffinityState::Confirmed, true),
                ("n3", AffinityState::PendingDeletion, true),
                ("n4", AffinityState::Confirmed, false),
            ]
        );
        let fields: Vec<(&str, &str)> = problems.iter().map(|p| (p.name.as_str(), p.field.as_str())).collect();
        assert_eq!(fields, [("e", "spec.deleted"), ("f", "spec.state")]);
    }

    #[test]
    fn ipam_block_defers_to_block_affinity() {
        let (model, problems) = parse_ok(
            r#"
kind: IPAMBlock
metadata: {name: 10-244-1-0-26}
spec: {cidr: 10.244.1.0/26, affinity: "host:n1", deleted: false}
---
kind: BlockAffinity
metadata: {name: a}
spec: {cidr: 10.244.1.0/26, node: n1, state: pending, deleted: "false"}
---
kind: IPAMBlock
metadata: {name: 10-244-2-0-26}
spec: {cidr: 10.244.2.0/26, affinity: "host:n2"}
---
kind: IPAMBlock
metadata: {name: again}
spec: {cidr: 10.244.2.0/26, affinity: "host:n2"}
---
kind: IPAMBlock
metadata: {name: v6}
spec: {cidr: "fd00::/122", affinity: "host:n2"}
---
kind: IPAMBlock
metadata: {name: empty}
spec: {cidr: 10.244.3.0/26, affinity: "host:"}
"#,
        );
        let seen: Vec<(Ipv4Net, &str, AffinityState)> =
            model.blocks.iter().map(|b| (b.cidr, b.node.as_str(), b.state)).collect();
        assert_eq!(
            seen,
            [
                (net("10.244.1.0/26"), "n1", AffinityState::Pending),
                (net("10.244.2.0/26"), "n2", AffinityState::Confirmed),
            ]
        );
        let fields: Vec<(&str, &str)> = problems.iter().map(|p| (p.name.as_str(), p.field.as_str())).collect();
        assert_eq!(fields, [("empty", "spec.affinity")]);
    }

    #[test]
    fn duplicates_are_reported() {
        let (model, problems) = parse_ok(
            r#"
kind: IPPool
metadata: {name: p}
spec: {cidr: 10.244.0.0/16}
---
kind: IPPool
metadata: {name: p}
spec: {cidr: 10.245.0.0/16}
---
kind: WorkloadEndpoint
metadata: {name: w}
spec: {node: n}
---
kind: WorkloadEndpoint
metadata: {name: w, namespace: default}
spec: {node: n}
"#,
        );
        assert_eq!((model.pools.len(), model.workloads.len()), (1, 1));
        let names: Vec<(&str, &str)> = problems.iter().map(|p| (p.kind.as_str(), p.name.as_str())).collect();
        assert_eq!(names, [("IPPool", "p"), ("WorkloadEndpoint", "default/w")]);
    }

    #[test]
    fn one_broken_resource_does_not_stop_the_others() {
        let (model, problems) = parse_ok(
            r#"
---
kind: IPPool
metadata: {name: broken}
spec: {cidr: not-a-cidr}
---
---
kind: IPPool
metadata: {name: good}
spec: {cidr: 10.244.0.0/16}
---
kind: List
items:
- kind: Node
  metadata: {name: broken-node}
  spec: {vxlanTunnelMACAddr: 12}
- kind: Node
  metadata: {name: n1}
  spec: {bgp: {ipv4Address: 10.0.0.1/24}}
- 42
---
kind: BlockAffinity
metadata: {name: b}
spec: {cidr: 10.244.1.0/26, node: n1, state: confirmed}
"#,
        );
        assert_eq!(model.pools.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["good"]);
        assert_eq!(model.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["n1"]);
        assert_eq!(model.blocks.len(), 1);
        let names: Vec<(&str, &str)> = problems.iter().map(|p| (p.name.as_str(), p.field.as_str())).collect();
        assert_eq!(
            names,
            [("broken", "spec.cidr"), ("broken-node", "spec.vxlanTunnelMACAddr"), ("document 4, items[2]", "kind")]
        );
    }

    #[test]
    fn empty_stream_is_an_empty_model() {
        for text in ["", "---\n", "# only a comment\n", "---\n---\n...\n"] {
            assert_eq!(parse_ok(text), (Model::default(), vec![]), "{text:?}");
        }
    }

    #[test]
    fn not_yaml_is_an_error_with_a_line() {
        let text = "kind: IPPool\nmetadata: {name: p}\n---\nkind: IPPool\nspec: [unclosed\n";
        match parse(text) {
            Err(FileError::NotYaml { line, message, .. }) => {
                assert!(line.is_some(), "{message}");
                assert!(message.contains("line"), "{message}");
            }
            Ok(parsed) => panic!("parsed broken YAML: {parsed:?}"),
        }
        assert!(parse("a: 1\na: 2\n").is_err(), "duplicate keys are not a valid mapping");
        assert!(parse("\t- {").is_err());
    }

    #[test]
    fn hostile_input_does_not_panic() {
        let inputs = [
            "kind: [1, 2]",
            "kind: IPPool\nmetadata: [x]\nspec: 5",
            "kind: IPPool\nmetadata: {name: 5}\nspec: {cidr: 10.0.0.0/8, blockSize: -1}",
            "kind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/8, blockSize: 26.5}",
            "kind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/8, blockSize: 99999999999999999999}",
            "kind: List\nitems: {a: b}",
            "kind: List\nitems: [[[[]]]]",
            "kind: IPPoolList\nitems: [null, {metadata: {name: x}}]",
            "kind: Node\napiVersion: v1\nmetadata: {name: k, annotations: [a]}",
            "kind: Node\nmetadata: {name: k}\nspec: {addresses: [1, {type: CalicoNodeIP}, {type: CalicoNodeIP, address: bad}]}",
            "kind: WorkloadEndpoint\nmetadata: {name: w}\nspec: {node: n, ipNetworks: [null, 1]}",
            "kind: !Tagged IPPool\n",
            "kind: IPAMBlock\nspec: {cidr: 10.0.0.0/26, affinity: 7}",
            "&a [*a]",
            "kind: BlockAffinity\nspec: {cidr: 10.0.0.0/26, node: [n]}",
        ];
        for input in inputs {
            // Either outcome is fine; neither may panic.
            let _ = parse(input);
        }
        // Deep nesting and an alias bomb: serde_yaml's limits turn both into errors.
        let deep = format!("kind: List\nitems: {}{}", "[".repeat(1000), "]".repeat(1000));
        assert!(parse(&deep).is_err());
        let mut bomb = String::from("a: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..12 {
            let previous = level - 1;
            bomb.push_str(&format!("b{level}: &a{level} [*a{previous}, *a{previous}, *a{previous}, *a{previous}, *a{previous}, *a{previous}, *a{previous}, *a{previous}, *a{previous}, *a{previous}]\n"));
        }
        assert!(parse(&bomb).is_err());
    }

    #[test]
    fn a_resource_with_an_empty_name_is_named_by_its_position() {
        let text =
            "kind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/16}\n---\nkind: IPPool\nmetadata: {name: ''}\n";
        let (model, problem) = one_problem(text);
        assert_eq!(model.pools.len(), 1);
        assert_eq!((problem.name.as_str(), problem.field.as_str()), ("document 2", "metadata.name"));
    }

    #[test]
    fn load_names_the_path() {
        let missing = Path::new("/nonexistent/dataplane-test/cluster.yaml");
        let error = load(missing).expect_err("the file does not exist");
        assert!(format!("{error:#}").contains("/nonexistent/dataplane-test/cluster.yaml"), "{error:#}");

        let dir = std::env::temp_dir().join(format!("dataplane-file-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let broken = dir.join("broken.yaml");
        std::fs::write(&broken, "kind: [").expect("write");
        let error = load(&broken).expect_err("not YAML");
        let text = format!("{error:#}");
        assert!(text.contains("broken.yaml") && text.contains("not YAML"), "{text}");
        assert!(error.downcast_ref::<FileError>().is_some());
        let good = dir.join("good.yaml");
        std::fs::write(&good, SEED_IPPOOL).expect("write");
        let (model, problems) = load(&good).expect("loads");
        assert_eq!((model.pools.len(), problems.len()), (1, 0));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

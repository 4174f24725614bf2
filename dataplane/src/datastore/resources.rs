//! The resource decoder every datastore shares: Calico resources, as YAML or JSON values, into
//! the model.
//!
//! The resources come in the shapes users write and that `kubectl get -o yaml` and
//! `calicoctl get -o yaml` print: `IPPool`, `BlockAffinity`, `IPAMBlock`, `Node` (Calico's, or a
//! Kubernetes Node with Calico's annotations), `WorkloadEndpoint`, and lists of them (`List`,
//! `IPPoolList`, ...). Fields this dataplane does not use (creationTimestamp, uid, nodeSelector,
//! ...) are ignored. The file datastore feeds it the documents of a YAML stream
//! ([`super::file::parse`]); the etcd and Kubernetes datastores feed it the objects they receive.
//!
//! Each resource is a [`serde_yaml::Value`] whose fields are picked out by hand, so that every
//! complaint names the resource's kind, its name and the field. A resource with a missing or
//! invalid field is reported as a [`Problem`] and skipped while the rest is applied.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr},
    str::FromStr,
};

use ipnet::{IpNet, Ipv4Net};
use serde_yaml::{Mapping, Value};

use crate::model::{AffinityState, Block, EncapMode, IpPool, MacAddr, Model, Node, Problem, Workload};

/// Calico's default `blockSize` for IPv4 pools.
const DEFAULT_BLOCK_SIZE: u8 = 26;

/// Turns Calico resources, one at a time, into a [`Model`] and a list of [`Problem`]s.
///
/// [`super::file::parse`] feeds it the documents of a file; other datastores that receive the same resource
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
pub(crate) mod tests;

//! The incremental planner: the cluster indexed by resource, and this node's plan kept up to date
//! one [`Delta`] at a time.
//!
//! A change re-plans only what it touches: an affinity or allocation block re-plans its one
//! prefix; another node's change re-plans that node's blocks and its address's peer entry; a
//! pool's change re-plans the blocks inside the pools that changed, the local workloads and the
//! peers; only a change of this node itself (its address, its VTEP) or a whole read re-plans
//! everything. Every delta reports the plan keys it changed in [`Changes`], so that the backends
//! write those keys and nothing else.
//!
//! [`plan::compute`] over [`Planner::model`] is the oracle: both decide each block, workload and
//! peer with the same functions of `plan.rs`, and a random-delta test requires equal plans and
//! problems after every delta. The planner keeps the resources by name, so where the whole-model
//! plan depends on list order (which of two overlapping pools wins, which of two workloads
//! claiming one interface), the order is the names' order, as etcd lists its keys.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
    sync::Arc,
};

use ipnet::Ipv4Net;

use crate::{
    datastore::Delta,
    model::{AffinityState, Block, IpPool, Model, Node, Problem, Workload},
    plan::{self, Plan, PlanError, PlannedRoute, RouteTarget},
};

/// The plan keys one or more deltas changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Everything may have changed (this node changed, a whole read, or the plan became
    /// possible or impossible): diff every key.
    pub everything: bool,
    /// Prefixes whose route was added, changed or removed.
    pub routes: BTreeSet<Ipv4Net>,
    /// Interfaces whose planned workload was added, changed or removed.
    pub workloads: BTreeSet<String>,
    /// Addresses whose peer entry or cluster membership was added, changed or removed.
    pub nodes: BTreeSet<Ipv4Addr>,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        !self.everything && self.routes.is_empty() && self.workloads.is_empty() && self.nodes.is_empty()
    }
}

/// A node's name as the store's blocks keep it: an index into [`Names`], so that 100k blocks
/// on 10k nodes hold 10k names, not 200k copies of them (an affinity and an allocation each).
type NameId = u32;

/// The node names blocks have named, each kept once.
#[derive(Debug, Default)]
struct Names {
    ids: HashMap<Arc<str>, NameId>,
    names: Vec<Arc<str>>,
}

impl Names {
    /// The id of `name`, given one if it has none yet.
    fn intern(&mut self, name: &str) -> NameId {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        // More than 4 billion distinct node names cannot be read from any datastore.
        let id = NameId::try_from(self.names.len()).unwrap_or(NameId::MAX);
        let name: Arc<str> = Arc::from(name);
        self.names.push(Arc::clone(&name));
        self.ids.insert(name, id);
        id
    }

    /// The id of `name`, if a block ever named it.
    fn id(&self, name: &str) -> Option<NameId> {
        self.ids.get(name).copied()
    }

    /// The name of `id` (empty for an id this store never gave).
    fn name(&self, id: NameId) -> &str {
        self.names.get(id as usize).map_or("", |name| name)
    }

    /// The kept copy of `name`, if a block ever named it.
    fn shared(&self, name: &str) -> Option<Arc<str>> {
        self.ids.get_key_value(name).map(|(name, _)| Arc::clone(name))
    }
}

/// One node's claim on a block (an affinity, or an allocation block's `affinity`), compact: the
/// node by id, the state and the deleted flag, eight bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Claim {
    node: NameId,
    state: AffinityState,
    deleted: bool,
}

impl Claim {
    /// Whether the claim routes: confirmed and not deleted, as [`Block::routes`].
    fn routes(&self) -> bool {
        self.state == AffinityState::Confirmed && !self.deleted
    }
}

/// The cluster by resource, with the indexes that find what a change touches.
#[derive(Debug, Default)]
struct Store {
    pools: BTreeMap<String, IpPool>,
    nodes: BTreeMap<String, Node>,
    /// Workloads on this node only (the plan reads no other), by `namespace/name`.
    workloads: BTreeMap<String, Workload>,
    /// The names the claims below refer to.
    names: Names,
    /// (Block, node) -> the node's affinity to the block: one entry per affinity, with no list
    /// per block (nearly every block has exactly one).
    affinities: BTreeMap<(Ipv4Net, NameId), Claim>,
    /// Block -> its allocation block's affinity.
    allocations: BTreeMap<Ipv4Net, Claim>,
    /// Node -> the blocks an affinity or an allocation block gives it.
    blocks_by_node: HashMap<NameId, BTreeSet<Ipv4Net>>,
    /// Address -> the nodes at it.
    nodes_by_addr: BTreeMap<Ipv4Addr, BTreeSet<String>>,
}

impl Store {
    /// The affinities to `cidr`, in the order of their nodes' ids.
    fn affinities_of(&self, cidr: &Ipv4Net) -> impl Iterator<Item = &Claim> {
        self.affinities.range((*cidr, NameId::MIN)..=(*cidr, NameId::MAX)).map(|(_, claim)| claim)
    }

    /// The nodes claiming `cidr` through a routing affinity, sorted, without repeats: an
    /// allocation block counts only where no affinity key names the same node, whose state
    /// (pending, pendingDeletion) then decides, as in the datastores' snapshots.
    fn owners(&self, cidr: &Ipv4Net) -> Vec<&str> {
        let mut owners: Vec<&str> =
            self.affinities_of(cidr).filter(|claim| claim.routes()).map(|claim| self.names.name(claim.node)).collect();
        if let Some(allocation) = self.allocations.get(cidr) {
            let shadowed = self.affinities.contains_key(&(*cidr, allocation.node));
            if allocation.routes() && !shadowed {
                owners.push(self.names.name(allocation.node));
            }
        }
        // Nearly always one: sorting costs nothing then.
        owners.sort_unstable();
        owners.dedup();
        owners
    }

    /// Whether some affinity or the allocation block of `cidr` names `node`.
    fn names(&self, cidr: &Ipv4Net, node: NameId) -> bool {
        self.affinities.contains_key(&(*cidr, node))
            || self.allocations.get(cidr).is_some_and(|claim| claim.node == node)
    }

    fn index_block(&mut self, cidr: Ipv4Net, node: NameId) {
        self.blocks_by_node.entry(node).or_default().insert(cidr);
    }

    /// Forgets that `node` has `cidr` unless an affinity or the allocation still says so.
    fn unindex_block(&mut self, cidr: Ipv4Net, node: NameId) {
        if self.names(&cidr, node) {
            return;
        }
        if let Some(blocks) = self.blocks_by_node.get_mut(&node) {
            blocks.remove(&cidr);
            if blocks.is_empty() {
                self.blocks_by_node.remove(&node);
            }
        }
    }

    /// The claim `block` makes, its node interned.
    fn claim(&mut self, block: &Block) -> Claim {
        Claim { node: self.names.intern(&block.node), state: block.state, deleted: block.deleted }
    }

    /// Stores an affinity; with `merge` (a whole read listing the same affinity twice) a copy
    /// that routes wins over one that does not, as in the whole-model plan.
    fn upsert_affinity(&mut self, block: Block, merge: bool) -> Ipv4Net {
        let cidr = block.cidr.trunc();
        let claim = self.claim(&block);
        let slot = self.affinities.entry((cidr, claim.node)).or_insert(claim);
        if !merge || claim.routes() || !slot.routes() {
            *slot = claim;
        }
        self.index_block(cidr, claim.node);
        cidr
    }

    fn remove_affinity(&mut self, cidr: Ipv4Net, node: &str) {
        let cidr = cidr.trunc();
        let Some(node) = self.names.id(node) else { return };
        self.affinities.remove(&(cidr, node));
        self.unindex_block(cidr, node);
    }

    fn upsert_allocation(&mut self, block: Block) -> Ipv4Net {
        let cidr = block.cidr.trunc();
        let claim = self.claim(&block);
        let old = self.allocations.insert(cidr, claim);
        if let Some(old) = old.filter(|old| old.node != claim.node) {
            self.unindex_block(cidr, old.node);
        }
        self.index_block(cidr, claim.node);
        cidr
    }

    fn remove_allocation(&mut self, cidr: Ipv4Net) -> Ipv4Net {
        let cidr = cidr.trunc();
        if let Some(old) = self.allocations.remove(&cidr) {
            self.unindex_block(cidr, old.node);
        }
        cidr
    }

    /// The blocks `node` has through an affinity or an allocation block.
    fn blocks_of(&self, node: &str) -> Option<&BTreeSet<Ipv4Net>> {
        self.blocks_by_node.get(&self.names.id(node)?)
    }

    /// `claim` on `cidr` as the model's block.
    fn block(&self, cidr: Ipv4Net, claim: &Claim) -> Block {
        Block { cidr, node: self.names.name(claim.node).to_owned(), state: claim.state, deleted: claim.deleted }
    }

    /// Stores `node`; returns the address it had before, if any.
    fn upsert_node(&mut self, node: Node) -> Option<Ipv4Addr> {
        let name = node.name.clone();
        let addr = node.addr.map(|addr| addr.addr());
        let old = self.nodes.insert(name.clone(), node).and_then(|old| old.addr).map(|addr| addr.addr());
        if old != addr {
            if let Some(old) = old {
                self.unindex_addr(old, &name);
            }
        }
        if let Some(addr) = addr {
            self.nodes_by_addr.entry(addr).or_default().insert(name);
        }
        old
    }

    /// Forgets the node `name`; returns the address it had, if any.
    fn remove_node(&mut self, name: &str) -> Option<Ipv4Addr> {
        let old = self.nodes.remove(name).and_then(|old| old.addr).map(|addr| addr.addr());
        if let Some(old) = old {
            self.unindex_addr(old, name);
        }
        old
    }

    fn unindex_addr(&mut self, addr: Ipv4Addr, name: &str) {
        if let Some(names) = self.nodes_by_addr.get_mut(&addr) {
            names.remove(name);
            if names.is_empty() {
                self.nodes_by_addr.remove(&addr);
            }
        }
    }

    /// Every block an affinity or an allocation names, in order.
    fn block_cidrs(&self) -> BTreeSet<Ipv4Net> {
        self.affinities.keys().map(|(cidr, _)| *cidr).chain(self.allocations.keys().copied()).collect()
    }

    /// The blocks whose address lies inside `range`, in order.
    fn blocks_within(&self, range: Ipv4Net) -> BTreeSet<Ipv4Net> {
        let (first, last) = (range.network(), range.broadcast());
        // Ipv4Net orders by address first: every block starting inside the range lies between
        // these two keys (the constructor only fails on a length above 32).
        let (Ok(low), Ok(high)) = (Ipv4Net::new(first, 0), Ipv4Net::new(last, 32)) else {
            return BTreeSet::new();
        };
        self.affinities
            .range((low, NameId::MIN)..=(high, NameId::MAX))
            .map(|((cidr, _), _)| *cidr)
            .chain(self.allocations.range(low..=high).map(|(cidr, _)| *cidr))
            .collect()
    }
}

/// What the planner derived for this node: the plan, and the problems by what caused them.
#[derive(Debug)]
struct Derived {
    plan: Plan,
    /// The usable pools, in name order.
    valid_pools: Vec<IpPool>,
    /// The usable pools' names, one copy each for all the routes in them.
    pool_names: Vec<Arc<str>>,
    pool_problems: Vec<Problem>,
    /// A block's problem, by block.
    block_problems: BTreeMap<Ipv4Net, Problem>,
    /// The local workloads' /32 routes, which win over a block or pool at the same prefix.
    workload_routes: BTreeMap<Ipv4Net, PlannedRoute>,
    workload_problems: Vec<Problem>,
}

/// This node's plan, kept equal to `plan::compute` over the cluster as deltas arrive.
#[derive(Debug)]
pub struct Planner {
    node: String,
    store: Store,
    derived: Result<Derived, PlanError>,
}

impl Planner {
    /// A planner for the node `node` of an empty cluster (which has no plan: the node is
    /// unknown until a delta brings it).
    pub fn new(node: &str) -> Self {
        Planner {
            node: node.to_owned(),
            store: Store::default(),
            derived: Err(PlanError::UnknownNode(node.to_owned())),
        }
    }

    /// The plan, or why there is none.
    pub fn plan(&self) -> Result<&Plan, &PlanError> {
        self.derived.as_ref().map(|derived| &derived.plan)
    }

    /// The problems of the resources left out of the plan, sorted, each once.
    pub fn problems(&self) -> Vec<Problem> {
        let Ok(derived) = &self.derived else {
            return Vec::new();
        };
        let mut all: Vec<Problem> = derived
            .pool_problems
            .iter()
            .chain(derived.block_problems.values())
            .chain(&derived.workload_problems)
            .cloned()
            .collect();
        all.sort_by(|a, b| (&a.kind, &a.name, &a.field, &a.message).cmp(&(&b.kind, &b.name, &b.field, &b.message)));
        all.dedup();
        all
    }

    /// How many blocks the store holds (affinities and allocation blocks, each block once).
    pub fn blocks(&self) -> usize {
        self.store.block_cidrs().len()
    }

    /// The cluster as the planner holds it, as one model (workloads of this node only, which
    /// are the only ones a plan reads): what the oracle plans.
    pub fn model(&self) -> Model {
        let store = &self.store;
        let mut blocks: Vec<Block> =
            store.affinities.iter().map(|((cidr, _), claim)| store.block(*cidr, claim)).collect();
        // By block, then by node name, as the affinities were kept before names had ids.
        blocks.sort_by(|a, b| (a.cidr, &a.node).cmp(&(b.cidr, &b.node)));
        blocks.extend(
            store
                .allocations
                .iter()
                .filter(|(cidr, claim)| !store.affinities.contains_key(&(**cidr, claim.node)))
                .map(|(cidr, claim)| store.block(*cidr, claim)),
        );
        Model {
            pools: store.pools.values().cloned().collect(),
            blocks,
            nodes: store.nodes.values().cloned().collect(),
            workloads: store.workloads.values().cloned().collect(),
        }
    }

    /// Applies one delta, adding the plan keys it changed to `changes`.
    pub fn apply(&mut self, delta: Delta, changes: &mut Changes) {
        match delta {
            Delta::Replace { model, allocations } => {
                let mut store = Store::default();
                for pool in model.pools {
                    store.pools.insert(pool.name.clone(), pool);
                }
                for node in model.nodes {
                    // First node wins for a repeated name, as in Model::node.
                    if !store.nodes.contains_key(&node.name) {
                        store.upsert_node(node);
                    }
                }
                for workload in model.workloads.into_iter().filter(|w| w.node == self.node) {
                    store.workloads.entry(workload.full_name()).or_insert(workload);
                }
                for block in model.blocks {
                    store.upsert_affinity(block, true);
                }
                for block in allocations {
                    store.upsert_allocation(block);
                }
                self.store = store;
                self.rebuild(changes);
            }
            Delta::UpsertPool(pool) => {
                self.store.pools.insert(pool.name.clone(), pool);
                self.pools_changed(changes);
            }
            Delta::RemovePool(name) => {
                if self.store.pools.remove(&name).is_some() {
                    self.pools_changed(changes);
                }
            }
            Delta::UpsertNode(node) if node.name == self.node => {
                self.store.upsert_node(node);
                self.rebuild(changes);
            }
            Delta::RemoveNode(name) if name == self.node => {
                self.store.remove_node(&name);
                self.rebuild(changes);
            }
            Delta::UpsertNode(node) => {
                let name = node.name.clone();
                let new = node.addr.map(|addr| addr.addr());
                let old = self.store.upsert_node(node);
                self.node_changed(&name, [old, new], changes);
            }
            Delta::RemoveNode(name) => {
                let old = self.store.remove_node(&name);
                self.node_changed(&name, [old, None], changes);
            }
            Delta::UpsertWorkload(workload) => {
                let name = workload.full_name();
                let changed = if workload.node == self.node {
                    self.store.workloads.insert(name, workload.clone()).as_ref() != Some(&workload)
                } else {
                    // Moved away, or never here.
                    self.store.workloads.remove(&name).is_some()
                };
                if changed {
                    self.workloads_changed(changes);
                }
            }
            Delta::RemoveWorkload(name) => {
                if self.store.workloads.remove(&name).is_some() {
                    self.workloads_changed(changes);
                }
            }
            Delta::UpsertAffinity(block) => {
                let cidr = self.store.upsert_affinity(block, false);
                self.replan_prefix(cidr, changes);
            }
            Delta::RemoveAffinity { cidr, node } => {
                self.store.remove_affinity(cidr, &node);
                self.replan_prefix(cidr.trunc(), changes);
            }
            Delta::UpsertAllocation(block) => {
                let cidr = self.store.upsert_allocation(block);
                self.replan_prefix(cidr, changes);
            }
            Delta::RemoveAllocation(cidr) => {
                let cidr = self.store.remove_allocation(cidr);
                self.replan_prefix(cidr, changes);
            }
        }
    }

    /// Plans everything again from the store (this node changed, or a whole read).
    fn rebuild(&mut self, changes: &mut Changes) {
        changes.everything = true;
        let store = &self.store;
        let Some(this) = store.nodes.get(&self.node) else {
            self.derived = Err(PlanError::UnknownNode(self.node.clone()));
            return;
        };
        let Some(local_addr) = this.addr else {
            self.derived = Err(PlanError::NodeWithoutAddress(self.node.clone()));
            return;
        };
        let plan = Plan::empty_for(this, local_addr);
        // Dropped first: at 100k blocks, two plans at once would double the peak.
        self.derived = Err(PlanError::UnknownNode(self.node.clone()));
        let mut derived = Derived {
            plan,
            valid_pools: Vec::new(),
            pool_names: Vec::new(),
            pool_problems: Vec::new(),
            block_problems: BTreeMap::new(),
            workload_routes: BTreeMap::new(),
            workload_problems: Vec::new(),
        };
        set_valid_pools(store, &mut derived);
        let mut ignored = Changes::default();
        for pool in derived.valid_pools.clone() {
            replan_prefix(store, &self.node, &mut derived, pool.cidr.trunc(), &mut ignored);
        }
        for cidr in store.block_cidrs() {
            replan_prefix(store, &self.node, &mut derived, cidr, &mut ignored);
        }
        replan_workloads(store, &self.node, &mut derived, &mut ignored);
        for addr in store.nodes_by_addr.keys() {
            replan_addr(store, &self.node, &mut derived, *addr, &mut ignored);
        }
        self.derived = Ok(derived);
    }

    fn replan_prefix(&mut self, prefix: Ipv4Net, changes: &mut Changes) {
        if let Ok(derived) = &mut self.derived {
            replan_prefix(&self.store, &self.node, derived, prefix, changes);
        }
    }

    fn workloads_changed(&mut self, changes: &mut Changes) {
        if let Ok(derived) = &mut self.derived {
            replan_workloads(&self.store, &self.node, derived, changes);
        }
    }

    /// Another node changed: its blocks, and the peer entries of its old and new addresses.
    fn node_changed(&mut self, name: &str, addrs: [Option<Ipv4Addr>; 2], changes: &mut Changes) {
        let Ok(derived) = &mut self.derived else { return };
        if let Some(blocks) = self.store.blocks_of(name) {
            for cidr in blocks {
                replan_prefix(&self.store, &self.node, derived, *cidr, changes);
            }
        }
        for addr in addrs.into_iter().flatten() {
            replan_addr(&self.store, &self.node, derived, addr, changes);
        }
    }

    /// A pool changed: when the usable pools differ, the blocks inside the pools that changed,
    /// the pools' own prefixes, the local workloads and every peer entry.
    fn pools_changed(&mut self, changes: &mut Changes) {
        let Ok(derived) = &mut self.derived else { return };
        let before = std::mem::take(&mut derived.valid_pools);
        set_valid_pools(&self.store, derived);
        if derived.valid_pools == before {
            return;
        }
        let changed: Vec<&IpPool> = before
            .iter()
            .filter(|pool| !derived.valid_pools.contains(pool))
            .chain(derived.valid_pools.iter().filter(|pool| !before.contains(pool)))
            .collect();
        let mut prefixes: BTreeSet<Ipv4Net> = changed.iter().map(|pool| pool.cidr.trunc()).collect();
        for pool in &changed {
            prefixes.extend(self.store.blocks_within(pool.cidr.trunc()));
        }
        replan_workloads(&self.store, &self.node, derived, changes);
        for prefix in prefixes {
            replan_prefix(&self.store, &self.node, derived, prefix, changes);
        }
        let addrs: Vec<Ipv4Addr> = self.store.nodes_by_addr.keys().copied().collect();
        for addr in addrs {
            replan_addr(&self.store, &self.node, derived, addr, changes);
        }
    }
}

/// The usable pools, in name order, and the problems of the others.
fn set_valid_pools(store: &Store, derived: &mut Derived) {
    let mut problems = Vec::new();
    derived.valid_pools = plan::valid_pools(store.pools.values(), &mut problems).into_iter().cloned().collect();
    derived.pool_names = derived.valid_pools.iter().map(|pool| plan::fresh(&pool.name)).collect();
    derived.pool_problems = problems;
}

/// Decides the route of `prefix` again: the local workload's if one has it, else the block's,
/// else the pool's whose prefix it is; records the prefix when the route changed.
fn replan_prefix(store: &Store, this_node: &str, derived: &mut Derived, prefix: Ipv4Net, changes: &mut Changes) {
    let pools: Vec<&IpPool> = derived.valid_pools.iter().collect();
    let local_addr = derived.plan.node.addr;
    let owners = store.owners(&prefix);
    let pool_names = &derived.pool_names;
    // Every route shares the names the store and the pools keep.
    let share = |name: &str| {
        pool_names
            .iter()
            .find(|pool| &***pool == name)
            .cloned()
            .or_else(|| store.names.shared(name))
            .unwrap_or_else(|| plan::fresh(name))
    };
    let block = (!owners.is_empty()).then(|| {
        plan::block_route(prefix, &owners, &pools, |name| store.nodes.get(name), this_node, &local_addr, &share)
    });
    let block = match block {
        Some(Ok(route)) => {
            derived.block_problems.remove(&prefix);
            Some(route)
        }
        Some(Err(problem)) => {
            derived.block_problems.insert(prefix, problem);
            None
        }
        None => {
            derived.block_problems.remove(&prefix);
            None
        }
    };
    let route = derived.workload_routes.get(&prefix).cloned().or(block).or_else(|| {
        pools
            .iter()
            .find(|pool| pool.cidr.trunc() == prefix)
            .map(|pool| plan::route_in(Some(pool), RouteTarget::Pool, &share))
    });
    let routes = &mut derived.plan.routes;
    if routes.get(&prefix) == route.as_ref() {
        return;
    }
    match route {
        Some(route) => routes.insert(prefix, route),
        None => routes.remove(&prefix),
    };
    changes.routes.insert(prefix);
}

/// Plans the local workloads again (a handful per node, so all of them: which of two wins an
/// interface or an address depends on the others).
fn replan_workloads(store: &Store, this_node: &str, derived: &mut Derived, changes: &mut Changes) {
    let pools: Vec<&IpPool> = derived.valid_pools.iter().collect();
    let mut routes = BTreeMap::new();
    let mut planned = BTreeMap::new();
    let mut problems = Vec::new();
    plan::plan_workloads(store.workloads.values(), &pools, this_node, &mut routes, &mut planned, &mut problems);
    let before = std::mem::replace(&mut derived.plan.workloads, planned);
    let after = &derived.plan.workloads;
    for interface in before.keys().chain(after.keys()) {
        if before.get(interface) != after.get(interface) {
            changes.workloads.insert(interface.clone());
        }
    }
    let old_routes = std::mem::replace(&mut derived.workload_routes, routes);
    derived.workload_problems = problems;
    let touched: BTreeSet<Ipv4Net> = old_routes.keys().chain(derived.workload_routes.keys()).copied().collect();
    for prefix in touched {
        replan_prefix(store, this_node, derived, prefix, changes);
    }
}

/// Decides again whether `addr` is another node of the cluster and which tunnels run to it.
fn replan_addr(store: &Store, this_node: &str, derived: &mut Derived, addr: Ipv4Addr, changes: &mut Changes) {
    let local = derived.plan.node.addr;
    // A node at this node's own address is no peer.
    let other = addr != local.addr()
        && store.nodes_by_addr.get(&addr).is_some_and(|names| names.iter().any(|name| name != this_node));
    let pools: Vec<&IpPool> = derived.valid_pools.iter().collect();
    let peer = other.then(|| plan::peer_towards(&pools, &local, addr)).filter(|peer| peer.vxlan || peer.ipip);
    let plan = &mut derived.plan;
    let was = (plan.cluster_nodes.contains(&addr), plan.peers.get(&addr).copied());
    if was == (other, peer) {
        return;
    }
    if other {
        plan.cluster_nodes.insert(addr);
    } else {
        plan.cluster_nodes.remove(&addr);
    }
    match peer {
        Some(peer) => plan.peers.insert(addr, peer),
        None => plan.peers.remove(&addr),
    };
    changes.nodes.insert(addr);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        fixtures::{self, net},
        model::{AffinityState, EncapMode, MacAddr},
    };

    /// A small deterministic generator (xorshift), so that a failing stream can be replayed
    /// from its seed.
    struct Random(u64);

    impl Random {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[self.below(items.len())]
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.next() % 100 < percent
        }
    }

    const THIS: &str = "n1";
    const NODES: [&str; 5] = ["n1", "n2", "n3", "n4", "n5"];
    /// Pool CIDRs that overlap each other and the blocks in several ways.
    const POOL_CIDRS: [&str; 5] = ["10.244.0.0/16", "10.244.0.0/24", "10.245.0.0/16", "10.244.1.0/26", "10.0.0.0/8"];
    /// Blocks of several sizes, one equal to a pool, /32 ones that meet workloads.
    const BLOCKS: [&str; 10] = [
        "10.244.0.0/26",
        "10.244.0.64/26",
        "10.244.1.0/26",
        "10.244.2.0/26",
        "10.245.0.0/26",
        "10.245.1.0/28",
        "10.244.0.2/32",
        "10.246.0.0/26",
        "10.244.0.0/24",
        "10.245.0.3/32",
    ];
    const ADDRS: [&str; 5] = ["10.0.0.1/24", "10.0.0.2/24", "10.0.1.3/24", "10.0.0.2/24", "10.0.1.5/24"];
    const WORKLOAD_ADDRS: [&str; 4] = ["10.244.0.2/32", "10.244.0.3/32", "10.245.0.3/32", "10.9.9.9/32"];

    fn mode(random: &mut Random) -> EncapMode {
        random.pick(&[EncapMode::Never, EncapMode::Always, EncapMode::CrossSubnet])
    }

    fn pool(random: &mut Random) -> IpPool {
        let index = random.below(POOL_CIDRS.len());
        let vxlan = mode(random);
        // Now and then both modes: an invalid pool.
        let ipip = if random.chance(20) { mode(random) } else { EncapMode::Never };
        IpPool {
            vxlan_mode: vxlan,
            ipip_mode: ipip,
            nat_outgoing: random.chance(50),
            ..fixtures::pool(&format!("pool-{}", random.below(4)), POOL_CIDRS[index], 26)
        }
    }

    fn node(random: &mut Random) -> Node {
        let name = random.pick(&NODES).to_string();
        Node {
            addr: random.chance(90).then(|| net(random.pick(&ADDRS))),
            vxlan_tunnel_addr: None,
            vxlan_tunnel_mac: random.chance(80).then(|| MacAddr([0x66, 0xd0, 0, 0, 0, random.below(3) as u8])),
            ipip_tunnel_addr: None,
            name,
        }
    }

    fn block(random: &mut Random) -> Block {
        let state = if random.chance(80) {
            AffinityState::Confirmed
        } else {
            random.pick(&[AffinityState::Pending, AffinityState::PendingDeletion])
        };
        Block {
            cidr: net(random.pick(&BLOCKS)),
            node: random.pick(&NODES).to_string(),
            state,
            deleted: random.chance(5),
        }
    }

    fn workload(random: &mut Random) -> Workload {
        let name = format!("w{}", random.below(5));
        Workload {
            namespace: "default".into(),
            interface: format!("cali{}", random.below(4)),
            node: if random.chance(80) { THIS.into() } else { random.pick(&NODES).to_string() },
            addrs: if random.chance(90) { vec![net(random.pick(&WORKLOAD_ADDRS))] } else { Vec::new() },
            mac: None,
            name,
        }
    }

    fn delta(random: &mut Random) -> Delta {
        match random.below(100) {
            0..=9 => Delta::UpsertPool(pool(random)),
            10..=13 => Delta::RemovePool(format!("pool-{}", random.below(4))),
            14..=23 => Delta::UpsertNode(node(random)),
            24..=26 => Delta::RemoveNode(random.pick(&NODES).to_string()),
            27..=36 => Delta::UpsertWorkload(workload(random)),
            37..=40 => Delta::RemoveWorkload(format!("default/w{}", random.below(5))),
            41..=60 => Delta::UpsertAffinity(block(random)),
            61..=70 => Delta::RemoveAffinity { cidr: net(random.pick(&BLOCKS)), node: random.pick(&NODES).to_string() },
            71..=85 => Delta::UpsertAllocation(block(random)),
            86..=95 => Delta::RemoveAllocation(net(random.pick(&BLOCKS))),
            _ => {
                let mut model = Model::default();
                for _ in 0..random.below(4) {
                    model.pools.push(pool(random));
                }
                for _ in 0..random.below(6) {
                    model.nodes.push(node(random));
                }
                for _ in 0..random.below(8) {
                    model.blocks.push(block(random));
                }
                for _ in 0..random.below(4) {
                    model.workloads.push(workload(random));
                }
                let allocations = (0..random.below(4)).map(|_| block(random)).collect();
                // A whole read lists each name once.
                model.pools.sort_by(|a, b| a.name.cmp(&b.name));
                model.pools.dedup_by(|a, b| a.name == b.name);
                model.workloads.sort_by_key(|w| w.full_name());
                model.workloads.dedup_by(|a, b| a.full_name() == b.full_name());
                Delta::Replace { model, allocations }
            }
        }
    }

    /// The plan as a backend that writes only the changed keys would hold it.
    fn follow(mirror: &mut Option<Plan>, planner: &Planner, changes: &Changes) {
        let plan = planner.plan().ok();
        if changes.everything || mirror.is_none() || plan.is_none() {
            *mirror = plan.cloned();
            return;
        }
        let (Some(mirror), Some(plan)) = (mirror.as_mut(), plan) else { return };
        for prefix in &changes.routes {
            match plan.routes.get(prefix) {
                Some(route) => mirror.routes.insert(*prefix, route.clone()),
                None => mirror.routes.remove(prefix),
            };
        }
        for interface in &changes.workloads {
            match plan.workloads.get(interface) {
                Some(workload) => mirror.workloads.insert(interface.clone(), workload.clone()),
                None => mirror.workloads.remove(interface),
            };
        }
        for addr in &changes.nodes {
            match plan.peers.get(addr) {
                Some(peer) => mirror.peers.insert(*addr, *peer),
                None => mirror.peers.remove(addr),
            };
            if plan.cluster_nodes.contains(addr) {
                mirror.cluster_nodes.insert(*addr);
            } else {
                mirror.cluster_nodes.remove(addr);
            }
        }
    }

    /// Random delta streams: after every delta the incremental plan and problems equal the
    /// whole-model plan of the same cluster, and applying only the reported changes to a copy of
    /// the previous plan gives the new one.
    #[test]
    fn random_deltas_keep_the_plan_equal_to_the_whole_model_plan() {
        let mut planned_at_all = 0;
        let mut routes_seen = 0;
        for seed in 1..=300u64 {
            let mut random = Random(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut planner = Planner::new(THIS);
            let mut mirror: Option<Plan> = None;
            for step in 0..150 {
                let delta = delta(&mut random);
                let shown = format!("{delta:?}");
                let mut changes = Changes::default();
                planner.apply(delta, &mut changes);
                let oracle = plan::compute(&planner.model(), THIS);
                match (&oracle, planner.plan()) {
                    (Ok((plan, problems)), Ok(incremental)) => {
                        assert_eq!(incremental, plan, "seed {seed} step {step} after {shown}");
                        let mut expected: Vec<Problem> = problems.clone();
                        expected.sort_by_key(|p| format!("{p:?}"));
                        expected.dedup();
                        let mut got = planner.problems();
                        got.sort_by_key(|p| format!("{p:?}"));
                        assert_eq!(got, expected, "problems: seed {seed} step {step} after {shown}");
                        planned_at_all += 1;
                        routes_seen += plan.routes.len();
                    }
                    (Err(expected), Err(got)) => assert_eq!(got, expected, "seed {seed} step {step}"),
                    (oracle, got) => panic!("seed {seed} step {step} after {shown}: {oracle:?} vs {got:?}"),
                }
                follow(&mut mirror, &planner, &changes);
                assert_eq!(mirror.as_ref(), planner.plan().ok(), "changes: seed {seed} step {step} after {shown}");
            }
        }
        // The streams must reach plans with routes, or the comparison proves little.
        assert!(planned_at_all > 20_000, "{planned_at_all} plans compared");
        assert!(routes_seen > 50_000, "{routes_seen} routes compared");
    }

    /// One block's affinity changes one route and nothing else; another node's VTEP change
    /// re-plans only that node's blocks.
    #[test]
    fn a_change_touches_only_its_keys() {
        let mut model = Model::default();
        model.pools.push(IpPool { nat_outgoing: true, ..fixtures::pool("default", "10.244.0.0/16", 26) });
        for (index, name) in NODES.iter().enumerate() {
            model.nodes.push(Node {
                name: (*name).into(),
                addr: Some(net(&format!("10.0.0.{}/24", index + 1))),
                vxlan_tunnel_mac: Some(MacAddr([0x66, 0xd0, 0, 0, 0, index as u8])),
                ..Node::default()
            });
            for block in 0..4 {
                model.blocks.push(Block {
                    cidr: net(&format!("10.244.{}.{}/26", index, block * 64)),
                    node: (*name).into(),
                    state: AffinityState::Confirmed,
                    deleted: false,
                });
            }
        }
        let mut planner = Planner::new(THIS);
        let mut changes = Changes::default();
        planner.apply(Delta::Replace { model, allocations: Vec::new() }, &mut changes);
        assert!(changes.everything);

        let mut changes = Changes::default();
        let new =
            Block { cidr: net("10.244.9.0/26"), node: "n3".into(), state: AffinityState::Confirmed, deleted: false };
        planner.apply(Delta::UpsertAffinity(new), &mut changes);
        assert_eq!(changes, Changes { routes: [net("10.244.9.0/26")].into(), ..Changes::default() });

        let mut changes = Changes::default();
        let mut n2 = planner.store.nodes["n2"].clone();
        n2.vxlan_tunnel_mac = Some(MacAddr([0x66, 0xd0, 0, 0, 0, 0x42]));
        planner.apply(Delta::UpsertNode(n2), &mut changes);
        let expected: BTreeSet<Ipv4Net> = (0..4).map(|block| net(&format!("10.244.1.{}/26", block * 64))).collect();
        assert_eq!(changes, Changes { routes: expected, ..Changes::default() });

        // The same delta again changes nothing.
        let mut again = Changes::default();
        let n2 = planner.store.nodes["n2"].clone();
        planner.apply(Delta::UpsertNode(n2), &mut again);
        assert!(again.is_empty(), "{again:?}");
    }
}

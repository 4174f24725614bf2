//! Resource fuzzing of the datastore: broken Calico resources, generated and hand-written, mixed
//! into a valid cluster and read through the file datastore (`file::parse`, hence `ModelBuilder`,
//! which the etcd datastore feeds too) and the plan.
//!
//! The rule checked: every broken resource is reported with a problem naming its kind, its name
//! and the field to fix; the plan of the valid cluster mixed with broken resources equals the plan
//! of the valid cluster alone (nothing broken leaks in, nothing valid is lost); nothing panics.
//! The unit test `datastore::file::tests::hostile_input_does_not_panic` covers YAML-level hostility
//! (alias bombs, 1000-deep nesting, tags); this file covers resources and their mixing.
//!
//! `DATAPLANE_FUZZ_CASES=N` runs more generated clusters. Needs no root.

#![allow(clippy::unwrap_used, reason = "fixtures of a test: a failed unwrap is a failed test")]

use std::time::Instant;

use dataplane::{datastore::file, model::Problem, plan};
use dataplane_tests::program::CLUSTER;
use proptest::{
    collection::vec,
    prelude::*,
    test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner},
};
use serde_json::{json, Value};

/// Generated clusters by default, each with up to [`MAX_BROKEN`] broken resources.
const DEFAULT_CASES: u32 = 400;
/// Broken resources mixed into one cluster at most.
const MAX_BROKEN: usize = 24;
/// The default seed: every run tries the same clusters.
const DEFAULT_SEED: u64 = 0x00da_7a91_a4e0_0002;
/// The fixture's nodes, each planned.
const NODES: [&str; 2] = ["node-1", "node-2"];

fn runner(cases: u32) -> TestRunner {
    let cases = std::env::var("DATAPLANE_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(cases);
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&DEFAULT_SEED.to_le_bytes());
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed))
}

/// The plans of every fixture node, with their problems.
fn plans(text: &str) -> Result<Vec<(plan::Plan, Vec<Problem>)>, String> {
    let (model, problems) = file::parse(text).map_err(|e| format!("{e}"))?;
    NODES
        .iter()
        .map(|node| {
            let (plan, mut plan_problems) = plan::compute(&model, node).map_err(|e| format!("{e}"))?;
            plan_problems.extend(problems.iter().cloned());
            Ok((plan, plan_problems))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Broken resources, each with the problem it must produce.

/// What is broken in a resource; `slot` (unique per resource in a cluster) keeps the addresses
/// and names of different broken resources apart.
#[derive(Clone, Debug)]
enum Broken {
    PoolBadCidr(String),
    PoolBadBlockSize(Value),
    PoolBadMode(Value),
    PoolBothModes,
    PoolOverlapping(&'static str),
    PoolWrongShape(Value),
    BlockBadCidr(String),
    BlockOutsidePools,
    BlockTwoNodes,
    BlockUnknownNode,
    NodeWithoutAddress,
    NodeBadAddress(String),
    NodeBadMac(Value),
    KubernetesNodeBadAnnotation(String),
    WorkloadBadNetworks(Value),
    WorkloadBadMac(String),
    WorkloadSameInterface,
    WorkloadSameAddress,
    UnknownKind(String),
    NotAResource(Value),
}

/// Strings that are no CIDR: nothing of them can parse as one.
fn not_a_cidr() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("10.0.0.0/33".to_owned()),
        Just("256.1.2.0/24".to_owned()),
        Just("10.0.0/8".to_owned()),
        Just("10.0.0.0/".to_owned()),
        Just("10.0.0.0/-1".to_owned()),
        Just("10.0.0.0/8/8".to_owned()),
        Just(" /26".to_owned()),
        Just("10.244.1.0/26\u{0}".to_owned()),
        Just("١٠.٠.٠.٠/٨".to_owned()),
        "x[a-z0-9./:]{0,20}",
    ]
}

fn not_a_mac() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("66:d0:00:00:00")),
        Just(json!("66:d0:00:00:00:01:02")),
        Just(json!("66:d0:00:00:00:0g")),
        Just(json!("66d0.0000.0001")),
        Just(json!("+6:d0:00:00:00:01")),
        Just(json!("66:d0:00:00:00:001")),
        Just(json!(12345)),
        Just(json!(["66:d0:00:00:00:01"])),
        "z[a-f0-9:]{0,20}".prop_map(Value::from),
    ]
}

fn broken() -> impl Strategy<Value = Broken> {
    prop_oneof![
        not_a_cidr().prop_map(Broken::PoolBadCidr),
        prop_oneof![
            Just(json!(-1)),
            Just(json!(33)),
            Just(json!(8)),
            Just(json!(26.5)),
            Just(json!("26")),
            Just(json!([26])),
            Just(json!(1e30))
        ]
        .prop_map(Broken::PoolBadBlockSize),
        prop_oneof![
            Just(json!("always!")),
            Just(json!(1)),
            Just(json!(true)),
            Just(json!({"mode": "Always"})),
            "q[a-z]{0,10}".prop_map(Value::from)
        ]
        .prop_map(Broken::PoolBadMode),
        Just(Broken::PoolBothModes),
        prop_oneof![Just("10.0.0.0/8"), Just("10.244.128.0/17"), Just("10.244.1.0/24"), Just("10.244.0.0/16")]
            .prop_map(Broken::PoolOverlapping),
        prop_oneof![
            Just(json!(5)),
            Just(json!("spec")),
            Just(json!([1, 2])),
            Just(json!({"cidr": 5})),
            Just(json!({"cidr": {"a": "b"}}))
        ]
        .prop_map(Broken::PoolWrongShape),
        not_a_cidr().prop_map(Broken::BlockBadCidr),
        Just(Broken::BlockOutsidePools),
        Just(Broken::BlockTwoNodes),
        Just(Broken::BlockUnknownNode),
        Just(Broken::NodeWithoutAddress),
        prop_oneof![
            Just("10.100.0.300/24".to_owned()),
            Just("fe80::1/64".to_owned()),
            Just("10.100.0.13/40".to_owned()),
            not_a_cidr()
        ]
        .prop_map(Broken::NodeBadAddress),
        not_a_mac().prop_map(Broken::NodeBadMac),
        prop_oneof![Just("10.100.0.13/33".to_owned()), Just("node".to_owned()), not_a_cidr()]
            .prop_map(Broken::KubernetesNodeBadAnnotation),
        prop_oneof![
            Just(json!(["x"])),
            Just(json!([5])),
            Just(json!("10.244.1.9/32")),
            Just(json!([null])),
            Just(json!(["10.244.1.9/33"]))
        ]
        .prop_map(Broken::WorkloadBadNetworks),
        prop_oneof![Just("0a:58".to_owned()), Just("0a:58:0a:f4:01:xx".to_owned())].prop_map(Broken::WorkloadBadMac),
        Just(Broken::WorkloadSameInterface),
        Just(Broken::WorkloadSameAddress),
        prop_oneof![
            Just("NetworkPolicy".to_owned()),
            Just("ippool".to_owned()),
            "[A-Z][a-zA-Z]{0,12}".prop_filter("not a known kind", |k| ![
                "IPPool",
                "BlockAffinity",
                "IPAMBlock",
                "Node",
                "WorkloadEndpoint"
            ]
            .contains(&k.as_str())
                && !k.ends_with("List"))
        ]
        .prop_map(Broken::UnknownKind),
        prop_oneof![Just(json!([1, 2, 3])), Just(json!("IPPool")), Just(json!(42)), Just(json!(true))]
            .prop_map(Broken::NotAResource),
    ]
}

/// The problem a broken resource must raise, in the plans of `nodes`.
#[derive(Clone, Debug)]
struct Expected {
    kind: String,
    name: String,
    field: String,
    nodes: &'static [&'static str],
}

/// The resources of a broken case and the (kind, name, field) of the problem it must raise.
/// `document` is the 1-based position of its first resource in the stream.
fn render(broken: &Broken, slot: usize, document: usize) -> (Vec<Value>, Expected) {
    let pool = |name: &str, spec: Value| json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": name}, "spec": spec});
    let affinity = |name: &str, cidr: &str, node: &str| {
        json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "BlockAffinity", "metadata": {"name": name},
               "spec": {"cidr": cidr, "node": node, "state": "confirmed", "deleted": "false"}})
    };
    let endpoint = |name: &str, spec: Value| json!({"apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint", "metadata": {"name": name, "namespace": "default"}, "spec": spec});
    let expect = |kind: &str, name: &str, field: &str| Expected {
        kind: kind.to_owned(),
        name: name.to_owned(),
        field: field.to_owned(),
        nodes: &NODES,
    };
    // Workloads are planned only on their own node.
    let on_node_1 = |expected: Expected| Expected { nodes: &NODES[..1], ..expected };
    // Addresses of this slot that no valid resource uses: a block of the fixture's pool, and a
    // pool range of its own.
    let block = format!("10.244.{}.0/26", 10 + slot);
    let own_pool = format!("10.{}.0.0/16", 150 + slot);
    let name = format!("junk-{slot}");
    match broken {
        Broken::PoolBadCidr(cidr) => (vec![pool(&name, json!({"cidr": cidr}))], expect("IPPool", &name, "spec.cidr")),
        Broken::PoolBadBlockSize(size) => {
            (vec![pool(&name, json!({"cidr": own_pool, "blockSize": size}))], expect("IPPool", &name, "spec.blockSize"))
        }
        Broken::PoolBadMode(mode) => {
            (vec![pool(&name, json!({"cidr": own_pool, "vxlanMode": mode}))], expect("IPPool", &name, "spec.vxlanMode"))
        }
        Broken::PoolBothModes => (
            vec![pool(&name, json!({"cidr": own_pool, "vxlanMode": "Always", "ipipMode": "CrossSubnet"}))],
            expect("IPPool", &name, "spec.vxlanMode"),
        ),
        Broken::PoolOverlapping(cidr) => {
            (vec![pool(&name, json!({"cidr": cidr, "vxlanMode": "Always"}))], expect("IPPool", &name, "spec.cidr"))
        }
        Broken::PoolWrongShape(spec) => (vec![pool(&name, spec.clone())], expect("IPPool", &name, "spec.cidr")),
        Broken::BlockBadCidr(cidr) => {
            (vec![affinity(&name, cidr, "node-2")], expect("BlockAffinity", &name, "spec.cidr"))
        }
        Broken::BlockOutsidePools => {
            let cidr = format!("10.{}.0.0/26", 150 + slot);
            (vec![affinity(&name, &cidr, "node-2")], expect("BlockAffinity", &cidr, "spec.cidr"))
        }
        Broken::BlockTwoNodes => (
            vec![affinity(&format!("{name}-a"), &block, "node-1"), affinity(&format!("{name}-b"), &block, "node-2")],
            expect("BlockAffinity", &block, "spec.node"),
        ),
        Broken::BlockUnknownNode => {
            (vec![affinity(&name, &block, &format!("{name}-node"))], expect("BlockAffinity", &block, "spec.node"))
        }
        Broken::NodeWithoutAddress => {
            let node = json!({"apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": {"name": name},
                              "spec": {"vxlanTunnelMACAddr": "66:d0:00:00:00:09"}});
            (
                vec![node, affinity(&format!("{name}-block"), &block, &name)],
                expect("Node", &name, "spec.bgp.ipv4Address"),
            )
        }
        Broken::NodeBadAddress(addr) => {
            let node = json!({"apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": {"name": name},
                              "spec": {"bgp": {"ipv4Address": addr}}});
            (vec![node], expect("Node", &name, "spec.bgp.ipv4Address"))
        }
        Broken::NodeBadMac(mac) => {
            let node = json!({"apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": {"name": name},
                              "spec": {"bgp": {"ipv4Address": "10.100.0.13/24"}, "vxlanTunnelMACAddr": mac}});
            (vec![node], expect("Node", &name, "spec.vxlanTunnelMACAddr"))
        }
        Broken::KubernetesNodeBadAnnotation(addr) => {
            let node = json!({"apiVersion": "v1", "kind": "Node",
                              "metadata": {"name": name, "annotations": {"projectcalico.org/IPv4Address": addr}}});
            (vec![node], expect("Node", &name, "metadata.annotations[\"projectcalico.org/IPv4Address\"]"))
        }
        Broken::WorkloadBadNetworks(networks) => (
            vec![endpoint(
                &name,
                json!({"node": "node-1", "interfaceName": format!("calijunk{slot:07}"), "ipNetworks": networks}),
            )],
            expect("WorkloadEndpoint", &format!("default/{name}"), "spec.ipNetworks"),
        ),
        Broken::WorkloadBadMac(mac) => (
            vec![endpoint(
                &name,
                json!({"node": "node-1", "interfaceName": format!("calijunk{slot:07}"), "ipNetworks": [format!("10.244.1.{}/32", 10 + slot)], "mac": mac}),
            )],
            expect("WorkloadEndpoint", &format!("default/{name}"), "spec.mac"),
        ),
        Broken::WorkloadSameInterface => (
            vec![endpoint(
                &name,
                json!({"node": "node-1", "interfaceName": "calitesteda0001", "ipNetworks": [format!("10.244.1.{}/32", 10 + slot)]}),
            )],
            on_node_1(expect("WorkloadEndpoint", &format!("default/{name}"), "spec.interfaceName")),
        ),
        Broken::WorkloadSameAddress => (
            vec![endpoint(
                &name,
                json!({"node": "node-1", "interfaceName": format!("calijunk{slot:07}"), "ipNetworks": ["10.244.1.2/32"]}),
            )],
            on_node_1(expect("WorkloadEndpoint", &format!("default/{name}"), "spec.ipNetworks")),
        ),
        Broken::UnknownKind(kind) => (
            vec![
                json!({"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": {"name": name}, "spec": {"cidr": own_pool}}),
            ],
            expect(kind, &name, "kind"),
        ),
        Broken::NotAResource(value) => {
            (vec![value.clone()], expect("resource", &format!("document {document}"), "kind"))
        }
    }
}

/// The valid cluster followed by `broken`, each resource its own YAML document (JSON is YAML: the
/// resources are written as the API serves them).
fn mixed_cluster(broken: &[Broken]) -> (String, Vec<Expected>) {
    let mut text = CLUSTER.to_owned();
    let mut document = CLUSTER.matches("\n---\n").count() + 1;
    let mut expected = Vec::new();
    for (slot, case) in broken.iter().enumerate() {
        let (resources, problem) = render(case, slot, document + 1);
        for resource in resources {
            text.push_str("\n---\n");
            text.push_str(&serde_json::to_string(&resource).unwrap());
            document += 1;
        }
        text.push('\n');
        expected.push(problem);
    }
    (text, expected)
}

#[test]
fn broken_resources_are_reported_and_the_rest_is_planned_as_without_them() {
    let valid = plans(CLUSTER).unwrap();
    for (plan, problems) in &valid {
        assert!(problems.is_empty(), "the fixture is valid: {problems:?}");
        assert!(!plan.routes.is_empty());
    }
    let mut runner = runner(DEFAULT_CASES);
    let began = Instant::now();
    let resources = std::cell::Cell::new(0usize);
    let result = runner.run(&vec(broken(), 1..MAX_BROKEN), |broken| {
        let (text, expected) = mixed_cluster(&broken);
        resources.set(resources.get() + broken.len());
        let mixed = plans(&text).map_err(TestCaseError::fail)?;
        for ((plan, problems), (valid_plan, _)) in mixed.iter().zip(&valid) {
            prop_assert_eq!(plan, valid_plan, "a broken resource changed the plan of {}", plan.node.name);
            for Expected { kind, name, field, nodes } in &expected {
                if !nodes.contains(&plan.node.name.as_str()) {
                    continue;
                }
                prop_assert!(
                    problems
                        .iter()
                        .any(|p| &p.kind == kind && &p.name == name && &p.field == field && !p.message.is_empty()),
                    "no problem names {} {} field {} on {}; problems: {:#?}",
                    kind,
                    name,
                    field,
                    plan.node.name,
                    problems
                );
            }
        }
        Ok(())
    });
    eprintln!(
        "resource fuzzing: {} broken resources in {} clusters, {:.1?}",
        resources.get(),
        runner_cases(),
        began.elapsed()
    );
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

fn runner_cases() -> u32 {
    std::env::var("DATAPLANE_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(DEFAULT_CASES)
}

// ---------------------------------------------------------------------------------------------
// Random shapes: resources of known kinds with random fields, to find panics and silent losses.

/// Field names the datastore reads, and some it does not.
const KEYS: [&str; 28] = [
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "namespace",
    "annotations",
    "spec",
    "cidr",
    "blockSize",
    "vxlanMode",
    "ipipMode",
    "natOutgoing",
    "disabled",
    "node",
    "state",
    "deleted",
    "affinity",
    "bgp",
    "ipv4Address",
    "ipv4VXLANTunnelAddr",
    "vxlanTunnelMACAddr",
    "ipv4IPIPTunnelAddr",
    "addresses",
    "ipNetworks",
    "interfaceName",
    "mac",
    "projectcalico.org/IPv4Address",
    "unknownField",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("JSON has no NaN or infinity", |f| f.is_finite()).prop_map(Value::from),
        prop_oneof![
            Just("10.244.0.0/16"),
            Just("10.244.7.0/26"),
            Just("10.100.0.20/24"),
            Just("fd00::/64"),
            Just("66:d0:00:00:00:07"),
            Just("Always"),
            Just("CrossSubnet"),
            Just("Never"),
            Just("confirmed"),
            Just("pending"),
            Just("host:node-2"),
            Just("host:"),
            Just("v1"),
            Just("true"),
            Just(""),
            Just("  "),
            Just("node-2"),
            Just("calirandom0001")
        ]
        .prop_map(Value::from),
        "[ -~\u{a0}-\u{2ff}]{0,16}".prop_map(Value::from),
    ]
}

fn random_value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec((prop::sample::select(KEYS.as_slice()), inner), 0..6)
                .prop_map(|fields| { Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()) }),
        ]
    })
}

fn random_resource() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(
            ["IPPool", "BlockAffinity", "IPAMBlock", "Node", "WorkloadEndpoint", "List", "IPPoolList"].as_slice(),
        ),
        prop_oneof![Just(json!("projectcalico.org/v3")), Just(json!("v1")), scalar()],
        random_value(),
        random_value(),
    )
        .prop_map(|(kind, api_version, metadata, spec)| {
            let mut resource = json!({"kind": kind, "apiVersion": api_version, "metadata": metadata, "spec": spec});
            if kind.ends_with("List") {
                resource["items"] = json!([spec_of_list(&resource)]);
            }
            resource
        })
}

fn spec_of_list(resource: &Value) -> Value {
    json!({"metadata": resource["metadata"].clone(), "spec": resource["spec"].clone()})
}

#[test]
fn random_resources_never_panic_and_are_kept_or_reported() {
    let mut runner = runner(DEFAULT_CASES * 2);
    let tried = std::cell::Cell::new(0usize);
    let result = runner.run(&vec(random_resource(), 1..8), |resources| {
        let mut text = CLUSTER.to_owned();
        for resource in &resources {
            text.push_str("\n---\n");
            text.push_str(&serde_json::to_string(resource).unwrap());
            text.push('\n');
            tried.set(tried.get() + 1);
            // Alone, a resource of a kind that always makes something is kept or reported.
            let kind = resource["kind"].as_str().unwrap_or("");
            let ipv6_block = resource["spec"]["cidr"] == json!("fd00::/64");
            let (model, problems) = file::parse(&serde_json::to_string(resource).unwrap())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let kept = model.pools.len() + model.nodes.len() + model.workloads.len() + model.blocks.len();
            if matches!(kind, "IPPool" | "Node" | "WorkloadEndpoint") || (kind == "BlockAffinity" && !ipv6_block) {
                prop_assert!(kept + problems.len() > 0, "{} was neither kept nor reported", resource);
            }
            for problem in &problems {
                prop_assert!(
                    !problem.kind.is_empty()
                        && !problem.name.is_empty()
                        && !problem.field.is_empty()
                        && !problem.message.is_empty(),
                    "{:?}",
                    problem
                );
            }
        }
        // Mixed into the cluster: it parses and plans (whatever the plan becomes) without panicking.
        let (model, _) = file::parse(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for node in NODES {
            // A random Node may take the fixture node's name first: then there is no plan, by design.
            let _ = plan::compute(&model, node);
        }
        Ok(())
    });
    eprintln!("random resources: {} tried", tried.get());
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

// ---------------------------------------------------------------------------------------------
// Hand-written: unknown fields, deep nesting, huge documents.

#[test]
fn unknown_fields_and_deep_values_in_unknown_fields_are_ignored() {
    let valid = plans(CLUSTER).unwrap();
    // Every resource gains unknown fields at every level, one of them nested 60 deep.
    let deep = format!("{}1{}", "[".repeat(60), "]".repeat(60));
    let extra = format!("futureField: {{a: [1, 2, {{b: c}}]}}\n  nested: {deep}\n  x-custom: !!str 5");
    let text = CLUSTER
        .replace("metadata: {name:", "extraTop: true\nmetadata: {labels: {a: b}, finalizers: [x], name:")
        .replace("spec:\n", &format!("spec:\n  {extra}\n"))
        .replace("spec: {", "spec: {unknownSpecField: [1, {deeper: [true]}], ");
    assert_ne!(text, CLUSTER);
    let mixed = plans(&text).unwrap();
    for ((plan, problems), (valid_plan, _)) in mixed.iter().zip(&valid) {
        assert!(problems.is_empty(), "unknown fields are ignored, not reported: {problems:?}");
        assert_eq!(plan, valid_plan);
    }
}

#[test]
fn a_wrong_type_names_the_field_and_the_rest_is_applied() {
    let valid = plans(CLUSTER).unwrap();
    let broken = [
        (
            "kind: IPPool\nmetadata: {name: typed}\nspec: {cidr: [10.150.0.0/16]}",
            "IPPool",
            "typed",
            "spec.cidr",
        ),
        (
            "kind: IPPool\nmetadata: {name: typed}\nspec: {cidr: 10.150.0.0/16, natOutgoing: maybe}",
            "IPPool",
            "typed",
            "spec.natOutgoing",
        ),
        (
            "kind: IPPool\nmetadata: {name: typed}\nspec: {cidr: 10.150.0.0/16, disabled: {a: 1}}",
            "IPPool",
            "typed",
            "spec.disabled",
        ),
        (
            "kind: BlockAffinity\nmetadata: {name: typed}\nspec: {cidr: 10.244.9.0/26, node: {name: node-2}}",
            "BlockAffinity",
            "typed",
            "spec.node",
        ),
        (
            "kind: BlockAffinity\nmetadata: {name: typed}\nspec: {cidr: 10.244.9.0/26, node: node-2, state: maybe}",
            "BlockAffinity",
            "typed",
            "spec.state",
        ),
        (
            "kind: BlockAffinity\nmetadata: {name: typed}\nspec: {cidr: 10.244.9.0/26, node: node-2, deleted: 0}",
            "BlockAffinity",
            "typed",
            "spec.deleted",
        ),
        (
            "kind: IPAMBlock\nmetadata: {name: typed}\nspec: {cidr: 10.244.9.0/26, affinity: 'host:'}",
            "IPAMBlock",
            "typed",
            "spec.affinity",
        ),
        (
            "kind: Node\nmetadata: {name: typed}\nspec: {bgp: {ipv4Address: 10.100.0.20/24, ipv4IPIPTunnelAddr: 10.244.9.300}}",
            "Node",
            "typed",
            "spec.bgp.ipv4IPIPTunnelAddr",
        ),
        (
            "kind: Node\nmetadata: {name: typed}\nspec: {bgp: {ipv4Address: 10.100.0.20/24}, ipv4VXLANTunnelAddr: [1]}",
            "Node",
            "typed",
            "spec.ipv4VXLANTunnelAddr",
        ),
        (
            "kind: Node\napiVersion: v1\nmetadata: {name: typed, annotations: [a]}",
            "Node",
            "typed",
            "metadata.annotations",
        ),
        (
            "kind: WorkloadEndpoint\nmetadata: {name: typed}\nspec: {node: node-1, interfaceName: 5, ipNetworks: [10.244.1.40/32]}",
            "WorkloadEndpoint",
            "default/typed",
            "spec.interfaceName",
        ),
        (
            "kind: WorkloadEndpoint\nmetadata: {name: typed, namespace: [x]}\nspec: {node: node-1}",
            "WorkloadEndpoint",
            "default/typed",
            "metadata.namespace",
        ),
        (
            "kind: IPPoolList\nitems: {a: b}",
            "IPPoolList",
            "document 9",
            "items",
        ),
        (
            "metadata: {name: typed}\nspec: {cidr: 10.150.0.0/16}",
            "resource",
            "typed",
            "kind",
        ),
        (
            "kind: [IPPool]\nmetadata: {name: typed}",
            "resource",
            "typed",
            "kind",
        ),
    ];
    for (resource, kind, name, field) in broken {
        let text = format!("{CLUSTER}\n---\n{resource}\n");
        let mixed = plans(&text).unwrap();
        for ((plan, problems), (valid_plan, _)) in mixed.iter().zip(&valid) {
            assert_eq!(plan, valid_plan, "{resource}");
            assert!(
                problems.iter().any(|p| (p.kind.as_str(), p.name.as_str(), p.field.as_str()) == (kind, name, field)),
                "{resource}: expected {kind} {name} {field}, got {problems:#?}"
            );
        }
    }
}

/// Whether to run the huge documents at full size (100k blocks, 50 MB): about a minute in a
/// debug build, so the suite runs them at a fifth of that unless `DATAPLANE_FUZZ_HUGE=1`.
fn full_size() -> bool {
    std::env::var("DATAPLANE_FUZZ_HUGE").is_ok_and(|v| v == "1")
}

#[test]
fn huge_block_lists_are_all_planned() {
    let blocks: usize = if full_size() { 100_000 } else { 20_000 };
    let mut text = String::from(
        "kind: IPPool\nmetadata: {name: big}\nspec: {cidr: 10.0.0.0/8, blockSize: 26, vxlanMode: Always}\n---\n\
         kind: Node\nmetadata: {name: node-1}\nspec: {bgp: {ipv4Address: 192.168.0.1/24}, vxlanTunnelMACAddr: '66:d0:00:00:00:01'}\n---\n\
         kind: Node\nmetadata: {name: node-2}\nspec: {bgp: {ipv4Address: 192.168.0.2/24}, vxlanTunnelMACAddr: '66:d0:00:00:00:02'}\n---\n\
         kind: BlockAffinityList\napiVersion: crd.projectcalico.org/v1\nitems:\n",
    );
    for block in 0..blocks {
        // Block n of the /8: 64 addresses each.
        let base = (block as u32) << 6;
        let node = if block % 2 == 0 { "node-1" } else { "node-2" };
        text.push_str(&format!(
            "- {{metadata: {{name: b{block}}}, spec: {{cidr: 10.{}.{}.{}/26, node: {node}, state: confirmed}}}}\n",
            (base >> 16) & 0xff,
            (base >> 8) & 0xff,
            base & 0xff
        ));
    }
    let began = Instant::now();
    let (model, problems) = file::parse(&text).unwrap();
    let parsed = began.elapsed();
    assert!(problems.is_empty(), "{:?}", &problems[..problems.len().min(5)]);
    assert_eq!(model.blocks.len(), blocks);
    let (plan, problems) = plan::compute(&model, "node-1").unwrap();
    assert!(problems.is_empty());
    // The pool's route and every block (half local, half remote).
    assert_eq!(plan.routes.len(), blocks + 1);
    eprintln!(
        "{blocks} blocks: {} MB of YAML parsed in {parsed:.1?}, planned in {:.1?} (debug build)",
        text.len() / 1_000_000,
        began.elapsed() - parsed
    );
}

#[test]
fn huge_documents_are_read_without_trouble() {
    // One resource carrying 50 MB (10 MB unless full size) in a field the datastore does not read.
    let megabytes = if full_size() { 50 } else { 10 };
    let blob = "a".repeat(megabytes * 1024 * 1024);
    let text = format!(
        "{CLUSTER}\n---\nkind: IPPool\nmetadata: {{name: huge, annotations: {{blob: {blob}}}}}\nspec: {{cidr: 10.0.0.0/8}}\n"
    );
    let began = Instant::now();
    let mixed = plans(&text).unwrap();
    eprintln!("a {} MB document parsed and planned in {:.1?} (debug build)", text.len() / 1_000_000, began.elapsed());
    let valid = plans(CLUSTER).unwrap();
    for ((plan, problems), (valid_plan, _)) in mixed.iter().zip(&valid) {
        assert_eq!(plan, valid_plan);
        // The huge pool overlaps the fixture's and is reported by name, not swallowed.
        assert!(problems.iter().any(|p| p.name == "huge" && p.field == "spec.cidr"), "{problems:?}");
    }
}

//! Calico's etcdv3 key layout: which keys the dataplane reads and what their names say.
//!
//! ```text
//! <prefix>/resources/v3/projectcalico.org/ippools/<name>
//! <prefix>/resources/v3/projectcalico.org/nodes/<name>
//! <prefix>/resources/v3/projectcalico.org/workloadendpoints/<namespace>/<name>
//! <prefix>/ipam/v2/host/<node>/ipv4/block/<a.b.c.d>-<len>        block affinity
//! <prefix>/ipam/v2/assignment/ipv4/block/<a.b.c.d>-<len>         allocation block
//! ```
//!
//! Everything else under the prefix (policies, profiles, IPAM handles, Felix's status, IPv6
//! blocks) is not the dataplane's business and is ignored without a word. A key inside one of the
//! directories above whose name does not parse is reported, because someone meant it.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The directories the dataplane reads, relative to the prefix; each is read and watched as one
/// key range.
pub const DIRECTORIES: [&str; 5] = [
    "/resources/v3/projectcalico.org/ippools/",
    "/resources/v3/projectcalico.org/nodes/",
    "/resources/v3/projectcalico.org/workloadendpoints/",
    "/ipam/v2/host/",
    "/ipam/v2/assignment/",
];

/// What one key holds, from its name alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    /// An `IPPool`.
    Pool {
        /// The pool's name.
        name: String,
    },
    /// A Calico `Node`.
    Node {
        /// The node's name.
        name: String,
    },
    /// A `WorkloadEndpoint`.
    Workload {
        /// The endpoint's namespace.
        namespace: String,
        /// The endpoint's name.
        name: String,
    },
    /// A block's affinity to a node; the value holds its state.
    Affinity {
        /// The node the block is affine to.
        node: String,
        /// The block.
        cidr: Ipv4Net,
    },
    /// An allocation block: the addresses handed out from a block, and its affinity.
    Allocation {
        /// The block.
        cidr: Ipv4Net,
    },
}

impl Key {
    /// The Calico kind this key holds, for problems.
    pub fn kind(&self) -> &'static str {
        match self {
            Key::Pool { .. } => "IPPool",
            Key::Node { .. } => "Node",
            Key::Workload { .. } => "WorkloadEndpoint",
            Key::Affinity { .. } => "BlockAffinity",
            Key::Allocation { .. } => "IPAMBlock",
        }
    }
}

/// How a key's name reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// One of the keys the dataplane reads.
    Known(Key),
    /// A key in one of the dataplane's directories whose name does not parse.
    Malformed {
        /// The kind the directory holds, e.g. `BlockAffinity`.
        kind: &'static str,
        /// What is wrong with the name and what it should look like.
        message: String,
    },
    /// Not the dataplane's business.
    Ignored,
}

/// The prefix as keys use it: without a trailing slash, so that `/calico/` and `/calico` are
/// the same prefix and keys are `<prefix>/resources/...`.
pub fn normalize_prefix(prefix: &str) -> String {
    prefix.trim_end_matches('/').to_owned()
}

/// Reads a key's name. `prefix` is normalized ([`normalize_prefix`]).
pub fn parse(prefix: &str, key: &str) -> Parsed {
    let Some(rest) = key.strip_prefix(prefix) else {
        return Parsed::Ignored;
    };
    let Some(rest) = rest.strip_prefix('/') else {
        return Parsed::Ignored;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        ["resources", "v3", "projectcalico.org", "ippools", tail @ ..] => single_name("IPPool", "ippools/<name>", tail)
            .map_or_else(
                |message| Parsed::Malformed { kind: "IPPool", message },
                |name| Parsed::Known(Key::Pool { name }),
            ),
        ["resources", "v3", "projectcalico.org", "nodes", tail @ ..] => single_name("Node", "nodes/<name>", tail)
            .map_or_else(
                |message| Parsed::Malformed { kind: "Node", message },
                |name| Parsed::Known(Key::Node { name }),
            ),
        ["resources", "v3", "projectcalico.org", "workloadendpoints", tail @ ..] => match tail {
            [namespace, name] if valid_name(namespace) && valid_name(name) => {
                Parsed::Known(Key::Workload { namespace: (*namespace).to_owned(), name: (*name).to_owned() })
            }
            _ => Parsed::Malformed {
                kind: "WorkloadEndpoint",
                message: "expected workloadendpoints/<namespace>/<name>".to_owned(),
            },
        },
        ["ipam", "v2", "host", tail @ ..] => match tail {
            [node, "ipv4", "block", block] if valid_name(node) => match parse_block(block) {
                Ok(cidr) => Parsed::Known(Key::Affinity { node: (*node).to_owned(), cidr }),
                Err(message) => Parsed::Malformed { kind: "BlockAffinity", message },
            },
            // IPv6 blocks: this dataplane routes IPv4 only, and the file datastore skips them
            // silently too.
            [node, "ipv6", ..] if valid_name(node) => Parsed::Ignored,
            _ => Parsed::Malformed {
                kind: "BlockAffinity",
                message: "expected ipam/v2/host/<node>/ipv4/block/<a.b.c.d>-<prefix length>".to_owned(),
            },
        },
        ["ipam", "v2", "assignment", tail @ ..] => match tail {
            ["ipv4", "block", block] => match parse_block(block) {
                Ok(cidr) => Parsed::Known(Key::Allocation { cidr }),
                Err(message) => Parsed::Malformed { kind: "IPAMBlock", message },
            },
            ["ipv6", ..] => Parsed::Ignored,
            _ => Parsed::Malformed {
                kind: "IPAMBlock",
                message: "expected ipam/v2/assignment/ipv4/block/<a.b.c.d>-<prefix length>".to_owned(),
            },
        },
        _ => Parsed::Ignored,
    }
}

/// The one name after a resource directory.
fn single_name(kind: &str, shape: &str, tail: &[&str]) -> Result<String, String> {
    match tail {
        [name] if valid_name(name) => Ok((*name).to_owned()),
        _ => Err(format!("expected {shape}: the key does not name one {kind}")),
    }
}

/// A name segment: not empty and not surrounded by spaces, which no Kubernetes name has.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.trim() == name
}

/// A block as Calico writes it in keys: `10.244.1.0-26`.
pub fn parse_block(text: &str) -> Result<Ipv4Net, String> {
    let wrong = || {
        format!(
            "{text:?} is not a block: Calico writes blocks as <network address>-<prefix length>, \
             e.g. 10.244.1.0-26"
        )
    };
    let (addr, len) = text.rsplit_once('-').ok_or_else(wrong)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| wrong())?;
    // u8::from_str alone would also take "+26".
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(wrong());
    }
    let len: u8 = len.parse().map_err(|_| wrong())?;
    let cidr = Ipv4Net::new(addr, len).map_err(|_| wrong())?;
    if cidr.trunc() != cidr {
        return Err(format!(
            "{text:?} is not a block: {addr} has bits set beyond the /{len}; the block would be {}",
            cidr.trunc()
        ));
    }
    Ok(cidr)
}

/// Writes a block as Calico does in keys: `10.244.1.0-26`.
pub fn format_block(cidr: &Ipv4Net) -> String {
    format!("{}-{}", cidr.network(), cidr.prefix_len())
}

/// The end of the key range that holds every key starting with `prefix`: the prefix with its
/// last byte incremented (bytes of 0xff are dropped first), as etcd defines prefix ranges.
pub fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff (or the prefix was empty): "\0" means to the end of the key space.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Ipv4Net {
        text.parse().expect("test CIDR")
    }

    fn known(key: &str) -> Key {
        match parse("/calico", key) {
            Parsed::Known(key) => key,
            other => panic!("{key}: {other:?}"),
        }
    }

    fn malformed(key: &str) -> (&'static str, String) {
        match parse("/calico", key) {
            Parsed::Malformed { kind, message } => (kind, message),
            other => panic!("{key}: {other:?}"),
        }
    }

    #[test]
    fn reads_calicos_keys() {
        assert_eq!(
            known("/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool"),
            Key::Pool { name: "default-ipv4-ippool".into() }
        );
        assert_eq!(known("/calico/resources/v3/projectcalico.org/nodes/k8s01"), Key::Node { name: "k8s01".into() });
        assert_eq!(
            known("/calico/resources/v3/projectcalico.org/workloadendpoints/kube-system/k8s01-k8s-coredns--1-eth0"),
            Key::Workload { namespace: "kube-system".into(), name: "k8s01-k8s-coredns--1-eth0".into() }
        );
        // The keys of the seed: `etcdctl get / --prefix --keys-only | grep calico`.
        assert_eq!(
            known("/calico/ipam/v2/host/k8s01/ipv4/block/172.16.73.64-26"),
            Key::Affinity { node: "k8s01".into(), cidr: net("172.16.73.64/26") }
        );
        assert_eq!(
            known("/calico/ipam/v2/assignment/ipv4/block/172.16.236.128-26"),
            Key::Allocation { cidr: net("172.16.236.128/26") }
        );
    }

    #[test]
    fn other_keys_are_ignored() {
        for key in [
            "/calico/resources/v3/projectcalico.org/profiles/kns.default",
            "/calico/resources/v3/projectcalico.org/networkpolicies/default/deny",
            "/calico/ipam/v2/handle/k8s-pod-network.e908404f",
            "/calico/ipam/v2/host/k8s01/ipv6/block/fd00:10:244::-122",
            "/calico/ipam/v2/assignment/ipv6/block/fd00:10:244::-122",
            "/calico/felix/v2/no-region/host/k8s01/status",
            "/calico",
            "/calicox/resources/v3/projectcalico.org/ippools/p",
            "/other/resources/v3/projectcalico.org/ippools/p",
        ] {
            assert_eq!(parse("/calico", key), Parsed::Ignored, "{key}");
        }
    }

    #[test]
    fn broken_names_in_our_directories_are_reported() {
        let (kind, message) = malformed("/calico/ipam/v2/host/k8s01/ipv4/block/10.244.1.0-xx");
        assert_eq!(kind, "BlockAffinity");
        assert!(message.contains("10.244.1.0-26"), "{message}");
        assert_eq!(malformed("/calico/ipam/v2/assignment/ipv4/block/10.244.1.0").0, "IPAMBlock");
        assert_eq!(malformed("/calico/ipam/v2/host/k8s01/ipv4/10.244.1.0-26").0, "BlockAffinity");
        assert_eq!(malformed("/calico/ipam/v2/host//ipv4/block/10.244.1.0-26").0, "BlockAffinity");
        assert_eq!(
            malformed("/calico/resources/v3/projectcalico.org/workloadendpoints/only-a-name").0,
            "WorkloadEndpoint"
        );
        assert_eq!(malformed("/calico/resources/v3/projectcalico.org/ippools/").0, "IPPool");
        assert_eq!(malformed("/calico/resources/v3/projectcalico.org/nodes/a/b").0, "Node");
    }

    #[test]
    fn blocks_parse_strictly() {
        assert_eq!(parse_block("10.244.1.0-26"), Ok(net("10.244.1.0/26")));
        assert_eq!(parse_block("0.0.0.0-0"), Ok(net("0.0.0.0/0")));
        for bad in ["10.244.1.0-33", "10.244.1.0-+6", "10.244.1.0-", "10.244.1-26", "10.244.1.0/26", "", "-"] {
            assert!(parse_block(bad).is_err(), "{bad}");
        }
        let message = parse_block("10.244.1.5-26").expect_err("host bits");
        assert!(message.contains("10.244.1.0/26"), "{message}");
        assert_eq!(format_block(&net("10.244.1.0/26")), "10.244.1.0-26");
    }

    #[test]
    fn prefixes() {
        assert_eq!(normalize_prefix("/calico/"), "/calico");
        assert_eq!(normalize_prefix("/calico"), "/calico");
        // Another prefix, e.g. one cluster of several in one etcd.
        assert_eq!(
            parse("/clusters/a", "/clusters/a/resources/v3/projectcalico.org/nodes/n"),
            Parsed::Known(Key::Node { name: "n".into() })
        );
        assert_eq!(parse("", "/resources/v3/projectcalico.org/nodes/n"), Parsed::Known(Key::Node { name: "n".into() }));
        assert_eq!(range_end(b"/calico/"), b"/calico0".to_vec());
        assert_eq!(range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(range_end(b"\xff"), vec![0]);
        assert_eq!(range_end(b""), vec![0]);
    }
}

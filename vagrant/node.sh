#!/bin/bash
# dataplane-node: one node VM of the Vagrant cluster, as the bench drives it (installed as
# /usr/local/sbin/dataplane-node by provision.sh; runs as root in the guest).
#
#   dataplane-node pods                     make this node's pod (idempotent)
#   dataplane-node agent AGENT_MODE POOL    the dataplane agent (auto|bpf|netlink), pool vxlan|ipip|never
#   dataplane-node kernel-vxlan             no agent: the kernel's vxlan.calico as Calico configures it
#   dataplane-node reset                    stop the agent, remove everything either setup made
#   dataplane-node probe-line               the agent's kernel-probe / backend start-up line
#   dataplane-node ping DST                 5 pings from this node's pod
#   dataplane-node iperf-server             an iperf3 server in this node's pod
#   dataplane-node iperf ARGS...            iperf3 in this node's pod
#
# /etc/dataplane/node holds NODE (node-N), INDEX (N) and UPLINK (the private NIC).
set -euo pipefail

. /etc/dataplane/node
NODES=3
YAML=/etc/dataplane/cluster.yaml
LOG=/var/log/dataplane.log
POD=web-$INDEX
POD_IP=10.244.$INDEX.2
VXLAN_DEVICE=vxlan.calico

# Calico's interface name: "cali" + the first 11 hex digits of sha1("<namespace>.<pod>").
cali_name() { printf 'cali%s' "$(printf %s "default.$1" | sha1sum | cut -c1-11)"; }
node_ip() { printf '10.100.0.%d' $((10 + $1)); }
vtep_mac() { printf '66:d0:00:00:00:%02x' "$1"; }
in_pod() { ip netns exec "$POD" "$@"; }

pods() {
    local cali
    cali=$(cali_name "$POD")
    ip netns list | grep -qw "$POD" && return 0
    ip netns add "$POD"
    in_pod ip link set lo up
    # Addresses are given in the creating message: set afterwards, udev's MACAddressPolicy
    # (systemd's 99-default.link) may overwrite them with its own a moment later.
    ip link add "$cali" address ee:ee:ee:ee:ee:ee type veth \
        peer name eth0 address "$(printf '0a:58:0a:f4:%02x:02' "$INDEX")" netns "$POD"
    ip link set "$cali" up
    in_pod ip link set eth0 up
    in_pod ip addr add "$POD_IP/32" dev eth0
    ip route replace "$POD_IP/32" dev "$cali" scope link
    in_pod ip route add 169.254.1.1 dev eth0 scope link
    in_pod ip route add default via 169.254.1.1 dev eth0
}

# The pod's MTU as Calico's CNI plugin sets it for the pool's encapsulation.
pod_mtu() {
    case $1 in
    vxlan) echo 1450 ;;
    ipip) echo 1480 ;;
    *) echo 1500 ;;
    esac
}

# The cluster in Calico's YAML (the file datastore's input): one pool in mode $1, three nodes
# with one /26 block and one pod each.
write_yaml() {
    local mode=$1 vxlan=Never ipip=Never n
    case $mode in
    vxlan) vxlan=Always ;;
    ipip) ipip=Always ;;
    never) ;;
    *) echo "unknown pool mode $mode (vxlan, ipip, never)" >&2; exit 2 ;;
    esac
    mkdir -p /etc/dataplane
    {
        cat <<Y
# Written by dataplane-node: pool mode $mode.
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: default-ipv4-ippool
spec:
  allowedUses: [Workload, Tunnel]
  blockSize: 26
  cidr: 10.244.0.0/16
  ipipMode: $ipip
  natOutgoing: true
  nodeSelector: all()
  vxlanMode: $vxlan
Y
        for n in $(seq "$NODES"); do
            cat <<Y
---
apiVersion: projectcalico.org/v3
kind: Node
metadata:
  name: node-$n
spec:
  addresses:
  - address: $(node_ip "$n")/24
    type: CalicoNodeIP
  bgp:
    ipv4Address: $(node_ip "$n")/24
Y
            [ "$mode" = ipip ] && echo "    ipv4IPIPTunnelAddr: 10.244.$n.0"
            [ "$mode" = vxlan ] && printf '  ipv4VXLANTunnelAddr: 10.244.%d.0\n  vxlanTunnelMACAddr: %s\n' "$n" "$(vtep_mac "$n")"
            cat <<Y
---
apiVersion: crd.projectcalico.org/v1
kind: BlockAffinity
metadata:
  name: node-$n-10-244-$n-0-26
spec:
  cidr: 10.244.$n.0/26
  deleted: "false"
  node: node-$n
  state: confirmed
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata:
  name: node--$n-k8s-web--$n-eth0
  namespace: default
spec:
  endpoint: eth0
  interfaceName: $(cali_name "web-$n")
  ipNetworks: [10.244.$n.2/32]
  mac: $(printf '0a:58:0a:f4:%02x:02' "$n")
  node: node-$n
  orchestrator: k8s
  pod: web-$n
Y
        done
    } >"$YAML.tmp"
    mv "$YAML.tmp" "$YAML"
    in_pod ip link set eth0 mtu "$(pod_mtu "$mode")"
}

reset() {
    local cali
    cali=$(cali_name "$POD")
    systemctl stop dataplane.service 2>/dev/null || true
    /usr/local/bin/dataplane cleanup >/dev/null 2>&1 || true
    ip link del "$VXLAN_DEVICE" 2>/dev/null || true
    if ip link show tunl0 >/dev/null 2>&1; then
        ip addr flush dev tunl0
        ip link set tunl0 down
    fi
    # Routes to blocks (Calico's, the kernel baseline's and the agent's), but not the pod's own.
    ip route show | awk '$1 ~ /^10\.244\./ && $0 !~ /scope link/ {print}' | while read -r route; do
        # shellcheck disable=SC2086
        ip route del $route 2>/dev/null || true
    done
    ip route show type blackhole | awk '{print $2}' | while read -r block; do
        ip route del blackhole "$block" 2>/dev/null || true
    done
    sysctl -qw "net.ipv4.conf.$cali.proxy_arp=0"
    # The pod's own route belongs to the CNI plugin, and outlives every dataplane setup.
    if ! ip route show "$POD_IP/32" dev "$cali" | grep -q .; then
        echo "reset: the pod's route $POD_IP/32 dev $cali was gone after the agent's cleanup; re-added" >&2
        ip route replace "$POD_IP/32" dev "$cali" scope link
    fi
}

agent() {
    local agent_mode=$1 pool=$2 i
    reset
    write_yaml "$pool"
    printf 'NODE=%s\nAGENT_MODE=%s\n' "$NODE" "$agent_mode" >/etc/dataplane/agent.env
    systemctl start dataplane.service
    for i in $(seq 360); do
        if grep -qE 'fast path programmed|netlink dataplane programmed' "$LOG" 2>/dev/null; then
            probe_line
            sed 's/\x1b\[[0-9;]*m//g' "$LOG" | grep -m1 -E 'fast path programmed|netlink dataplane programmed'
            return 0
        fi
        if ! systemctl is-active -q dataplane.service; then
            echo "the agent stopped:" >&2
            tail -20 "$LOG" >&2
            exit 1
        fi
        sleep 0.5
    done
    echo "the agent did not program the node in 180 s:" >&2
    tail -20 "$LOG" >&2
    exit 1
}

probe_line() {
    sed 's/\x1b\[[0-9;]*m//g' "$LOG" | grep -E 'kernel probe|--mode netlink|falling back' | head -1
}

# Calico's VXLAN mode with kernel features only (as calico-node programs it): vxlan.calico with
# the node's VTEP, per peer a route via its VTEP onlink, a permanent neighbour and FDB entry;
# proxy ARP on the pod's caliX, a blackhole for the local block, forwarding.
kernel_vxlan() {
    local cali n
    cali=$(cali_name "$POD")
    reset
    write_yaml vxlan
    sysctl -qw net.ipv4.ip_forward=1
    sysctl -qw "net.ipv4.conf.$cali.proxy_arp=1" "net.ipv4.neigh.$cali.proxy_delay=0" "net.ipv4.conf.$cali.forwarding=1"
    ip route replace blackhole "10.244.$INDEX.0/26"
    # The VTEP MAC in the creating message, as calico-node does: udev would replace one set later.
    ip link add "$VXLAN_DEVICE" address "$(vtep_mac "$INDEX")" mtu 1450 \
        type vxlan id 4096 dstport 4789 local "$(node_ip "$INDEX")" dev "$UPLINK" nolearning
    ip addr add "10.244.$INDEX.0/32" dev "$VXLAN_DEVICE"
    ip link set "$VXLAN_DEVICE" up
    for n in $(seq "$NODES"); do
        [ "$n" = "$INDEX" ] && continue
        ip route replace "10.244.$n.0/26" via "10.244.$n.0" dev "$VXLAN_DEVICE" onlink
        ip neigh replace "10.244.$n.0" lladdr "$(vtep_mac "$n")" dev "$VXLAN_DEVICE" nud permanent
        bridge fdb replace "$(vtep_mac "$n")" dev "$VXLAN_DEVICE" dst "$(node_ip "$n")" self permanent
    done
    echo "kernel vxlan.calico configured (no agent)"
}

case ${1:-} in
pods) pods ;;
agent) agent "$2" "$3" ;;
kernel-vxlan) kernel_vxlan ;;
reset) reset ;;
probe-line) probe_line ;;
ping) in_pod ping -q -c 5 -i 0.2 -W 2 "$2" ;;
iperf-server)
    [ -f /run/pod-iperf3.pid ] && kill "$(cat /run/pod-iperf3.pid)" 2>/dev/null || true
    in_pod iperf3 -s -D -I /run/pod-iperf3.pid
    ;;
iperf) shift; in_pod iperf3 "$@" ;;
*) sed -n '2,14p' "$0" >&2; exit 2 ;;
esac

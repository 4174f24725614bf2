#!/bin/bash
# Vagrant's provisioner for one node VM (runs as root in the guest):
#
#   provision.sh NODE INDEX ADDRESS PRIVATE_MAC POOL_MODE AGENT_MODE
#
# Configures the private NIC (found by its MAC, else the NIC without the default route), installs
# the uploaded agent and dataplane-node, makes the pod, writes the cluster's Calico YAML and runs
# the agent as the systemd service `dataplane`.
set -euo pipefail
node=$1 index=$2 address=$3 mac=$4 pool=$5 agent_mode=$6

uplink=$(ip -o link | awk -v mac="$mac" 'tolower($0) ~ mac {sub(":", "", $2); print $2; exit}')
if [ -z "$uplink" ]; then
    default=$(ip -o route show default | awk '{print $5; exit}')
    uplink=$(ls /sys/class/net | grep -vx -e lo -e "$default" | head -1 || true)
fi
[ -n "$uplink" ] || { echo "no private NIC (MAC $mac) in this VM" >&2; exit 1; }
echo "$node: private NIC $uplink, $address/24"

mkdir -p /etc/systemd/network /etc/dataplane
cat >/etc/systemd/network/10-private.network <<NET
[Match]
Name=$uplink

[Network]
Address=$address/24
LinkLocalAddressing=no
IPv6AcceptRA=no
NET
ip addr replace "$address/24" dev "$uplink"
ip link set "$uplink" up
# A node has a default route (Calico's nodes always do): the kernel answers a pod's ARP for
# 169.254.1.1 by proxy only if it routes that address out of another interface. Where the
# management network gives none (an isolated one), the private network's gateway is the default.
if ! ip route show default | grep -q .; then
    gateway=${address%.*}.1
    ip route replace default via "$gateway" dev "$uplink"
    printf 'Gateway=%s\n' "$gateway" >>/etc/systemd/network/10-private.network
fi

# The local box has iperf3; a public box may not (its management network is NATed by default).
if ! command -v iperf3 >/dev/null; then
    echo "$node: installing iperf3"
    DEBIAN_FRONTEND=noninteractive apt-get -q update >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get -q install -y --no-install-recommends iperf3 >/dev/null
fi

install -m 0755 /tmp/dataplane /usr/local/bin/dataplane
install -m 0755 /tmp/dataplane-node /usr/local/sbin/dataplane-node
rm -f /tmp/dataplane /tmp/dataplane-node
printf 'NODE=%s\nINDEX=%s\nUPLINK=%s\n' "$node" "$index" "$uplink" >/etc/dataplane/node
printf 'NODE=%s\nAGENT_MODE=%s\n' "$node" "$agent_mode" >/etc/dataplane/agent.env

# Calico's node loads the tunnel modules; so do we (the netlink fallback's IPIP needs tunl0).
modprobe -a vxlan ipip
printf 'vxlan\nipip\n' >/etc/modules-load.d/dataplane.conf

cat >/etc/systemd/system/dataplane.service <<UNIT
[Unit]
Description=dataplane agent (eBPF fast path for Calico pod networking)
After=network.target

[Service]
EnvironmentFile=/etc/dataplane/agent.env
Environment=RUST_LOG=info NO_COLOR=1
ExecStart=/usr/local/bin/dataplane run --datastore file:/etc/dataplane/cluster.yaml --node \${NODE} --mode \${AGENT_MODE}
StandardError=truncate:/var/log/dataplane.log
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable dataplane.service >/dev/null 2>&1
dataplane-node pods
dataplane-node agent "$agent_mode" "$pool"

#!/bin/bash
# DHCP DISCOVER→ACK rate of `bellbuild serve`, dnsmasq (--no-ping) and
# kea-dhcp4 (memfile), each driven by ISC's perfdhcp acting as a relay
# from a second network namespace, under the same offered loads.
#
#   .ci/bench/dhcp.sh [RATE ...]      (default rates: 1000 5000; needs root)
#
# Topology (namespaces made here, deleted on exit):
#   bbsrv: s0 198.51.100.1/24 — the server; route to 192.0.2.0/24 via the relay
#   bbcli: c0 198.51.100.2/24 + 192.0.2.1/24 — perfdhcp, relaying from giaddr 192.0.2.1
# bellbuild-etcd is bellbuild with --state etcd+http://127.0.0.1:2379: a
# one-member etcd (Debian's etcd-server) in bbsrv, every lease committed
# to it (a transaction) before its ACK.
# Every server leases 192.0.2.10-192.0.2.250 to relayed clients; perfdhcp
# simulates 200 clients (-R 200), so each address is leased once and then
# renewed by the same MAC.
set -euo pipefail
cd "$(dirname "$0")/../.."
RATES=("${@:-1000 5000}")
RATES=(${RATES[@]})
PERIOD=${PERIOD:-15}
BIN=${BELLBUILD_BIN:-$PWD/bin/bellbuild}
[ "$(id -u)" = 0 ] || { echo "dhcp.sh: needs root (network namespaces)" >&2; exit 1; }
for t in perfdhcp dnsmasq kea-dhcp4 ip; do command -v $t >/dev/null || { echo "dhcp.sh: $t missing" >&2; exit 1; }; done
[ -x "$BIN" ] || make build >/dev/null

TMP=$(mktemp -d)
SRV=bbsrv-$$ CLI=bbcli-$$
PID= ETCD=
cleanup() {
	[ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
	[ -n "$ETCD" ] && kill "$ETCD" 2>/dev/null && wait "$ETCD" 2>/dev/null || true
	ip netns del $SRV 2>/dev/null || true
	ip netns del $CLI 2>/dev/null || true
	rm -rf "$TMP"
}
trap cleanup EXIT

ip netns add $SRV
ip netns add $CLI
ip -n $SRV link set lo up
ip -n $CLI link set lo up
ip -n $SRV link add s0 type veth peer name c0 netns $CLI
ip -n $SRV addr add 198.51.100.1/24 dev s0
ip -n $CLI addr add 198.51.100.2/24 dev c0
ip -n $CLI addr add 192.0.2.1/24 dev c0
ip -n $SRV link set s0 up
ip -n $CLI link set c0 up
ip -n $SRV route add 192.0.2.0/24 via 198.51.100.2

start() { # NAME: start the server in the background, PID set
	case $1 in
	bellbuild)
		mkdir -p "$TMP/out"
		ip netns exec $SRV "$BIN" serve --interface s0 --pool 192.0.2.10-192.0.2.250/24 \
			--default-profile demo --state "$TMP/bb" --artifacts "$TMP/out" --tftp-addr off --http-addr off \
			>"$TMP/server.log" 2>&1 &
		;;
	bellbuild-etcd)
		command -v etcd >/dev/null || { echo "dhcp.sh: etcd missing (apt-get install etcd-server)" >&2; exit 1; }
		mkdir -p "$TMP/out"
		ip netns exec $SRV etcd --data-dir "$TMP/etcd" --listen-client-urls http://127.0.0.1:2379 \
			--advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 >"$TMP/etcd.log" 2>&1 &
		ETCD=$!
		# Ready when it answers (a first start initialises its data
		# directory; a fixed wait was sometimes too short).
		for _ in $(seq 50); do
			ip netns exec $SRV curl -sf http://127.0.0.1:2379/health >/dev/null 2>&1 && break
			sleep 0.2
		done
		ip netns exec $SRV "$BIN" serve --interface s0 --pool 192.0.2.10-192.0.2.250/24 \
			--default-profile demo --state etcd+http://127.0.0.1:2379 --work "$TMP/bb" --artifacts "$TMP/out" \
			--tftp-addr off --http-addr off --https-addr off >"$TMP/server.log" 2>&1 &
		;;
	dnsmasq)
		ip netns exec $SRV dnsmasq -k --conf-file=/dev/null --port=0 --no-ping --user=root --group=root \
			--pid-file --interface=s0 --dhcp-range=192.0.2.10,192.0.2.250,255.255.255.0,1h \
			--dhcp-leasefile="$TMP/dnsmasq.leases" --dhcp-authoritative --log-facility=/dev/null \
			>"$TMP/server.log" 2>&1 &
		;;
	kea)
		mkdir -p "$TMP/kea"
		cat >"$TMP/kea/kea-dhcp4.conf" <<KEA
{"Dhcp4": {
  "interfaces-config": {"interfaces": ["s0"], "dhcp-socket-type": "udp"},
  "lease-database": {"type": "memfile", "persist": true, "name": "$TMP/kea/leases4.csv", "lfc-interval": 0},
  "valid-lifetime": 3600,
  "subnet4": [{"id": 1, "subnet": "192.0.2.0/24", "pools": [{"pool": "192.0.2.10 - 192.0.2.250"}]}],
  "loggers": [{"name": "kea-dhcp4", "severity": "WARN", "output_options": [{"output": "stdout"}]}]
}}
KEA
		KEA_LOCKFILE_DIR=$TMP/kea KEA_PIDFILE_DIR=$TMP/kea \
			ip netns exec $SRV kea-dhcp4 -c "$TMP/kea/kea-dhcp4.conf" >"$TMP/server.log" 2>&1 &
		;;
	esac
	PID=$!
	sleep 2
}

stop() {
	kill "$PID" 2>/dev/null || true
	wait "$PID" 2>/dev/null || true
	PID=
}

stop_etcd() {
	[ -n "$ETCD" ] || return 0
	kill "$ETCD" 2>/dev/null || true
	wait "$ETCD" 2>/dev/null || true
	ETCD=
}

printf '| server | offered DORA/s | completed DORA/s | drops | leases persisted |\n|---|---|---|---|---|\n'
for server in ${SERVERS:-bellbuild bellbuild-etcd dnsmasq kea}; do
	for rate in "${RATES[@]}"; do
		start $server
		out=$(ip netns exec $CLI perfdhcp -4 -l 192.0.2.1 -r "$rate" -R 200 -p "$PERIOD" -s 1 198.51.100.1 2>&1 || true)
		stop
		# perfdhcp prints, per exchange type: sent, received, drops.
		done_=$(echo "$out" | awk '/^\*\*\*Rate statistics\*\*\*/{r=1} r && /Rate:/{print $2; exit}')
		sent=$(echo "$out" | awk '/Statistics for: DISCOVER-OFFER/{d=1} /Statistics for: REQUEST-ACK/{d=0; q=1} q && /sent packets:/{print $3; exit}')
		recv=$(echo "$out" | awk '/Statistics for: REQUEST-ACK/{q=1} q && /received packets:/{print $3; exit}')
		drops=$(echo "$out" | awk '/Statistics for: DISCOVER-OFFER/{d=1} d && /drops ratio:/{print $3, $4; exit}')
		case $server in
		bellbuild) persisted=$( (grep '^L ' "$TMP/bb/leases" 2>/dev/null || true) | cut -d' ' -f3 | sort -u | wc -l) ;;
		bellbuild-etcd)
			ip netns exec $SRV "$BIN" state copy --from etcd+http://127.0.0.1:2379 --to "$TMP/etcdcopy" >/dev/null 2>&1 || true
			persisted=$( (grep '^L ' "$TMP/etcdcopy/leases" 2>/dev/null || true) | cut -d' ' -f3 | sort -u | wc -l)
			stop_etcd
			;;
		dnsmasq) persisted=$(wc -l <"$TMP/dnsmasq.leases" 2>/dev/null || echo 0) ;;
		kea) persisted=$( (tail -n +2 "$TMP/kea/leases4.csv" 2>/dev/null || true) | cut -d, -f1 | sort -u | wc -l) ;;
		esac
		printf '| %s | %s | %s | %s | %s |\n' "$server" "$rate" "${done_:-?}" "${drops:-?}" "$persisted"
		if [ -n "${VERBOSE:-}" ]; then { echo "$out"; tail -5 "$TMP/server.log" || true; } >&2; fi
		rm -rf "$TMP/bb" "$TMP/dnsmasq.leases" "$TMP/kea" "$TMP/etcd" "$TMP/etcdcopy"
	done
done

// Package metrics counts what the PXE servers do (Prometheus) and logs one
// structured line per boot phase per MAC address.
package metrics

import (
	"log/slog"
	"net"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Phase is one step of a network boot, in the order a machine goes
// through them.
type Phase string

// The boot phases.
const (
	PhaseOffer  Phase = "dhcp-offer"
	PhaseAck    Phase = "dhcp-ack"
	PhaseLoader Phase = "tftp-loader"
	PhaseScript Phase = "ipxe-script"
	// PhaseGrub is an arm64 machine's GRUB configuration (package grub),
	// its counterpart of the iPXE script.
	PhaseGrub   Phase = "grub-config"
	PhaseKernel Phase = "kernel"
	PhaseInitrd Phase = "initrd"
	PhaseFile   Phase = "node-file"
	// PhaseImage is a file of an image (/image/MAC/...): an installer's
	// or an upgrader's manifest and ranges.
	PhaseImage Phase = "image"
)

// Metrics holds the counters of one server. All methods are safe for
// concurrent use; a nil *Metrics counts nothing and logs nothing.
type Metrics struct {
	Log *slog.Logger

	DHCPPackets  *prometheus.CounterVec // by message type
	Dropped      *prometheus.CounterVec // by protocol and reason
	Offers       prometheus.Counter
	Acks         prometheus.Counter
	Naks         prometheus.Counter
	Leases       prometheus.Gauge
	Transfers    *prometheus.CounterVec // by protocol and result
	Bytes        *prometheus.CounterVec // by protocol
	Errors       *prometheus.CounterVec // by component
	Boots        *prometheus.CounterVec // by phase
	HTTPRequests *prometheus.CounterVec // by handler and code
}

// New makes the counters and registers them on reg (when not nil). log
// receives the boot-phase lines (nil: slog.Default()).
func New(reg prometheus.Registerer, log *slog.Logger) *Metrics {
	if log == nil {
		log = slog.Default()
	}
	const ns = "bellbuild_pxe"
	m := &Metrics{
		Log: log,
		DHCPPackets: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "dhcp_packets_total",
			Help: "DHCP packets received, by message type."}, []string{"type"}),
		Dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "dropped_total",
			Help: "Packets and requests dropped without an answer, by protocol and reason."}, []string{"proto", "reason"}),
		Offers: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "dhcp_offers_total",
			Help: "DHCPOFFERs sent."}),
		Acks: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "dhcp_acks_total",
			Help: "DHCPACKs sent (each after its lease was written to disk)."}),
		Naks: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "dhcp_naks_total",
			Help: "DHCPNAKs sent."}),
		Leases: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "leases",
			Help: "Addresses currently bound to a MAC address (leases and offers)."}),
		Transfers: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "transfers_total",
			Help: "File transfers, by protocol and result."}, []string{"proto", "result"}),
		Bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "bytes_total",
			Help: "File bytes sent, by protocol."}, []string{"proto"}),
		Errors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "errors_total",
			Help: "Errors, by component."}, []string{"component"}),
		Boots: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "boots_total",
			Help: "Boot phases reached, by phase."}, []string{"phase"}),
		HTTPRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "http_requests_total",
			Help: "HTTP requests, by handler and status code."}, []string{"handler", "code"}),
	}
	if reg != nil {
		reg.MustRegister(m.DHCPPackets, m.Dropped, m.Offers, m.Acks, m.Naks, m.Leases,
			m.Transfers, m.Bytes, m.Errors, m.Boots, m.HTTPRequests)
	}
	return m
}

// Boot records that mac reached phase: one counter and one log line
// ("boot phase=dhcp-ack mac=... node=..." plus args).
func (m *Metrics) Boot(phase Phase, mac net.HardwareAddr, args ...any) {
	if m == nil {
		return
	}
	m.Boots.WithLabelValues(string(phase)).Inc()
	m.Log.Info("boot", append([]any{"phase", string(phase), "mac", mac.String()}, args...)...)
}

// Drop counts a packet or request of proto ("dhcp", "tftp", "http")
// dropped for reason.
func (m *Metrics) Drop(proto, reason string) {
	if m == nil {
		return
	}
	m.Dropped.WithLabelValues(proto, reason).Inc()
}

// Error counts an error of component and logs it at warning level.
func (m *Metrics) Error(component string, err error, args ...any) {
	if m == nil {
		return
	}
	m.Errors.WithLabelValues(component).Inc()
	m.Log.Warn(component, append([]any{"err", err}, args...)...)
}

// Value returns the sum of the counter and gauge values c holds (tests and
// the serve command's summary read counters with it).
func Value(c prometheus.Collector) float64 {
	ch := make(chan prometheus.Metric, 64)
	go func() { c.Collect(ch); close(ch) }()
	var sum float64
	for m := range ch {
		var d dto.Metric
		if err := m.Write(&d); err != nil {
			continue
		}
		switch {
		case d.Counter != nil:
			sum += d.Counter.GetValue()
		case d.Gauge != nil:
			sum += d.Gauge.GetValue()
		}
	}
	return sum
}

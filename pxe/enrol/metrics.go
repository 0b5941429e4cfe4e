package enrol

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Counters are the endpoint's metrics. A nil *Counters counts nothing.
type Counters struct {
	Requests *prometheus.CounterVec // by endpoint and status code
	Refused  *prometheus.CounterVec // by reason
	Issued   *prometheus.CounterVec // by kind: host, service
	Pending  prometheus.Gauge
}

// NewCounters makes the counters and registers them on reg (when not nil).
func NewCounters(reg prometheus.Registerer) *Counters {
	const ns = "bellbuild_enrol"
	c := &Counters{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "requests_total",
			Help: "Enrolment endpoint requests, by endpoint and status code."}, []string{"endpoint", "code"}),
		Refused: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "refused_total",
			Help: "Requests refused and CSRs dropped, by reason (key-mismatch: another key for an enrolled node)."}, []string{"reason"}),
		Issued: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "issued_total",
			Help: "Certificates issued through enrolment, by kind (host, service)."}, []string{"kind"}),
		Pending: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "pending",
			Help: "CSRs waiting for an operator's approval."}),
	}
	if reg != nil {
		reg.MustRegister(c.Requests, c.Refused, c.Issued, c.Pending)
	}
	return c
}

func (c *Counters) request(endpoint string, code int) {
	if c != nil {
		c.Requests.WithLabelValues(endpoint, strconv.Itoa(code)).Inc()
	}
}

func (c *Counters) refused(reason string) {
	if c != nil {
		c.Refused.WithLabelValues(reason).Inc()
	}
}

func (c *Counters) issued(kind string) {
	if c != nil {
		c.Issued.WithLabelValues(kind).Inc()
	}
}

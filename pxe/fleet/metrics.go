package fleet

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Collector exports the fleet's view on /metrics, computed at each
// scrape: how many nodes are in each state, and per inventory node (so
// the labels are bounded by the inventory) its last apply time, its last
// run's errors and whether it drifted.
type Collector struct {
	cfg PageConfig

	nodes, last, errs, drift *prometheus.Desc
}

// NewCollector makes the collector of the view cfg describes (its
// Inventory, Recorder, Enrolments and Stale).
func NewCollector(cfg PageConfig) *Collector {
	return &Collector{
		cfg:   cfg,
		nodes: prometheus.NewDesc("bellbuild_fleet_nodes", "Inventory nodes by state (as bellbuild status tells it).", []string{"state"}, nil),
		last:  prometheus.NewDesc("bellbuild_fleet_node_last_apply_timestamp_seconds", "When serve took the node's last report (absent: never).", []string{"node"}, nil),
		errs:  prometheus.NewDesc("bellbuild_fleet_node_errors", "Errors of the node's last applier run.", []string{"node"}, nil),
		drift: prometheus.NewDesc("bellbuild_fleet_node_drifted", "1 when the node applied another configuration (or runs another image) than the site's.", []string{"node"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.nodes
	ch <- c.last
	ch <- c.errs
	ch <- c.drift
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rows, err := View(ctx, c.cfg.Inventory, c.cfg.Recorder, c.cfg.Enrolments, ViewOptions{Stale: c.cfg.Stale, Now: c.cfg.Now})
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.nodes, err)
		return
	}
	for state, n := range Counts(rows) {
		ch <- prometheus.MustNewConstMetric(c.nodes, prometheus.GaugeValue, float64(n), state)
	}
	for _, r := range rows {
		if !r.LastSeen.IsZero() {
			ch <- prometheus.MustNewConstMetric(c.last, prometheus.GaugeValue, float64(r.LastSeen.Unix()), r.Node)
		}
		ch <- prometheus.MustNewConstMetric(c.errs, prometheus.GaugeValue, float64(r.Errors), r.Node)
		drifted := 0.0
		if r.DesiredConfig != r.AppliedConfig && r.AppliedConfig != "" {
			drifted = 1
		}
		ch <- prometheus.MustNewConstMetric(c.drift, prometheus.GaugeValue, drifted, r.Node)
	}
}
